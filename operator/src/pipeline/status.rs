//! Pure computation of a Pipeline's status and conditions from what exists.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use sluice_crds::common::{READY, condition};
use sluice_crds::pipeline::{PipelineStatus, ScaleDecision};

/// Condition: every input topic exists and the topics the pipeline needs are there.
pub const TOPICS_READY: &str = "TopicsReady";
/// Condition: at least the desired processors are ready (or the pipeline is scaled to zero).
pub const AVAILABLE: &str = "Available";
/// Condition: a rollout or rescale is under way.
pub const PROGRESSING: &str = "Progressing";
/// Condition: processors that should run are not ready.
pub const DEGRADED: &str = "Degraded";

/// What the reconcile found, in the order it checks: spec, topics, then the Deployment.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The spec's problems (invalid expressions, ...); empty when valid.
    pub spec_errors: Vec<String>,
    /// An object with a child's name belongs to something else (nothing deployed).
    pub conflict: Option<String>,
    /// Input topics missing in Kafka.
    pub missing_inputs: Vec<String>,
    /// Other topics the pipeline needs (outputs, route targets, enrich tables, the
    /// dead-letter topic) missing in Kafka: the processors wait for them.
    pub missing_others: Vec<String>,
    /// Kafka could not be asked (the error), so topics are unknown.
    pub kafka_error: Option<String>,
    /// The processor Deployment as the API server reports it, when it exists.
    pub deployment: Option<Deployment>,
    /// Replicas asked for.
    pub desired_replicas: i32,
    /// Lag figures from the autoscaler.
    pub lag: i64,
    /// Worst partition's lag.
    pub max_partition_lag: i64,
    /// Records consumed per second.
    pub records_per_second: f64,
    /// The last scaling decision.
    pub last_scale: Option<ScaleDecision>,
}

/// The status to write, given what was observed and the previous status.
pub fn compute(
    generation: Option<i64>,
    selector: String,
    observed: &Observed,
    previous: &PipelineStatus,
) -> PipelineStatus {
    let prev = &previous.conditions;
    let cond = |t: &str, ok: bool, reason: &str, msg: String| -> Condition {
        condition(t, ok, reason, msg, generation, prev)
    };
    let dep_status = observed
        .deployment
        .as_ref()
        .and_then(|d| d.status.clone())
        .unwrap_or_default();
    let dep_current = observed.deployment.as_ref().is_some_and(|d| {
        d.status.as_ref().and_then(|s| s.observed_generation) >= d.metadata.generation
    });
    let desired = observed.desired_replicas;
    let ready = dep_status.ready_replicas.unwrap_or(0);
    let updated = dep_status.updated_replicas.unwrap_or(0);
    let replicas = dep_status.replicas.unwrap_or(0);

    let topics = if let Some(err) = &observed.kafka_error {
        cond(
            TOPICS_READY,
            false,
            "KafkaUnavailable",
            format!("cannot read topic metadata from Kafka: {err}"),
        )
    } else if !observed.missing_inputs.is_empty() {
        cond(
            TOPICS_READY,
            false,
            "InputTopicMissing",
            format!(
                "input topic(s) not found in Kafka: {}",
                observed.missing_inputs.join(", ")
            ),
        )
    } else if !observed.missing_others.is_empty() {
        cond(
            TOPICS_READY,
            false,
            "TopicMissing",
            format!(
                "topic(s) the pipeline writes to or reads as a table not found in Kafka: {} \
                 (the processors wait until they exist)",
                observed.missing_others.join(", ")
            ),
        )
    } else {
        cond(
            TOPICS_READY,
            true,
            "TopicsExist",
            "every topic the pipeline reads and writes exists".into(),
        )
    };
    let available = if observed.deployment.is_none() {
        cond(
            AVAILABLE,
            false,
            "NotDeployed",
            "no processor Deployment yet".into(),
        )
    } else if desired == 0 {
        cond(
            AVAILABLE,
            true,
            "ScaledToZero",
            "scaled to zero: no records to process".into(),
        )
    } else if ready >= 1 {
        cond(
            AVAILABLE,
            true,
            "ProcessorsReady",
            format!("{ready} of {desired} processors ready"),
        )
    } else {
        cond(
            AVAILABLE,
            false,
            "NoProcessorReady",
            format!("0 of {desired} processors ready"),
        )
    };
    let rolling =
        observed.deployment.is_some() && (!dep_current || updated < desired || replicas != desired);
    let progressing = if rolling {
        cond(
            PROGRESSING,
            true,
            "RollingOut",
            format!("{updated} of {desired} processors updated, {replicas} running"),
        )
    } else {
        cond(
            PROGRESSING,
            false,
            "Stable",
            "no rollout in progress".into(),
        )
    };
    let degraded = if !rolling && ready < desired {
        cond(
            DEGRADED,
            true,
            "ProcessorsNotReady",
            format!("only {ready} of {desired} processors ready (see the processor pods' logs)"),
        )
    } else {
        cond(
            DEGRADED,
            false,
            "AsExpected",
            "all processors that should run are ready".into(),
        )
    };
    let ready_cond = if !observed.spec_errors.is_empty() {
        cond(READY, false, "InvalidSpec", observed.spec_errors.join("; "))
    } else if let Some(conflict) = &observed.conflict {
        cond(READY, false, "ResourceConflict", conflict.clone())
    } else if topics.status != "True" {
        cond(READY, false, &topics.reason, topics.message.clone())
    } else if available.status != "True" {
        cond(READY, false, &available.reason, available.message.clone())
    } else if degraded.status == "True" {
        cond(READY, false, &degraded.reason, degraded.message.clone())
    } else {
        cond(
            READY,
            true,
            "Running",
            format!("{ready} of {desired} processors running"),
        )
    };
    PipelineStatus {
        observed_generation: generation,
        conditions: vec![ready_cond, topics, available, progressing, degraded],
        replicas,
        ready_replicas: ready,
        updated_replicas: updated,
        desired_replicas: desired,
        selector: Some(selector),
        lag: observed.lag,
        max_partition_lag: observed.max_partition_lag,
        records_per_second: two_decimals(observed.records_per_second),
        last_scale: observed
            .last_scale
            .clone()
            .or_else(|| previous.last_scale.clone()),
    }
}

