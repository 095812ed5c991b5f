//! One running aggregate of a group (sum, count, min, max, avg): adding a value, taking
//! one back out (an aggregate of changes), and its value as JSON.

use serde::{Deserialize, Serialize};
use sluice_crds::pipeline::AggregateOp;

use crate::expr::Number;

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
    pub(super) fn new(op: AggregateOp) -> Self {
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

    pub(super) fn add(&mut self, x: Option<Number>) {
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

    /// Takes `x` back out (an aggregate of changes: a row that left the group). Only
    /// sum, count and avg can; min and max are refused when the step compiles.
    pub(super) fn retract(&mut self, x: Option<Number>) {
        match (self, x) {
            (Acc::Count { n }, _) => *n = n.saturating_sub(1),
            (acc @ Acc::Sum { .. }, Some(x)) => acc.add(Some(negated(x))),
            (Acc::Avg { sum, n }, Some(x)) => {
                *sum -= x.as_f64();
                *n = n.saturating_sub(1);
            }
            _ => {}
        }
    }

    /// Whether adding `x` leaves this accumulator a finite number. JSON has no infinity
    /// or NaN: such a result could be neither emitted nor written to the changelog in a
    /// form that restore reads back, so the record is refused instead.
    pub(super) fn stays_finite(&self, x: Option<Number>) -> bool {
        let Some(x) = x else { return true };
        match self {
            Acc::Count { .. } => true,
            Acc::Min { .. } | Acc::Max { .. } => x.as_f64().is_finite(),
            Acc::Sum {
                int,
                float,
                is_float,
            } => match x {
                Number::Int(i) if !*is_float => {
                    int.checked_add(i).is_some() || (*int as f64 + i as f64).is_finite()
                }
                _ => {
                    let base = if *is_float { *float } else { *int as f64 };
                    (base + x.as_f64()).is_finite()
                }
            },
            Acc::Avg { sum, .. } => (sum + x.as_f64()).is_finite(),
        }
    }

    pub(super) fn value(&self) -> serde_json::Value {
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

/// `-x`, staying an integer where it can.
pub(super) fn negated(x: Number) -> Number {
    match x {
        Number::Int(i) => i
            .checked_neg()
            .map_or(Number::Float(-(i as f64)), Number::Int),
        Number::Float(f) => Number::Float(-f),
    }
}

fn json_f64(f: f64) -> serde_json::Value {
    serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, serde_json::Value::Number)
}
