//! The keyed aggregate step (unwindowed, emitted on every update) and its state, kept
//! per state partition and logged to a changelog topic.
//!
//! Changelog records: key = the group key (a JSON array of the `groupBy` values),
//! value = [`GroupState`] as JSON. The latest record per key is the group's state, so
//! the topic can be compacted.

use std::collections::{HashMap, HashSet};

use cel::Context;
use serde::{Deserialize, Serialize};
use sluice_crds::pipeline::{AggregateOp, AggregateStep};

use super::{ConfigError, StepError, compile_expr};
use crate::expr::{Expr, Needs, Number, cel_to_json};
use crate::record::{Payload, Record};

/// One running aggregate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Acc {
    /// Sum; stays an integer until a float is added or it would overflow.
    Sum {
        /// Integer part.
        int: i64,
        /// Float part.
        float: f64,
        /// Whether the sum is a float.
        is_float: bool,
    },
    /// Record count.
    Count {
        /// How many.
        n: i64,
    },
    /// Smallest value.
    Min {
        /// So far.
        v: Option<Number>,
    },
    /// Largest value.
    Max {
        /// So far.
        v: Option<Number>,
    },
    /// Mean.
    Avg {
        /// Sum of values.
        sum: f64,
        /// Number of values.
        n: i64,
    },
}

impl Acc {
    fn new(op: AggregateOp) -> Self {
        match op {
            AggregateOp::Sum => Acc::Sum {
                int: 0,
                float: 0.0,
                is_float: false,
            },
            AggregateOp::Count => Acc::Count { n: 0 },
            AggregateOp::Min => Acc::Min { v: None },
            AggregateOp::Max => Acc::Max { v: None },
            AggregateOp::Avg => Acc::Avg { sum: 0.0, n: 0 },
        }
    }

    fn add(&mut self, x: Option<Number>) {
        match (self, x) {
            (Acc::Count { n }, _) => *n = n.saturating_add(1),
            (
                Acc::Sum {
                    int,
                    float,
                    is_float,
                },
                Some(x),
            ) => match x {
                Number::Int(i) if !*is_float => match int.checked_add(i) {
                    Some(s) => *int = s,
                    None => {
                        *is_float = true;
                        *float = *int as f64 + i as f64;
                    }
                },
                _ => {
                    if !*is_float {
                        *is_float = true;
                        *float = *int as f64;
                    }
                    *float += x.as_f64();
                }
            },
            (Acc::Min { v }, Some(x)) => {
                if v.is_none_or(|cur| x.as_f64() < cur.as_f64()) {
                    *v = Some(x);
                }
            }
            (Acc::Max { v }, Some(x)) => {
                if v.is_none_or(|cur| x.as_f64() > cur.as_f64()) {
                    *v = Some(x);
                }
            }
            (Acc::Avg { sum, n }, Some(x)) => {
                *sum += x.as_f64();
                *n = n.saturating_add(1);
            }
            (_, None) => {}
        }
    }

    fn value(&self) -> serde_json::Value {
        match self {
            Acc::Sum {
                int,
                float,
                is_float,
            } => {
                if *is_float {
                    json_f64(*float)
                } else {
                    serde_json::Value::from(*int)
                }
            }
            Acc::Count { n } => serde_json::Value::from(*n),
            Acc::Min { v } | Acc::Max { v } => match v {
                Some(Number::Int(i)) => serde_json::Value::from(*i),
                Some(Number::Float(f)) => json_f64(*f),
                None => serde_json::Value::Null,
            },
            Acc::Avg { sum, n } => {
                if *n == 0 {
                    serde_json::Value::Null
                } else {
                    json_f64(sum / *n as f64)
                }
            }
        }
    }
}

fn json_f64(f: f64) -> serde_json::Value {
    serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, serde_json::Value::Number)
}

/// The state of one group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupState {
    /// The `groupBy` values, in field-name order.
    pub group: Vec<serde_json::Value>,
    /// One accumulator per aggregation, in spec order.
    pub accs: Vec<Acc>,
}

/// A changelog record that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("changelog record for group {key} is not valid state: {message}")]
pub struct RestoreError {
    /// The group key.
    pub key: String,
    /// Why.
    pub message: String,
}

