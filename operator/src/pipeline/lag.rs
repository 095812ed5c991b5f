//! Reads, for one pipeline, what the autoscaler needs from Kafka: per input partition the
//! log-start, log-end and committed offsets, and whether the group is rebalancing. Every
//! pipeline goes through the same shared admin client: no threads or connections per pipeline.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;

use super::offsets;
use crate::autoscaler::{PartitionId, PartitionOffsets};

/// What one read found.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupReading {
    /// Every partition of every input topic that exists.
    pub partitions: Vec<PartitionOffsets>,
    /// Input topics Kafka does not have.
    pub missing_topics: Vec<String>,
    /// The group is between generations (members joining or leaving).
    pub rebalancing: bool,
}

/// Why the reading failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LagError {
    /// Metadata or watermarks could not be read.
    #[error("reading {what} from Kafka: {message}")]
    Kafka {
        /// What was being read.
        what: String,
        /// Kafka's message.
        message: String,
    },
    /// Committed offsets could not be read.
    #[error(transparent)]
    Offsets(#[from] offsets::OffsetsError),
    /// The blocking task died.
    #[error("lag reader task failed: {0}")]
    Task(String),
}

/// Reads the offsets of `group` over `inputs`. Blocking calls run on the blocking pool.
pub async fn read(
    admin: Arc<AdminClient<DefaultClientContext>>,
    group: String,
    inputs: Vec<String>,
    timeout: Duration,
) -> Result<GroupReading, LagError> {
    tokio::task::spawn_blocking(move || read_blocking(&admin, &group, &inputs, timeout))
        .await
        .map_err(|e| LagError::Task(e.to_string()))?
}

fn read_blocking(
    admin: &AdminClient<DefaultClientContext>,
    group: &str,
    inputs: &[String],
    timeout: Duration,
) -> Result<GroupReading, LagError> {
    let client = admin.inner();
    let kafka = |what: String| {
        move |e: rdkafka::error::KafkaError| LagError::Kafka {
            what,
            message: e.to_string(),
        }
    };
    let committed = offsets::committed_offsets(admin, group, timeout)?;
    let mut partitions = Vec::new();
    let mut missing_topics = Vec::new();
    for topic in inputs {
        let Some(ids) = partitions_of(admin, topic, timeout)? else {
            missing_topics.push(topic.clone());
            continue;
        };
        for id in ids {
            let (low, high) = client
                .fetch_watermarks(topic, id, timeout)
                .map_err(kafka(format!("watermarks of {topic}-{id}")))?;
            partitions.push(PartitionOffsets {
                id: PartitionId {
                    topic: topic.clone(),
                    partition: id,
                },
                log_start: low,
                log_end: high,
                committed: committed.get(&(topic.clone(), id)).copied(),
            });
        }
    }
    let rebalancing = client
        .fetch_group_list(Some(group), timeout)
        .map(|list| {
            list.groups()
                .iter()
                .any(|g| matches!(g.state(), "PreparingRebalance" | "CompletingRebalance"))
        })
        .unwrap_or(false);
    Ok(GroupReading {
        partitions,
        missing_topics,
        rebalancing,
    })
}

/// The partition numbers of `topic`, or `None` when Kafka does not have it.
fn partitions_of(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    timeout: Duration,
) -> Result<Option<Vec<i32>>, LagError> {
    let metadata = admin
        .inner()
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| LagError::Kafka {
            what: format!("metadata of {topic}"),
            message: e.to_string(),
        })?;
    Ok(metadata
        .topics()
        .first()
        .filter(|meta| meta.error().is_none() && !meta.partitions().is_empty())
        .map(|meta| meta.partitions().iter().map(|p| p.id()).collect()))
}

/// Which of `topics` Kafka does not have. Blocking calls run on the blocking pool.
pub async fn missing(
    admin: Arc<AdminClient<DefaultClientContext>>,
    topics: Vec<String>,
    timeout: Duration,
) -> Result<Vec<String>, LagError> {
    tokio::task::spawn_blocking(move || {
        let mut missing = Vec::new();
        for topic in topics {
            if partitions_of(&admin, &topic, timeout)?.is_none() {
                missing.push(topic);
            }
        }
        Ok(missing)
    })
    .await
    .map_err(|e| LagError::Task(e.to_string()))?
}
