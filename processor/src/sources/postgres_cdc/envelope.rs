//! Change events as Debezium's PostgreSQL connector writes them with the JSON converter
//! and `schemas.enable=false`: the value `{before, after, source, op, ts_ms}`, the key the
//! row's key columns as an object, and a tombstone after each delete. Column values are
//! typed as Debezium's defaults type them (`time.precision.mode=adaptive`), except
//! `numeric`, which is a JSON number (Debezium's `decimal.handling.mode=double`).

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Timelike};
use serde_json::{Map, Value, json};

/// What Debezium writes for a TOASTed column the change did not touch.
pub const UNAVAILABLE: &str = "__debezium_unavailable_value";

/// Type OIDs of the built-in types converted to something other than a string.
mod oid {
    pub const BOOL: u32 = 16;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const OID: u32 = 26;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const NUMERIC: u32 = 1700;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
}

/// One column's value in a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell<'a> {
    /// SQL NULL.
    Null,
    /// The value in PostgreSQL's text output form.
    Text(&'a str),
    /// A TOASTed value the change left as it was (not sent by the server).
    Unchanged,
}

/// The JSON of a column of type `type_oid` whose text form is `text`; a value that does
/// not parse as its type says is kept as its text.
pub fn typed(type_oid: u32, text: &str) -> Value {
    let number = |f: f64| {
        serde_json::Number::from_f64(f)
            .map_or_else(|| Value::String(text.to_string()), Value::Number)
    };
    let parsed = match type_oid {
        oid::BOOL => match text {
            "t" => Some(Value::Bool(true)),
            "f" => Some(Value::Bool(false)),
            _ => None,
        },
        oid::INT2 | oid::INT4 | oid::INT8 | oid::OID => text.parse::<i64>().ok().map(Value::from),
        oid::FLOAT4 | oid::FLOAT8 | oid::NUMERIC => text.parse::<f64>().ok().map(number),
        oid::DATE => NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .ok()
            .map(|d| Value::from(d.signed_duration_since(NaiveDate::default()).num_days())),
        oid::TIME => NaiveTime::parse_from_str(text, "%H:%M:%S%.f")
            .ok()
            .map(|t| {
                Value::from(
                    i64::from(t.num_seconds_from_midnight()) * 1_000_000
                        + i64::from(t.nanosecond() / 1_000),
                )
            }),
        oid::TIMESTAMP => NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
            .ok()
            .map(|t| Value::from(t.and_utc().timestamp_micros())),
        oid::TIMESTAMPTZ => DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z")
            .ok()
            .map(|t| {
                Value::String(
                    t.to_utc()
                        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                )
            }),
        _ => None,
    };
    parsed.unwrap_or_else(|| Value::String(text.to_string()))
}

/// A row as a JSON object: each column by its name, typed by `type_of` (its type OID).
pub fn row<'a>(
    cells: impl IntoIterator<Item = (&'a str, Cell<'a>)>,
    type_of: impl Fn(&str) -> Option<u32>,
) -> Map<String, Value> {
    cells
        .into_iter()
        .map(|(name, cell)| {
            let value = match cell {
                Cell::Null => Value::Null,
                Cell::Unchanged => Value::String(UNAVAILABLE.to_string()),
                Cell::Text(text) => type_of(name)
                    .map_or_else(|| Value::String(text.to_string()), |t| typed(t, text)),
            };
            (name.to_string(), value)
        })
        .collect()
}

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A row read by the initial snapshot (`r`).
    Read,
    /// An insert (`c`).
    Create,
    /// An update (`u`).
    Update,
    /// A delete (`d`).
    Delete,
}

impl Op {
    fn code(self) -> &'static str {
        match self {
            Op::Read => "r",
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
        }
    }
}

/// Where a change comes from: Debezium's `source` block.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The connector's logical name (`topicPrefix`).
    pub name: Arc<str>,
    /// The database.
    pub db: Arc<str>,
    /// The table's schema.
    pub schema: Arc<str>,
    /// The table.
    pub table: Arc<str>,
    /// The commit time of the change's transaction (ms), or the snapshot's time.
    pub ts_ms: i64,
    /// `true` or `last` for snapshot rows (`last` for the very last), `false` otherwise.
    pub snapshot: &'static str,
    /// The transaction id.
    pub tx_id: Option<u32>,
    /// The change's LSN (for snapshot rows, the slot's consistent point).
    pub lsn: u64,
}

