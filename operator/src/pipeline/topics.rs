//! The topics a pipeline needs that do not exist yet: its dead-letter topic becomes a
//! Topic resource owned by the Pipeline, so the Topic controller creates it in Kafka and
//! the resource goes when the Pipeline goes. (Internal changelog and repartition topics are
//! created by the processor itself, which knows their partition counts.)

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use sluice_crds::topic::DeletionPolicy;
use sluice_crds::{Pipeline, Topic, TopicSpec};

use crate::Error;
use crate::context::{Context, FIELD_MANAGER};
use crate::controller::Guarded;

/// A DNS-1123 name for a Topic resource holding Kafka topic `topic`.
pub fn resource_name(topic: &str) -> String {
    let mut name: String = topic
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    name.truncate(63);
    name.trim_matches('-').to_string()
}

/// Every topic `p` writes to or reads as a table, besides its inputs: outputs, route
/// targets, enrich tables and the dead-letter topic (sorted, each once). The processor
/// waits until all of them exist, so status names the missing ones.
pub fn other_topics(p: &Pipeline) -> Vec<String> {
    let spec = &p.spec;
    let mut topics: Vec<String> = spec.outputs.iter().map(|o| o.topic.clone()).collect();
    for step in &spec.steps {
        if let Some(r) = &step.route {
            topics.extend(r.routes.iter().map(|r| r.topic.clone()));
            topics.extend(r.default.clone());
        }
        if let Some(e) = &step.enrich {
            topics.push(e.table.clone());
        }
    }
    topics.extend(spec.dead_letter.as_ref().map(|d| d.topic.clone()));
    topics.sort();
    topics.dedup();
    topics.retain(|t| !spec.inputs.contains(t));
    topics
}

/// The Topic resource to create for the dead-letter topic of `p`, if it has one.
/// Its Kafka topic is kept when the Pipeline goes (`Retain`): dead letters are evidence.
pub fn dead_letter_topic(p: &Pipeline) -> Option<Topic> {
    let dlq = p.spec.dead_letter.as_ref()?;
    let mut topic = Topic::new(
        &resource_name(&dlq.topic),
        TopicSpec {
            topic_name: Some(dlq.topic.clone()),
            partitions: 1,
            replication_factor: None,
            config: Default::default(),
            deletion_policy: DeletionPolicy::Retain,
        },
    );
    topic.metadata.namespace = p.namespace();
    topic.metadata.owner_references = p.controller_owner_ref(&()).map(|o| vec![o]);
    topic.metadata.labels = Some(
        [(
            "app.kubernetes.io/managed-by".to_string(),
            "sluice-operator".to_string(),
        )]
        .into_iter()
        .collect(),
    );
    Some(topic)
}

/// Creates the dead-letter Topic resource when neither Kafka nor a Topic resource in the
/// namespace has that topic.
pub async fn ensure(
    ctx: &Context,
    topics: &Store<Guarded<Topic>>,
    p: &Pipeline,
) -> Result<(), Error> {
    let Some(wanted) = dead_letter_topic(p) else {
        return Ok(());
    };
    let kafka_name = wanted.kafka_name();
    if matches!(ctx.kafka.describe(&kafka_name).await, Ok(Some(_))) {
        return Ok(());
    }
    let ns = p.namespace().unwrap_or_default();
    let declared = topics.state().iter().any(|g| {
        g.0.as_ref()
            .is_ok_and(|t| t.namespace().as_deref() == Some(&ns) && t.kafka_name() == kafka_name)
    });
    if declared {
        return Ok(());
    }
    let api: Api<Topic> = Api::namespaced(ctx.client.clone(), &ns);
    api.patch(
        &wanted.name_any(),
        &PatchParams::apply(FIELD_MANAGER),
        &Patch::Apply(&wanted),
    )
    .await
    .map_err(Error::kube(format!(
        "create Topic for dead-letter topic {kafka_name}"
    )))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_topics_are_outputs_routes_tables_and_the_dead_letter_topic() {
        let p: Pipeline = serde_json::from_value(serde_json::json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "Pipeline",
            "metadata": {"name": "p", "namespace": "n"},
            "spec": {
                "inputs": ["orders"],
                "steps": [
                    {"name": "r", "route": {"routes": [{"when": "true", "topic": "big"}], "default": "rest"}},
                    {"name": "e", "enrich": {"table": "customers", "key": "value.c", "into": "customer"}}
                ],
                "outputs": [{"topic": "out"}, {"topic": "big"}],
                "deadLetter": {"topic": "dlq"}
            }
        }))
        .unwrap();
        assert_eq!(other_topics(&p), ["big", "customers", "dlq", "out", "rest"]);
    }

    #[test]
    fn topic_names_become_resource_names() {
        assert_eq!(resource_name("orders-dlq"), "orders-dlq");
        assert_eq!(resource_name("Orders.DLQ_v1"), "orders-dlq-v1");
    }

    #[test]
    fn dead_letter_topic_is_owned_and_retained() {
        let p: Pipeline = serde_json::from_value(serde_json::json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "Pipeline",
            "metadata": {"name": "p", "namespace": "n", "uid": "u"},
            "spec": {"inputs": ["a"], "outputs": [{"topic": "b"}], "deadLetter": {"topic": "a.dlq"}}
        }))
        .unwrap();
        let t = dead_letter_topic(&p).unwrap();
        assert_eq!(t.kafka_name(), "a.dlq");
        assert_eq!(t.spec.deletion_policy, DeletionPolicy::Retain);
        assert_eq!(t.metadata.owner_references.unwrap()[0].name, "p");
    }
}
