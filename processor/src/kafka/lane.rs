//! The transform lane: a second thread that decodes, runs the steps and encodes, while
//! the worker's thread consumes and produces. The worker copies polled records into a
//! batch, hands the batch over, and takes the batches back in the order it gave them,
//! so records are produced, dead-lettered and committed in their order as before; only
//! the per-record work in between moves.
//!
//! Only pipelines without state use it (no aggregate, no dedupe): their steps depend on
//! nothing but the record, so where they run changes nothing. Records still in the lane
//! at a rewind are dropped (the consumer reads them again); at a revoke and at shutdown
//! the worker waits for them and handles them first.

use std::ops::Range;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::message::{BorrowedMessage, Message};

use super::headers::headers_of;
use super::output::Output;
use crate::engine::{Emit, Engine, Failure, decode};
use crate::record::Payload;
use crate::record::Record;

/// Records in a batch at most: enough to make handing over cheap per record, few enough
/// that a record waits little behind the others.
const BATCH: usize = 256;

/// Bytes of keys and values in a batch at most (a batch is handed over once it holds
/// this much, however few records): with large records, memory stays bounded by about
/// `(IN_FLIGHT + 1) * BATCH_BYTES` plus one record per batch.
const BATCH_BYTES: usize = 1 << 20;

/// Batches handed over and not yet taken back at most: one being transformed while the
/// next waits its turn. More would only hold more records in memory.
const IN_FLIGHT: usize = 4;

/// How long the worker waits for the lane before it looks at the consumer again.
const WAIT: Duration = Duration::from_millis(100);

/// Value buffers a batch keeps for the encoder, and the largest it keeps: at most about
/// `SPARE_BUFFERS * SPARE_BUFFER_BYTES` (4 MiB) per batch, so a few large records do
/// not leave every buffer large.
const SPARE_BUFFERS: usize = BATCH;
const SPARE_BUFFER_BYTES: usize = 16 << 10;

/// Why the lane cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum LaneError {
    /// Its thread could not be started.
    #[error("cannot start the transform thread: {0}")]
    Start(#[source] std::io::Error),
    /// Its thread ended (it only ends when the worker closes the lane).
    #[error("the transform thread stopped unexpectedly")]
    Gone,
}

/// A consumed record, copied out of librdkafka's buffer (its key and value are ranges
/// of the batch's bytes).
pub(super) struct Input {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<i64>,
    key: Option<Range<usize>>,
    payload: Option<Range<usize>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Records going to the lane, and what it made of them coming back.
#[derive(Default)]
pub(super) struct Batch {
    /// The keys and values of the inputs, one after the other.
    bytes: Vec<u8>,
    pub inputs: Vec<Input>,
    /// Per input, in order: how many outputs it made (they follow each other in
    /// `outputs`), or why it failed.
    pub outcomes: Vec<Result<usize, Failure>>,
    pub outputs: Vec<Output>,
    /// Value buffers the producer is done with, for the encoder to fill again.
    pub buffers: Vec<Vec<u8>>,
}

impl Batch {
    /// Copies a polled record in.
    pub fn push(&mut self, m: &BorrowedMessage<'_>, topic: Arc<str>) {
        let key = m.key().map(|k| self.copy(k));
        let payload = m.payload().map(|p| self.copy(p));
        self.inputs.push(Input {
            topic,
            partition: m.partition(),
            offset: m.offset(),
            timestamp: m.timestamp().to_millis(),
            key,
            payload,
            headers: headers_of(m),
        });
    }

    fn copy(&mut self, bytes: &[u8]) -> Range<usize> {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(bytes);
        start..self.bytes.len()
    }

    /// An input's key.
    pub fn key(&self, input: &Input) -> Option<&[u8]> {
        part(&self.bytes, &input.key)
    }

    /// An input's value.
    pub fn payload(&self, input: &Input) -> Option<&[u8]> {
        part(&self.bytes, &input.payload)
    }

    fn len(&self) -> usize {
        self.inputs.len()
    }

    /// Empties its inputs for the next records (on the worker's thread, which made
    /// them); its outputs are left for the lane.
    fn clear_inputs(&mut self) {
        self.bytes.clear();
        if self.bytes.capacity() > 2 * BATCH_BYTES {
            // One huge record should not keep its room for ever.
            self.bytes = Vec::new();
        }
        self.inputs.clear();
        self.outcomes.clear();
    }

