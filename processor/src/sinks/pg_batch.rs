//! How the PostgreSQL sink turns a batch of records into statements: each record's
//! writes (a row, or a key to delete), one statement per run of records with the same
//! fields, and the last write of each key in upsert mode.
//!
//! A row is sent as the record's own JSON text: the value is checked once (JSON, an
//! object, with the key's fields) and its top-level field names noted, but it is not
//! decoded into a tree and written out again. PostgreSQL's `json_populate_recordset`
//! reads the batch's array of objects and gives each field its column's type, so
//! numbers arrive as they were written (no round trip through `f64`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use sluice_crds::plugins::{PostgresSink as PostgresSpec, PostgresWriteMode};

use crate::runtime::sink::SourceRecord;

/// A record's row: its JSON object text and its top-level field names (sorted).
#[derive(Debug, Clone, PartialEq)]
pub struct Row<'a> {
    text: Cow<'a, str>,
    fields: Vec<Cow<'a, str>>,
    /// The values of `postgres.key`'s columns, canonical JSON (upsert mode; else empty).
    key: String,
}

impl Row<'_> {
    fn has(&self, field: &str) -> bool {
        self.fields.binary_search_by(|f| (**f).cmp(field)).is_ok()
    }
}

/// One write of record `index`: a row to insert or upsert, or a key to delete.
#[derive(Debug, Clone, PartialEq)]
pub enum Op<'a> {
    /// Insert or upsert the row.
    Row(usize, Row<'a>),
    /// Delete the row with these key columns.
    Delete(usize, Row<'a>),
}

impl<'a> Op<'a> {
    /// The record's index in its batch.
    pub fn index(&self) -> usize {
        match self {
            Op::Row(i, _) | Op::Delete(i, _) => *i,
        }
    }

    fn row(&self) -> &Row<'a> {
        match self {
            Op::Row(_, r) | Op::Delete(_, r) => r,
        }
    }
}

/// A field name, borrowed from the record unless it holds escapes.
struct Name<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl<'de> Visitor<'de> for NameVisitor {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(NameVisitor)
    }
}

/// A JSON object's top-level fields, each value left as its text.
struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((Name(name), value)) =
                    map.next_entry::<Name<'de>, &'de RawValue>()?
                {
                    fields.push((name, value));
                }
                Ok(Fields(fields))
            }
        }
        d.deserialize_map(FieldsVisitor)
    }
}

/// The canonical text of the key columns' values, for telling keys apart: `1.0` and `1`,
/// or `"a"` and `"\u0061"`, name the same row.
fn identity<'v>(values: impl Iterator<Item = Option<&'v RawValue>>) -> String {
    let canonical: Vec<serde_json::Value> = values
        .map(|v| {
            v.and_then(|raw| serde_json::from_str(raw.get()).ok())
                .unwrap_or(serde_json::Value::Null)
        })
        .collect();
    serde_json::to_string(&canonical).unwrap_or_default()
}

/// The record's write under `spec`, or why it is refused; `None` for a tombstone when
/// deletes are off.
pub fn op<'a>(
    index: usize,
    record: &'a SourceRecord,
    spec: &PostgresSpec,
) -> Result<Option<Op<'a>>, String> {
    let Some(value) = &record.value else {
        if !spec.deletes {
            return Ok(None);
        }
        return key_of(record, &spec.key).map(|k| Some(Op::Delete(index, k)));
    };
    let Fields(mut fields) = serde_json::from_slice::<Fields>(value).map_err(|e| {
        if e.classify() == serde_json::error::Category::Data {
            "the value is not a JSON object".to_string()
        } else {
            format!("the value is not JSON: {e}")
        }
    })?;
    // Checked just above: the value is valid JSON, so UTF-8.
    let text = std::str::from_utf8(value).map_err(|e| format!("the value is not JSON: {e}"))?;
    // The last of a repeated field wins, as in PostgreSQL's json functions.
    fields.reverse();
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    fields.dedup_by(|later, kept| later.0 == kept.0);
    let upsert = spec.mode == PostgresWriteMode::Upsert;
    let key = if upsert {
        if let Some(missing) = spec
            .key
            .iter()
            .find(|k| fields.binary_search_by(|f| (*f.0).cmp(k.as_str())).is_err())
        {
            return Err(format!(
                "the record has no {missing} field, a column of postgres.key"
            ));
        }
        identity(spec.key.iter().map(|k| {
            fields
                .binary_search_by(|f| (*f.0).cmp(k.as_str()))
                .ok()
                .map(|i| fields[i].1)
        }))
    } else {
        String::new()
    };
    Ok(Some(Op::Row(
        index,
        Row {
            text: Cow::Borrowed(text),
            fields: fields.into_iter().map(|(name, _)| name).collect(),
            key,
        },
    )))
}

