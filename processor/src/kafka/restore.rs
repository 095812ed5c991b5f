//! Rebuilding keyed state (aggregate, dedupe) from its changelog topic: each gained
//! changelog partition is read (read_committed) to its end before that partition is
//! processed, a little at a time between the worker's polls.

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::Message;

use super::KafkaSettings;
use super::compacted::{AtEnd, CompactedReader, ReadError};
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

/// A restore of changelog partitions that is read a little at a time: the worker's loop
/// calls [`Restore::step`] between polls of its own consumer, so the group keeps its
/// member, transactions commit on time and the partitions not being restored go on
/// meanwhile.
pub struct Restore {
    reader: CompactedReader,
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
        let reader = CompactedReader::new(
            settings,
            &format!("{group_id}-restore"),
            topic,
            partitions,
            timeout,
            AtEnd::Stop,
        )
        .map_err(|source| RestoreFailure::Kafka {
            topic: topic.to_string(),
            source,
        })?;
        Ok(Restore { reader, applied: 0 })
    }

    /// Partitions not restored yet.
    pub fn pending(&self) -> Vec<i32> {
        self.reader.pending()
    }

    /// Whether every partition is restored.
    pub fn is_finished(&self) -> bool {
        self.reader.is_finished()
    }

    /// Stops restoring `partitions` (given up in a rebalance).
    pub fn forget(&mut self, partitions: &[i32]) -> Result<(), RestoreFailure> {
        self.reader
            .forget(partitions)
            .map_err(|source| RestoreFailure::Kafka {
                topic: self.reader.topic().to_string(),
                source,
            })
    }

    /// Restores `partitions` too (gained in a rebalance), within a new time limit.
    pub fn add(&mut self, partitions: &[i32]) {
        self.reader.add(partitions);
    }

    /// Changelog records applied so far.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Time since the restore started.
    pub fn elapsed(&self) -> Duration {
        self.reader.elapsed()
    }

    /// The changelog topic.
    pub fn topic(&self) -> &str {
        self.reader.topic()
    }

    /// Reads into `state` for about `budget`; returns the partitions finished in this step.
    pub fn step(
        &mut self,
        state: &mut dyn StateStep,
        budget: Duration,
    ) -> Result<Vec<i32>, RestoreFailure> {
        let applied = &mut self.applied;
        let result = self.reader.step(budget, |m| {
            let Some(key) = m.key() else { return Ok(()) };
            state.restore(m.partition(), key, m.payload())?;
            *applied += 1;
            Ok(())
        });
        let topic = self.reader.topic().to_string();
        result.map_err(|e| match e {
            ReadError::Kafka(source) => RestoreFailure::Kafka { topic, source },
            ReadError::Apply(source) => RestoreFailure::Corrupt { topic, source },
            ReadError::Timeout {
                partitions,
                timeout,
            } => RestoreFailure::Timeout {
                topic,
                partitions,
                timeout,
            },
        })
    }
}
