//! The pump: reads a [`Source`], writes a [`Sink`] in batches, dead-letters what the
//! sink refuses, and commits through the commit core ([`Ledger`]):
//!
//! - a [`Promise::Transactional`] sink stores the consumed positions with the data: the
//!   ledger runs `exactlyOnce`, the positions are read back from the sink whenever
//!   partitions are gained (records below them are skipped), and the source's own
//!   commit only shows progress (lag);
//! - other sinks run `atLeastOnce`: the source's offsets are committed once the batch is
//!   durable in the sink.
//!
//! While the sink writes and commits a batch, the pump reads the next one from the
//! source ([`Ahead`]), so the target's time and the source's overlap; it holds at most
//! two batches.
//!
//! A target that cannot be reached (or a replica that took over the partitions) makes
//! the pump drop the batch, wait with a growing backoff, and read again from the last
//! commit: memory stays bounded and nothing is lost. So does a new assignment while
//! records are in hand: they may be of partitions given up, or read before a partition
//! given back was sought to its last commit.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;

use super::ledger::{Admit, Commit, Delivery, Ledger, Offsets};
use super::sink::{Promise, Sink, SinkError, SourceRecord};
use super::source::{Source, SourceError};
use crate::health::Status;
use crate::kafka::dead_letters::DeadLetters;
use crate::metrics::{PipelineMetrics, SinkMetrics};

/// The first wait after the target failed; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long one poll of the source waits for a record.
const POLL: Duration = Duration::from_millis(100);
/// Records read ahead at a time before the sink's work is looked at again.
const READ_AHEAD_STEP: usize = 64;
/// The pause of reading ahead when the source has nothing.
const READ_AHEAD_IDLE: Duration = Duration::from_millis(1);

/// How the pump batches.
#[derive(Debug, Clone)]
pub struct PumpOptions {
    /// The sink's name, for dead letters and logs (`postgres`, `s3`, `http`).
    pub sink: String,
    /// Most records in a batch.
    pub batch_records: usize,
    /// Longest wait for a batch to fill.
    pub batch_interval: Duration,
    /// Most bytes (keys and values) in a batch, when the sink bounds it.
    pub batch_bytes: Option<usize>,
}

/// Why the pump stopped.
#[derive(Debug, thiserror::Error)]
pub enum PumpError {
    /// The source failed for good.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The sink cannot run as configured.
    #[error("the {sink} sink: {error}")]
    Sink {
        /// The sink.
        sink: String,
        /// Why.
        error: SinkError,
    },
    /// A record was refused and there is nowhere to put it.
    #[error(
        "record {topic}/{partition}@{offset} refused by the {sink} sink: {error} -- the connector has no spec.deadLetter topic, so it stopped rather than drop the record (its offset is not committed); set spec.deadLetter to keep going past refused records"
    )]
    NoDeadLetter {
        /// The sink.
        sink: String,
        /// Source topic.
        topic: String,
        /// Source partition.
        partition: i32,
        /// Source offset.
        offset: i64,
        /// The target's message.
        error: String,
    },
}

/// Why a batch was not committed: the pump recovers from these by reading again.
#[derive(Debug, thiserror::Error)]
enum Retry {
    #[error(transparent)]
    Sink(SinkError),
    #[error("cannot write to the dead-letter topic {topic}: {source}")]
    DeadLetter { topic: String, source: KafkaError },
    #[error("dead letters not delivered: {0}")]
    Undelivered(#[from] super::ledger::Rewind),
    /// Not to be retried: the pump stops with this.
    #[error(transparent)]
    Stop(Box<PumpError>),
}

/// Runs the pump until `status.shutdown` is set (then commits what it holds) or a fatal
/// error.
pub struct Pump<S, K> {
    /// Where records come from.
    pub source: S,
    /// Where they go.
    pub sink: K,
    /// Where refused records go.
    pub dead_letters: Option<DeadLetters>,
    /// Batching.
    pub options: PumpOptions,
    /// Readiness and shutdown.
    pub status: Arc<Status>,
    /// Counters.
    pub metrics: PipelineMetrics,
    /// The sink's own counters.
    pub sink_metrics: SinkMetrics,
}

/// The pump's moving parts while it runs.
struct Running<'p, S, K> {
    pump: &'p mut Pump<S, K>,
    runtime: &'p tokio::runtime::Runtime,
    ledger: Ledger,
    batch: Vec<SourceRecord>,
    /// Bytes of keys and values in `batch`.
    batch_bytes: usize,
    /// Records read but not yet taken into the batch.
    ahead: Ahead,
    /// Transactional sinks: the next offset the sink holds per partition; records below
    /// it are already written.
    stored: HashMap<(Arc<str>, i32), i64>,
    assigned: Vec<(Arc<str>, i32)>,
    backoff: Duration,
}

