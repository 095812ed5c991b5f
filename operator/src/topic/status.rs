//! The status a Topic shows, from what happened in this reconcile. Pure.

use sluice_crds::common::{READY, condition, same_conditions};
use sluice_crds::{Topic, TopicStatus};

use crate::kafka::TopicState;
use crate::topic::plan::Refusal;

/// How a reconcile ended, as the user should read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicOutcome {
    /// The Kafka topic matches the spec.
    Ready,
    /// The spec is invalid.
    InvalidSpec(String),
    /// Kafka cannot do what the spec asks; nothing was changed.
    Refused(Refusal),
    /// Another Topic resource owns this Kafka topic.
    Conflict {
        /// `namespace/name` of the owner.
        owner: String,
        /// The Kafka topic.
        topic: String,
    },
    /// Kafka did not answer.
    KafkaUnavailable(String),
    /// Kafka answered with an error that is not a refusal of the spec.
    KafkaError(String),
    /// A change was made and Kafka does not show it yet.
    Pending(String),
}

impl TopicOutcome {
    /// `(ready, reason, message)` of the Ready condition.
    pub fn condition(
        &self,
        topic: &str,
        observed: Option<&TopicState>,
    ) -> (bool, &'static str, String) {
        match self {
            TopicOutcome::Ready => {
                let message = match observed {
                    Some(o) => format!(
                        "Kafka topic {topic} has {} partitions, replication factor {} and {} topic configs as specified",
                        o.partitions,
                        o.replication_factor,
                        o.config.len()
                    ),
                    None => format!("Kafka topic {topic} matches the spec"),
                };
                (true, "InSync", message)
            }
            TopicOutcome::InvalidSpec(m) => (false, "InvalidSpec", m.clone()),
            TopicOutcome::Refused(r) => (false, r.reason(), r.message().to_string()),
            TopicOutcome::Conflict { owner, topic } => (
                false,
                "ResourceConflict",
                format!(
                    "Kafka topic {topic} is managed by Topic {owner}, which is older; this resource changes nothing"
                ),
            ),
            TopicOutcome::KafkaUnavailable(m) => (false, "KafkaUnavailable", m.clone()),
            TopicOutcome::KafkaError(m) => (false, "KafkaError", m.clone()),
            TopicOutcome::Pending(m) => (false, "Pending", m.clone()),
        }
    }
}

/// The status to show for `topic`, whose last known status is `previous`. What Kafka has
/// (`observed`) fills partitions, replication factor and config; when Kafka could not be
/// read, the last known values are kept.
pub fn compute(
    topic: &Topic,
    previous: Option<&TopicStatus>,
    kafka_name: &str,
    observed: Option<&TopicState>,
    outcome: &TopicOutcome,
) -> TopicStatus {
    let previous = previous.cloned().unwrap_or_default();
    let generation = topic.metadata.generation;
    let (ready, reason, message) = outcome.condition(kafka_name, observed);
    let ready_condition = condition(
        READY,
        ready,
        reason,
        message,
        generation,
        &previous.conditions,
    );
    let (partitions, replication_factor, config) = match (outcome, observed) {
        (TopicOutcome::Conflict { .. }, _) => (None, None, Default::default()),
        (_, Some(o)) => (
            Some(o.partitions),
            Some(o.replication_factor),
            o.config.clone(),
        ),
        (TopicOutcome::KafkaUnavailable(_), None) => (
            previous.partitions,
            previous.replication_factor,
            previous.config.clone(),
        ),
        (_, None) => (None, None, Default::default()),
    };
    TopicStatus {
        observed_generation: generation,
        conditions: vec![ready_condition],
        topic_name: Some(kafka_name.to_string()),
        partitions,
        replication_factor,
        config,
    }
}

/// True when `new` differs from `old` in anything but condition transition times.
pub fn changed(old: Option<&TopicStatus>, new: &TopicStatus) -> bool {
    let Some(old) = old else { return true };
    old.observed_generation != new.observed_generation
        || old.topic_name != new.topic_name
        || old.partitions != new.partitions
        || old.replication_factor != new.replication_factor
        || old.config != new.config
        || !same_conditions(&old.conditions, &new.conditions)
}

