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

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use sluice_crds::pipeline::StartFrom;

use super::KafkaSettings;
use super::acks::{Checkpoints, DeliveryTracker, Offsets, Origin, OutputId, Sent, advance};
use super::headers::headers_of;
use super::lane::{self, Batch, Lane, LaneError, keep_buffer};
use super::output::{Output, send};
use super::restore::{Restore, RestoreFailure};
use crate::engine::{Emit, Engine, Failure};
use crate::pace::Pacer;
use crate::record::Record;

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

/// The transaction timeout for `commitInterval`: a transaction spans one interval plus
/// its commit, so three intervals, and never below 10 s (a commit after a slow poll or a
/// long record must not find its transaction aborted by the broker). Capped at 15
/// minutes, the brokers' default `transaction.max.timeout.ms`; the engine refuses longer
/// intervals ([`crate::engine::MAX_EXACTLY_ONCE_COMMIT_INTERVAL`]).
pub fn transaction_timeout(commit_interval: Duration) -> Duration {
    commit_interval
        .saturating_mul(3)
        .clamp(Duration::from_secs(10), Duration::from_secs(900))
}

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
    fn recoverable(&self) -> bool {
        match self {
            WorkerError::Transaction(KafkaError::Transaction(e)) => !e.is_fatal(),
            WorkerError::Transaction(_) | WorkerError::Commit(_) | WorkerError::Flush(_) => true,
            _ => false,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A record that goes to the dead-letter topic: where it came from and what it held.
struct Source {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
    timestamp: Option<i64>,
}

impl Source {
    /// A consumed record, as it was read.
    fn of_message(m: &BorrowedMessage<'_>) -> Source {
        Source {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers: headers_of(m),
            timestamp: m.timestamp().to_millis(),
        }
    }

    /// A record that went through the transform lane, as it was read.
    fn of_input(batch: &Batch, input: &lane::Input) -> Source {
        Source {
            topic: input.topic.to_string(),
            partition: input.partition,
            offset: input.offset,
            key: batch.key(input).map(<[u8]>::to_vec),
            payload: batch.payload(input).map(<[u8]>::to_vec),
            headers: input.headers.clone(),
            timestamp: input.timestamp,
        }
    }

    /// A record the steps made (an aggregate's held-back output), with the coordinates
    /// of the input record it carries.
    fn of_record(r: &Record, format: crate::format::RecordFormat) -> Source {
        Source {
            topic: r.topic.to_string(),
            partition: r.partition,
            offset: r.offset,
            key: r.key.clone(),
            payload: format.encode(&r.value).ok(),
            headers: r.headers.clone(),
            timestamp: (r.timestamp > 0).then_some(r.timestamp),
        }
    }
}

/// Everything the loop and the rebalance callbacks share (they run on one thread).
struct Core {
    engine: Engine,
    producer: BaseProducer<DeliveryTracker>,
    opts: WorkerOptions,
    status: Arc<Status>,
    /// Next offset to commit per partition consumed in the current epoch.
    offsets: Offsets,
    /// The current commit interval's number: records sent in it carry it.
    epoch: u64,
    /// `atLeastOnce`: sealed epochs waiting for their outputs' acknowledgements.
    checkpoints: Checkpoints,
    in_txn: bool,
    batch: u64,
    last_commit: Instant,
    /// State partitions held (restored or built here).
    owned: BTreeSet<i32>,
    /// State partitions being restored (paused meanwhile).
    restoring: Option<Restore>,
    /// State no longer matches committed offsets: rebuild on the next assignment.
    state_invalid: bool,
    /// Records whose outputs could not be delivered: dead-letter them on replay.
    poisoned: HashMap<Origin, String>,
    /// `emit: onCommit` outputs the broker refused, by topic and key, with why.
    refused_outputs: HashMap<OutputId, String>,
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
    /// The partitions this replica owns now. A record of any other partition (fetched
    /// before a cooperative rebalance took its partition away) is not processed: its new
    /// owner reads it, and committing it here too would duplicate it.
    assigned: Vec<(Arc<str>, i32)>,
    dead_lettered_logged: u64,
    /// The transform lane, for a pipeline without state.
    lane: Option<Lane>,
    /// Records taken in and outputs produced since the counters were last published
    /// (an atomic add per record would cost more than the rest of the bookkeeping).
    counted_in: u64,
    counted_out: u64,
}

/// Consumer callbacks: commit on revoke, restore on assign.
struct RebalanceHandler {
    core: Arc<Mutex<Core>>,
}

impl ClientContext for RebalanceHandler {}

impl ConsumerContext for RebalanceHandler {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut core = lock(&self.core);
        if let Rebalance::Revoke(tpl) = rebalance {
            tracing::info!(partitions = tpl.count(), "partitions revoked: committing");
            // Records still in the transform lane are of partitions held until now:
            // handle them, so the commit covers them.
            let drained = core.drain_lane();
            if let Err(e) = drained.and_then(|()| core.commit(consumer)) {
                tracing::warn!(error = %e, "commit on revoke failed: the new owner replays from the last commit");
                core.discard_uncommitted();
                // Nothing polled after the failure may be handled: the partitions kept go
                // back to their committed offsets (the loop rewinds), or the loop stops.
                if let Some(lane) = core.lane.as_mut()
                    && let Err(gone) = lane.discard()
                {
                    core.fatal.get_or_insert(gone.into());
                }
                if e.recoverable() {
                    core.rewind_due.get_or_insert(e);
                } else {
                    core.fatal.get_or_insert(e);
                }
            }
            core.status.ready.store(false, Ordering::Relaxed);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut core = lock(&self.core);
        match rebalance {
            Rebalance::Assign(tpl) => {
                core.engine.metrics().rebalances.inc();
                tracing::info!(partitions = ?partition_names(tpl), "partitions assigned");
                core.follow_assignment(consumer);
            }
            // Only the revoked partitions stopped (the protocol is always cooperative: the
            // strategy is set after the user's properties); the rest go on at once.
            Rebalance::Revoke(tpl) => {
                core.engine.metrics().rebalances.inc();
                tracing::info!(partitions = ?partition_names(tpl), "partitions given up");
                core.follow_assignment(consumer);
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

/// `partitions` of `topic` as a list.
fn partitions_of(topic: &str, partitions: &[i32]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        tpl.add_partition(topic, p);
    }
    tpl
}

fn partition_names(tpl: &TopicPartitionList) -> Vec<String> {
    tpl.elements()
        .iter()
        .map(|e| format!("{}/{}", e.topic(), e.partition()))
        .collect()
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

    /// After a rebalance: keeps the state of the partitions still held, restores the
    /// gained ones, drops the lost ones, and is ready again. The callbacks of the
    /// cooperative protocol carry only the change, so this reads the whole assignment.
    fn follow_assignment<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        let assignment = match consumer.assignment() {
            Ok(a) => a,
            Err(e) => {
                self.fatal = Some(WorkerError::Commit(e));
                return;
            }
        };
        self.engine
            .metrics()
            .assigned_partitions
            .set(i64::try_from(assignment.count()).unwrap_or(0));
        self.assigned = assignment
            .elements()
            .iter()
            .map(|e| (self.topic_arc(e.topic()), e.partition()))
            .collect();
        if let Err(e) = self.on_assign(consumer, &assignment) {
            self.fatal = Some(e);
            return;
        }
        self.status
            .ready
            .store(self.restoring.is_none(), Ordering::Relaxed);
    }

    /// Follows a new assignment with the state: drops the state of partitions lost,
    /// and pauses the gained ones (and any whose restore was under way) while their state
    /// is restored from the changelog by [`Core::advance_restore`], outside the rebalance
    /// callback and a little at a time, so the partitions kept go on meanwhile.
    fn on_assign<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        tpl: &TopicPartitionList,
    ) -> Result<(), WorkerError> {
        if self.state_invalid {
            if let Some(agg) = self.engine.aggregate_mut() {
                agg.clear();
            }
            self.owned.clear();
            self.restoring = None;
            self.state_invalid = false;
        }
        let Some((state_topic, changelog)) = self.opts.state.clone() else {
            return Ok(());
        };
        let assigned: BTreeSet<i32> = tpl
            .elements_for_topic(&state_topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        let Some(agg) = self.engine.aggregate_mut() else {
            return Ok(());
        };
        // A restore under way starts again with the new assignment: what it read goes.
        for p in self
            .restoring
            .take()
            .map(|r| r.pending())
            .unwrap_or_default()
        {
            agg.drop_partition(p);
        }
        for &p in self.owned.difference(&assigned) {
            agg.drop_partition(p);
        }
        self.owned = self.owned.intersection(&assigned).copied().collect();
        let gained: Vec<i32> = assigned.difference(&self.owned).copied().collect();
        if gained.is_empty() {
            self.engine.report_state();
            return Ok(());
        }
        consumer
            .pause(&partitions_of(&state_topic, &gained))
            .map_err(WorkerError::Commit)?;
        tracing::info!(partitions = ?gained, topic = %changelog, "restoring state: these partitions wait for it");
        self.restoring = Some(Restore::start(
            &self.opts.settings,
            &self.opts.group_id,
            &changelog,
            &gained,
            self.opts.restore_timeout,
        )?);
        Ok(())
    }

    /// Reads the restore under way for a moment; resumes each partition whose state is
    /// whole, and says the replica is ready when all are.
    fn advance_restore<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), WorkerError> {
        let (Some(restore), Some(agg), Some((state_topic, _))) = (
            self.restoring.as_mut(),
            self.engine.aggregate_mut(),
            self.opts.state.as_ref(),
        ) else {
            return Ok(());
        };
        let done = restore.step(agg, RESTORE_STEP)?;
        if !done.is_empty() {
            consumer
                .resume(&partitions_of(state_topic, &done))
                .map_err(WorkerError::Commit)?;
            self.owned.extend(done.iter().copied());
        }
        if restore.is_finished() {
            tracing::info!(partitions = ?self.owned, records = restore.applied(), took_ms = restore.elapsed().as_millis() as u64, topic = %restore.topic(), "state restored");
            self.restoring = None;
            self.status.ready.store(true, Ordering::Relaxed);
        }
        if !done.is_empty() {
            self.engine.report_state();
        }
        Ok(())
    }

    /// Processes one consumed record here, on the worker's thread.
    fn handle(&mut self, m: &BorrowedMessage<'_>) -> Result<(), WorkerError> {
        let topic = self.topic_of(m);
        let Some(origin) = self.admit(topic, m.partition(), m.offset())? else {
            return Ok(());
        };
        let outcome = match self.take_poisoned(&origin) {
            Some(failure) => Err(failure),
            None => self.transform(m, &origin.topic),
        };
        let mut outputs = std::mem::take(&mut self.outputs);
        let handled = self.deliver(origin, outcome, &mut outputs, || Source::of_message(m));
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
    /// opening the transaction if none is open): where it came from, or `None` when it
    /// is left to the partition's new owner.
    fn admit(
        &mut self,
        topic: Arc<str>,
        partition: i32,
        offset: i64,
    ) -> Result<Option<Origin>, WorkerError> {
        // Names are shared (`topic_arc`): the same name is almost always the same handle.
        if !self
            .assigned
            .iter()
            .any(|(t, p)| *p == partition && (Arc::ptr_eq(t, &topic) || **t == *topic))
        {
            tracing::debug!(
                topic = %topic,
                partition,
                offset,
                "record of a partition no longer assigned: left to its new owner"
            );
            return Ok(None);
        }
        self.counted_in += 1;
        if self.opts.exactly_once && !self.in_txn {
            self.producer
                .begin_transaction()
                .map_err(WorkerError::Transaction)?;
            self.in_txn = true;
        }
        Ok(Some(Origin {
            topic,
            partition,
            offset,
        }))
    }

    /// Why a record is not to be produced again: its output could not be delivered
    /// before the last rewind.
    fn take_poisoned(&mut self, origin: &Origin) -> Option<Failure> {
        if self.poisoned.is_empty() {
            return None;
        }
        self.poisoned
            .remove(origin)
            .map(|error| Failure::new("produce", error))
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
        source: impl Fn() -> Source,
    ) -> Result<(), WorkerError> {
        match outcome {
            Ok(()) => {
                for output in outputs {
                    let opaque = Sent::boxed(origin.clone(), self.epoch);
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
        self.advance(origin.topic, origin.partition, origin.offset + 1);
        self.batch += 1;
        Ok(())
    }

    /// Decodes, runs the steps and encodes the results into `self.outputs`, or says why
    /// it failed (leaving `self.outputs` empty).
    fn transform(&mut self, m: &BorrowedMessage<'_>, topic: &Arc<str>) -> Result<(), Failure> {
        self.outputs.clear();
        let record = lane::record(
            self.engine.format(),
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
            let outcome = match self.take_poisoned(&origin) {
                Some(failure) => Err(failure),
                None => outcome.map(|_| ()),
            };
            self.deliver(origin, outcome, &mut outputs[made], || {
                Source::of_input(&batch, input)
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
            self.dead_letter(&Source::of_record(record, self.engine.format()), failure)?;
        }
        let format = self.engine.format();
        let mut result = Ok(());
        for e in emits.drain(..) {
            let source = Source::of_record(&e.record, format);
            let refused = if self.refused_outputs.is_empty() {
                None
            } else {
                self.refused_outputs
                    .remove(&(e.topic.to_string(), e.record.key.clone()))
            };
            let sent = match refused {
                Some(error) => Err(Failure::new("produce", error)),
                None => Output::encode(format, e, self.buffers.pop().unwrap_or_default()).and_then(
                    |mut o| {
                        let sent = self.produce(&mut o, Sent::flushed(self.epoch));
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
            .map_err(|e| Failure::new("produce", format!("{}: {e}", output.topic)))
    }

    /// Closes the current epoch (its sends now wait in the tracker) and opens the next.
    fn next_epoch(&mut self) {
        self.producer.context().seal(self.epoch);
        self.epoch += 1;
    }

    fn advance(&mut self, topic: Arc<str>, partition: i32, next: i64) {
        advance(&mut self.offsets, topic, partition, next);
    }

    fn dead_letter(&mut self, src: &Source, failure: &Failure) -> Result<(), WorkerError> {
        let Some(dlq) = self.opts.dead_letter.clone() else {
            return Err(WorkerError::NoDeadLetter {
                topic: src.topic.clone(),
                partition: src.partition,
                offset: src.offset,
                failure: failure.clone(),
            });
        };
        let mut headers = OwnedHeaders::new();
        for (k, v) in &src.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_slice()),
            });
        }
        let partition = src.partition.to_string();
        let offset = src.offset.to_string();
        for (k, v) in [
            ("sluice.error", failure.error.as_str()),
            ("sluice.step", failure.step.as_str()),
            ("sluice.source.topic", src.topic.as_str()),
            ("sluice.source.partition", partition.as_str()),
            ("sluice.source.offset", offset.as_str()),
        ] {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let mut rec: BaseRecord<'_, [u8], [u8], Box<Sent>> =
            BaseRecord::with_opaque_to(&dlq, Sent::boxed(Origin::internal(), self.epoch))
                .headers(headers);
        if let Some(k) = &src.key {
            rec = rec.key(k);
        }
        if let Some(p) = &src.payload {
            rec = rec.payload(p);
        }
        if let Some(ts) = src.timestamp {
            rec = rec.timestamp(ts);
        }
        send(&self.producer, rec, self.epoch)
            .map_err(|source| WorkerError::DeadLetter { topic: dlq, source })?;
        self.engine.metrics().dead_lettered.inc();
        self.dead_lettered_logged += 1;
        if self.dead_lettered_logged <= 10 || self.dead_lettered_logged.is_multiple_of(1000) {
            tracing::warn!(
                step = %failure.step, error = %failure.error, topic = %src.topic, partition = src.partition,
                offset = src.offset, dead_lettered = self.dead_lettered_logged, "record dead-lettered"
            );
        }
        Ok(())
    }

    fn due(&self) -> bool {
        self.batch > 0 && self.last_commit.elapsed() >= self.opts.commit_interval
    }

    /// Sends the aggregate's changed state to its changelog (in the current epoch, so
    /// the offsets sealed with it wait for these too).
    fn write_changelog(&mut self) -> Result<(), WorkerError> {
        let epoch = self.epoch;
        if let Some((_, changelog)) = self.opts.state.clone()
            && let Some(agg) = self.engine.aggregate_mut()
        {
            for (partition, key, value) in agg.take_changes() {
                let mut rec: BaseRecord<'_, str, [u8], Box<Sent>> =
                    BaseRecord::with_opaque_to(&changelog, Sent::boxed(Origin::internal(), epoch))
                        .partition(partition)
                        .key(key.as_str());
                if let Some(v) = &value {
                    rec = rec.payload(v.as_slice());
                }
                send(&self.producer, rec, epoch).map_err(WorkerError::Flush)?;
            }
        }
        Ok(())
    }

    /// Ends the commit interval. `exactlyOnce` commits its transaction; `atLeastOnce`
    /// seals the epoch and commits, without waiting, whatever is acknowledged by now.
    fn end_interval<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), WorkerError> {
        if self.opts.exactly_once {
            return self.commit(consumer);
        }
        self.flush_pending()?;
        self.write_changelog()?;
        let offsets = std::mem::take(&mut self.offsets);
        self.checkpoints.seal(self.epoch, offsets);
        self.next_epoch();
        self.engine.metrics().batch_size.observe(self.batch as f64);
        self.batch = 0;
        self.last_commit = Instant::now();
        self.engine.report_state();
        self.commit_acked(consumer)
    }

    /// `atLeastOnce`: commits (asynchronously) the offsets of sealed epochs whose outputs
    /// are all acknowledged; a failed delivery stops here so the loop rewinds.
    fn commit_acked<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), WorkerError> {
        self.check_deliveries()?;
        let tracker = self.producer.context();
        let offsets = self.checkpoints.take_acked(|e| tracker.acked_through(e));
        if !offsets.is_empty() {
            consumer
                .commit(&partition_list(&offsets)?, CommitMode::Async)
                .map_err(WorkerError::Commit)?;
            self.status.committed();
            self.engine.metrics().commits.inc();
        }
        Ok(())
    }

    /// A delivery failed: the loop rewinds (and dead-letters the record on replay).
    fn check_deliveries(&self) -> Result<(), WorkerError> {
        if self.producer.context().any_failed() {
            return Err(WorkerError::Flush(KafkaError::MessageProduction(
                RDKafkaErrorCode::Fail,
            )));
        }
        Ok(())
    }

    /// Commits everything processed so far and waits for it: at a rebalance, at
    /// shutdown, and at the end of every `exactlyOnce` interval (outputs, changelog and
    /// offsets in one transaction).
    fn commit<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), WorkerError> {
        if self.batch == 0 && !self.in_txn && self.checkpoints.is_empty() {
            self.last_commit = Instant::now();
            return Ok(());
        }
        self.flush_pending()?;
        self.write_changelog()?;
        if self.opts.exactly_once {
            let tpl = partition_list(&self.offsets)?;
            let cgm = consumer
                .group_metadata()
                .ok_or(WorkerError::Commit(KafkaError::Global(
                    RDKafkaErrorCode::State,
                )))?;
            if tpl.count() > 0 {
                self.producer
                    .send_offsets_to_transaction(&tpl, &cgm, TXN_TIMEOUT)
                    .map_err(WorkerError::Transaction)?;
            }
            commit_transaction(&self.producer).map_err(WorkerError::Transaction)?;
            self.in_txn = false;
            self.next_epoch();
        } else {
            self.producer
                .flush(TXN_TIMEOUT)
                .map_err(WorkerError::Flush)?;
            self.check_deliveries()?;
            let mut offsets = self.checkpoints.take_all();
            for (t, p, o) in self.offsets.drain(..) {
                advance(&mut offsets, t, p, o);
            }
            if !offsets.is_empty() {
                consumer
                    .commit(&partition_list(&offsets)?, CommitMode::Sync)
                    .map_err(WorkerError::Commit)?;
            }
            self.next_epoch();
        }
        self.status.committed();
        let metrics = self.engine.metrics();
        metrics.commits.inc();
        metrics.batch_size.observe(self.batch as f64);
        self.offsets.clear();
        self.batch = 0;
        self.last_commit = Instant::now();
        self.engine.report_state();
        Ok(())
    }

    /// Forgets everything not committed: aborts the transaction, remembers undeliverable
    /// records, and marks the state for rebuilding.
    fn discard_uncommitted(&mut self) {
        self.engine.metrics().aborts.inc();
        if self.opts.exactly_once && self.in_txn {
            if let Err(e) = abort(&self.producer) {
                tracing::error!(error = %e, "abort failed");
                self.fatal.get_or_insert(WorkerError::Transaction(e));
            }
            self.in_txn = false;
        }
        let mut passing: Option<(usize, String)> = None;
        for failed in self.producer.context().take_failed() {
            if !failed.poison {
                let (n, _) = passing.get_or_insert((0, failed.error));
                *n += 1;
                continue;
            }
            match failed.output {
                Some(output) => {
                    self.refused_outputs.insert(output, failed.error);
                }
                None if failed.origin.is_record() => {
                    self.poisoned.insert(failed.origin, failed.error);
                }
                None => {}
            }
        }
        if let Some((count, first)) = passing {
            tracing::warn!(count, first = %first, "outputs not delivered for a passing reason: they are produced again after the rewind");
        }
        self.offsets.clear();
        self.checkpoints.clear();
        // What was sent is replayed: a new epoch starts, and reports of the old ones
        // count no more.
        self.producer.context().forget_unacked(self.epoch);
        self.epoch += 1;
        self.batch = 0;
        self.state_invalid = true;
        self.last_commit = Instant::now();
    }

    /// After a failed commit: abort, rebuild the state, and seek every assigned partition
    /// back to its committed offset.
    fn rewind<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        cause: &WorkerError,
    ) -> Result<(), WorkerError> {
        tracing::warn!(error = %cause, "rewinding to the last commit");
        self.status.rewound(&cause.to_string());
        self.discard_uncommitted();
        // The consumer goes back to the committed offsets and reads again what the lane
        // still holds.
        if let Some(lane) = self.lane.as_mut() {
            lane.discard()?;
        }
        if let Some(e) = self.fatal.take() {
            return Err(e);
        }
        let assignment = consumer.assignment().map_err(WorkerError::Commit)?;
        self.state_invalid = true;
        self.on_assign(consumer, &assignment)?;
        let committed = consumer
            .committed_offsets(assignment, Duration::from_secs(30))
            .map_err(WorkerError::Commit)?;
        for e in committed.elements() {
            let offset = match e.offset() {
                Offset::Offset(o) => Offset::Offset(o),
                _ => match self.opts.start_from {
                    StartFrom::Earliest => Offset::Beginning,
                    StartFrom::Latest => Offset::End,
                },
            };
            consumer
                .seek(e.topic(), e.partition(), offset, Duration::from_secs(10))
                .map_err(WorkerError::Commit)?;
        }
        Ok(())
    }
}

/// Aborts the open transaction. Aborting waits for the records in flight, whose
/// delivery reports only arrive when the producer is polled (this thread is the only one
/// that polls it): so abort in short attempts, serving the reports between them, until
/// done or `TXN_TIMEOUT` passes.
fn abort(producer: &BaseProducer<DeliveryTracker>) -> Result<(), KafkaError> {
    let deadline = Instant::now() + TXN_TIMEOUT;
    loop {
        match producer.abort_transaction(Duration::from_secs(1)) {
            Err(KafkaError::Transaction(e)) if e.is_retriable() && Instant::now() < deadline => {
                producer.poll(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// Commits the open transaction. A retriable error (the commit timed out, the
/// coordinator moved) leaves the transaction committing: librdkafka's documented answer
/// is to call commit again, not to abort what may already be committed.
fn commit_transaction(producer: &BaseProducer<DeliveryTracker>) -> Result<(), KafkaError> {
    let deadline = Instant::now() + TXN_TIMEOUT;
    loop {
        match producer.commit_transaction(TXN_TIMEOUT) {
            Err(KafkaError::Transaction(e)) if e.is_retriable() && Instant::now() < deadline => {
                tracing::warn!(error = %e, "committing the transaction again");
            }
            other => return other,
        }
    }
}

/// The offsets as a list to commit.
fn partition_list(offsets: &Offsets) -> Result<TopicPartitionList, WorkerError> {
    let mut tpl = TopicPartitionList::with_capacity(offsets.len());
    for (t, p, o) in offsets {
        tpl.add_partition_offset(t, *p, Offset::Offset(*o))
            .map_err(WorkerError::Commit)?;
    }
    Ok(tpl)
}

/// Runs the pipeline until `status.shutdown` is set or a fatal error. `lane_engine`, a
/// second copy of a pipeline without state, runs in the transform lane; without it the
/// engine runs on the worker's thread.
pub fn run(
    opts: WorkerOptions,
    engine: Engine,
    lane_engine: Option<Engine>,
    status: Arc<Status>,
) -> Result<(), WorkerError> {
    let lane = match lane_engine {
        Some(e) if engine.aggregate_step().is_none() => Some(Lane::start(e)?),
        _ => None,
    };
    let mut pcfg = opts.settings.client_config();
    pcfg.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("queue.buffering.max.kbytes", "65536");
    if let Some(r) = opts.produce_retries {
        // The idempotent producer needs at least one retry.
        pcfg.set("message.send.max.retries", r.max(1).to_string());
    }
    if opts.exactly_once {
        let timeout = transaction_timeout(opts.commit_interval);
        pcfg.set("transactional.id", &opts.transactional_id)
            .set("transaction.timeout.ms", timeout.as_millis().to_string());
    }
    let producer: BaseProducer<DeliveryTracker> = pcfg
        .create_with_context(DeliveryTracker::default())
        .map_err(WorkerError::Setup)?;
    if opts.exactly_once {
        producer
            .init_transactions(TXN_TIMEOUT)
            .map_err(WorkerError::Transaction)?;
    }
    let only_topic: Option<Arc<str>> = match opts.topics.as_slice() {
        [t] if !t.starts_with('^') => Some(Arc::from(t.as_str())),
        _ => None,
    };
    let core = Arc::new(Mutex::new(Core {
        engine,
        producer,
        opts: opts.clone(),
        status: status.clone(),
        offsets: Vec::new(),
        epoch: 0,
        checkpoints: Checkpoints::default(),
        in_txn: false,
        batch: 0,
        last_commit: Instant::now(),
        owned: BTreeSet::new(),
        restoring: None,
        state_invalid: false,
        poisoned: HashMap::new(),
        refused_outputs: HashMap::new(),
        fatal: None,
        rewind_due: None,
        emits: Vec::new(),
        outputs: Vec::new(),
        buffers: Vec::new(),
        topics: only_topic.iter().cloned().collect(),
        only_topic,
        assigned: Vec::new(),
        dead_lettered_logged: 0,
        lane,
        counted_in: 0,
        counted_out: 0,
    }));
    let mut ccfg = opts.settings.consumer_config();
    ccfg.set("group.id", &opts.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("queued.max.messages.kbytes", "32768")
        .set(
            "auto.offset.reset",
            match opts.start_from {
                StartFrom::Earliest => "earliest",
                StartFrom::Latest => "latest",
            },
        );
    if !opts.settings.extra.contains_key("session.timeout.ms") {
        ccfg.set("session.timeout.ms", "10000");
    }
    let consumer: BaseConsumer<RebalanceHandler> = ccfg
        .create_with_context(RebalanceHandler { core: core.clone() })
        .map_err(WorkerError::Setup)?;
    let topics: Vec<&str> = opts.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).map_err(WorkerError::Setup)?;
    tracing::info!(group = %opts.group_id, topics = ?opts.topics, exactly_once = opts.exactly_once, transform_lane = lock(&core).lane.is_some(), "consuming");

    let result = run_loop(&consumer, &core, &status);
    let result = {
        let mut c = lock(&core);
        let result = result.and_then(|()| {
            c.drain_lane().and_then(|()| c.commit(&consumer)).map(|()| {
                c.producer.flush(TXN_TIMEOUT).ok();
            })
        });
        if result.is_err() && c.in_txn {
            // Nothing more is committed; what was processed since the last commit is
            // replayed by whoever takes over.
            abort(&c.producer).ok();
            c.in_txn = false;
        }
        // Whatever the lane still holds (after an error) is not handled: the revoke at
        // close must not produce and commit records past one that stopped the loop.
        c.lane = None;
        result
    };
    status.ready.store(false, Ordering::Relaxed);
    // Closing leaves the group (the revoke callback finds nothing left to commit).
    drop(consumer);
    lock(&core).publish_counts();
    result
}

fn run_loop(
    consumer: &BaseConsumer<RebalanceHandler>,
    core: &Arc<Mutex<Core>>,
    status: &Status,
) -> Result<(), WorkerError> {
    let mut since_housekeeping = 0u32;
    // Whether the transform lane holds records: then the consumer is not waited on.
    let mut lane_busy = false;
    // Whether a restore is under way: then the loop reads it rather than wait.
    let mut restoring = false;
    let mut pacer = lock(core).opts.rate_limit.map(Pacer::new);
    loop {
        if status.shutdown.load(Ordering::Relaxed) {
            return Ok(());
        }
        let timeout = if lane_busy || restoring {
            Duration::ZERO
        } else {
            Duration::from_millis(100)
        };
        // Under a rate limit, a record early for its slot is not polled yet: the loop
        // sleeps and does its housekeeping as when idle.
        let wait = pacer
            .as_ref()
            .map_or(Duration::ZERO, |p| p.wait(Instant::now()));
        let polled = if wait.is_zero() {
            consumer.poll(timeout)
        } else {
            std::thread::sleep(wait.min(MAX_PACING_SLEEP));
            None
        };
        let busy = matches!(polled, Some(Ok(_)));
        if let (true, Some(p)) = (busy, pacer.as_mut()) {
            p.took(Instant::now());
        }
        let mut c = lock(core);
        if let Some(e) = c.fatal.take() {
            return Err(e);
        }
        if let Some(e) = c.rewind_due.take() {
            // The record just polled is read again after the rewind.
            drop(polled);
            c.rewind(consumer, &e)?;
            lane_busy = false;
            continue;
        }
        match polled {
            Some(Ok(m)) => {
                if let Err(e) = c.queue(&m) {
                    drop(m);
                    recover(&mut c, consumer, e)?;
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
            None => {}
        }
        if c.lane.is_some() {
            if let Err(e) = c.collect(!busy) {
                recover(&mut c, consumer, e)?;
            }
            lane_busy = c.lane.as_ref().is_some_and(Lane::busy);
        }
        // Delivery reports, the commit timer and acknowledged checkpoints are looked at
        // every few records while busy (each look costs clock reads and locks), and at
        // every poll while idle.
        since_housekeeping += 1;
        if busy && since_housekeeping < HOUSEKEEPING_EVERY {
            continue;
        }
        since_housekeeping = 0;
        status.beat();
        c.advance_restore(consumer)?;
        restoring = c.restoring.is_some();
        c.publish_counts();
        c.producer.poll(Duration::ZERO);
        let ended = if c.due() {
            c.end_interval(consumer)
        } else if c.opts.exactly_once {
            Ok(())
        } else {
            c.commit_acked(consumer)
        };
        if let Err(e) = ended {
            if e.recoverable() {
                c.rewind(consumer, &e)?;
            } else {
                return Err(e);
            }
        }
    }
}

/// After a record could not be handled: rewinds when that can help; otherwise commits
/// what came before a record with nowhere to go, and stops.
fn recover(
    c: &mut Core,
    consumer: &BaseConsumer<RebalanceHandler>,
    e: WorkerError,
) -> Result<(), WorkerError> {
    if e.recoverable() {
        return c.rewind(consumer, &e);
    }
    if matches!(e, WorkerError::NoDeadLetter { .. }) {
        // Keep what came before the bad record.
        c.commit(consumer)?;
    }
    Err(e)
}
