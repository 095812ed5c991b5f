//! The consume-transform-produce loop.
//!
//! One thread owns a consumer and a producer. Records are processed one at a time as
//! they are polled; outputs go to the producer; every `commitInterval` the worker
//! commits:
//!
//! - `exactlyOnce`: one transactional producer per consumer (KIP-447). Outputs, the
//!   aggregate's changelog records and the consumed offsets (with the consumer's group
//!   metadata, so a zombie from an older generation is fenced) commit in one transaction.
//!   On an error the transaction is aborted and the worker rewinds: state is rebuilt
//!   from the changelog and every partition goes back to its committed offset.
//! - `atLeastOnce`: the loop does not stop to flush. Each interval's offsets are sealed
//!   and committed (asynchronously) once every output produced up to them is
//!   acknowledged (`acks`); a failed delivery rewinds as above. At a rebalance and at
//!   shutdown the producer is flushed and everything is committed synchronously.
//!
//! Rebalances use the cooperative protocol (`cooperative-sticky`): partitions that keep
//! their owner are not stopped. On revoke the worker commits what it has; after each
//! change it drops the state of partitions it lost and restores the ones it gained from
//! the changelog before processing them.
//!
//! A record whose output cannot be delivered is remembered ("poisoned"); after the
//! rewind it is written to the dead-letter topic instead of being produced again. An
//! `emit: onCommit` output the broker refused is remembered by topic and key: after the
//! rewind, the group's next total goes to the dead-letter topic instead.
//!
//! Backpressure: the loop blocks while the producer queue is full, so the consumer
//! stops fetching once its own bounded queue fills: memory stays bounded.
//!
//! A pipeline without state hands the per-record work (decode, steps, encode) to a
//! second thread, the transform lane (`lane`), and keeps consuming meanwhile; records
//! come back in order and are handled here as above.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use sluice_crds::pipeline::StartFrom;

use super::KafkaSettings;
use super::acks::{DeliveryTracker, Origin, Sent};
use super::headers::headers_of;
use super::lane::{self, Batch, Lane, LaneError, keep_buffer};
use super::output::{Output, send};
use super::restore::{Restore, RestoreFailure};
use crate::engine::{Emit, Engine, Failure};
use crate::pace::Pacer;
use crate::runtime::ledger::{Admit, Ledger, Offsets};

/// Records processed between two looks at delivery reports and the commit timer.
const HOUSEKEEPING_EVERY: u32 = 32;

/// Spent value buffers kept for the next outputs when there is no lane (a record has
/// few outputs), and the largest kept.
const SPARE_BUFFERS: usize = 16;
const SPARE_BUFFER_BYTES: usize = 1 << 20;

/// Keeps a spent value buffer for the next outputs (the worker's own, without a lane).
fn keep_spare(buffers: &mut Vec<Vec<u8>>, buffer: Vec<u8>) {
    keep_buffer(buffers, buffer, SPARE_BUFFERS, SPARE_BUFFER_BYTES);
}

/// The longest the loop sleeps at once to keep to `spec.rateLimit`: commits and
/// shutdown are looked at in between.
const MAX_PACING_SLEEP: Duration = Duration::from_millis(50);

mod commit;
mod dead_letter;
mod error;
mod rebalance;
mod run;

pub use commit::transaction_timeout;
use dead_letter::DeadLetterSource;
pub use error::WorkerError;
use rebalance::RebalanceHandler;
pub use run::run;

/// How long the loop reads a restore under way before it polls its own consumer again.
const RESTORE_STEP: Duration = Duration::from_millis(20);

/// How long transactional calls may take.
const TXN_TIMEOUT: Duration = Duration::from_secs(60);

