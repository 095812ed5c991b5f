//! The steps of a pipeline, compiled from the spec.

pub mod aggregate;
mod dedupe;
pub mod enrich;
mod map;
mod route;
mod validate;

pub use aggregate::Aggregate;
pub use dedupe::Dedupe;
pub use enrich::Enrich;
pub use map::Map;
pub use route::Route;
pub use validate::Validate;

use crate::expr::Scope;
use sluice_crds::pipeline::Step as StepSpec;

use crate::expr::{CompileError, EvalError, Expr, Needs};
use crate::record::Record;
use aggregate::RestoreError;

/// A step with keyed state that is partitioned like its input and logged to a changelog
/// topic (aggregate, dedupe).
pub trait StateStep: std::fmt::Debug + Send {
    /// The state key of a record (the repartition key too).
    fn key(&self, scope: &Scope<'_>) -> Result<String, StepError>;
    /// Applies a record to the state of `partition`; returns the records to hand on.
    fn update(
        &mut self,
        partition: i32,
        record: Record,
        scope: &Scope<'_>,
    ) -> Result<Vec<Record>, StepError>;
    /// Whether the input is a table's change stream (an aggregate with `changes`).
    fn reads_changes(&self) -> bool {
        false
    }
    /// Whether the row `scope` sees can be added to (or taken out of, `retract`) the state
    /// of `partition`, and its group key: nothing changes, so every row of a change is
    /// checked before any is applied.
    fn check_change(
        &mut self,
        partition: i32,
        scope: &Scope<'_>,
        retract: bool,
    ) -> Result<String, StepError> {
        let _ = (partition, scope, retract);
        Err(StepError::Shape(
            "this step does not read changes".to_string(),
        ))
    }
    /// Adds the row `scope` sees to the state of `partition`, or takes it back out
    /// (`retract`); `more`: another row of the same change follows for the same group
    /// (an update within it), so the group is neither deleted nor emitted yet. Only
    /// steps that read changes take them.
    fn change(
        &mut self,
        partition: i32,
        record: Record,
        scope: &Scope<'_>,
        retract: bool,
        more: bool,
    ) -> Result<Vec<Record>, StepError> {
        let _ = (partition, record, scope, retract, more);
        Err(StepError::Shape(
            "this step does not read changes".to_string(),
        ))
    }
    /// Records held back until the end of the commit interval (`emit: onCommit`), taken.
    fn take_pending(&mut self) -> Vec<Record> {
        Vec::new()
    }
    /// Changelog records (value `None`: a tombstone) for the keys changed since the last call.
    fn take_changes(&mut self) -> Vec<(i32, String, Option<Vec<u8>>)>;
    /// Applies one changelog record while restoring `partition`.
    fn restore(
        &mut self,
        partition: i32,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), RestoreError>;
    /// Forgets a partition.
    fn drop_partition(&mut self, partition: i32);
    /// Forgets everything.
    fn clear(&mut self);
    /// Keys held.
    fn group_count(&self) -> usize;
    /// Partitions with state.
    fn partitions(&self) -> Vec<i32>;
}

/// A pipeline spec this processor cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// An expression does not compile.
    #[error("step {step}: {source}")]
    Expr {
        /// Step name.
        step: String,
        /// The compile error.
        source: CompileError,
    },
    /// A feature this build does not implement.
    #[error("step {step}: {what} is not supported yet")]
    Unsupported {
        /// Step name.
        step: String,
        /// What is missing.
        what: String,
    },
    /// Anything else wrong with the spec.
    #[error("{0}")]
    Invalid(String),
}

/// Why a record failed in a step.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StepError {
    /// An expression failed.
    #[error(transparent)]
    Eval(#[from] EvalError),
    /// The record does not have the shape the step needs.
    #[error("{0}")]
    Shape(String),
}

/// What a step did with a record (which it changed in place).
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Hand the record to the next step.
    Continue,
    /// A filter dropped it.
    Filtered,
    /// Send it to this topic and stop.
    Routed(std::sync::Arc<str>),
}

/// The kind-specific part of a compiled step.
#[derive(Debug)]
pub enum Kind {
    /// Keep records for which the expression holds.
    Filter(Expr),
    /// Reshape.
    Map(Map),
    /// Branch to topics.
    Route(Route),
    /// Keyed aggregate.
    Aggregate(Box<Aggregate>),
    /// Drop repeated keys.
    Dedupe(Box<Dedupe>),
    /// Join with a table.
    Enrich(Enrich),
    /// Shape checks.
    Validate(Validate),
}

/// One compiled step.
#[derive(Debug)]
pub struct Step {
    /// Name, for metrics and dead-letter headers.
    pub name: String,
    /// What it does.
    pub kind: Kind,
    /// What its expressions read from a record.
    pub needs: Needs,
}

pub(crate) fn compile_expr(step: &str, source: &str) -> Result<Expr, ConfigError> {
    Expr::compile(source).map_err(|source| ConfigError::Expr {
        step: step.to_string(),
        source,
    })
}

impl Kind {
    /// The state of a stateful step.
    pub fn state_mut(&mut self) -> Option<&mut dyn StateStep> {
        match self {
            Kind::Aggregate(a) => Some(a.as_mut()),
            Kind::Dedupe(d) => Some(d.as_mut()),
            _ => None,
        }
    }

