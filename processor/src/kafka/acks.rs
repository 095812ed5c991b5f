//! Delivery tracking for the producer: which outputs failed, and, for `atLeastOnce`,
//! which consumed offsets may be committed because every output produced before them has
//! been acknowledged.
//!
//! Every record sent carries the number of the commit interval ("epoch") it was sent in.
//! At the end of an interval the worker seals the epoch with the offsets consumed in it
//! (a checkpoint) and goes on consuming; a checkpoint is committed once no record of its
//! epoch or an earlier one awaits acknowledgement. So the loop never stops to flush, and
//! an offset is never committed before the outputs of the records below it are stored.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::ProducerContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::engine::Failure;

/// Where an output came from, for dead-lettering it if it cannot be delivered.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Origin {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
}

impl Origin {
    /// The origin of internal records (dead letters, changelog): never poisoned.
    pub fn internal() -> Origin {
        Origin {
            topic: Arc::from(""),
            partition: -1,
            offset: -1,
        }
    }

    /// Whether this is a consumed record (not an internal one).
    pub fn is_record(&self) -> bool {
        self.partition >= 0
    }
}

/// What rides along with each produced record to its delivery report.
#[derive(Debug)]
pub(crate) struct Sent {
    pub origin: Origin,
    pub epoch: u64,
    /// An `emit: onCommit` output, which stands for its group rather than for one
    /// consumed record.
    pub flushed: bool,
    /// The dead letter of the consumed record `origin`, with why the record failed.
    pub dead_letter: Option<Failure>,
}

impl Sent {
    /// The opaque for a record of `origin` sent in `epoch`.
    pub fn boxed(origin: Origin, epoch: u64) -> Box<Sent> {
        Box::new(Sent {
            origin,
            epoch,
            flushed: false,
            dead_letter: None,
        })
    }

    /// The opaque for the dead letter of the consumed record `origin` (which failed for
    /// `failure`), sent in `epoch`.
    pub fn dead_letter(origin: Origin, epoch: u64, failure: Failure) -> Box<Sent> {
        Box::new(Sent {
            origin,
            epoch,
            flushed: false,
            dead_letter: Some(failure),
        })
    }

    /// The opaque for an `emit: onCommit` output sent in `epoch`.
    pub fn flushed(epoch: u64) -> Box<Sent> {
        Box::new(Sent {
            origin: Origin::internal(),
            epoch,
            flushed: true,
            dead_letter: None,
        })
    }
}

/// An output of a group (`emit: onCommit`): its topic and key.
pub(crate) type OutputId = (String, Option<Vec<u8>>);

/// A record the broker refused after the producer's retries.
#[derive(Debug)]
pub(crate) struct Failed {
    /// The consumed record it was sent for (internal for other records).
    pub origin: Origin,
    /// The topic that refused it, and why.
    pub error: String,
    /// For an `emit: onCommit` output: which one.
    pub output: Option<OutputId>,
    /// It was the dead letter of `origin`, which failed for this.
    pub dead_letter: Option<Failure>,
    /// The broker refused the record for what it is (see [`refuses_the_record`]): it is
    /// dead-lettered on replay. Otherwise the failure passes (a timeout, a purge by an
    /// abort, a leader change) and the record is produced again.
    pub poison: bool,
}

/// Whether a delivery error is the broker refusing this record for what it is (too
/// large, invalid, against a policy), so producing it again would fail again. Every
/// other error (timeouts, records purged by an aborted transaction, leader changes, a
/// broker restarting) passes: the record is replayed, never dead-lettered for it.
pub(crate) fn refuses_the_record(err: &KafkaError) -> bool {
    matches!(
        err.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::InvalidTimestamp
                | RDKafkaErrorCode::PolicyViolation
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::BadMessage
        )
    )
}

/// Producer callbacks: remember outputs that could not be delivered, and count the ones
/// still awaiting acknowledgement per epoch.
///
/// Records sent in the open epoch, and their acknowledgements, are counted without a
/// lock (the worker sends one record after another, and its own polls of the producer
/// deliver the reports); the difference joins the per-epoch table when the epoch is
/// sealed. The open epoch counts as waiting while it has more sends than
/// acknowledgements.
#[derive(Default)]
pub(crate) struct DeliveryTracker {
    failed: Mutex<Vec<Failed>>,
    /// Sent minus acknowledged, per epoch (the open epoch's sends not yet added).
    unacked: Mutex<BTreeMap<u64, i64>>,
    open_epoch: AtomicU64,
    open_sent: AtomicU64,
    open_acked: AtomicU64,
    /// Epochs below this were forgotten (their records are being replayed): their late
    /// reports change no count.
    forgotten_below: AtomicU64,
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = Box<Sent>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: Self::DeliveryOpaque) {
        if sent.epoch < self.forgotten_below.load(Ordering::Acquire) {
            // Its record is being replayed: how this copy fared no longer matters.
            return;
        }
        if let Err((err, message)) = result {
            // Name the topic that refused it: a pipeline can have several outputs.
            let error = format!("{}: {err}", message.topic());
            let output = sent.flushed.then(|| {
                (
                    message.topic().to_string(),
                    message.key().map(<[u8]>::to_vec),
                )
            });
            lock(&self.failed).push(Failed {
                origin: sent.origin,
                error,
                output,
                dead_letter: sent.dead_letter,
                poison: refuses_the_record(err),
            });
        }
        self.acked(sent.epoch);
    }
}