/// What the worker needs to know besides the engine.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Brokers and extra properties.
    pub settings: KafkaSettings,
    /// Consumer group.
    pub group_id: String,
    /// Transactional id (exactlyOnce): stable per replica so a restarted replica fences
    /// its predecessor at once.
    pub transactional_id: String,
    /// exactlyOnce or atLeastOnce.
    pub exactly_once: bool,
    /// How often to commit.
    pub commit_interval: Duration,
    /// Most records consumed per second (`spec.rateLimit`).
    pub rate_limit: Option<u32>,
    /// Dead-letter topic.
    pub dead_letter: Option<String>,
    /// Produce retries before an output counts as undeliverable (`deadLetter.retries`).
    pub produce_retries: Option<i32>,
    /// Where a new group starts.
    pub start_from: StartFrom,
    /// Topics to consume (inputs, and the repartition topic when there is one).
    pub topics: Vec<String>,
    /// The topic whose partitions the aggregate state follows, and its changelog.
    pub state: Option<(String, String)>,
    /// Longest time a restore may take.
    pub restore_timeout: Duration,
}

pub use crate::health::Status;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Everything the loop and the rebalance callbacks share (they run on one thread).
struct Core {
    engine: Engine,
    producer: BaseProducer<DeliveryTracker>,
    opts: WorkerOptions,
    status: Arc<Status>,
    /// What to commit and when, what to replay: the commit core.
    ledger: Ledger,
    /// State partitions being restored (paused meanwhile).
    restoring: Option<Restore>,
    /// An error raised inside a callback, for the loop to return.
    fatal: Option<WorkerError>,
    /// A recoverable error raised inside a callback, for the loop to rewind on.
    rewind_due: Option<WorkerError>,
    emits: Vec<Emit>,
    /// Scratch: the encoded outputs of the record being handled.
    outputs: Vec<Output>,
    /// Value buffers of sent outputs (the producer copied them), for the next ones.
    buffers: Vec<Vec<u8>>,
    /// Shared names of the topics read (a pipeline reads few: a scan beats hashing).
    topics: Vec<Arc<str>>,
    /// The one topic subscribed to, when there is one (not a pattern): every record is
    /// of it, so its name need not be read (and checked as UTF-8) per record.
    only_topic: Option<Arc<str>>,
    dead_lettered_logged: u64,
    /// The transform lane, for a pipeline without state.
    lane: Option<Lane>,
    /// Records taken in and outputs produced since the counters were last published
    /// (an atomic add per record would cost more than the rest of the bookkeeping).
    counted_in: u64,
    counted_out: u64,
}

impl Core {
    /// Adds what was counted since the last call to the records-in and records-out
    /// counters.
    fn publish_counts(&mut self) {
        let metrics = self.engine.metrics();
        if self.counted_in > 0 {
            metrics
                .records_in
                .inc_by(std::mem::take(&mut self.counted_in));
        }
        if self.counted_out > 0 {
            metrics
                .records_out
                .inc_by(std::mem::take(&mut self.counted_out));
        }
    }

    /// The shared name of `topic`.
    fn topic_arc(&mut self, topic: &str) -> Arc<str> {
        if let Some(t) = self.topics.iter().find(|t| ***t == *topic) {
            return t.clone();
        }
        let t: Arc<str> = Arc::from(topic);
        self.topics.push(t.clone());
        t
    }

    /// Processes one consumed record here, on the worker's thread.
    fn handle(&mut self, m: &BorrowedMessage<'_>) -> Result<(), WorkerError> {
        let topic = self.topic_of(m);
        let Some(origin) = self.admit(topic, m.partition(), m.offset())? else {
            return Ok(());
        };
        let outcome = match self.ledger.replay_failure(&origin) {
            Some(failure) => Err(failure),
            None => self.transform(m, &origin.topic),
        };
        let mut outputs = std::mem::take(&mut self.outputs);
        let handled = self.deliver(origin, outcome, &mut outputs, || {
            DeadLetterSource::of_message(m)
        });
        for o in outputs.drain(..) {
            keep_spare(&mut self.buffers, o.value);
        }
        self.outputs = outputs;
        handled
    }

    /// The shared name of a record's topic. librdkafka's topic name is checked as UTF-8
    /// on every call: read it at most once.
    fn topic_of(&mut self, m: &BorrowedMessage<'_>) -> Arc<str> {
        match &self.only_topic {
            Some(t) => t.clone(),
            None => self.topic_arc(m.topic()),
        }
    }