/// The value of a change event: `{before, after, source, op, ts_ms}`.
pub fn value(
    op: Op,
    before: Option<Map<String, Value>>,
    after: Option<Map<String, Value>>,
    origin: &Origin,
    now_ms: i64,
) -> Value {
    json!({
        "before": before,
        "after": after,
        "source": {
            "version": env!("CARGO_PKG_VERSION"),
            "connector": "postgresql",
            "name": &*origin.name,
            "ts_ms": origin.ts_ms,
            "snapshot": origin.snapshot,
            "db": &*origin.db,
            "schema": &*origin.schema,
            "table": &*origin.table,
            "txId": origin.tx_id,
            "lsn": origin.lsn,
        },
        "op": op.code(),
        "ts_ms": now_ms,
    })
}

/// The key of a change: the key columns of `row` as an object, in key order; `None`
/// when a key column is missing from the row.
pub fn key(key_columns: &[String], row: &Map<String, Value>) -> Option<Value> {
    let mut key = Map::new();
    for column in key_columns {
        key.insert(column.clone(), row.get(column)?.clone());
    }
    Some(Value::Object(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_typed_as_debezium_types_them() {
        assert_eq!(typed(oid::BOOL, "t"), json!(true));
        assert_eq!(typed(oid::INT4, "-42"), json!(-42));
        assert_eq!(
            typed(oid::INT8, "9007199254740993"),
            json!(9007199254740993_i64)
        );
        assert_eq!(typed(oid::NUMERIC, "12.50"), json!(12.5));
        assert_eq!(typed(oid::NUMERIC, "NaN"), json!("NaN"));
        assert_eq!(typed(oid::FLOAT8, "Infinity"), json!("Infinity"));
        assert_eq!(typed(oid::DATE, "1970-01-11"), json!(10));
        assert_eq!(typed(oid::DATE, "1969-12-31"), json!(-1));
        assert_eq!(typed(oid::TIME, "00:00:01.5"), json!(1_500_000));
        assert_eq!(
            typed(oid::TIMESTAMP, "1970-01-01 00:00:01.000002"),
            json!(1_000_002)
        );
        assert_eq!(
            typed(oid::TIMESTAMPTZ, "2026-12-08 10:00:00.25+01"),
            json!("2026-12-08T09:00:00.250Z")
        );
        assert_eq!(typed(25, "plain text"), json!("plain text"));
        assert_eq!(typed(3802, "{\"a\": 1}"), json!("{\"a\": 1}"));
        // A value that does not parse as its type stays text rather than failing.
        assert_eq!(typed(oid::INT4, "x"), json!("x"));
        assert_eq!(typed(oid::TIMESTAMP, "infinity"), json!("infinity"));
    }

    #[test]
    fn a_change_becomes_debeziums_envelope_and_key() {
        let types = |c: &str| match c {
            "id" => Some(oid::INT4),
            "total" => Some(oid::NUMERIC),
            _ => Some(25),
        };
        let after = row(
            [
                ("id", Cell::Text("7")),
                ("region", Cell::Text("eu")),
                ("total", Cell::Text("9.5")),
                ("notes", Cell::Unchanged),
                ("coupon", Cell::Null),
            ],
            types,
        );
        assert_eq!(key(&["id".to_string()], &after), Some(json!({"id": 7})));
        assert_eq!(key(&["missing".to_string()], &after), None);
        let origin = Origin {
            name: "sales".into(),
            db: "shop".into(),
            schema: "public".into(),
            table: "orders".into(),
            ts_ms: 1000,
            snapshot: "false",
            tx_id: Some(750),
            lsn: 23_456,
        };
        let v = value(Op::Update, None, Some(after), &origin, 2000);
        assert_eq!(v["op"], "u");
        assert_eq!(v["before"], Value::Null);
        assert_eq!(
            v["after"],
            json!({"id": 7, "region": "eu", "total": 9.5, "notes": UNAVAILABLE, "coupon": null})
        );
        assert_eq!(v["source"]["table"], "orders");
        assert_eq!(v["source"]["txId"], 750);
        assert_eq!(v["source"]["lsn"], 23_456);
        assert_eq!(v["source"]["connector"], "postgresql");
        assert_eq!(v["ts_ms"], 2000);
    }
}