/// The key columns of a tombstone, from its key: a JSON object with them, or a plain
/// value when the key is one column.
pub fn key_of<'a>(record: &SourceRecord, key: &[String]) -> Result<Row<'a>, String> {
    let Some(bytes) = &record.key else {
        return Err("a tombstone without a key: nothing says which row to delete".to_string());
    };
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .or_else(|_| String::from_utf8(bytes.clone()).map(serde_json::Value::String))
        .map_err(|_| "the key of a tombstone is neither JSON nor text".to_string())?;
    let columns = match (value, key) {
        (serde_json::Value::Object(fields), _) => {
            if let Some(missing) = key.iter().find(|k| !fields.contains_key(*k)) {
                return Err(format!("the tombstone's key has no {missing} field"));
            }
            fields
        }
        (scalar, [one]) => [(one.clone(), scalar)].into_iter().collect(),
        _ => {
            return Err(
                "the key of a tombstone must be a JSON object of the postgres.key columns"
                    .to_string(),
            );
        }
    };
    let values: Vec<&serde_json::Value> = key.iter().filter_map(|k| columns.get(k)).collect();
    Ok(Row {
        text: Cow::Owned(serde_json::to_string(&columns).unwrap_or_default()),
        fields: columns.keys().map(|k| Cow::Owned(k.clone())).collect(),
        key: serde_json::to_string(&values).unwrap_or_default(),
    })
}