    /// Takes a record in if its partition is still this replica's (counting it, and
    /// opening the transaction if the ledger asks): where it came from, or `None` when it
    /// is left to the partition's new owner.
    fn admit(
        &mut self,
        topic: Arc<str>,
        partition: i32,
        offset: i64,
    ) -> Result<Option<Origin>, WorkerError> {
        match self.ledger.admit(&topic, partition) {
            Admit::Skip => {
                tracing::debug!(
                    topic = %topic,
                    partition,
                    offset,
                    "record of a partition no longer assigned: left to its new owner"
                );
                return Ok(None);
            }
            Admit::Process { begin_transaction } => {
                if begin_transaction {
                    self.producer
                        .begin_transaction()
                        .map_err(WorkerError::Transaction)?;
                }
            }
        }
        self.counted_in += 1;
        Ok(Some(Origin {
            topic,
            partition,
            offset,
        }))
    }

    /// Produces a record's outputs, or dead-letters the record when it failed or an
    /// output is refused at once; then moves its partition's offset past it. The
    /// outputs stay where they are (the producer copies them), to be dropped or reused
    /// by whoever made them.
    fn deliver(
        &mut self,
        origin: Origin,
        outcome: Result<(), Failure>,
        outputs: &mut [Output],
        source: impl Fn() -> DeadLetterSource,
    ) -> Result<(), WorkerError> {
        match outcome {
            Ok(()) => {
                for output in outputs {
                    let opaque = Sent::boxed(origin.clone(), self.ledger.epoch());
                    if let Err(failure) = self.produce(output, opaque) {
                        // Rejected at once (too large, unknown topic...): final for this record.
                        self.dead_letter(&source(), &failure)?;
                        break;
                    }
                    self.counted_out += 1;
                }
            }
            Err(failure) => self.dead_letter(&source(), &failure)?,
        }
        self.ledger.processed(origin);
        Ok(())
    }

    /// Decodes, runs the steps and encodes the results into `self.outputs`, or says why
    /// it failed (leaving `self.outputs` empty).
    fn transform(&mut self, m: &BorrowedMessage<'_>, topic: &Arc<str>) -> Result<(), Failure> {
        self.outputs.clear();
        let record = lane::record(
            &self.engine,
            topic.clone(),
            (m.partition(), m.offset(), m.timestamp().to_millis()),
            m.key(),
            headers_of(m),
            m.payload(),
        )?;
        lane::transform(
            &mut self.engine,
            record,
            &mut self.emits,
            &mut self.outputs,
            &mut self.buffers,
        )
    }

    /// Hands a polled record to the transform lane, handling what comes back while
    /// waiting for room.
    fn queue(&mut self, m: &BorrowedMessage<'_>) -> Result<(), WorkerError> {
        if self.lane.is_none() {
            return self.handle(m);
        }
        let topic = self.topic_of(m);
        if self.lane.as_mut().is_some_and(|lane| lane.push(m, topic)) {
            self.submit()?;
        }
        Ok(())
    }

    /// Hands the batch being filled to the lane, first handling transformed batches
    /// until there is room.
    fn submit(&mut self) -> Result<(), WorkerError> {
        while let Some(lane) = self.lane.as_mut()
            && !lane.has_room()
        {
            if let Some(batch) = lane.take(true)? {
                self.finish(batch)?;
            }
        }
        if let Some(lane) = self.lane.as_mut() {
            lane.submit()?;
        }
        Ok(())
    }

    /// Handles the batches the lane is done with: without waiting, or (when the consumer
    /// has nothing new) handing over a partly filled batch and waiting a little for one.
    fn collect(&mut self, idle: bool) -> Result<(), WorkerError> {
        if idle && self.lane.as_ref().is_some_and(Lane::has_room) {
            self.submit()?;
        }
        let mut wait = idle;
        while let Some(lane) = self.lane.as_mut() {
            let Some(batch) = lane.take(wait)? else {
                break;
            };
            self.finish(batch)?;
            wait = false;
        }
        Ok(())
    }