#[derive(Debug, Default)]
struct PartitionState {
    groups: HashMap<String, GroupState>,
    dirty: HashSet<String>,
}

/// A compiled aggregate step with its state.
#[derive(Debug)]
pub struct Aggregate {
    group_by: Vec<(String, Expr)>,
    aggs: Vec<AggSpec>,
    state: HashMap<i32, PartitionState>,
}

impl Aggregate {
    /// Compiles the step; windows are refused until they are implemented.
    pub fn compile(step: &str, spec: &AggregateStep) -> Result<Self, ConfigError> {
        if spec.window.is_some() {
            return Err(ConfigError::Unsupported {
                step: step.to_string(),
                what: "a windowed aggregate".to_string(),
            });
        }
        if spec.emit == sluice_crds::pipeline::Emit::OnWindowClose {
            return Err(ConfigError::Invalid(format!(
                "step {step}: emit onWindowClose needs a window"
            )));
        }
        if spec.group_by.is_empty() || spec.aggregations.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "step {step}: an aggregate needs groupBy and at least one aggregation"
            )));
        }
        let group_by = spec
            .group_by
            .iter()
            .map(|(f, src)| Ok((f.clone(), compile_expr(step, src)?)))
            .collect::<Result<_, ConfigError>>()?;
        let aggs = spec
            .aggregations
            .iter()
            .map(|a| {
                let of = match (&a.of, a.op) {
                    (Some(src), _) => Some(compile_expr(step, src)?),
                    (None, AggregateOp::Count) => None,
                    (None, op) => {
                        return Err(ConfigError::Invalid(format!(
                            "step {step}: aggregation {} ({op:?}) needs `of`",
                            a.name
                        )));
                    }
                };
                Ok((a.name.clone(), a.op, of))
            })
            .collect::<Result<_, ConfigError>>()?;
        Ok(Self {
            group_by,
            aggs,
            state: HashMap::new(),
        })
    }

    /// What the expressions read.
    pub fn needs(&self) -> Needs {
        let mut needs = Needs::default();
        self.group_by
            .iter()
            .for_each(|(_, e)| needs.merge(e.needs()));
        self.aggs
            .iter()
            .filter_map(|(_, _, e)| e.as_ref())
            .for_each(|e| needs.merge(e.needs()));
        needs
    }

    /// The group key of a record (also the key of its changelog and output records).
    pub fn group_key(
        &self,
        scope: &Context,
    ) -> Result<(String, Vec<serde_json::Value>), StepError> {
        let mut values = Vec::with_capacity(self.group_by.len());
        for (field, expr) in &self.group_by {
            let v = expr.eval(scope)?;
            values.push(
                cel_to_json(&v).map_err(|e| StepError::Shape(format!("groupBy {field}: {e}")))?,
            );
        }
        let key = serde_json::to_string(&values).map_err(|e| StepError::Shape(e.to_string()))?;
        Ok((key, values))
    }

    /// Adds a record to its group in `partition` and returns the updated aggregate as a
    /// record. Every expression is evaluated before the state changes, so a failing
    /// record leaves no trace.
    pub fn update(
        &mut self,
        partition: i32,
        record: Record,
        scope: &Context,
    ) -> Result<Record, StepError> {
        let (key, group) = self.group_key(scope)?;
        let mut inputs = Vec::with_capacity(self.aggs.len());
        for (_, _, of) in &self.aggs {
            inputs.push(match of {
                Some(e) => Some(e.eval_number(scope)?),
                None => None,
            });
        }
        let part = self.state.entry(partition).or_default();
        let aggs = &self.aggs;
        let state = part
            .groups
            .entry(key.clone())
            .or_insert_with(|| GroupState {
                group,
                accs: aggs.iter().map(|(_, op, _)| Acc::new(*op)).collect(),
            });
        for (acc, x) in state.accs.iter_mut().zip(inputs) {
            acc.add(x);
        }
        let value = output_value(&self.group_by, &self.aggs, state);
        let out_key = output_key(&key, &state.group);
        part.dirty.insert(key);
        Ok(Record {
            key: Some(out_key.into_bytes()),
            value: Payload::Json(value),
            ..record
        })
    }

    /// Changelog records for the groups changed since the last call, per partition.
    pub fn take_changes(&mut self) -> Vec<(i32, String, Vec<u8>)> {
        let mut out = Vec::new();
        for (p, part) in &mut self.state {
            for key in part.dirty.drain() {
                if let Some(state) = part.groups.get(&key)
                    && let Ok(bytes) = serde_json::to_vec(state)
                {
                    out.push((*p, key, bytes));
                }
            }
        }
        out
    }

    /// Applies one changelog record while restoring `partition`.
    pub fn restore(
        &mut self,
        partition: i32,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), RestoreError> {
        let key = String::from_utf8_lossy(key).into_owned();
        let state: GroupState = serde_json::from_slice(value).map_err(|e| RestoreError {
            key: key.clone(),
            message: e.to_string(),
        })?;
        if state.accs.len() != self.aggs.len() || state.group.len() != self.group_by.len() {
            return Err(RestoreError {
                key,
                message: "the aggregations changed since it was written; use a new pipeline name to start over".to_string(),
            });
        }
        self.state
            .entry(partition)
            .or_default()
            .groups
            .insert(key, state);
        Ok(())
    }

    /// Forgets a partition (revoked, or about to be restored again).
    pub fn drop_partition(&mut self, partition: i32) {
        self.state.remove(&partition);
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.state.clear();
    }

    /// Partitions with state.
    pub fn partitions(&self) -> Vec<i32> {
        self.state.keys().copied().collect()
    }

    /// Groups held.
    pub fn group_count(&self) -> usize {
        self.state.values().map(|p| p.groups.len()).sum()
    }

    /// The current aggregate of every group, as output values (for tests and inspection).
    pub fn snapshot(&self) -> HashMap<String, serde_json::Value> {
        self.state
            .values()
            .flat_map(|p| p.groups.iter())
            .map(|(k, s)| (k.clone(), output_value(&self.group_by, &self.aggs, s)))
            .collect()
    }
}

