//! What must change in Kafka for a Topic: validation and the diff of spec against Kafka. Pure.

use std::collections::BTreeMap;

use kube::ResourceExt;
use sluice_crds::{Pipeline, Topic};

use crate::kafka::{ConfigOp, TopicState};

/// The topic a Topic resource asks for, after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// Kafka topic name.
    pub name: String,
    /// Partitions.
    pub partitions: i32,
    /// Replication factor; `None` leaves it to the broker.
    pub replication_factor: Option<i32>,
    /// Topic-level configs.
    pub config: BTreeMap<String, String>,
}

/// Checks what the schema cannot and returns the desired topic, or why the spec is invalid.
pub fn validate(topic: &Topic) -> Result<Desired, String> {
    let name = topic.kafka_name();
    let mut problems = Vec::new();
    if name.is_empty() {
        problems.push("the Kafka topic name is empty".to_string());
    } else if name.len() > 249 {
        problems.push(format!(
            "the Kafka topic name is {} characters long; Kafka allows 249",
            name.len()
        ));
    } else if name == "." || name == ".." {
        problems.push(format!("{name:?} is not a valid Kafka topic name"));
    } else if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        problems.push(format!(
            "the Kafka topic name {name:?} contains {c:?}; Kafka allows letters, digits, '.', '_' and '-'"
        ));
    }
    if let Some(why) = reserved(&name) {
        problems.push(why);
    }
    if topic.spec.partitions < 1 {
        problems.push(format!(
            "spec.partitions is {}; it must be at least 1",
            topic.spec.partitions
        ));
    }
    if let Some(rf) = topic.spec.replication_factor
        && rf < 1
    {
        problems.push(format!(
            "spec.replicationFactor is {rf}; it must be at least 1"
        ));
    }
    if topic.spec.config.keys().any(|k| k.trim().is_empty()) {
        problems.push("spec.config has an empty key".to_string());
    }
    if problems.is_empty() {
        Ok(Desired {
            name,
            partitions: topic.spec.partitions,
            replication_factor: topic.spec.replication_factor,
            config: topic.spec.config.clone(),
        })
    } else {
        Err(problems.join("; "))
    }
}

/// Why a Kafka topic name belongs to Kafka or to Sluice itself and never to a Topic:
/// adopting one would reset its config to what the Topic says (broker defaults when it
/// says nothing) and, with `deletionPolicy: Delete`, delete it.
fn reserved(name: &str) -> Option<String> {
    if name.starts_with("__") {
        return Some(format!(
            "{name:?} is one of Kafka's internal topics (names starting with \"__\"); a Topic cannot manage it"
        ));
    }
    let internal = name.starts_with("sluice-")
        && (name.ends_with("-changelog") || name.ends_with("-repartition"));
    internal.then(|| {
        format!(
            "{name:?} has the form of a Sluice pipeline's internal topic \
             (sluice-<namespace>-<pipeline>-<step>-changelog or -repartition), which the \
             pipeline manages; a Topic cannot claim it"
        )
    })
}

/// The names of the Pipelines among `pipelines` that read `topic` with an aggregate or
/// dedupe step: their state is kept per input partition.
pub fn stateful_readers<'a>(
    topic: &str,
    pipelines: impl IntoIterator<Item = &'a Pipeline>,
) -> Vec<String> {
    pipelines
        .into_iter()
        .filter(|p| p.spec.inputs.iter().any(|i| i == topic))
        .filter(|p| {
            p.spec
                .steps
                .iter()
                .any(|s| s.aggregate.is_some() || s.dedupe.is_some())
        })
        .map(|p| p.name_any())
        .collect()
}

/// A change Kafka cannot make, or a config Kafka does not accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Kafka cannot do it at all (fewer partitions, another replication factor).
    NotSupported(String),
    /// A config key or value Kafka does not accept.
    InvalidConfig(String),
}