    /// Drops the outputs the worker has sent, keeping their value buffers (on the
    /// lane's thread, which made them).
    fn clear_outputs(&mut self) {
        for o in self.outputs.drain(..) {
            keep_buffer(
                &mut self.buffers,
                o.value,
                SPARE_BUFFERS,
                SPARE_BUFFER_BYTES,
            );
        }
    }

    /// Runs every input through the engine.
    fn transform(&mut self, engine: &mut Engine, topics: &mut LocalTopics, emits: &mut Vec<Emit>) {
        self.clear_outputs();
        for input in &self.inputs {
            let key = part(&self.bytes, &input.key);
            let payload = part(&self.bytes, &input.payload);
            let before = self.outputs.len();
            let outcome = record(
                engine,
                topics.get(&input.topic),
                (input.partition, input.offset, input.timestamp),
                key,
                input.headers.clone(),
                payload,
            )
            .and_then(|r| transform(engine, r, emits, &mut self.outputs, &mut self.buffers));
            self.outcomes
                .push(outcome.map(|()| self.outputs.len() - before));
        }
    }
}

/// The lane's own handles on the topic names the worker shares with it. The worker
/// counts references to its handles on every record; taking them here too would
/// make both threads write the same counters. The worker keeps every handle it gives
/// out for its whole life, so an address names one topic.
#[derive(Default)]
struct LocalTopics {
    /// The worker's handle (by address and length) and the lane's.
    known: Vec<((*const u8, usize), Arc<str>)>,
}

impl LocalTopics {
    /// The lane's handle on the name `topic` holds.
    fn get(&mut self, topic: &Arc<str>) -> Arc<str> {
        let at = (topic.as_ptr(), topic.len());
        if let Some((_, local)) = self.known.iter().find(|(p, _)| *p == at) {
            return local.clone();
        }
        let local: Arc<str> = Arc::from(&**topic);
        self.known.push((at, local.clone()));
        local
    }
}

/// The bytes of a key or value a batch holds.
fn part<'a>(bytes: &'a [u8], range: &Option<Range<usize>>) -> Option<&'a [u8]> {
    range.clone().map(|r| &bytes[r])
}

/// Keeps a spent value buffer in `buffers` if there is room and it is at most `largest`
/// bytes.
pub(super) fn keep_buffer(
    buffers: &mut Vec<Vec<u8>>,
    mut buffer: Vec<u8>,
    room: usize,
    largest: usize,
) {
    if buffers.len() < room && buffer.capacity() <= largest {
        buffer.clear();
        buffers.push(buffer);
    }
}

/// The record the steps see, decoded from what was consumed. A tombstone is an error
/// (it goes to the dead-letter topic), except in a change stream, whose engine skips it.
pub(super) fn record(
    engine: &Engine,
    topic: Arc<str>,
    (partition, offset, timestamp): (i32, i64, Option<i64>),
    key: Option<&[u8]>,
    headers: Vec<(String, Vec<u8>)>,
    payload: Option<&[u8]>,
) -> Result<Record, Failure> {
    Ok(Record {
        topic,
        partition,
        offset,
        timestamp: timestamp.unwrap_or(0),
        key: key.map(<[u8]>::to_vec),
        headers,
        value: match payload {
            None if engine.reads_changes() => Payload::Absent,
            _ => decode(engine.format(), payload)?,
        },
    })
}

/// Runs a decoded record through the steps and encodes what they emit, appending it to
/// `outputs` (with value buffers from `buffers`); on failure it appends nothing.
pub(super) fn transform(
    engine: &mut Engine,
    record: Record,
    emits: &mut Vec<Emit>,
    outputs: &mut Vec<Output>,
    buffers: &mut Vec<Vec<u8>>,
) -> Result<(), Failure> {
    let format = engine.format();
    let before = outputs.len();
    emits.clear();
    let result = engine.process(record, emits).and_then(|()| {
        emits.drain(..).try_for_each(|e| {
            Output::encode(format, e, buffers.pop().unwrap_or_default()).map(|o| outputs.push(o))
        })
    });
    if result.is_err() {
        outputs.truncate(before);
    }
    emits.clear();
    result
}

