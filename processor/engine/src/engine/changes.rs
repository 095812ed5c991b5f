//! A table's change stream in Debezium's envelope, as an aggregate of changes reads it:
//! each change is the rows it takes out of the table (`before`) and puts in (`after`).

use crate::record::{Payload, Record};
use crate::steps::StepError;

/// The header that says which way a row crosses the repartition topic (`add` or
/// `retract`).
pub const CHANGE_HEADER: &str = "sluice.change";

/// The rows of a change, each with whether it is taken out (`true`) or put in: a read or
/// an insert puts `after` in, an update takes `before` out and puts `after` in, a delete
/// takes `before` out. Each row is a record of its own, with the change's key,
/// coordinates and headers.
pub fn rows(record: Record) -> Result<Vec<(bool, Record)>, StepError> {
    let envelope = match &record.value {
        Payload::Json(v) => v.clone(),
        Payload::JsonObject(o) => o
            .to_value()
            .map_err(|e| StepError::Shape(format!("a change that does not read: {e}")))?,
        _ => {
            return Err(StepError::Shape(
                "a change is a JSON object in Debezium's envelope ({before, after, op})"
                    .to_string(),
            ));
        }
    };
    let op = envelope
        .get("op")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| {
            StepError::Shape(
                "a change without op (Debezium's envelope: {before, after, op})".to_string(),
            )
        })?;
    let row = |field: &str| match envelope.get(field) {
        Some(v @ serde_json::Value::Object(_)) => Ok(v.clone()),
        _ => Err(StepError::Shape(match (op, field) {
            ("u" | "d", "before") => format!(
                "a change with op {op} without the old row (before is null): set REPLICA IDENTITY FULL on the source table so its updates and deletes can be taken out of their groups"
            ),
            _ => format!("a change with op {op} without {field}"),
        })),
    };
    let rows = match op {
        "r" | "c" => vec![(false, row("after")?)],
        "u" => vec![(true, row("before")?), (false, row("after")?)],
        "d" => vec![(true, row("before")?)],
        other => {
            return Err(StepError::Shape(format!(
                "op {other:?} is not a row change (r, c, u, d)"
            )));
        }
    };
    Ok(rows
        .into_iter()
        .map(|(retract, value)| {
            (
                retract,
                Record {
                    value: Payload::Json(value),
                    ..record.clone()
                },
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn change(value: serde_json::Value) -> Record {
        Record::new(
            "orders",
            0,
            7,
            1000,
            Some(b"{\"id\":1}".to_vec()),
            Payload::Json(value),
        )
    }

    fn sides(value: serde_json::Value) -> Vec<(bool, serde_json::Value)> {
        rows(change(value))
            .unwrap()
            .into_iter()
            .map(|(retract, r)| match r.value {
                Payload::Json(v) => (retract, v),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn each_op_takes_out_and_puts_in_its_rows() {
        let a = json!({"region": "eu", "total": 5});
        let b = json!({"region": "us", "total": 7});
        assert_eq!(
            sides(json!({"op": "r", "before": null, "after": a})),
            [(false, a.clone())]
        );
        assert_eq!(sides(json!({"op": "c", "after": a})), [(false, a.clone())]);
        assert_eq!(
            sides(json!({"op": "u", "before": a, "after": b})),
            [(true, a.clone()), (false, b.clone())]
        );
        assert_eq!(
            sides(json!({"op": "d", "before": a, "after": null})),
            [(true, a)]
        );
    }

    #[test]
    fn a_change_that_cannot_be_taken_back_says_what_to_do() {
        let err = rows(change(
            json!({"op": "u", "before": null, "after": {"total": 1}}),
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("REPLICA IDENTITY FULL"), "{err}");
        assert!(
            rows(change(json!({"op": "t"})))
                .unwrap_err()
                .to_string()
                .contains("not a row change")
        );
        assert!(
            rows(change(json!({"before": null})))
                .unwrap_err()
                .to_string()
                .contains("without op")
        );
        let text = Record::new("orders", 0, 1, 0, None, Payload::Text("x".into()));
        assert!(rows(text).is_err());
    }
}