impl Refusal {
    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NotSupported(_) => "NotSupported",
            Refusal::InvalidConfig(_) => "InvalidConfig",
        }
    }

    /// The condition message.
    pub fn message(&self) -> &str {
        match self {
            Refusal::NotSupported(m) | Refusal::InvalidConfig(m) => m,
        }
    }
}

/// How the topic-level configs must change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigDiff {
    /// Keys to set: key -> (value in Kafka now, if any; value wanted).
    pub set: BTreeMap<String, (Option<String>, String)>,
    /// Keys set in Kafka but not in the spec, which go back to the broker default: key -> value now.
    pub reset: BTreeMap<String, String>,
}

impl ConfigDiff {
    /// Compares the wanted configs with the overrides Kafka has; `None` when they match.
    pub fn between(
        wanted: &BTreeMap<String, String>,
        current: &BTreeMap<String, String>,
    ) -> Option<Self> {
        let set: BTreeMap<_, _> = wanted
            .iter()
            .filter(|(k, v)| current.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), (current.get(k).cloned(), v.clone())))
            .collect();
        let reset: BTreeMap<_, _> = current
            .iter()
            .filter(|(k, _)| !wanted.contains_key(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        (!set.is_empty() || !reset.is_empty()).then_some(Self { set, reset })
    }

    /// The incremental changes: set what differs, delete what the spec does not name.
    pub fn ops(&self) -> Vec<ConfigOp> {
        let sets = self
            .set
            .iter()
            .map(|(k, (_, v))| ConfigOp::Set(k.clone(), v.clone()));
        let deletes = self.reset.keys().map(|k| ConfigOp::Delete(k.clone()));
        sets.chain(deletes).collect()
    }

    /// A sentence for an event: `retention.ms 1000 -> 2000, cleanup.policy reset to default (was compact)`.
    pub fn describe(&self) -> String {
        let sets = self.set.iter().map(|(k, (old, new))| match old {
            Some(old) => format!("{k} {old} -> {new}"),
            None => format!("{k} set to {new}"),
        });
        let resets = self
            .reset
            .iter()
            .map(|(k, old)| format!("{k} reset to default (was {old})"));
        sets.chain(resets).collect::<Vec<_>>().join(", ")
    }
}

/// What to do in Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The topic does not exist: create it.
    Create,
    /// The topic exists: grow partitions and/or change configs (both `None`: in sync).
    Update {
        /// Partitions now and wanted.
        partitions: Option<(i32, i32)>,
        /// Config changes.
        config: Option<ConfigDiff>,
    },
    /// The spec asks for something Kafka cannot do; change nothing.
    Refuse(Refusal),
}

impl Plan {
    /// Refuses to grow the topic's partitions while `readers` (Pipelines that keep state
    /// per partition of it) exist; any other plan is kept.
    pub fn unless_state_splits(self, readers: &[String]) -> Plan {
        match self {
            Plan::Update {
                partitions: Some((from, to)),
                ..
            } if !readers.is_empty() => Plan::Refuse(Refusal::NotSupported(format!(
                "cannot grow from {from} to {to} partitions: Pipeline(s) {} keep state per \
                 partition of this topic (an aggregate or dedupe step), and more partitions \
                 would split each key's state between two; write to a new topic with more \
                 partitions instead, or delete those Pipelines first",
                readers.join(", ")
            ))),
            other => other,
        }
    }

    /// True when nothing needs to change.
    pub fn in_sync(&self) -> bool {
        matches!(
            self,
            Plan::Update {
                partitions: None,
                config: None
            }
        )
    }
}