/// True when writing `new` over `old` would change anything a user can see
/// (ignores `lastTransitionTime`, which [`condition`] keeps stable anyway).
pub fn changed(old: &PipelineStatus, new: &PipelineStatus) -> bool {
    let mut a = without_figures(old);
    let mut b = without_figures(new);
    let same = sluice_crds::common::same_conditions(&a.conditions, &b.conditions);
    a.conditions.clear();
    b.conditions.clear();
    !same || a != b
}

/// The status fields the autoscaler's sampler writes every tick, under its own field
/// manager: reconcile neither writes nor compares them.
const FIGURES: [&str; 4] = ["lag", "maxPartitionLag", "recordsPerSecond", "lastScale"];

/// The autoscaler's figures for status.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    /// Records waiting across all input partitions.
    pub lag: i64,
    /// Records waiting on the most behind partition.
    pub max_partition_lag: i64,
    /// Records consumed per second (two decimals).
    pub records_per_second: f64,
    /// The last scaling decision.
    pub last_scale: Option<ScaleDecision>,
}

impl Figures {
    /// The figures `status` shows.
    pub fn of(status: &PipelineStatus) -> Self {
        Figures {
            lag: status.lag,
            max_partition_lag: status.max_partition_lag,
            records_per_second: status.records_per_second,
            last_scale: status.last_scale.clone(),
        }
    }

    /// The figures of a tick (the last decision kept from `previous` if the tick has none).
    pub fn new(
        lag: i64,
        max_partition_lag: i64,
        records_per_second: f64,
        last_scale: Option<ScaleDecision>,
        previous: &PipelineStatus,
    ) -> Self {
        Figures {
            lag,
            max_partition_lag,
            records_per_second: two_decimals(records_per_second),
            last_scale: last_scale.or_else(|| previous.last_scale.clone()),
        }
    }

    /// The status patch of the figures alone.
    pub fn to_status(&self) -> serde_json::Value {
        let mut status = serde_json::json!({
            "lag": self.lag,
            "maxPartitionLag": self.max_partition_lag,
            "recordsPerSecond": self.records_per_second,
        });
        if let (Some(d), Some(obj)) = (&self.last_scale, status.as_object_mut())
            && let Ok(v) = serde_json::to_value(d)
        {
            obj.insert("lastScale".into(), v);
        }
        status
    }
}

