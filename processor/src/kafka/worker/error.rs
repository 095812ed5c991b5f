//! Why the worker stops, and which failures a rewind can recover from.

use super::*;

/// Why the worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A client could not be created or configured.
    #[error("cannot set up the Kafka client: {0}")]
    Setup(KafkaError),
    /// A transactional call failed fatally (for example the producer was fenced by a newer
    /// instance with the same transactional id).
    #[error("transaction failed: {0}")]
    Transaction(KafkaError),
    /// Offsets could not be committed.
    #[error("cannot commit offsets: {0}")]
    Commit(KafkaError),
    /// The producer could not deliver everything in time.
    #[error("cannot flush the producer: {0}")]
    Flush(KafkaError),
    /// An output was refused, or left unanswered by a flush: nothing can be committed
    /// until the loop rewinds.
    #[error("cannot commit: {0}")]
    Undelivered(#[from] crate::runtime::ledger::Rewind),
    /// State could not be restored.
    #[error(transparent)]
    Restore(#[from] RestoreFailure),
    /// A record failed and there is nowhere to put it.
    #[error(
        "record {topic}/{partition}@{offset} failed in {}: {} -- the pipeline has no spec.deadLetter topic, so it stopped rather than drop the record (its offset is not committed); set spec.deadLetter to keep going past bad records",
        .failure.step, .failure.error
    )]
    NoDeadLetter {
        /// Source topic.
        topic: String,
        /// Source partition.
        partition: i32,
        /// Source offset.
        offset: i64,
        /// What failed.
        failure: Failure,
    },
    /// The transform lane's thread is gone.
    #[error(transparent)]
    Lane(#[from] LaneError),
    /// The dead-letter topic itself cannot be written.
    #[error("cannot write to the dead-letter topic {topic}: {source}")]
    DeadLetter {
        /// The topic.
        topic: String,
        /// The error.
        source: KafkaError,
    },
}

impl WorkerError {
    /// Whether aborting and rewinding can recover.
    pub(super) fn recoverable(&self) -> bool {
        match self {
            WorkerError::Transaction(KafkaError::Transaction(e)) => !e.is_fatal(),
            WorkerError::Transaction(_)
            | WorkerError::Commit(_)
            | WorkerError::Flush(_)
            | WorkerError::Undelivered(_) => true,
            _ => false,
        }
    }
}