/// Bytes of a record's key and value.
fn record_bytes(record: &SourceRecord) -> usize {
    record.key.as_ref().map_or(0, Vec::len) + record.value.as_ref().map_or(0, Vec::len)
}

/// Records read from the source and not yet taken: the next batch, read while the sink
/// works on the last one.
#[derive(Default)]
struct Ahead {
    records: VecDeque<SourceRecord>,
    bytes: usize,
}

impl Ahead {
    /// Reads one record, waiting at most `timeout`; answers whether one came.
    fn read(&mut self, source: &mut impl Source, timeout: Duration) -> bool {
        match source.next(timeout) {
            Some(Ok(record)) => {
                self.bytes += record_bytes(&record);
                self.records.push_back(record);
                true
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "source error");
                false
            }
            None => false,
        }
    }

    fn pop(&mut self) -> Option<SourceRecord> {
        let record = self.records.pop_front()?;
        self.bytes -= record_bytes(&record);
        Some(record)
    }

    fn len(&self) -> usize {
        self.records.len()
    }

    fn clear(&mut self) {
        self.records.clear();
        self.bytes = 0;
    }

    /// Whether a whole batch is read ahead.
    fn full(&self, options: &PumpOptions) -> bool {
        self.records.len() >= options.batch_records
            || options.batch_bytes.is_some_and(|most| self.bytes >= most)
    }

    /// Reads ahead until a batch is full, yielding between steps; never ends by itself.
    async fn fill(&mut self, source: &mut impl Source, options: &PumpOptions) -> Infallible {
        loop {
            let mut read = 0;
            while read < READ_AHEAD_STEP && !self.full(options) && self.read(source, Duration::ZERO)
            {
                read += 1;
            }
            if self.full(options) {
                return std::future::pending().await;
            }
            if read == 0 {
                tokio::time::sleep(READ_AHEAD_IDLE).await;
            } else {
                tokio::task::yield_now().await;
            }
        }
    }
}

/// Runs `work` (the sink writing or committing a batch) to its end while `ahead` reads
/// the next records from `source`.
async fn reading_ahead<T>(
    work: impl Future<Output = T>,
    ahead: &mut Ahead,
    source: &mut impl Source,
    options: &PumpOptions,
) -> T {
    tokio::select! {
        biased;
        out = work => out,
        never = ahead.fill(source, options) => match never {},
    }
}

impl<S: Source, K: Sink> Pump<S, K> {
    /// Runs until shutdown or a fatal error; sink calls run on `runtime`.
    pub fn run(&mut self, runtime: &tokio::runtime::Runtime) -> Result<(), PumpError> {
        let delivery = match self.sink.promise() {
            Promise::Transactional => Delivery::ExactlyOnce,
            Promise::Idempotent | Promise::AtLeastOnce => Delivery::AtLeastOnce,
        };
        let interval = self.options.batch_interval;
        let mut r = Running {
            pump: self,
            runtime,
            ledger: Ledger::new(delivery, interval, Instant::now()),
            batch: Vec::new(),
            batch_bytes: 0,
            ahead: Ahead::default(),
            stored: HashMap::new(),
            assigned: Vec::new(),
            backoff: FIRST_BACKOFF,
        };
        r.run()
    }
}

