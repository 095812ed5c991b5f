//! Reading a compacted topic from its beginning to its end, a little at a time: the one
//! reader behind state restore (changelog partitions, then stop) and enrich tables (every
//! partition, then keep following).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use super::KafkaSettings;

/// Longest a step waits for the end of a partition to be known (one partition a step).
const MEASURE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long to wait before asking again for the end of a partition without a leader yet.
const MEASURE_BACKOFF: Duration = Duration::from_millis(200);

/// How long one poll waits at most.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);

/// Client callbacks that do not log reaching the end of a partition as an error (it is
/// how a reader knows it is done).
pub(crate) struct QuietEof;

impl ClientContext for QuietEof {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::PartitionEOF(_)) {
            tracing::error!(%error, reason, "kafka client error while reading a compacted topic");
        }
    }
}

impl ConsumerContext for QuietEof {}

/// Why reading stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError<E> {
    /// Kafka failed.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// A record could not be applied.
    #[error(transparent)]
    Apply(E),
    /// The end was not reached in time (a transaction that never ends?).
    #[error("partitions {partitions:?} did not reach their end within {timeout:?}")]
    Timeout {
        /// Partitions not done.
        partitions: Vec<i32>,
        /// The limit.
        timeout: Duration,
    },
}

/// What happens to a partition once it is read to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtEnd {
    /// It is no longer read (a restore).
    Stop,
    /// It goes on being read (a table that follows its topic).
    Follow,
}

/// Reads partitions of a topic (read_committed) from their beginning to the end each had
/// when first measured. A partition is done when its position reaches that end, so
/// transaction markers count. Ends not known yet (a topic created a moment ago has no
/// leader for a while) are asked again at the next step until the deadline.
pub struct CompactedReader {
    consumer: BaseConsumer<QuietEof>,
    topic: String,
    at_end: AtEnd,
    /// Partitions whose end is not known yet.
    unmeasured: BTreeSet<i32>,
    /// Partitions being read, with the end each had when measured.
    reading: HashMap<i32, i64>,
    timeout: Duration,
    deadline: Instant,
    started: Instant,
    /// No partition is measured before this (a transient error a moment ago).
    measure_after: Instant,
}

impl CompactedReader {
    /// A reader of `partitions` of `topic` in consumer group `group` (which never commits);
    /// nothing is read yet.
    pub fn new(
        settings: &KafkaSettings,
        group: &str,
        topic: &str,
        partitions: &[i32],
        timeout: Duration,
        at_end: AtEnd,
    ) -> Result<CompactedReader, KafkaError> {
        let consumer: BaseConsumer<QuietEof> = settings
            .consumer_config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .create_with_context(QuietEof)?;
        let started = Instant::now();
        Ok(CompactedReader {
            consumer,
            topic: topic.to_string(),
            at_end,
            unmeasured: partitions.iter().copied().collect(),
            reading: HashMap::new(),
            timeout,
            deadline: started + timeout,
            started,
            measure_after: started,
        })
    }

    /// The topic read.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Partitions not read to their end yet.
    pub fn pending(&self) -> Vec<i32> {
        let mut p: Vec<i32> = self.unmeasured.iter().copied().collect();
        p.extend(self.reading.keys());
        p.sort_unstable();
        p
    }

    /// Whether every partition is read to its end.
    pub fn is_finished(&self) -> bool {
        self.unmeasured.is_empty() && self.reading.is_empty()
    }

