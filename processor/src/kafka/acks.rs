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
use std::sync::{Arc, Mutex, MutexGuard};

use rdkafka::client::ClientContext;
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::ProducerContext;

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
}

impl Sent {
    /// The opaque for a record of `origin` sent in `epoch`.
    pub fn boxed(origin: Origin, epoch: u64) -> Box<Sent> {
        Box::new(Sent {
            origin,
            epoch,
            flushed: false,
        })
    }

    /// The opaque for an `emit: onCommit` output sent in `epoch`.
    pub fn flushed(epoch: u64) -> Box<Sent> {
        Box::new(Sent {
            origin: Origin::internal(),
            epoch,
            flushed: true,
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
}

/// Producer callbacks: remember outputs that could not be delivered, and count the ones
/// still awaiting acknowledgement per epoch.
#[derive(Default)]
pub(crate) struct DeliveryTracker {
    failed: Mutex<Vec<Failed>>,
    unacked: Mutex<BTreeMap<u64, u64>>,
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = Box<Sent>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: Self::DeliveryOpaque) {
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
            });
        }
        let mut unacked = lock(&self.unacked);
        if let Some(n) = unacked.get_mut(&sent.epoch) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                unacked.remove(&sent.epoch);
            }
        }
    }
}

impl DeliveryTracker {
    /// The producer accepted a record of `epoch`: it awaits acknowledgement.
    pub fn sent(&self, epoch: u64) {
        *lock(&self.unacked).entry(epoch).or_insert(0) += 1;
    }

    /// Whether every record of `epoch` and of earlier epochs was acknowledged.
    pub fn acked_through(&self, epoch: u64) -> bool {
        lock(&self.unacked)
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

    /// Stops waiting for the records sent so far (they are being replayed): their late
    /// reports are ignored.
    pub fn forget_unacked(&self) {
        lock(&self.unacked).clear();
    }
}

/// Offsets to commit: the next offset per consumed partition.
pub(crate) type Offsets = Vec<(Arc<str>, i32, i64)>;

/// Sets `next` as the offset to commit for a partition.
pub(crate) fn advance(offsets: &mut Offsets, topic: Arc<str>, partition: i32, next: i64) {
    if let Some(e) = offsets
        .iter_mut()
        .find(|(t, p, _)| *p == partition && **t == *topic)
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
        lock(&t.unacked).remove(&2);
        assert!(!t.acked_through(2), "epoch 1 still waits");
        lock(&t.unacked).remove(&1);
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
        t.sent(1);
        t.forget_unacked();
        assert!(t.acked_through(5));
    }
}