impl<S: Source, K: Sink> Running<'_, S, K> {
    fn run(&mut self) -> Result<(), PumpError> {
        let result = self.turn();
        self.pump.status.ready.store(false, Ordering::Relaxed);
        result
    }

    fn turn(&mut self) -> Result<(), PumpError> {
        loop {
            if self.pump.status.shutdown.load(Ordering::Relaxed) {
                return match self.flush() {
                    Ok(()) => Ok(()),
                    Err(retry) => {
                        tracing::warn!(error = %retry, "the last batch was not committed: it is read again on the next start");
                        self.discard();
                        Ok(())
                    }
                };
            }
            if self.ahead.len() == 0 {
                self.ahead.read(&mut self.pump.source, POLL);
            }
            // A record read in the poll that changed the assignment is in hand already.
            self.follow_assignment()?;
            if let Some(record) = self.ahead.pop() {
                self.take(record);
            }
            self.pump.status.beat();
            if self.batch.len() >= self.pump.options.batch_records
                || self
                    .pump
                    .options
                    .batch_bytes
                    .is_some_and(|most| self.batch_bytes >= most)
                || self.ledger.due(Instant::now())
            {
                match self.flush() {
                    Ok(()) => self.backoff = FIRST_BACKOFF,
                    Err(retry) => self.recover(retry)?,
                }
            }
        }
    }

    /// Takes a record into the batch, unless its partition is gone or the sink holds it.
    fn take(&mut self, record: SourceRecord) {
        let origin = &record.origin;
        if self.ledger.admit(&origin.topic, origin.partition) == Admit::Skip {
            return;
        }
        if self
            .stored
            .get(&(origin.topic.clone(), origin.partition))
            .is_some_and(|next| origin.offset < *next)
        {
            return;
        }
        self.pump.metrics.records_in.inc();
        self.ledger.processed(origin.clone());
        self.batch_bytes += record_bytes(&record);
        self.batch.push(record);
    }

    /// Follows a new assignment. Records in hand (the batch, and those read ahead) are
    /// dropped and every partition is read again from its last commit: some may be of
    /// partitions given up (their new owner reads them), and some may have been read
    /// before a partition given back was sought to its last commit. With nothing in
    /// hand, only the partitions gained are sought to the sink's positions.
    fn follow_assignment(&mut self) -> Result<(), PumpError> {
        let Some(assignment) = self.pump.source.assignment_changed()? else {
            return Ok(());
        };
        self.pump.metrics.rebalances.inc();
        self.pump
            .metrics
            .assigned_partitions
            .set(i64::try_from(assignment.len()).unwrap_or(0));
        let gained: Vec<(Arc<str>, i32)> = assignment
            .iter()
            .filter(|p| !self.assigned.contains(p))
            .cloned()
            .collect();
        self.stored.retain(|p, _| assignment.contains(p));
        self.ledger.assigned(assignment.clone());
        self.assigned = assignment;
        tracing::info!(partitions = self.assigned.len(), "assignment changed");
        let held = self.batch.len() + self.ahead.len();
        if held > 0 {
            tracing::info!(
                records = held,
                "the records in hand are read again from the last commit under the new assignment"
            );
            self.discard();
            while let Err(e) = self.read_again() {
                self.wait_after(&Retry::Sink(e))?;
            }
        } else if !gained.is_empty() {
            while let Err(e) = self.reposition(&gained) {
                self.wait_after(&Retry::Sink(e))?;
            }
        }
        self.pump.status.ready.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Reads every assigned partition again from the last commit: the source's committed
    /// offsets, then the sink's positions where it stores them.
    fn read_again(&mut self) -> Result<(), SinkError> {
        self.pump
            .source
            .rewind()
            .map_err(|e| SinkError::Unavailable(e.to_string()))?;
        self.stored.clear();
        let assigned = self.assigned.clone();
        self.reposition(&assigned)
    }

    /// Transactional sinks: reads where the sink continues `partitions` and seeks there.
    fn reposition(&mut self, partitions: &[(Arc<str>, i32)]) -> Result<(), SinkError> {
        if self.pump.sink.promise() != Promise::Transactional {
            return Ok(());
        }
        let positions = self
            .runtime
            .block_on(self.pump.sink.positions(partitions))?;
        self.pump
            .source
            .seek(&positions)
            .map_err(|e| SinkError::Unavailable(e.to_string()))?;
        let own = self.pump.sink.source_positions();
        self.pump
            .source
            .resume(&own)
            .map_err(|e| SinkError::Unavailable(e.to_string()))?;
        for (t, p, next) in positions {
            self.stored.insert((t, p), next);
        }
        Ok(())
    }

    /// Writes the batch, dead-letters what the sink refused, and commits.
    fn flush(&mut self) -> Result<(), Retry> {
        let now = Instant::now();
        if !self.ledger.has_uncommitted() {
            self.ledger.nothing_to_commit(now);
            return Ok(());
        }
        let started = Instant::now();
        let pump = &mut *self.pump;
        let refused = self
            .runtime
            .block_on(reading_ahead(
                pump.sink.write(&self.batch),
                &mut self.ahead,
                &mut pump.source,
                &pump.options,
            ))
            .map_err(Retry::Sink)?;
        if !refused.is_empty() {
            let sink = self.pump.options.sink.clone();
            let Some(dlq) = self.pump.dead_letters.as_ref() else {
                let first = &refused[0];
                let o = &self.batch[first.index].origin;
                return Err(Retry::Stop(Box::new(PumpError::NoDeadLetter {
                    sink,
                    topic: o.topic.to_string(),
                    partition: o.partition,
                    offset: o.offset,
                    error: first.error.clone(),
                })));
            };
            for r in &refused {
                dlq.send(&self.batch[r.index], &sink, &r.error, &mut self.ledger)
                    .map_err(|source| Retry::DeadLetter {
                        topic: dlq.topic().to_string(),
                        source,
                    })?;
            }
            dlq.flush(&mut self.ledger)
                .map_err(|source| Retry::DeadLetter {
                    topic: dlq.topic().to_string(),
                    source,
                })?;
            if self.ledger.any_failed() {
                return Err(Retry::Undelivered(super::ledger::Rewind::Refused(format!(
                    "the dead-letter topic {} refused a record",
                    dlq.topic()
                ))));
            }
            self.pump.metrics.dead_lettered.inc_by(refused.len() as u64);
        }
        let batch = self.ledger.batch();
        let offsets = match self.ledger.commit_everything(now)? {
            Commit::Nothing => return Ok(()),
            Commit::Transaction(offsets) | Commit::Offsets(offsets) => offsets,
        };
        let pump = &mut *self.pump;
        self.runtime
            .block_on(reading_ahead(
                pump.sink.commit(&offsets),
                &mut self.ahead,
                &mut pump.source,
                &pump.options,
            ))
            .map_err(Retry::Sink)?;
        self.ledger.committed(Instant::now());
        self.pump
            .sink_metrics
            .write_seconds
            .observe(started.elapsed().as_secs_f64());
        self.pump.sink_metrics.bytes.inc_by(self.batch_bytes as u64);
        self.committed(&offsets, batch, refused.len());
        Ok(())
    }

    /// After a commit: the source shows the progress, and the counters count it.
    fn committed(&mut self, offsets: &Offsets, batch: u64, refused: usize) {
        let transactional = self.pump.sink.promise() == Promise::Transactional;
        if transactional {
            for (t, p, next) in offsets {
                self.stored.insert((t.clone(), *p), *next);
            }
        }
        // Transactional sinks hold the positions themselves: the group's commit only
        // shows the lag, and need not wait.
        if let Err(e) = self.pump.source.commit(offsets, !transactional) {
            tracing::warn!(error = %e, "cannot commit the source's offsets");
        }
        let written = self.batch.len().saturating_sub(refused) as u64;
        self.pump.metrics.records_out.inc_by(written);
        self.pump.metrics.commits.inc();
        self.pump.metrics.batch_size.observe(batch as f64);
        self.pump.status.committed();
        self.batch.clear();
        self.batch_bytes = 0;
    }

    /// Drops what was not committed: the sink aborts, the batch and what was read ahead
    /// go (the caller reads them again from the last commit).
    fn discard(&mut self) {
        self.runtime.block_on(self.pump.sink.abort());
        self.ledger.discard(Instant::now());
        self.batch.clear();
        self.batch_bytes = 0;
        self.ahead.clear();
        self.pump.metrics.aborts.inc();
    }

    /// After a batch failed: drop it, wait, and read again from the last commit (the
    /// sink's positions, or the source's committed offsets).
    fn recover(&mut self, retry: Retry) -> Result<(), PumpError> {
        self.discard();
        self.pump.sink_metrics.retries.inc();
        if let Retry::Stop(stop) = retry {
            return Err(*stop);
        }
        loop {
            self.wait_after(&retry)?;
            match self.read_again() {
                Ok(()) => return Ok(()),
                Err(e) => tracing::warn!(error = %e, "cannot read the positions again"),
            }
        }
    }

    /// Reports `retry`, stops on a fatal sink error, and waits the backoff.
    fn wait_after(&mut self, retry: &Retry) -> Result<(), PumpError> {
        if let Retry::Sink(SinkError::Fatal(error)) = retry {
            return Err(PumpError::Sink {
                sink: self.pump.options.sink.clone(),
                error: SinkError::Fatal(error.clone()),
            });
        }
        tracing::warn!(error = %retry, backoff_ms = self.backoff.as_millis() as u64, "batch not committed: reading again from the last commit after the backoff");
        self.pump.status.rewound(&retry.to_string());
        let until = Instant::now() + self.backoff;
        while Instant::now() < until && !self.pump.status.shutdown.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
            self.pump.status.beat();
        }
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
