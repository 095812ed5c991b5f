//! The dedupe step: drop a record when another with the same key passed within `within`
//! (by record timestamp). State per partition: key -> timestamp of the record that
//! passed; entries older than `within` (by stream time) are forgotten, with a changelog
//! tombstone.

use cel::Value;

use crate::expr::Scope;
use sluice_crds::pipeline::DedupeStep;

use super::aggregate::RestoreError;
use super::{ConfigError, StateStep, StepError, compile_expr};
use crate::expr::{Expr, Needs, cel_to_json};
use crate::record::Record;
use crate::state::KeyedState;

/// A compiled dedupe step with its state.
#[derive(Debug)]
pub struct Dedupe {
    key: Expr,
    within: i64,
    /// Per key, the timestamp of the record that passed; it expires `within` later.
    state: KeyedState<i64>,
}

impl Dedupe {
    /// Compiles the key expression and parses `within`.
    pub fn compile(step: &str, spec: &DedupeStep) -> Result<Self, ConfigError> {
        let within = humantime::parse_duration(&spec.within)
            .ok()
            .and_then(|d| i64::try_from(d.as_millis()).ok())
            .filter(|ms| *ms > 0)
            .ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "step {step}: within {:?} is not a duration like 10m",
                    spec.within
                ))
            })?;
        Ok(Self {
            key: compile_expr(step, &spec.key)?,
            within,
            state: KeyedState::default(),
        })
    }

    /// What the key expression reads.
    pub fn needs(&self) -> Needs {
        self.key.needs().clone()
    }
}

impl StateStep for Dedupe {
    fn key(&self, scope: &Scope<'_>) -> Result<String, StepError> {
        Ok(match self.key.eval(scope)? {
            Value::String(s) => std::sync::Arc::unwrap_or_clone(s),
            other => cel_to_json(&other)
                .map_err(|e| StepError::Shape(format!("dedupe key: {e}")))?
                .to_string(),
        })
    }

    fn update(
        &mut self,
        partition: i32,
        record: Record,
        scope: &Scope<'_>,
    ) -> Result<Vec<Record>, StepError> {
        let key = self.key(scope)?;
        let ts = record.timestamp;
        let within = self.within;
        let part = self.state.partition(partition);
        part.advance(ts);
        let duplicate = part
            .get(&key)
            .is_some_and(|last| ts >= *last && ts - *last < within);
        if !duplicate {
            part.insert(key, ts, Some(ts.saturating_add(within)));
        }
        part.expire(|last| Some(last.saturating_add(within)));
        Ok(if duplicate { Vec::new() } else { vec![record] })
    }

    fn take_changes(&mut self) -> Vec<(i32, String, Option<Vec<u8>>)> {
        self.state
            .take_changes(|ts| Some(ts.to_string().into_bytes()))
    }

    fn restore(
        &mut self,
        partition: i32,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), RestoreError> {
        let key = String::from_utf8_lossy(key).into_owned();
        let Some(value) = value else {
            self.state.restore(partition, key, None);
            return Ok(());
        };
        let ts: i64 = std::str::from_utf8(value)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| RestoreError {
                key: key.clone(),
                message: "not a timestamp".to_string(),
            })?;
        let deadline = ts.saturating_add(self.within);
        self.state
            .restore(partition, key, Some((ts, ts, Some(deadline))));
        Ok(())
    }

    fn drop_partition(&mut self, partition: i32) {
        self.state.drop_partition(partition);
    }

    fn clear(&mut self) {
        self.state.clear();
    }

    fn group_count(&self) -> usize {
        self.state.len()
    }

    fn partitions(&self) -> Vec<i32> {
        self.state.partitions()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::{root_context, scope};
    use crate::record::Payload;

    fn dedupe() -> Dedupe {
        Dedupe::compile(
            "d",
            &serde_saphyr::from_str("key: value.id\nwithin: 10s\n").unwrap(),
        )
        .unwrap()
    }

    fn feed(d: &mut Dedupe, ts: i64, id: &str) -> bool {
        let root = root_context();
        let r = Record::new(
            "in",
            0,
            0,
            ts,
            None,
            Payload::Json(serde_json::json!({"id": id})),
        );
        let needs = d.needs();
        let s = scope(&root, &r, &needs).unwrap();
        !d.update(0, r.clone(), &s).unwrap().is_empty()
    }

    #[test]
    fn drops_repeats_within_the_window_only() {
        let mut d = dedupe();
        assert!(feed(&mut d, 1_000, "a"));
        assert!(!feed(&mut d, 5_000, "a"));
        assert!(feed(&mut d, 5_000, "b"));
        assert!(feed(&mut d, 11_000, "a"), "10 s after the first a");
        assert!(!feed(&mut d, 20_000, "a"));
    }

    #[test]
    fn forgets_old_keys_and_survives_a_restart() {
        let mut d = dedupe();
        assert!(feed(&mut d, 1_000, "a"));
        assert!(feed(&mut d, 2_000, "b"));
        assert!(feed(&mut d, 11_500, "c"));
        assert_eq!(d.group_count(), 2, "a expired");
        let mut e = dedupe();
        for (p, k, v) in d.take_changes() {
            e.restore(p, k.as_bytes(), v.as_deref()).unwrap();
        }
        assert_eq!(e.group_count(), 2);
        assert!(!feed(&mut e, 12_000, "c"));
        assert!(feed(&mut e, 12_000, "a"));
    }

    #[test]
    fn a_failing_key_is_an_error() {
        let mut d = dedupe();
        let root = root_context();
        let r = Record::new(
            "in",
            0,
            0,
            0,
            None,
            Payload::Json(serde_json::json!({"x": 1})),
        );
        let needs = d.needs();
        let s = scope(&root, &r, &needs).unwrap();
        assert!(d.update(0, r.clone(), &s).is_err());
        assert!(
            Dedupe::compile(
                "d",
                &serde_saphyr::from_str("key: key\nwithin: soon\n").unwrap()
            )
            .is_err()
        );
    }
}
