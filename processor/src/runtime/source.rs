//! What a source is to the runtime: records to read, an assignment of partitions that
//! may change, positions to seek to and to commit.

use std::sync::Arc;
use std::time::Duration;

use super::ledger::Offsets;
use super::sink::{SourcePosition, SourceRecord};

/// Partitions of a source: topic and partition.
pub type Partitions = Vec<(Arc<str>, i32)>;

/// Why a source failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

/// Where records come from.
pub trait Source {
    /// The next record, waiting at most `timeout` for one.
    fn next(&mut self, timeout: Duration) -> Option<Result<SourceRecord, SourceError>>;

    /// The partitions now assigned, when they changed since the last call.
    fn assignment_changed(&mut self) -> Result<Option<Partitions>, SourceError>;

    /// Reads each partition named from the offset given next.
    fn seek(&mut self, positions: &Offsets) -> Result<(), SourceError>;

    /// Continues from the source's own positions as the sink stored them (after
    /// [`Source::seek`], with what [`crate::runtime::sink::Sink::source_positions`]
    /// answers, possibly nothing); sources whose offsets say it all ignore it.
    fn resume(&mut self, positions: &[SourcePosition]) -> Result<(), SourceError> {
        let _ = positions;
        Ok(())
    }

    /// Reads every assigned partition again from its last committed offset.
    fn rewind(&mut self) -> Result<(), SourceError>;

    /// Records `offsets` as committed (waiting for it when `wait`).
    fn commit(&mut self, offsets: &Offsets, wait: bool) -> Result<(), SourceError>;
}