/// How many ops from the start of `ops` go in one statement: the same kind, and for
/// rows the same fields.
pub fn run_length(ops: &[Op<'_>]) -> usize {
    match &ops[0] {
        Op::Row(_, first) => {
            1 + ops[1..]
                .iter()
                .take_while(|o| matches!(o, Op::Row(_, r) if r.fields == first.fields))
                .count()
        }
        Op::Delete(..) => {
            1 + ops[1..]
                .iter()
                .take_while(|o| matches!(o, Op::Delete(..)))
                .count()
        }
    }
}

/// `name` as an SQL identifier.
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The statement for a run of ops on `table` (its name and columns) and its one
/// parameter (the rows as a JSON array); no statement when no field is a column.
pub fn statement(
    table: &str,
    table_columns: &[String],
    spec: &PostgresSpec,
    run: &[Op<'_>],
) -> (Option<String>, String) {
    let mut json =
        String::with_capacity(2 + run.iter().map(|o| o.row().text.len() + 1).sum::<usize>());
    json.push('[');
    for (i, op) in run.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push_str(&op.row().text);
    }
    json.push(']');
    let source = format!("json_populate_recordset(NULL::{table}, $1::text::json)");
    if let Some(Op::Delete(..)) = run.first() {
        let matches: Vec<String> = spec
            .key
            .iter()
            .map(|k| format!("t.{0} = d.{0}", quote(k)))
            .collect();
        let sql = format!(
            "DELETE FROM {table} t USING {source} d WHERE {}",
            matches.join(" AND ")
        );
        return (Some(sql), json);
    }
    let columns: Vec<&String> = table_columns
        .iter()
        .filter(|c| run.first().is_some_and(|o| o.row().has(c)))
        .collect();
    if columns.is_empty() {
        return (None, json);
    }
    let list = columns
        .iter()
        .map(|c| quote(c))
        .collect::<Vec<_>>()
        .join(", ");
    let mut sql = format!("INSERT INTO {table} ({list}) SELECT {list} FROM {source}");
    if spec.mode == PostgresWriteMode::Upsert {
        let keys = spec
            .key
            .iter()
            .map(|k| quote(k))
            .collect::<Vec<_>>()
            .join(", ");
        let updates: Vec<String> = columns
            .iter()
            .filter(|c| !spec.key.contains(c))
            .map(|c| format!("{0} = EXCLUDED.{0}", quote(c)))
            .collect();
        if updates.is_empty() {
            sql.push_str(&format!(" ON CONFLICT ({keys}) DO NOTHING"));
        } else {
            sql.push_str(&format!(
                " ON CONFLICT ({keys}) DO UPDATE SET {}",
                updates.join(", ")
            ));
        }
    }
    (Some(sql), json)
}

/// Upserts and deletes of one batch, one per key (the last wins, as if applied in
/// order), so one statement never touches a row twice.
pub fn last_per_key(ops: Vec<Op<'_>>) -> Vec<Op<'_>> {
    let mut last: HashMap<&str, usize> = HashMap::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        last.insert(op.row().key.as_str(), i);
    }
    let keep: Vec<bool> = ops
        .iter()
        .enumerate()
        .map(|(i, op)| last.get(op.row().key.as_str()) == Some(&i))
        .collect();
    ops.into_iter()
        .zip(keep)
        .filter_map(|(op, keep)| keep.then_some(op))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(mode: PostgresWriteMode, key: &[&str]) -> PostgresSpec {
        PostgresSpec {
            table: "t".into(),
            mode,
            key: key.iter().map(|k| k.to_string()).collect(),
            deletes: true,
            batch: None,
        }
    }

    fn record(value: Option<&str>, key: Option<&str>) -> SourceRecord {
        SourceRecord {
            origin: crate::runtime::ledger::Origin::internal(),
            key: key.map(|k| k.as_bytes().to_vec()),
            value: value.map(|v| v.as_bytes().to_vec()),
            headers: vec![],
            timestamp: None,
            destination: None,
            position: None,
        }
    }

    fn ops<'a>(records: &'a [SourceRecord], spec: &PostgresSpec) -> Vec<Op<'a>> {
        records
            .iter()
            .enumerate()
            .map(|(i, r)| op(i, r, spec).unwrap().unwrap())
            .collect()
    }

    #[test]
    fn a_run_of_rows_becomes_one_upsert_of_the_fields_that_are_columns() {
        let spec = spec(PostgresWriteMode::Upsert, &["region"]);
        let records = [
            record(
                Some(r#"{"region": "eu", "total": 1.50, "extra": true}"#),
                None,
            ),
            record(
                Some(r#"{"extra": false, "total": 2, "region": "us"}"#),
                None,
            ),
        ];
        let ops = ops(&records, &spec);
        assert_eq!(run_length(&ops), 2, "the same fields in another order");
        let columns = [
            "region".to_string(),
            "total".to_string(),
            "seen".to_string(),
        ];
        let (sql, json) = statement("public.totals", &columns, &spec, &ops);
        assert_eq!(
            sql.unwrap(),
            "INSERT INTO public.totals (\"region\", \"total\") SELECT \"region\", \"total\" FROM \
             json_populate_recordset(NULL::public.totals, $1::text::json) \
             ON CONFLICT (\"region\") DO UPDATE SET \"total\" = EXCLUDED.\"total\""
        );
        // The records' own text: 1.50 stays 1.50.
        assert_eq!(
            json,
            r#"[{"region": "eu", "total": 1.50, "extra": true},{"extra": false, "total": 2, "region": "us"}]"#
        );
        let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(rows[1]["region"], "us");
    }

    #[test]
    fn rows_with_other_fields_start_a_new_run() {
        let spec = spec(PostgresWriteMode::Insert, &[]);
        let records = [
            record(Some(r#"{"a": 1, "b": 2}"#), None),
            record(Some(r#"{"a": 1}"#), None),
        ];
        assert_eq!(run_length(&ops(&records, &spec)), 1);
    }

    #[test]
    fn the_last_write_of_a_key_wins_within_a_batch() {
        let spec = spec(PostgresWriteMode::Upsert, &["region"]);
        let records = [
            record(Some(r#"{"region": "eu", "total": 1}"#), None),
            record(Some(r#"{"region": "us", "total": 2}"#), None),
            record(None, Some(r#"{"region": "eu"}"#)),
            // The same key written another way.
            record(Some(r#"{"region": "\u0075s", "total": 3}"#), None),
        ];
        let kept: Vec<usize> = last_per_key(ops(&records, &spec))
            .iter()
            .map(Op::index)
            .collect();
        assert_eq!(kept, vec![2, 3]);
    }

    #[test]
    fn values_that_are_not_json_objects_or_lack_the_key_are_refused() {
        let spec = spec(PostgresWriteMode::Upsert, &["region"]);
        let refused = |v: &str| op(0, &record(Some(v), None), &spec).unwrap_err();
        assert_eq!(refused("[1, 2]"), "the value is not a JSON object");
        assert_eq!(refused("42"), "the value is not a JSON object");
        assert!(refused("{\"region\": ").starts_with("the value is not JSON"));
        assert!(refused("{\"region\": 1} x").starts_with("the value is not JSON"));
        assert!(refused("{\"total\": 1}").contains("no region field"));
        assert!(op(0, &record(Some("{\"region\": 1} "), None), &spec).is_ok());
    }

    #[test]
    fn field_names_with_escapes_and_repeated_fields_are_read_as_json_reads_them() {
        let spec = spec(PostgresWriteMode::Upsert, &["re\"gion"]);
        let r = record(Some(r#"{"re\"gion": "eu", "total": 1, "total": 2}"#), None);
        let Some(Op::Row(_, row)) = op(0, &r, &spec).unwrap() else {
            panic!("a row");
        };
        assert_eq!(row.fields, vec!["re\"gion", "total"]);
        assert_eq!(row.key, r#"["eu"]"#);
    }

    #[test]
    fn a_tombstone_key_names_the_row_as_an_object_or_a_plain_value() {
        let key = ["region".to_string()];
        let row = key_of(&record(None, Some(r#"{"region": "eu"}"#)), &key).unwrap();
        assert_eq!(row.text, r#"{"region":"eu"}"#);
        assert_eq!(row.key, r#"["eu"]"#);
        let plain = key_of(&record(None, Some("eu")), &key).unwrap();
        assert_eq!(plain.text, r#"{"region":"eu"}"#);
        assert!(
            key_of(&record(None, Some(r#"{"other": 1}"#)), &key)
                .unwrap_err()
                .contains("no region")
        );
        assert!(key_of(&record(None, None), &key).is_err());
    }

    #[test]
    fn a_run_of_deletes_becomes_one_delete_by_key() {
        let spec = spec(PostgresWriteMode::Upsert, &["region"]);
        let records = [record(None, Some("eu")), record(None, Some("us"))];
        let ops = ops(&records, &spec);
        assert_eq!(run_length(&ops), 2);
        let (sql, json) = statement("t", &["region".to_string()], &spec, &ops);
        assert_eq!(
            sql.unwrap(),
            "DELETE FROM t t USING json_populate_recordset(NULL::t, $1::text::json) d WHERE t.\"region\" = d.\"region\""
        );
        assert_eq!(json, r#"[{"region":"eu"},{"region":"us"}]"#);
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
    }
}
