//! Rebuilding aggregate state from the changelog topic: read each assigned changelog
//! partition (read_committed) to its end before processing that partition.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use super::KafkaSettings;
use crate::steps::StateStep;
use crate::steps::aggregate::RestoreError;

/// Why a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreFailure {
    /// Kafka failed.
    #[error("restoring from {topic}: {source}")]
    Kafka {
        /// The changelog topic.
        topic: String,
        /// The Kafka error.
        source: KafkaError,
    },
    /// A record is not valid state.
    #[error("restoring from {topic}: {source}")]
    Corrupt {
        /// The changelog topic.
        topic: String,
        /// What is wrong.
        source: RestoreError,
    },
    /// The end was not reached in time (an open transaction that never resolves?).
    #[error(
        "restoring from {topic}: partitions {partitions:?} did not reach their end within {timeout:?}"
    )]
    Timeout {
        /// The changelog topic.
        topic: String,
        /// Partitions not done.
        partitions: Vec<i32>,
        /// The limit.
        timeout: Duration,
    },
}

/// Client callbacks that do not log reaching the end of a partition as an error (it
/// is how a restore knows it is done).
pub(crate) struct QuietEof;

impl ClientContext for QuietEof {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::PartitionEOF(_)) {
            tracing::error!(%error, reason, "kafka client error while restoring");
        }
    }
}

impl ConsumerContext for QuietEof {}

/// Reads `partitions` of `topic` from the beginning to their end into `agg`; returns the
/// number of records applied.
pub fn restore(
    settings: &KafkaSettings,
    group_id: &str,
    topic: &str,
    partitions: &[i32],
    agg: &mut dyn StateStep,
    timeout: Duration,
) -> Result<u64, RestoreFailure> {
    if partitions.is_empty() {
        return Ok(0);
    }
    let kafka = |source| RestoreFailure::Kafka {
        topic: topic.to_string(),
        source,
    };
    let consumer: BaseConsumer<QuietEof> = settings
        .consumer_config()
        .set("group.id", format!("{group_id}-restore"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .create_with_context(QuietEof)
        .map_err(kafka)?;
    let deadline = Instant::now() + timeout;
    let mut pending: BTreeSet<i32> = BTreeSet::new();
    let mut tpl = TopicPartitionList::new();
    let mut high = std::collections::HashMap::new();
    for &p in partitions {
        let (_, hi) = loop {
            match consumer.fetch_watermarks(topic, p, Duration::from_secs(30)) {
                // A changelog created a moment ago may have no leader yet.
                Err(e) if transient(&e) && Instant::now() < deadline => {
                    tracing::debug!(error = %e, topic, partition = p, "changelog not ready yet: retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                other => break other.map_err(kafka)?,
            }
        };
        if hi > 0 {
            pending.insert(p);
            high.insert(p, hi);
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .map_err(kafka)?;
        }
    }
    if pending.is_empty() {
        return Ok(0);
    }
    consumer.assign(&tpl).map_err(kafka)?;
    let mut applied = 0u64;
    while !pending.is_empty() {
        if Instant::now() > deadline {
            return Err(RestoreFailure::Timeout {
                topic: topic.to_string(),
                partitions: pending.into_iter().collect(),
                timeout,
            });
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                if let Some(k) = m.key() {
                    agg.restore(m.partition(), k, m.payload())
                        .map_err(|source| RestoreFailure::Corrupt {
                            topic: topic.to_string(),
                            source,
                        })?;
                    applied += 1;
                }
                if m.offset() + 1 >= high.get(&m.partition()).copied().unwrap_or(0) {
                    pending.remove(&m.partition());
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {
                // Control records (transaction markers) take offsets too: compare the
                // position, not the last record, with the high watermark.
                let pos = consumer.position().map_err(kafka)?;
                for e in pos.elements_for_topic(topic) {
                    if let Offset::Offset(o) = e.offset()
                        && o >= high.get(&e.partition()).copied().unwrap_or(0)
                    {
                        pending.remove(&e.partition());
                    }
                }
            }
            Some(Err(e)) => return Err(kafka(e)),
        }
    }
    Ok(applied)
}

/// Errors a topic created a moment ago gives until its partitions have leaders.
fn transient(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::OperationTimedOut
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_without_a_leader_yet_is_retried_and_a_bad_config_is_not() {
        let missing_leader = KafkaError::MetadataFetch(RDKafkaErrorCode::NotLeaderForPartition);
        assert!(transient(&missing_leader));
        assert!(transient(&KafkaError::MetadataFetch(
            RDKafkaErrorCode::UnknownTopicOrPartition
        )));
        assert!(!transient(&KafkaError::MetadataFetch(
            RDKafkaErrorCode::TopicAuthorizationFailed
        )));
        assert!(!transient(&KafkaError::ClientCreation("bad".into())));
    }
}