/// The Ready condition's `(status, reason, message)`, to tell whether it moved.
pub fn ready_of(status: Option<&TopicStatus>) -> Option<(String, String, String)> {
    status?
        .conditions
        .iter()
        .find(|c| c.type_ == READY)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use sluice_crds::TopicSpec;
    use sluice_crds::topic::DeletionPolicy;

    fn topic(generation: i64, status: Option<TopicStatus>) -> Topic {
        let mut t = Topic::new(
            "orders",
            TopicSpec {
                topic_name: None,
                partitions: 3,
                replication_factor: None,
                config: BTreeMap::new(),
                deletion_policy: DeletionPolicy::Retain,
            },
        );
        t.metadata.generation = Some(generation);
        t.status = status;
        t
    }

    fn state() -> TopicState {
        TopicState {
            partitions: 3,
            replication_factor: 1,
            config: BTreeMap::from([("retention.ms".into(), "1000".into())]),
            known_keys: vec![],
        }
    }

    #[test]
    fn ready_status_reports_what_kafka_has() {
        let s = compute(
            &topic(2, None),
            None,
            "orders",
            Some(&state()),
            &TopicOutcome::Ready,
        );
        assert_eq!(s.observed_generation, Some(2));
        assert_eq!(s.partitions, Some(3));
        assert_eq!(s.replication_factor, Some(1));
        assert_eq!(s.config["retention.ms"], "1000");
        assert_eq!(s.conditions[0].status, "True");
        assert_eq!(s.conditions[0].reason, "InSync");
        assert_eq!(s.conditions[0].observed_generation, Some(2));
    }

    #[test]
    fn same_outcome_twice_writes_nothing() {
        let first = compute(
            &topic(1, None),
            None,
            "orders",
            Some(&state()),
            &TopicOutcome::Ready,
        );
        let t = topic(1, Some(first.clone()));
        let again = compute(
            &t,
            t.status.as_ref(),
            "orders",
            Some(&state()),
            &TopicOutcome::Ready,
        );
        assert!(!changed(Some(&first), &again));
        assert_eq!(
            first.conditions[0].last_transition_time,
            again.conditions[0].last_transition_time
        );
        let newer = compute(
            &topic(2, None),
            Some(&first),
            "orders",
            Some(&state()),
            &TopicOutcome::Ready,
        );
        assert!(changed(Some(&first), &newer));
        assert!(changed(None, &newer));
    }

    #[test]
    fn unavailable_keeps_last_known_values() {
        let first = compute(
            &topic(1, None),
            None,
            "orders",
            Some(&state()),
            &TopicOutcome::Ready,
        );
        let t = topic(1, Some(first));
        let s = compute(
            &t,
            t.status.as_ref(),
            "orders",
            None,
            &TopicOutcome::KafkaUnavailable("all brokers down".into()),
        );
        assert_eq!(s.partitions, Some(3));
        assert_eq!(s.conditions[0].status, "False");
        assert_eq!(s.conditions[0].reason, "KafkaUnavailable");
        assert_eq!(s.conditions[0].message, "all brokers down");
    }

    #[test]
    fn refusal_and_conflict_say_why() {
        let s = compute(
            &topic(1, None),
            None,
            "orders",
            Some(&state()),
            &TopicOutcome::Refused(Refusal::NotSupported("fewer partitions".into())),
        );
        assert_eq!(
            ready_of(Some(&s)).unwrap(),
            (
                "False".into(),
                "NotSupported".into(),
                "fewer partitions".into()
            )
        );
        let s = compute(
            &topic(1, None),
            None,
            "orders",
            None,
            &TopicOutcome::Conflict {
                owner: "shop/orders".into(),
                topic: "orders".into(),
            },
        );
        let (_, reason, message) = ready_of(Some(&s)).unwrap();
        assert_eq!(reason, "ResourceConflict");
        assert!(message.contains("Topic shop/orders"), "{message}");
        assert_eq!(s.partitions, None);
    }
}