/// A rate as status shows it: two decimals, so noise below them changes nothing.
fn two_decimals(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// `status` without the autoscaler's figures (zeroed).
fn without_figures(status: &PipelineStatus) -> PipelineStatus {
    PipelineStatus {
        lag: 0,
        max_partition_lag: 0,
        records_per_second: 0.0,
        last_scale: None,
        ..status.clone()
    }
}

/// The status patch reconcile writes: every field but the autoscaler's figures.
pub fn reconciled_fields(status: &PipelineStatus) -> serde_json::Value {
    let mut value = serde_json::to_value(status).unwrap_or_default();
    if let Some(obj) = value.as_object_mut() {
        for field in FIGURES {
            obj.remove(field);
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DeploymentStatus;

    fn deployment(ready: i32, updated: i32, replicas: i32) -> Deployment {
        let mut d = Deployment::default();
        d.metadata.generation = Some(2);
        d.status = Some(DeploymentStatus {
            observed_generation: Some(2),
            ready_replicas: Some(ready),
            updated_replicas: Some(updated),
            replicas: Some(replicas),
            ..DeploymentStatus::default()
        });
        d
    }

    fn get<'a>(s: &'a PipelineStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn running_pipeline_is_ready() {
        let obs = Observed {
            deployment: Some(deployment(2, 2, 2)),
            desired_replicas: 2,
            lag: 5,
            ..Observed::default()
        };
        let s = compute(Some(3), "a=b".into(), &obs, &PipelineStatus::default());
        assert_eq!(get(&s, READY).status, "True");
        assert_eq!(get(&s, PROGRESSING).status, "False");
        assert_eq!(s.observed_generation, Some(3));
        assert!(
            s.conditions
                .iter()
                .all(|c| c.observed_generation == Some(3))
        );
        assert_eq!((s.ready_replicas, s.desired_replicas, s.lag), (2, 2, 5));
    }

    #[test]
    fn a_missing_output_or_table_topic_is_named() {
        let obs = Observed {
            deployment: Some(deployment(0, 1, 1)),
            desired_replicas: 1,
            missing_others: vec!["customers".into(), "totals".into()],
            ..Observed::default()
        };
        let s = compute(Some(1), String::new(), &obs, &PipelineStatus::default());
        let topics = get(&s, TOPICS_READY);
        assert_eq!(
            (topics.status.as_str(), topics.reason.as_str()),
            ("False", "TopicMissing")
        );
        assert!(
            topics.message.contains("customers, totals"),
            "{}",
            topics.message
        );
        let ready = get(&s, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "TopicMissing")
        );
    }

    #[test]
    fn invalid_spec_wins_and_explains() {
        let obs = Observed {
            spec_errors: vec!["step keep: filter: undeclared reference to 'vlaue'".into()],
            missing_inputs: vec!["orders".into()],
            ..Observed::default()
        };
        let s = compute(Some(1), String::new(), &obs, &PipelineStatus::default());
        let ready = get(&s, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "InvalidSpec")
        );
        assert!(ready.message.contains("vlaue"));
        assert_eq!(get(&s, TOPICS_READY).reason, "InputTopicMissing");
        assert!(get(&s, TOPICS_READY).message.contains("orders"));
    }

    #[test]
    fn rollout_is_progressing_not_degraded() {
        let obs = Observed {
            deployment: Some(deployment(1, 1, 2)),
            desired_replicas: 2,
            ..Observed::default()
        };
        let s = compute(Some(1), String::new(), &obs, &PipelineStatus::default());
        assert_eq!(get(&s, PROGRESSING).status, "True");
        assert_eq!(get(&s, DEGRADED).status, "False");
        assert_eq!(get(&s, READY).status, "True");
    }

    #[test]
    fn crashing_processors_degrade() {
        let obs = Observed {
            deployment: Some(deployment(0, 2, 2)),
            desired_replicas: 2,
            ..Observed::default()
        };
        let s = compute(Some(1), String::new(), &obs, &PipelineStatus::default());
        assert_eq!(get(&s, READY).reason, "NoProcessorReady");
        assert_eq!(get(&s, DEGRADED).status, "True");
    }

    #[test]
    fn scaled_to_zero_is_ready() {
        let obs = Observed {
            deployment: Some(deployment(0, 0, 0)),
            desired_replicas: 0,
            ..Observed::default()
        };
        let s = compute(Some(1), String::new(), &obs, &PipelineStatus::default());
        assert_eq!(get(&s, READY).status, "True");
        assert_eq!(get(&s, AVAILABLE).reason, "ScaledToZero");
    }

    #[test]
    fn unchanged_status_is_not_rewritten() {
        let obs = Observed {
            deployment: Some(deployment(1, 1, 1)),
            desired_replicas: 1,
            ..Observed::default()
        };
        let first = compute(Some(1), "s".into(), &obs, &PipelineStatus::default());
        let second = compute(Some(1), "s".into(), &obs, &first);
        assert!(!changed(&first, &second));
        let more_lag = Observed {
            lag: 10,
            ..obs.clone()
        };
        assert!(
            !changed(&first, &compute(Some(1), "s".into(), &more_lag, &first)),
            "the figures are the sampler's to write"
        );
        let fewer_ready = Observed {
            deployment: Some(deployment(0, 1, 1)),
            ..obs
        };
        assert!(changed(
            &first,
            &compute(Some(1), "s".into(), &fewer_ready, &first)
        ));
    }

    #[test]
    fn reconcile_and_the_sampler_write_disjoint_fields() {
        let obs = Observed {
            deployment: Some(deployment(1, 1, 1)),
            desired_replicas: 1,
            lag: 7,
            ..Observed::default()
        };
        let status = compute(Some(1), "s".into(), &obs, &PipelineStatus::default());
        let reconciled = reconciled_fields(&status);
        let figures = Figures::of(&status).to_status();
        let reconciled = reconciled.as_object().unwrap();
        let figures = figures.as_object().unwrap();
        assert!(
            reconciled.contains_key("conditions") && reconciled.contains_key("desiredReplicas")
        );
        assert_eq!(figures["lag"], 7);
        assert!(
            figures.keys().all(|k| !reconciled.contains_key(k)),
            "{figures:?} / {reconciled:?}"
        );
        let kept = Figures::new(
            1,
            1,
            0.126,
            None,
            &PipelineStatus {
                last_scale: Some(ScaleDecision {
                    time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                    ),
                    from: 1,
                    to: 2,
                    reason: "lag".into(),
                }),
                ..PipelineStatus::default()
            },
        );
        assert_eq!(kept.records_per_second, 0.13);
        assert_eq!(kept.to_status()["lastScale"]["to"], 2);
    }
}
