//! Rebuilding keyed state (aggregate, dedupe) from its changelog topic: each gained
//! changelog partition is read (read_committed) to its end before that partition is
//! processed, a little at a time between the worker's polls.

use std::collections::{BTreeSet, HashMap};
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

/// Longest a step waits for the end of a changelog partition to be known.
const MEASURE_TIMEOUT: Duration = Duration::from_secs(5);

/// A restore of changelog partitions that is read a little at a time: the worker's loop
/// calls [`Restore::step`] between polls of its own consumer, so the group keeps its
/// member, transactions commit on time and the partitions not being restored go on
/// meanwhile. Each partition is read (read_committed) from its beginning to the end it
/// had when the restore started; it is done when its position reaches that end.
pub struct Restore {
    consumer: BaseConsumer<QuietEof>,
    topic: String,
    /// Partitions whose end is not known yet (a changelog created a moment ago may have no
    /// leader yet).
    unmeasured: BTreeSet<i32>,
    /// Partitions being read, with the end each had when measured.
    reading: HashMap<i32, i64>,
    timeout: Duration,
    deadline: Instant,
    started: Instant,
    applied: u64,
}

impl Restore {
    /// Starts restoring `partitions` of the changelog `topic`; nothing is read yet.
    pub fn start(
        settings: &KafkaSettings,
        group_id: &str,
        topic: &str,
        partitions: &[i32],
        timeout: Duration,
    ) -> Result<Restore, RestoreFailure> {
        let consumer: BaseConsumer<QuietEof> = settings
            .consumer_config()
            .set("group.id", format!("{group_id}-restore"))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .create_with_context(QuietEof)
            .map_err(|source| RestoreFailure::Kafka {
                topic: topic.to_string(),
                source,
            })?;
        let started = Instant::now();
        Ok(Restore {
            consumer,
            topic: topic.to_string(),
            unmeasured: partitions.iter().copied().collect(),
            reading: HashMap::new(),
            timeout,
            deadline: started + timeout,
            started,
            applied: 0,
        })
    }

    /// Partitions not restored yet.
    pub fn pending(&self) -> Vec<i32> {
        let mut p: Vec<i32> = self.unmeasured.iter().copied().collect();
        p.extend(self.reading.keys());
        p.sort_unstable();
        p
    }

    /// Whether every partition is restored.
    pub fn is_finished(&self) -> bool {
        self.unmeasured.is_empty() && self.reading.is_empty()
    }

    /// Changelog records applied so far.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Time since the restore started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The changelog topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Reads into `state` for about `budget`; returns the partitions finished in this step.
    pub fn step(
        &mut self,
        state: &mut dyn StateStep,
        budget: Duration,
    ) -> Result<Vec<i32>, RestoreFailure> {
        let until = Instant::now() + budget;
        let mut finished = self.measure()?;
        while !self.reading.is_empty() {
            let now = Instant::now();
            if now > self.deadline {
                return Err(RestoreFailure::Timeout {
                    topic: self.topic.clone(),
                    partitions: self.pending(),
                    timeout: self.timeout,
                });
            }
            if now >= until {
                break;
            }
            match self.consumer.poll((until - now).min(POLL_TIMEOUT)) {
                Some(Ok(m)) => {
                    if let Some(k) = m.key() {
                        state
                            .restore(m.partition(), k, m.payload())
                            .map_err(|source| RestoreFailure::Corrupt {
                                topic: self.topic.clone(),
                                source,
                            })?;
                        self.applied += 1;
                    }
                    let partition = m.partition();
                    let end = self.reading.get(&partition).copied().unwrap_or(0);
                    if m.offset() + 1 >= end {
                        drop(m);
                        self.finish(partition, &mut finished)?;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) | None => {
                    // Control records (transaction markers) take offsets too: compare the
                    // position, not the last record, with the end.
                    let position = self.consumer.position().map_err(|e| self.kafka(e))?;
                    let reached: Vec<i32> = position
                        .elements_for_topic(&self.topic)
                        .iter()
                        .filter_map(|e| match e.offset() {
                            Offset::Offset(o)
                                if self
                                    .reading
                                    .get(&e.partition())
                                    .is_some_and(|&end| o >= end) =>
                            {
                                Some(e.partition())
                            }
                            _ => None,
                        })
                        .collect();
                    for p in reached {
                        self.finish(p, &mut finished)?;
                    }
                }
                Some(Err(e)) => return Err(self.kafka(e)),
            }
        }
        Ok(finished)
    }

    /// Learns the end of the partitions not measured yet and starts reading them; an
    /// empty partition is finished at once.
    fn measure(&mut self) -> Result<Vec<i32>, RestoreFailure> {
        let mut finished = Vec::new();
        if self.unmeasured.is_empty() {
            return Ok(finished);
        }
        let mut tpl = TopicPartitionList::new();
        for p in self.unmeasured.clone() {
            match self
                .consumer
                .fetch_watermarks(&self.topic, p, MEASURE_TIMEOUT)
            {
                Ok((_, end)) => {
                    self.unmeasured.remove(&p);
                    if end > 0 {
                        self.reading.insert(p, end);
                        tpl.add_partition_offset(&self.topic, p, Offset::Beginning)
                            .map_err(|e| self.kafka(e))?;
                    } else {
                        finished.push(p);
                    }
                }
                Err(e) if transient(&e) && Instant::now() < self.deadline => {
                    tracing::debug!(error = %e, topic = %self.topic, partition = p, "changelog not ready yet: retrying");
                }
                Err(e) => return Err(self.kafka(e)),
            }
        }
        if tpl.count() > 0 {
            self.consumer
                .incremental_assign(&tpl)
                .map_err(|e| self.kafka(e))?;
        }
        Ok(finished)
    }

    /// A partition reached its end: it stops being read.
    fn finish(&mut self, partition: i32, finished: &mut Vec<i32>) -> Result<(), RestoreFailure> {
        if self.reading.remove(&partition).is_none() {
            return Ok(());
        }
        finished.push(partition);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, partition);
        self.consumer
            .incremental_unassign(&tpl)
            .map_err(|e| self.kafka(e))
    }

    fn kafka(&self, source: KafkaError) -> RestoreFailure {
        RestoreFailure::Kafka {
            topic: self.topic.clone(),
            source,
        }
    }
}

/// How long one poll of the changelog waits at most.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);

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
