//! The enrich step: join each record with a compacted topic held in memory as a table
//! (the GlobalKTable pattern). Every replica reads the whole table topic; a background
//! thread keeps it current (see `kafka::table`).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use cel::Value;

use crate::expr::Scope;
use sluice_crds::pipeline::{EnrichStep, OnMissing};

use super::{ConfigError, StepError, compile_expr};
use crate::expr::{Expr, Needs, cel_to_json};
use crate::record::{Payload, Record};

/// A table: key bytes to the latest JSON value.
#[derive(Debug, Default)]
pub struct Table {
    rows: RwLock<HashMap<Vec<u8>, serde_json::Value>>,
}

impl Table {
    /// Sets (or with `None`, removes) a row.
    pub fn apply(&self, key: &[u8], value: Option<serde_json::Value>) {
        let mut rows = self
            .rows
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match value {
            Some(v) => {
                rows.insert(key.to_vec(), v);
            }
            None => {
                rows.remove(key);
            }
        }
    }

    /// The row for `key`.
    pub fn get(&self, key: &[u8]) -> Option<serde_json::Value> {
        self.rows
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.rows
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A compiled enrich step.
#[derive(Debug)]
pub struct Enrich {
    table_topic: String,
    key: Expr,
    into: String,
    on_missing: OnMissing,
    table: Option<Arc<Table>>,
}

impl Enrich {
    /// Compiles the key expression; the table is attached before the pipeline starts.
    pub fn compile(step: &str, spec: &EnrichStep) -> Result<Self, ConfigError> {
        Ok(Self {
            table_topic: spec.table.clone(),
            key: compile_expr(step, &spec.key)?,
            into: spec.into.clone(),
            on_missing: spec.on_missing,
            table: None,
        })
    }

    /// The table topic.
    pub fn table_topic(&self) -> &str {
        &self.table_topic
    }

    /// Attaches the loaded table.
    pub fn attach(&mut self, table: Arc<Table>) {
        self.table = Some(table);
    }

    /// What the key expression reads.
    pub fn needs(&self) -> Needs {
        self.key.needs().clone()
    }

    /// Puts the matching row into `into`, or applies `onMissing`.
    pub fn apply(&self, record: &mut Record, scope: &Scope<'_>) -> Result<(), StepError> {
        let key = match self.key.eval(scope)? {
            Value::String(s) => s.as_bytes().to_vec(),
            Value::Bytes(b) => b.to_vec(),
            other => cel_to_json(&other)
                .map_err(|e| StepError::Shape(format!("enrich key: {e}")))?
                .to_string()
                .into_bytes(),
        };
        let table = self
            .table
            .as_ref()
            .ok_or_else(|| StepError::Shape(format!("table {} is not loaded", self.table_topic)))?;
        let row = table.get(&key);
        match (&mut record.value, row) {
            (Payload::JsonObject(obj), Some(row)) => obj.insert(&self.into, row),
            (Payload::Json(serde_json::Value::Object(obj)), Some(row)) => {
                obj.insert(self.into.clone(), row);
            }
            (Payload::JsonObject(_) | Payload::Json(serde_json::Value::Object(_)), None) => {
                self.missing(&key)?
            }
            _ => return Err(StepError::Shape("enrich needs a JSON object".to_string())),
        }
        Ok(())
    }

    /// A key with no row: dead-lettered or passed on, as the spec says.
    fn missing(&self, key: &[u8]) -> Result<(), StepError> {
        if self.on_missing == OnMissing::DeadLetter {
            return Err(StepError::Shape(format!(
                "no row in table {} for key {}",
                self.table_topic,
                String::from_utf8_lossy(key)
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::{root_context, scope};

    fn enrich(yaml: &str) -> Enrich {
        let mut e = Enrich::compile("e", &serde_saphyr::from_str(yaml).unwrap()).unwrap();
        let t = Arc::new(Table::default());
        t.apply(b"c1", Some(serde_json::json!({"name": "Ada"})));
        t.apply(b"c2", Some(serde_json::json!({"name": "Bob"})));
        t.apply(b"c2", None);
        e.attach(t);
        e
    }

    fn run(e: &Enrich, v: serde_json::Value) -> Result<Record, StepError> {
        let root = root_context();
        let r = Record::new("in", 0, 0, 0, None, Payload::Json(v));
        let needs = e.needs();
        let s = scope(&root, &r, &needs).unwrap();
        let mut out = r.clone();
        e.apply(&mut out, &s).map(|()| out)
    }

    #[test]
    fn joins_the_matching_row() {
        let e = enrich("table: customers\nkey: value.customer\ninto: customer\n");
        let r = run(&e, serde_json::json!({"customer": "c1"})).unwrap();
        assert_eq!(
            r.value,
            Payload::Json(serde_json::json!({"customer": {"name": "Ada"}}))
        );
    }

    #[test]
    fn missing_rows_are_kept_or_dead_lettered() {
        let keep = enrich("table: customers\nkey: value.customer\ninto: customer\n");
        let r = run(&keep, serde_json::json!({"customer": "c2"})).unwrap();
        assert_eq!(
            r.value,
            Payload::Json(serde_json::json!({"customer": "c2"}))
        );
        let strict =
            enrich("table: customers\nkey: value.customer\ninto: c\nonMissing: deadLetter\n");
        let err = run(&strict, serde_json::json!({"customer": "c9"})).unwrap_err();
        assert!(
            err.to_string()
                .contains("no row in table customers for key c9"),
            "{err}"
        );
    }
}