impl DeliveryTracker {
    /// The producer accepted a record of `epoch`: it awaits acknowledgement.
    pub fn sent(&self, epoch: u64) {
        if epoch == self.open_epoch.load(Ordering::Acquire) {
            self.open_sent.fetch_add(1, Ordering::AcqRel);
        } else {
            self.add(epoch, 1);
        }
    }

    /// A record of `epoch` was acknowledged (or failed for good).
    fn acked(&self, epoch: u64) {
        if epoch < self.forgotten_below.load(Ordering::Acquire) {
            // Forgotten (the delivery callback checks this first; tests call this alone).
            return;
        }
        if epoch == self.open_epoch.load(Ordering::Acquire) {
            self.open_acked.fetch_add(1, Ordering::AcqRel);
        } else {
            self.add(epoch, -1);
        }
    }

    /// Closes `epoch` (the open one): what was sent in it and is not yet acknowledged
    /// now waits in the table, and `epoch + 1` is open.
    pub fn seal(&self, epoch: u64) {
        let mut unacked = lock(&self.unacked);
        let open = self.open_epoch.swap(epoch + 1, Ordering::AcqRel);
        let sent = self.open_sent.swap(0, Ordering::AcqRel);
        let acked = self.open_acked.swap(0, Ordering::AcqRel);
        let waiting = i64::try_from(sent)
            .unwrap_or(i64::MAX)
            .saturating_sub(i64::try_from(acked).unwrap_or(i64::MAX));
        if waiting != 0 {
            add_to(&mut unacked, open, waiting);
        }
    }

    fn add(&self, epoch: u64, n: i64) {
        add_to(&mut lock(&self.unacked), epoch, n);
    }

    /// Whether every record of `epoch` and of earlier epochs was acknowledged.
    pub fn acked_through(&self, epoch: u64) -> bool {
        let unacked = lock(&self.unacked);
        let open_waits = epoch >= self.open_epoch.load(Ordering::Acquire)
            && self.open_sent.load(Ordering::Acquire) > self.open_acked.load(Ordering::Acquire);
        !open_waits
            && unacked
                .first_key_value()
                .is_none_or(|(oldest, _)| *oldest > epoch)
    }

    /// Whether any delivery failed since the last [`DeliveryTracker::take_failed`].
    pub fn any_failed(&self) -> bool {
        !lock(&self.failed).is_empty()
    }

    /// The failed deliveries, forgetting them.
    pub fn take_failed(&self) -> Vec<Failed> {
        std::mem::take(&mut *lock(&self.failed))
    }

    /// Stops waiting for the records sent in `epoch` (the open one) and before: they
    /// are being replayed, and their late reports are ignored. `epoch + 1` is open.
    pub fn forget_unacked(&self, epoch: u64) {
        let mut unacked = lock(&self.unacked);
        unacked.clear();
        self.forgotten_below.store(epoch + 1, Ordering::Release);
        self.open_epoch.store(epoch + 1, Ordering::Release);
        self.open_sent.store(0, Ordering::Release);
        self.open_acked.store(0, Ordering::Release);
    }
}

/// Adds `n` to `epoch`'s count, dropping the entry when it reaches zero.
fn add_to(unacked: &mut BTreeMap<u64, i64>, epoch: u64, n: i64) {
    let count = unacked.entry(epoch).or_insert(0);
    *count = count.saturating_add(n);
    if *count == 0 {
        unacked.remove(&epoch);
    }
}

/// Offsets to commit: the next offset per consumed partition.
pub(crate) type Offsets = Vec<(Arc<str>, i32, i64)>;

/// Sets `next` as the offset to commit for a partition.
pub(crate) fn advance(offsets: &mut Offsets, topic: Arc<str>, partition: i32, next: i64) {
    if let Some(e) = offsets
        .iter_mut()
        .find(|(t, p, _)| *p == partition && (Arc::ptr_eq(t, &topic) || **t == *topic))
    {
        e.2 = next;
    } else {
        offsets.push((topic, partition, next));
    }
}

/// Sealed epochs whose offsets wait for their outputs to be acknowledged.
#[derive(Debug, Default)]
pub(crate) struct Checkpoints {
    sealed: VecDeque<(u64, Offsets)>,
}

impl Checkpoints {
    /// Seals `epoch` with the offsets consumed in it.
    pub fn seal(&mut self, epoch: u64, offsets: Offsets) {
        if !offsets.is_empty() {
            self.sealed.push_back((epoch, offsets));
        }
    }

