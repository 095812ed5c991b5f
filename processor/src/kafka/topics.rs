//! Topic metadata: which topics exist and how many partitions they have; creating the
//! internal topics (changelog, repartition) a pipeline needs.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use super::KafkaSettings;

/// A topic-level failure.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// The brokers could not be asked.
    #[error("cannot read topic metadata from {bootstrap}: {source}")]
    Metadata {
        /// Where we asked.
        bootstrap: String,
        /// The Kafka error.
        source: KafkaError,
    },
    /// Topics the pipeline reads or writes do not exist.
    #[error("missing topics: {} (create them first: Sluice creates only its internal changelog and repartition topics)", .0.join(", "))]
    Missing(Vec<String>),
    /// An internal topic could not be created.
    #[error("cannot create topic {topic}: {message}")]
    Create {
        /// The topic.
        topic: String,
        /// Why.
        message: String,
    },
    /// An internal topic exists with the wrong shape.
    #[error(
        "topic {topic} has {actual} partitions but needs {expected}: delete it or use a new pipeline name"
    )]
    Partitions {
        /// The topic.
        topic: String,
        /// What it has.
        actual: usize,
        /// What it needs.
        expected: usize,
    },
}

/// Partition counts of every topic in the cluster.
pub fn partition_counts(
    settings: &KafkaSettings,
    timeout: Duration,
) -> Result<BTreeMap<String, usize>, TopicError> {
    let err = |source| TopicError::Metadata {
        bootstrap: settings.bootstrap.clone(),
        source,
    };
    let consumer: BaseConsumer = settings.client_config().create().map_err(err)?;
    // Asking for every topic (rather than one by name) never auto-creates topics.
    let md = consumer.fetch_metadata(None, timeout).map_err(err)?;
    Ok(md
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name().to_string(), t.partitions().len()))
        .collect())
}

/// The topics of `wanted` that are not in `existing`, sorted.
pub fn missing<'a>(
    existing: &BTreeMap<String, usize>,
    wanted: impl IntoIterator<Item = &'a str>,
) -> Vec<String> {
    let mut out: Vec<String> = wanted
        .into_iter()
        .filter(|t| !existing.contains_key(*t))
        .map(str::to_string)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// An internal topic to create when missing.
#[derive(Debug, Clone)]
pub struct InternalTopic {
    /// Name.
    pub name: String,
    /// Partitions.
    pub partitions: usize,
    /// Topic config.
    pub config: Vec<(&'static str, &'static str)>,
}

/// Creates each topic that does not exist (with the broker's default replication
/// factor) and checks the partition count of those that do.
pub fn ensure(
    settings: &KafkaSettings,
    existing: &BTreeMap<String, usize>,
    topics: &[InternalTopic],
) -> Result<(), TopicError> {
    for t in topics {
        if let Some(actual) = existing.get(&t.name)
            && *actual != t.partitions
        {
            return Err(TopicError::Partitions {
                topic: t.name.clone(),
                actual: *actual,
                expected: t.partitions,
            });
        }
    }
    let to_create: Vec<&InternalTopic> = topics
        .iter()
        .filter(|t| !existing.contains_key(&t.name))
        .collect();
    if to_create.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> =
        settings
            .client_config()
            .create()
            .map_err(|e| TopicError::Metadata {
                bootstrap: settings.bootstrap.clone(),
                source: e,
            })?;
    let news: Vec<NewTopic> = to_create
        .iter()
        .map(|t| {
            let mut n = NewTopic::new(
                &t.name,
                i32::try_from(t.partitions).unwrap_or(i32::MAX),
                TopicReplication::Fixed(-1),
            );
            for (k, v) in &t.config {
                n = n.set(k, v);
            }
            n
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results =
        futures::executor::block_on(admin.create_topics(news.iter(), &opts)).map_err(|e| {
            TopicError::Create {
                topic: to_create
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                message: e.to_string(),
            }
        })?;
    for r in results {
        match r {
            Ok(name) => tracing::info!(topic = %name, "created internal topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(TopicError::Create {
                    topic,
                    message: code.to_string(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_missing_topics_once_sorted() {
        let existing = BTreeMap::from([("a".to_string(), 1)]);
        assert_eq!(missing(&existing, ["c", "a", "b", "c"]), vec!["b", "c"]);
    }
}
