//! The events one Pipeline reconcile raises, worked out from what it found and did (a
//! pure function), and raised at its end.

use sluice_crds::PipelineStatus;
use sluice_crds::common::{READY, is_true};
use sluice_crds::pipeline::ScaleDecision;

use super::status::Observed;

/// An event about a Pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineEvent {
    /// A warning rather than a normal event.
    pub warning: bool,
    /// Why, in one word.
    pub reason: &'static str,
    /// What was done; events with the same reason and action fold into one series.
    pub action: String,
    /// For a person.
    pub note: String,
}

impl PipelineEvent {
    fn new(warning: bool, reason: &'static str, note: String) -> Self {
        PipelineEvent {
            warning,
            reason,
            action: reason.to_string(),
            note,
        }
    }
}

/// What one reconcile did with the children.
#[derive(Debug, Clone, PartialEq)]
pub enum Deployed {
    /// Nothing was deployed: the spec or its inputs are not runnable.
    Refused,
    /// The children were applied with this many replicas (what is rendered changed).
    Written(i32),
    /// Nothing written, or the same applied again at a resync.
    Unchanged,
    /// Another object holds a child's name; nothing was written.
    Conflict(String),
}

/// The event of a rescale.
pub fn scaled(d: &ScaleDecision) -> PipelineEvent {
    let reason = if d.to > d.from {
        "ScaledUp"
    } else {
        "ScaledDown"
    };
    PipelineEvent {
        warning: false,
        reason,
        // Each rescale names itself, so a series of them is not folded into one.
        action: format!("Scale{}To{}", d.from, d.to),
        note: format!("{} -> {} replicas: {}", d.from, d.to, d.reason),
    }
}

/// The events for a reconcile of a Pipeline at `generation` with processor Deployment
/// `deployment`, from the status it had, what it observed, the scaling decision it made
/// and what it did with the children.
pub fn events(
    generation: Option<i64>,
    deployment: &str,
    previous: &PipelineStatus,
    observed: &Observed,
    decision: Option<&ScaleDecision>,
    deployed: &Deployed,
) -> Vec<PipelineEvent> {
    let mut out: Vec<PipelineEvent> = decision.map(scaled).into_iter().collect();
    match deployed {
        // Once per conflict, not every tick: status already says it otherwise.
        Deployed::Conflict(message)
            if previous.conditions.iter().all(|c| c.message != *message) =>
        {
            out.push(PipelineEvent::new(
                true,
                "ResourceConflict",
                message.clone(),
            ));
        }
        Deployed::Written(replicas) => out.push(PipelineEvent::new(
            false,
            "Deployed",
            format!("processor Deployment {deployment} applied with {replicas} replica(s)"),
        )),
        Deployed::Refused
            if is_true(&previous.conditions, READY)
                || previous.observed_generation != generation =>
        {
            let why = observed
                .spec_errors
                .first()
                .cloned()
                .or_else(|| observed.kafka_error.clone())
                .unwrap_or_else(|| {
                    format!(
                        "input topic(s) missing: {}",
                        observed.missing_inputs.join(", ")
                    )
                });
            out.push(PipelineEvent::new(
                true,
                "Refused",
                format!("not deployed: {why}"),
            ));
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn decision(from: i32, to: i32) -> ScaleDecision {
        ScaleDecision {
            time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
            from,
            to,
            reason: "lag 900 drains in 90s at 10/s".into(),
        }
    }

    #[test]
    fn a_rescale_and_a_deployment_each_raise_one_event() {
        let ev = events(
            Some(1),
            "p-processor",
            &PipelineStatus::default(),
            &Observed::default(),
            Some(&decision(1, 3)),
            &Deployed::Written(3),
        );
        let reasons: Vec<(&str, &str)> = ev.iter().map(|e| (e.reason, e.action.as_str())).collect();
        assert_eq!(
            reasons,
            vec![("ScaledUp", "Scale1To3"), ("Deployed", "Deployed")]
        );
        assert!(ev[1].note.contains("p-processor applied with 3 replica(s)"));
        let down = events(
            Some(1),
            "d",
            &PipelineStatus::default(),
            &Observed::default(),
            Some(&decision(3, 1)),
            &Deployed::Unchanged,
        );
        assert_eq!(down[0].reason, "ScaledDown");
    }

    #[test]
    fn a_conflict_is_told_once_and_a_refusal_when_it_starts() {
        let conflict = Deployed::Conflict("ConfigMap p-processor belongs to something else".into());
        let fresh = events(
            Some(1),
            "d",
            &PipelineStatus::default(),
            &Observed::default(),
            None,
            &conflict,
        );
        assert_eq!(fresh.len(), 1);
        assert!(fresh[0].warning);
        let told = PipelineStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "False".into(),
                reason: "ResourceConflict".into(),
                message: "ConfigMap p-processor belongs to something else".into(),
                last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
                observed_generation: Some(1),
            }],
            observed_generation: Some(1),
            ..PipelineStatus::default()
        };
        assert!(events(Some(1), "d", &told, &Observed::default(), None, &conflict).is_empty());

        let observed = Observed {
            spec_errors: vec!["step s filter (spec.steps[0].filter): invalid expression".into()],
            ..Observed::default()
        };
        let refused = events(Some(2), "d", &told, &observed, None, &Deployed::Refused);
        assert_eq!(refused.len(), 1, "a new generation that does not run");
        assert!(refused[0].note.starts_with("not deployed: step s filter"));
        assert!(
            events(Some(1), "d", &told, &observed, None, &Deployed::Refused).is_empty(),
            "the same refusal is not told again"
        );
    }
}
