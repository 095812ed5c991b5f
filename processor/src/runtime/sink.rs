//! What a sink is to the runtime: it writes batches of records, says which records it
//! refuses for what they are, and makes a batch durable in a commit. Each sink declares
//! what it can promise, and the pump ([`super::pump`]) keeps that promise through the
//! commit core.

use std::future::Future;
use std::sync::Arc;

use super::ledger::{Offsets, Origin};

/// What a sink can promise about its writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Promise {
    /// Writes and the consumed positions commit in one transaction of the target; the
    /// sink reads the positions back on start: exactly once.
    Transactional,
    /// Writing a record again leaves the target as it was (an upsert): a replay after a
    /// crash repeats nothing visible.
    Idempotent,
    /// Neither: a replay after a crash may write a record again (at least once).
    AtLeastOnce,
}

/// A record read from a source, as the sink receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceRecord {
    /// Where it was read.
    pub origin: Origin,
    /// Its key.
    pub key: Option<Vec<u8>>,
    /// Its value (`None`: a tombstone).
    pub value: Option<Vec<u8>>,
    /// Its headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Its timestamp (ms since the epoch).
    pub timestamp: Option<i64>,
    /// The topic a source names for the record (a CDC table's topic); a sink that writes
    /// to Kafka writes it there, others ignore it.
    pub destination: Option<Arc<str>>,
    /// The source's own position after this record, when its offset alone cannot say it
    /// (a change stream's LSNs): a sink that stores positions stores the last one beside
    /// the offset, and gives it back to the source on start ([`Sink::source_positions`]).
    pub position: Option<Arc<str>>,
}

/// A source's own position in one of its partitions, as a sink stored it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePosition {
    /// The source partition.
    pub topic: Arc<str>,
    /// Its number.
    pub partition: i32,
    /// The position after the last committed record ([`SourceRecord::position`]).
    pub position: Arc<str>,
}

/// A record of a batch the target refused for what it is: it goes to the dead-letter
/// topic, and the rest of the batch is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Its index in the batch.
    pub index: usize,
    /// The target's message.
    pub error: String,
}

/// Why a sink could not write or commit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// The target cannot be reached, or failed in passing: retried with backoff, the
    /// batch read again from the last commit.
    #[error("{0}")]
    Unavailable(String),
    /// Another writer moved the stored positions (a replica that took over these
    /// partitions): nothing of this batch is kept, and the positions are read again.
    #[error("{0}")]
    Fenced(String),
    /// The sink cannot run as configured (a missing table, a refused login).
    #[error("{0}")]
    Fatal(String),
}

/// A target the pump loads records into.
pub trait Sink {
    /// What the sink promises.
    fn promise(&self) -> Promise;

    /// Where the target's own store says each of `partitions` continues
    /// ([`Promise::Transactional`]; others answer nothing, the default).
    fn positions(
        &mut self,
        partitions: &[(Arc<str>, i32)],
    ) -> impl Future<Output = Result<Offsets, SinkError>> {
        let _ = partitions;
        std::future::ready(Ok(Vec::new()))
    }

    /// Writes `batch` (not yet durable); answers the records refused for what they are.
    fn write(
        &mut self,
        batch: &[SourceRecord],
    ) -> impl Future<Output = Result<Vec<Refused>, SinkError>>;

    /// Makes what was written since the last commit durable, with `positions` (the next
    /// offset per partition) when the sink stores them. The default is for sinks whose
    /// writes are durable once `write` returns.
    fn commit(&mut self, positions: &Offsets) -> impl Future<Output = Result<(), SinkError>> {
        let _ = positions;
        std::future::ready(Ok(()))
    }

    /// The sources' own positions read back by [`Sink::positions`], for the partitions
    /// whose last committed record carried one ([`SourceRecord::position`]).
    fn source_positions(&self) -> Vec<SourcePosition> {
        Vec::new()
    }

    /// Drops what was written since the last commit (by default nothing: what `write`
    /// wrote stays, and is written again on the replay).
    fn abort(&mut self) -> impl Future<Output = ()> {
        std::future::ready(())
    }
}

/// A record of `topic`/`partition` at `offset` with `value`, for tests.
#[cfg(test)]
pub fn test_record(topic: &str, partition: i32, offset: i64, value: Option<&str>) -> SourceRecord {
    SourceRecord {
        origin: Origin {
            topic: Arc::from(topic),
            partition,
            offset,
        },
        key: None,
        value: value.map(|v| v.as_bytes().to_vec()),
        headers: Vec::new(),
        timestamp: None,
        destination: None,
        position: None,
    }
}