    /// The state of a stateful step.
    pub fn state(&self) -> Option<&dyn StateStep> {
        match self {
            Kind::Aggregate(a) => Some(a.as_ref()),
            Kind::Dedupe(d) => Some(d.as_ref()),
            _ => None,
        }
    }
}

impl Step {
    /// Compiles a step from its spec.
    pub fn compile(spec: &StepSpec) -> Result<Self, ConfigError> {
        let name = spec.name.clone();
        let unsupported = |what: &str| ConfigError::Unsupported {
            step: name.clone(),
            what: what.to_string(),
        };
        let set = [
            spec.filter.is_some(),
            spec.map.is_some(),
            spec.route.is_some(),
            spec.aggregate.is_some(),
            spec.dedupe.is_some(),
            spec.enrich.is_some(),
            spec.validate.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if set != 1 {
            return Err(ConfigError::Invalid(format!(
                "step {name}: set exactly one of filter, map, route, aggregate, dedupe, enrich, validate ({set} set)"
            )));
        }
        let kind = if let Some(f) = &spec.filter {
            Kind::Filter(compile_expr(&name, f)?)
        } else if let Some(m) = &spec.map {
            Kind::Map(Map::compile(&name, m)?)
        } else if let Some(r) = &spec.route {
            Kind::Route(Route::compile(&name, r)?)
        } else if let Some(a) = &spec.aggregate {
            Kind::Aggregate(Box::new(Aggregate::compile(&name, a)?))
        } else if let Some(v) = &spec.validate {
            Kind::Validate(Validate::new(v))
        } else if let Some(d) = &spec.dedupe {
            Kind::Dedupe(Box::new(Dedupe::compile(&name, d)?))
        } else if let Some(e) = &spec.enrich {
            Kind::Enrich(Enrich::compile(&name, e)?)
        } else {
            return Err(unsupported("this step kind"));
        };
        let needs = match &kind {
            Kind::Filter(e) => e.needs().clone(),
            Kind::Map(m) => m.needs(),
            Kind::Route(r) => r.needs(),
            Kind::Aggregate(a) => a.needs(),
            Kind::Dedupe(d) => d.needs(),
            Kind::Enrich(e) => e.needs(),
            Kind::Validate(_) => Needs::default(),
        };
        Ok(Self { name, kind, needs })
    }

    /// Runs a stateless step on a record, changing it in place, in `scope` (holding what
    /// `needs` asks for). On an error the record is left part-way: it is dropped (the
    /// dead-letter topic gets the record as it was read).
    /// Aggregates are run by the pipeline, which owns their state.
    pub fn apply(&self, record: &mut Record, scope: &Scope<'_>) -> Result<Outcome, StepError> {
        match &self.kind {
            Kind::Filter(e) => Ok(if e.eval_bool(scope)? {
                Outcome::Continue
            } else {
                Outcome::Filtered
            }),
            Kind::Map(m) => m.apply(record, scope).map(|()| Outcome::Continue),
            Kind::Route(r) => r.apply(scope),
            Kind::Validate(v) => v.check(record).map(|()| Outcome::Continue),
            Kind::Enrich(e) => e.apply(record, scope).map(|()| Outcome::Continue),
            Kind::Aggregate(_) | Kind::Dedupe(_) => Err(StepError::Shape(
                "a stateful step applied as a stateless one".to_string(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::{root_context, scope};
    use crate::record::Payload;

    fn spec(yaml: &str) -> StepSpec {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn run(step: &Step, value: serde_json::Value) -> Result<Outcome, StepError> {
        let root = root_context();
        let r = Record::new("in", 0, 0, 0, None, Payload::Json(value));
        let s = scope(&root, &r, &step.needs).unwrap();
        step.apply(&mut r.clone(), &s)
    }

    #[test]
    fn filter_keeps_and_drops() {
        let step = Step::compile(&spec("name: f\nfilter: value.total > 10.0\n")).unwrap();
        assert!(matches!(
            run(&step, serde_json::json!({"total": 12.0})),
            Ok(Outcome::Continue)
        ));
        assert!(matches!(
            run(&step, serde_json::json!({"total": 2.0})),
            Ok(Outcome::Filtered)
        ));
        assert!(run(&step, serde_json::json!({"other": 2.0})).is_err());
        assert!(run(&step, serde_json::json!({"total": "x"})).is_err());
    }

    #[test]
    fn filter_must_return_bool() {
        let step = Step::compile(&spec("name: f\nfilter: value.total\n")).unwrap();
        let err = run(&step, serde_json::json!({"total": 12.0})).unwrap_err();
        assert!(err.to_string().contains("expected bool"), "{err}");
    }

    #[test]
    fn unsupported_steps_are_refused_at_startup() {
        let err = Step::compile(&spec(
            "name: w\naggregate: {groupBy: {a: value.a}, aggregations: [{name: n, op: count}], window: {session: {gap: 1m}}}\n",
        ))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "step w: a session window is not supported yet"
        );
    }

    #[test]
    fn bad_expressions_are_refused_at_startup() {
        let err = Step::compile(&spec("name: f\nfilter: 'value.total >'\n")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("step f: invalid CEL expression"),
            "{err}"
        );
    }

    #[test]
    fn a_step_with_two_kinds_is_refused() {
        let err = Step::compile(&spec("name: f\nfilter: 'true'\nvalidate: {}\n")).unwrap_err();
        assert!(err.to_string().contains("exactly one"), "{err}");
    }
}