/// The worker's end of the lane.
pub(super) struct Lane {
    to_lane: Option<SyncSender<Batch>>,
    from_lane: Receiver<Batch>,
    thread: Option<JoinHandle<()>>,
    /// Batches handed over and not yet taken back.
    in_flight: usize,
    /// The batch being filled.
    filling: Batch,
    /// Taken-back batches, emptied, to fill again.
    spare: Vec<Batch>,
}

impl Lane {
    /// Starts the lane's thread with its own copy of the (stateless) engine.
    pub fn start(mut engine: Engine) -> Result<Lane, LaneError> {
        let (to_lane, lane_in) = sync_channel::<Batch>(IN_FLIGHT);
        let (lane_out, from_lane) = sync_channel::<Batch>(IN_FLIGHT);
        let thread = std::thread::Builder::new()
            .name("sluice-transform".to_string())
            .spawn(move || {
                let mut emits = Vec::new();
                let mut topics = LocalTopics::default();
                while let Ok(mut batch) = lane_in.recv() {
                    batch.transform(&mut engine, &mut topics, &mut emits);
                    if lane_out.send(batch).is_err() {
                        return;
                    }
                }
            })
            .map_err(LaneError::Start)?;
        Ok(Lane {
            to_lane: Some(to_lane),
            from_lane,
            thread: Some(thread),
            in_flight: 0,
            filling: Batch::default(),
            spare: Vec::new(),
        })
    }

    /// Whether records are waiting in or for the lane.
    pub fn busy(&self) -> bool {
        self.in_flight > 0 || self.filling.len() > 0
    }

    /// Copies a polled record into the batch being filled; says whether the batch is
    /// full (and should be handed over).
    pub fn push(&mut self, m: &BorrowedMessage<'_>, topic: Arc<str>) -> bool {
        self.filling.push(m, topic);
        self.filling.len() >= BATCH || self.filling.bytes.len() >= BATCH_BYTES
    }

    /// Whether another batch may be handed over now.
    pub fn has_room(&self) -> bool {
        self.in_flight < IN_FLIGHT
    }

    /// Hands the batch being filled over (if it holds anything). Call only when
    /// [`Lane::has_room`].
    pub fn submit(&mut self) -> Result<(), LaneError> {
        if self.filling.len() == 0 {
            return Ok(());
        }
        let next = self.spare.pop().unwrap_or_default();
        let batch = std::mem::replace(&mut self.filling, next);
        let to_lane = self.to_lane.as_ref().ok_or(LaneError::Gone)?;
        to_lane.send(batch).map_err(|_| LaneError::Gone)?;
        self.in_flight += 1;
        Ok(())
    }

    /// The oldest batch handed over, once transformed: without waiting, or waiting a
    /// little when `wait`.
    pub fn take(&mut self, wait: bool) -> Result<Option<Batch>, LaneError> {
        if self.in_flight == 0 {
            return Ok(None);
        }
        let batch = if wait {
            match self.from_lane.recv_timeout(WAIT) {
                Ok(b) => b,
                Err(RecvTimeoutError::Timeout) => return Ok(None),
                Err(RecvTimeoutError::Disconnected) => return Err(LaneError::Gone),
            }
        } else {
            match self.from_lane.try_recv() {
                Ok(b) => b,
                Err(TryRecvError::Empty) => return Ok(None),
                Err(TryRecvError::Disconnected) => return Err(LaneError::Gone),
            }
        };
        self.in_flight -= 1;
        Ok(Some(batch))
    }

    /// Takes back a batch the worker is done with, to fill again.
    pub fn recycle(&mut self, mut batch: Batch) {
        batch.clear_inputs();
        if self.spare.len() < IN_FLIGHT {
            self.spare.push(batch);
        }
    }

    /// Forgets every record polled and not yet handled (at a rewind: the consumer goes
    /// back and reads them again).
    pub fn discard(&mut self) -> Result<(), LaneError> {
        self.filling.clear_inputs();
        while self.in_flight > 0 {
            if let Some(b) = self.take(true)? {
                self.recycle(b);
            }
        }
        Ok(())
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        // Closing the channel ends the thread once it hands back what it holds.
        self.to_lane = None;
        while self.in_flight > 0 && self.from_lane.recv().is_ok() {
            self.in_flight -= 1;
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