    /// The offsets of every sealed epoch that `acked_through` says is fully acknowledged,
    /// oldest first and merged (a later offset of a partition wins), removed from here.
    pub fn take_acked(&mut self, acked_through: impl Fn(u64) -> bool) -> Offsets {
        let mut merged = Offsets::new();
        while let Some((epoch, _)) = self.sealed.front() {
            if !acked_through(*epoch) {
                break;
            }
            if let Some((_, offsets)) = self.sealed.pop_front() {
                for (t, p, o) in offsets {
                    advance(&mut merged, t, p, o);
                }
            }
        }
        merged
    }

    /// Every sealed epoch's offsets, merged, removed from here (after a flush).
    pub fn take_all(&mut self) -> Offsets {
        self.take_acked(|_| true)
    }

    /// Whether no sealed epoch waits.
    pub fn is_empty(&self) -> bool {
        self.sealed.is_empty()
    }

    /// Forgets every sealed epoch (they are being replayed).
    pub fn clear(&mut self) {
        self.sealed.clear();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_refusal_of_the_record_itself_is_poison() {
        let e = KafkaError::MessageProduction;
        for passing in [
            RDKafkaErrorCode::PurgeInflight,
            RDKafkaErrorCode::PurgeQueue,
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::RequestTimedOut,
            RDKafkaErrorCode::NotLeaderForPartition,
            RDKafkaErrorCode::NotEnoughReplicas,
        ] {
            assert!(!refuses_the_record(&e(passing)), "{passing:?}");
        }
        for refused in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::InvalidRecord,
            RDKafkaErrorCode::PolicyViolation,
        ] {
            assert!(refuses_the_record(&e(refused)), "{refused:?}");
        }
    }

    fn offsets(list: &[(i32, i64)]) -> Offsets {
        list.iter()
            .map(|(p, o)| (Arc::from("in"), *p, *o))
            .collect()
    }

    #[test]
    fn an_epoch_is_acked_only_when_it_and_every_earlier_one_are() {
        let t = DeliveryTracker::default();
        assert!(t.acked_through(0), "nothing sent");
        t.sent(1);
        t.sent(2);
        assert!(t.acked_through(0));
        assert!(!t.acked_through(1));
        assert!(!t.acked_through(2), "epoch 1 still waits");
        // Epoch 2's record is acknowledged first (another partition's broker was faster).
        t.acked(2);
        assert!(!t.acked_through(2), "epoch 1 still waits");
        t.acked(1);
        assert!(t.acked_through(2));
    }

    #[test]
    fn the_open_epoch_counts_once_sealed_even_when_acks_come_first() {
        let t = DeliveryTracker::default();
        t.sent(0);
        t.sent(0);
        // One acknowledgement arrives while epoch 0 is still open.
        t.acked(0);
        t.seal(0);
        assert!(!t.acked_through(0), "one of two records still waits");
        t.sent(1);
        t.acked(0);
        assert!(t.acked_through(0));
        assert!(!t.acked_through(1), "epoch 1 is open and waits");
        t.seal(1);
        assert!(!t.acked_through(1));
        t.acked(1);
        assert!(t.acked_through(1));
        // Both acknowledged before the seal: nothing waits.
        t.sent(2);
        t.acked(2);
        t.seal(2);
        assert!(t.acked_through(2));
    }

    #[test]
    fn checkpoints_are_released_in_order_and_merged() {
        let mut c = Checkpoints::default();
        c.seal(1, offsets(&[(0, 10), (1, 5)]));
        c.seal(2, offsets(&[(0, 20)]));
        c.seal(3, offsets(&[(1, 9)]));
        c.seal(4, Offsets::new());
        assert!(c.take_acked(|_| false).is_empty());
        // Epochs 1 and 2 acknowledged, 3 not.
        assert_eq!(c.take_acked(|e| e <= 2), offsets(&[(0, 20), (1, 5)]));
        assert!(c.take_acked(|e| e <= 2).is_empty());
        assert_eq!(c.take_all(), offsets(&[(1, 9)]));
    }

    #[test]
    fn forgotten_epochs_ignore_late_reports() {
        let t = DeliveryTracker::default();
        t.sent(0);
        t.sent(0);
        t.seal(0);
        t.sent(1);
        // A rewind in epoch 1: epochs 0 and 1 are replayed, epoch 2 opens.
        t.forget_unacked(1);
        assert!(t.acked_through(1));
        // Reports of the forgotten records still arrive; they change nothing.
        t.acked(0);
        t.acked(1);
        t.sent(2);
        assert!(!t.acked_through(2), "epoch 2's record waits");
        t.acked(2);
        t.seal(2);
        assert!(t.acked_through(2));
        t.acked(0);
        t.sent(3);
        t.seal(3);
        t.acked(3);
        assert!(t.acked_through(3), "a late report left no debt behind");
    }
}