    /// Handles every record in or waiting for the lane (at a revoke and at shutdown).
    fn drain_lane(&mut self) -> Result<(), WorkerError> {
        while self.lane.as_ref().is_some_and(Lane::busy) {
            self.collect(true)?;
        }
        Ok(())
    }

    /// Handles a batch the lane transformed, record by record in order, as
    /// [`Core::handle`] does. Its outputs go back to the lane with it, which drops or
    /// reuses them: what one thread allocates, the same thread frees.
    fn finish(&mut self, mut batch: Batch) -> Result<(), WorkerError> {
        let mut outputs = std::mem::take(&mut batch.outputs);
        let inputs = std::mem::take(&mut batch.inputs);
        let outcomes = std::mem::take(&mut batch.outcomes);
        let mut next = 0;
        for (input, outcome) in inputs.iter().zip(outcomes) {
            let made = next..next + *outcome.as_ref().unwrap_or(&0);
            next = made.end;
            let Some(origin) = self.admit(input.topic.clone(), input.partition, input.offset)?
            else {
                continue;
            };
            let outcome = match self.ledger.replay_failure(&origin) {
                Some(failure) => Err(failure),
                None => outcome.map(|_| ()),
            };
            self.deliver(origin, outcome, &mut outputs[made], || {
                DeadLetterSource::of_input(&batch, input)
            })?;
        }
        batch.outputs = outputs;
        batch.inputs = inputs;
        if let Some(lane) = self.lane.as_mut() {
            lane.recycle(batch);
        }
        Ok(())
    }

    /// `emit: onCommit`: sends what the stateful step held back this interval, before the
    /// changelog and the commit. A held-back record that fails a later step, or cannot
    /// be encoded or produced, goes to the dead-letter topic with the coordinates of the
    /// last input record of its group. One that the broker refuses later is remembered: after
    /// the rewind that follows, its group's next total goes to the dead-letter topic
    /// instead (with the refusal as its error), so the replay commits.
    fn flush_pending(&mut self) -> Result<(), WorkerError> {
        let mut emits = std::mem::take(&mut self.emits);
        emits.clear();
        let failed = self.engine.flush(&mut emits);
        for (record, failure) in &failed {
            self.dead_letter(
                &DeadLetterSource::of_record(record, self.engine.format()),
                failure,
            )?;
        }
        let format = self.engine.format();
        let mut result = Ok(());
        for e in emits.drain(..) {
            let source = DeadLetterSource::of_record(&e.record, format);
            let refused = self.ledger.refused_output(&e.topic, &e.record.key);
            let sent = match refused {
                Some(error) => Err(Failure::new("produce", error)),
                None => Output::encode(format, e, self.buffers.pop().unwrap_or_default()).and_then(
                    |mut o| {
                        let sent = self.produce(&mut o, Sent::flushed(self.ledger.epoch()));
                        keep_spare(&mut self.buffers, o.value);
                        sent
                    },
                ),
            };
            result = match sent {
                Ok(()) => {
                    self.engine.metrics().records_out.inc();
                    Ok(())
                }
                Err(failure) => self.dead_letter(&source, &failure),
            };
            if result.is_err() {
                break;
            }
        }
        self.emits = emits;
        result
    }

    /// Hands an output to the producer with `opaque` (the producer copies it). An error
    /// means the producer refused it at once.
    fn produce(&mut self, output: &mut Output, opaque: Box<Sent>) -> Result<(), Failure> {
        output
            .send(&self.producer, opaque)
            .map_err(|e| Failure::new("produce", format!("{}: {e}", output.topic)))?;
        self.ledger.sent();
        Ok(())
    }

    /// Tells the ledger the delivery reports served since it was last told.
    fn report_deliveries(&mut self) {
        self.producer.context().report_to(&mut self.ledger);
    }
}