    /// Time since the reader was made.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stops reading `partitions`.
    pub fn forget(&mut self, partitions: &[i32]) -> Result<(), KafkaError> {
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            self.unmeasured.remove(p);
            if self.reading.remove(p).is_some() {
                tpl.add_partition(&self.topic, *p);
            }
        }
        if tpl.count() > 0 {
            self.consumer.incremental_unassign(&tpl)?;
        }
        Ok(())
    }

    /// Reads `partitions` too, with a new time limit for all.
    pub fn add(&mut self, partitions: &[i32]) {
        self.unmeasured.extend(partitions.iter().copied());
        self.deadline = Instant::now() + self.timeout;
    }

    /// The consumer, to follow the topic past its end ([`AtEnd::Follow`]).
    pub fn into_consumer(self) -> BaseConsumer<QuietEof> {
        self.consumer
    }

    /// Reads for about `budget`, handing each record to `apply`; returns the partitions
    /// that reached their end in this step.
    pub fn step<E>(
        &mut self,
        budget: Duration,
        mut apply: impl FnMut(&BorrowedMessage<'_>) -> Result<(), E>,
    ) -> Result<Vec<i32>, ReadError<E>> {
        let until = Instant::now() + budget;
        let mut finished = self.measure(until)?;
        while !self.reading.is_empty() {
            let now = Instant::now();
            if now > self.deadline {
                return Err(ReadError::Timeout {
                    partitions: self.pending(),
                    timeout: self.timeout,
                });
            }
            if now >= until {
                break;
            }
            match self.consumer.poll((until - now).min(POLL_TIMEOUT)) {
                Some(Ok(m)) => {
                    apply(&m).map_err(ReadError::Apply)?;
                    let partition = m.partition();
                    let reached = self
                        .reading
                        .get(&partition)
                        .is_some_and(|&end| m.offset() + 1 >= end);
                    drop(m);
                    if reached {
                        self.finish(partition, &mut finished)?;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) | None => {
                    // Control records (transaction markers) take offsets too: compare the
                    // position, not the last record, with the end.
                    let position = self.consumer.position()?;
                    let reached: Vec<i32> = position
                        .elements_for_topic(&self.topic)
                        .iter()
                        .filter(|e| {
                            matches!(e.offset(), Offset::Offset(o)
                                if self.reading.get(&e.partition()).is_some_and(|&end| o >= end))
                        })
                        .map(|e| e.partition())
                        .collect();
                    for p in reached {
                        self.finish(p, &mut finished)?;
                    }
                }
                Some(Err(e)) => return Err(e.into()),
            }
        }
        Ok(finished)
    }

    /// Learns the end of one partition not measured yet and starts reading it (one a
    /// step, so a step never waits long); an empty partition is done at once (and still
    /// followed, with [`AtEnd::Follow`]). After a transient error the next try waits a
    /// moment; when nothing else is being read, the step sleeps until then.
    fn measure<E>(&mut self, until: Instant) -> Result<Vec<i32>, ReadError<E>> {
        let mut finished = Vec::new();
        let Some(&p) = self.unmeasured.iter().next() else {
            return Ok(finished);
        };
        let now = Instant::now();
        if now < self.measure_after {
            if self.reading.is_empty() {
                std::thread::sleep(self.measure_after.min(until).saturating_duration_since(now));
            }
            return Ok(finished);
        }
        match self
            .consumer
            .fetch_watermarks(&self.topic, p, MEASURE_TIMEOUT)
        {
            Ok((low, end)) => {
                self.unmeasured.remove(&p);
                // Records deleted up to the end (low = end) leave nothing to read.
                if end > low {
                    self.reading.insert(p, end);
                } else {
                    finished.push(p);
                }
                if end > low || self.at_end == AtEnd::Follow {
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition_offset(&self.topic, p, Offset::Beginning)?;
                    self.consumer.incremental_assign(&tpl)?;
                }
            }
            Err(e) if transient(&e) && now < self.deadline => {
                tracing::debug!(error = %e, topic = %self.topic, partition = p, "partition not ready yet: retrying");
                self.measure_after = Instant::now() + MEASURE_BACKOFF;
            }
            Err(e) => return Err(e.into()),
        }
        Ok(finished)
    }

    /// A partition reached its end: with [`AtEnd::Stop`] it is no longer read.
    fn finish(&mut self, partition: i32, finished: &mut Vec<i32>) -> Result<(), KafkaError> {
        if self.reading.remove(&partition).is_none() {
            return Ok(());
        }
        finished.push(partition);
        if self.at_end == AtEnd::Stop {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&self.topic, partition);
            self.consumer.incremental_unassign(&tpl)?;
        }
        Ok(())
    }
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