type AggSpec = (String, AggregateOp, Option<Expr>);

fn output_value(
    group_by: &[(String, Expr)],
    aggs: &[AggSpec],
    state: &GroupState,
) -> serde_json::Value {
    let mut obj = serde_json::Map::with_capacity(group_by.len() + aggs.len());
    for ((field, _), v) in group_by.iter().zip(&state.group) {
        obj.insert(field.clone(), v.clone());
    }
    for ((name, _, _), acc) in aggs.iter().zip(&state.accs) {
        obj.insert(name.clone(), acc.value());
    }
    serde_json::Value::Object(obj)
}

/// The output key: a single string group value as is, otherwise the JSON array.
fn output_key(key: &str, group: &[serde_json::Value]) -> String {
    match group {
        [serde_json::Value::String(s)] => s.clone(),
        _ => key.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::{root_context, scope};
    use proptest::prelude::*;

    const SPEC: &str = "groupBy: {region: value.region}\naggregations:\n- {name: total, op: sum, of: value.total}\n- {name: n, op: count}\n- {name: lo, op: min, of: value.total}\n- {name: hi, op: max, of: value.total}\n- {name: mean, op: avg, of: value.total}\n";

    fn agg() -> Aggregate {
        Aggregate::compile("per-region", &serde_saphyr::from_str(SPEC).unwrap()).unwrap()
    }

    fn feed(a: &mut Aggregate, partition: i32, v: serde_json::Value) -> Result<Record, StepError> {
        let root = root_context();
        let r = Record::new("in", partition, 0, 0, None, Payload::Json(v));
        let needs = a.needs();
        let s = scope(&root, &r, &needs);
        a.update(partition, r.clone(), &s)
    }

    #[test]
    fn totals_per_region() {
        let mut a = agg();
        feed(
            &mut a,
            0,
            serde_json::json!({"region": "eu-west", "total": 10}),
        )
        .unwrap();
        feed(
            &mut a,
            0,
            serde_json::json!({"region": "us-east", "total": 1.5}),
        )
        .unwrap();
        let out = feed(
            &mut a,
            0,
            serde_json::json!({"region": "eu-west", "total": 2.5}),
        )
        .unwrap();
        assert_eq!(
            out.value,
            Payload::Json(
                serde_json::json!({"region": "eu-west", "total": 12.5, "n": 2, "lo": 2.5, "hi": 10, "mean": 6.25})
            )
        );
        assert_eq!(out.key.as_deref(), Some(&b"eu-west"[..]));
        assert_eq!(a.group_count(), 2);
    }

    #[test]
    fn integer_sums_stay_integers() {
        let mut a = agg();
        feed(&mut a, 0, serde_json::json!({"region": "x", "total": 2})).unwrap();
        let out = feed(&mut a, 0, serde_json::json!({"region": "x", "total": 3})).unwrap();
        let Payload::Json(v) = out.value else {
            panic!()
        };
        assert_eq!(v["total"], serde_json::json!(5));
    }

    #[test]
    fn a_failing_record_changes_nothing() {
        let mut a = agg();
        feed(&mut a, 0, serde_json::json!({"region": "x", "total": 2})).unwrap();
        assert!(
            feed(
                &mut a,
                0,
                serde_json::json!({"region": "x", "total": "nan"})
            )
            .is_err()
        );
        assert!(feed(&mut a, 0, serde_json::json!({"total": 1})).is_err());
        let out = feed(&mut a, 0, serde_json::json!({"region": "x", "total": 1})).unwrap();
        let Payload::Json(v) = out.value else {
            panic!()
        };
        assert_eq!(v["n"], serde_json::json!(2));
    }

    #[test]
    fn windows_are_refused_until_implemented() {
        let spec = format!("{SPEC}window: {{tumbling: 1m}}\nemit: onWindowClose\n");
        let err = Aggregate::compile("w", &serde_saphyr::from_str(&spec).unwrap()).unwrap_err();
        assert!(err.to_string().contains("not supported yet"), "{err}");
    }

    #[test]
    fn sum_without_of_is_refused() {
        let err = Aggregate::compile(
            "s",
            &serde_saphyr::from_str("groupBy: {r: value.r}\naggregations: [{name: t, op: sum}]\n")
                .unwrap(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("needs `of`"), "{err}");
    }

    #[test]
    fn corrupt_changelog_is_an_error() {
        let mut a = agg();
        assert!(a.restore(0, b"[\"x\"]", b"not json").is_err());
        assert!(
            a.restore(0, b"[\"x\"]", br#"{"group":["x"],"accs":[]}"#)
                .is_err()
        );
    }

    proptest! {
        /// Processing the input in chunks, with a fresh step restored from the compacted
        /// changelog before each chunk (a restart), ends in the same state and the same
        /// last output per group as one uninterrupted run.
        #[test]
        fn restarts_do_not_change_totals(
            input in proptest::collection::vec((0usize..4, -1000i64..1000, any::<bool>()), 1..80),
            cuts in proptest::collection::vec(0usize..80, 0..5),
        ) {
            let regions = ["eu-west", "us-east", "ap-south", "sa-east"];
            let records: Vec<serde_json::Value> = input
                .iter()
                .map(|(r, n, float)| {
                    let total = if *float { serde_json::json!(*n as f64 / 8.0) } else { serde_json::json!(n) };
                    serde_json::json!({"region": regions[*r], "total": total})
                })
                .collect();

            let mut whole = agg();
            let mut expected_last = HashMap::new();
            for r in &records {
                let out = feed(&mut whole, 0, r.clone()).unwrap();
                expected_last.insert(out.key.clone(), out.value);
            }

            let mut bounds: Vec<usize> = cuts.into_iter().map(|c| c % (records.len() + 1)).collect();
            bounds.push(0);
            bounds.push(records.len());
            bounds.sort_unstable();
            let mut changelog: HashMap<String, Vec<u8>> = HashMap::new();
            let mut last = HashMap::new();
            for w in bounds.windows(2) {
                let mut step = agg();
                for (k, v) in &changelog {
                    step.restore(0, k.as_bytes(), v).unwrap();
                }
                for r in &records[w[0]..w[1]] {
                    let out = feed(&mut step, 0, r.clone()).unwrap();
                    last.insert(out.key.clone(), out.value);
                }
                for (_, k, v) in step.take_changes() {
                    changelog.insert(k, v);
                }
            }
            let mut restored = agg();
            for (k, v) in &changelog {
                restored.restore(0, k.as_bytes(), v).unwrap();
            }
            prop_assert_eq!(restored.snapshot(), whole.snapshot());
            prop_assert_eq!(last, expected_last);
        }
    }
}