/// Compares the desired topic with what Kafka has.
pub fn plan(desired: &Desired, observed: Option<&TopicState>) -> Plan {
    let Some(have) = observed else {
        return Plan::Create;
    };
    let mut not_supported = Vec::new();
    if desired.partitions < have.partitions {
        not_supported.push(format!(
            "spec.partitions is {} but topic {} has {} partitions; Kafka cannot remove partitions",
            desired.partitions, desired.name, have.partitions
        ));
    }
    if let Some(rf) = desired.replication_factor
        && rf != have.replication_factor
    {
        not_supported.push(format!(
            "spec.replicationFactor is {rf} but topic {} has replication factor {}; Sluice does not change the replication factor of an existing topic",
            desired.name, have.replication_factor
        ));
    }
    if !not_supported.is_empty() {
        return Plan::Refuse(Refusal::NotSupported(not_supported.join("; ")));
    }
    if !have.known_keys.is_empty() {
        let unknown: Vec<&str> = desired
            .config
            .keys()
            .filter(|k| !have.known_keys.iter().any(|known| known == *k))
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            return Plan::Refuse(Refusal::InvalidConfig(format!(
                "Kafka has no topic config named {}",
                unknown.join(", ")
            )));
        }
    }
    Plan::Update {
        partitions: (desired.partitions > have.partitions)
            .then_some((have.partitions, desired.partitions)),
        config: ConfigDiff::between(&desired.config, &have.config),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_crds::TopicSpec;
    use sluice_crds::topic::DeletionPolicy;

    fn topic(name: &str, partitions: i32) -> Topic {
        Topic::new(
            name,
            TopicSpec {
                topic_name: None,
                partitions,
                replication_factor: None,
                config: BTreeMap::new(),
                deletion_policy: DeletionPolicy::Retain,
            },
        )
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn desired(partitions: i32, rf: Option<i32>, config: &[(&str, &str)]) -> Desired {
        Desired {
            name: "orders".into(),
            partitions,
            replication_factor: rf,
            config: map(config),
        }
    }

    fn state(partitions: i32, rf: i32, config: &[(&str, &str)]) -> TopicState {
        TopicState {
            partitions,
            replication_factor: rf,
            config: map(config),
            known_keys: ["retention.ms", "cleanup.policy", "segment.bytes"]
                .map(String::from)
                .to_vec(),
        }
    }

    #[test]
    fn name_defaults_to_the_resource_name() {
        let d = validate(&topic("orders", 3)).unwrap();
        assert_eq!(d.name, "orders");
        assert_eq!(d.partitions, 3);
        let mut t = topic("orders", 3);
        t.spec.topic_name = Some("shop.orders".into());
        assert_eq!(validate(&t).unwrap().name, "shop.orders");
    }

    #[test]
    fn kafka_and_sluice_internal_topics_are_refused() {
        for name in [
            "__consumer_offsets",
            "__transaction_state",
            "sluice-shop-totals-per-region-changelog",
            "sluice-shop-totals-per-region-repartition",
        ] {
            let mut t = topic("internal", 1);
            t.spec.topic_name = Some(name.into());
            let err = validate(&t).unwrap_err();
            assert!(err.contains("cannot"), "{name}: {err}");
        }
        let mut t = topic("ok", 1);
        t.spec.topic_name = Some("sluice-changelog-archive".into());
        assert!(validate(&t).is_ok());
    }

    #[test]
    fn invalid_specs_say_why() {
        let mut t = topic("orders", 0);
        t.spec.topic_name = Some("bad/name".into());
        t.spec.replication_factor = Some(0);
        let err = validate(&t).unwrap_err();
        assert!(err.contains("'/'"), "{err}");
        assert!(err.contains("spec.partitions is 0"), "{err}");
        assert!(err.contains("spec.replicationFactor is 0"), "{err}");
        t.spec.topic_name = Some("..".into());
        assert!(validate(&t).unwrap_err().contains("not a valid"));
        t.spec.topic_name = Some("x".repeat(250));
        assert!(validate(&t).unwrap_err().contains("249"));
    }

    #[test]
    fn a_topic_read_by_a_stateful_pipeline_does_not_grow() {
        let pipeline = |name: &str, steps: serde_json::Value| -> Pipeline {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "sluice.dev/v1alpha1", "kind": "Pipeline",
                "metadata": {"name": name, "namespace": "n"},
                "spec": {"inputs": ["orders"], "steps": steps, "outputs": [{"topic": "out"}]}
            }))
            .unwrap()
        };
        let pipelines = [
            pipeline(
                "totals",
                serde_json::json!([{"name": "sum", "aggregate": {
                "groupBy": {"r": "value.r"}, "aggregations": [{"name": "n", "op": "count"}]}}]),
            ),
            pipeline(
                "clean",
                serde_json::json!([{"name": "keep", "filter": "true"}]),
            ),
        ];
        let readers = stateful_readers("orders", &pipelines);
        assert_eq!(readers, ["totals"]);
        assert!(stateful_readers("refunds", &pipelines).is_empty());

        let grow = plan(&desired(6, None, &[]), Some(&state(3, 1, &[])));
        let Plan::Refuse(r) = grow.clone().unless_state_splits(&readers) else {
            panic!()
        };
        assert_eq!(r.reason(), "NotSupported");
        assert!(r.message().contains("from 3 to 6"), "{}", r.message());
        assert!(r.message().contains("totals"), "{}", r.message());
        assert_eq!(grow.clone().unless_state_splits(&[]), grow);
        let same = plan(&desired(3, None, &[]), Some(&state(3, 1, &[])));
        assert_eq!(same.clone().unless_state_splits(&readers), same);
    }

    #[test]
    fn missing_topic_is_created() {
        assert_eq!(plan(&desired(3, None, &[]), None), Plan::Create);
    }

    #[test]
    fn matching_topic_is_in_sync() {
        let p = plan(
            &desired(3, Some(1), &[("retention.ms", "1000")]),
            Some(&state(3, 1, &[("retention.ms", "1000")])),
        );
        assert!(p.in_sync(), "{p:?}");
    }

    #[test]
    fn partitions_grow() {
        let p = plan(&desired(6, None, &[]), Some(&state(3, 1, &[])));
        assert_eq!(
            p,
            Plan::Update {
                partitions: Some((3, 6)),
                config: None
            }
        );
    }

    #[test]
    fn fewer_partitions_and_replication_changes_are_refused() {
        let p = plan(&desired(2, None, &[]), Some(&state(3, 1, &[])));
        let Plan::Refuse(r) = p else { panic!("{p:?}") };
        assert_eq!(r.reason(), "NotSupported");
        assert!(r.message().contains("cannot remove partitions"), "{r:?}");

        let p = plan(&desired(6, Some(3), &[]), Some(&state(3, 1, &[])));
        let Plan::Refuse(r) = p else { panic!("{p:?}") };
        assert_eq!(r.reason(), "NotSupported");
        assert!(r.message().contains("replication factor 1"), "{r:?}");
    }

    #[test]
    fn unknown_config_keys_are_refused() {
        let p = plan(
            &desired(3, None, &[("retention.ms", "1"), ("no.such.key", "1")]),
            Some(&state(3, 1, &[])),
        );
        assert_eq!(
            p,
            Plan::Refuse(Refusal::InvalidConfig(
                "Kafka has no topic config named no.such.key".into()
            ))
        );
    }

    #[test]
    fn config_drift_is_set_and_extra_overrides_reset() {
        let p = plan(
            &desired(
                3,
                None,
                &[("retention.ms", "2000"), ("segment.bytes", "1048576")],
            ),
            Some(&state(
                3,
                1,
                &[("retention.ms", "1000"), ("cleanup.policy", "compact")],
            )),
        );
        let Plan::Update {
            partitions: None,
            config: Some(diff),
        } = p
        else {
            panic!("{p:?}")
        };
        assert_eq!(
            diff.ops(),
            vec![
                ConfigOp::Set("retention.ms".into(), "2000".into()),
                ConfigOp::Set("segment.bytes".into(), "1048576".into()),
                ConfigOp::Delete("cleanup.policy".into()),
            ]
        );
        assert_eq!(
            diff.describe(),
            "retention.ms 1000 -> 2000, segment.bytes set to 1048576, cleanup.policy reset to default (was compact)"
        );
    }
}
