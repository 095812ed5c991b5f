//! Delivery reports of the producer, handed to the commit core ([`Ledger`]): which
//! outputs were acknowledged (counted per commit interval, "epoch") and which refused.
//!
//! The producer calls back on whichever thread polls it (the worker's own, in practice);
//! the reports wait here until the worker tells the ledger.

use std::sync::{Mutex, MutexGuard};

use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::ProducerContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::engine::Failure;
pub(crate) use crate::runtime::ledger::Origin;
use crate::runtime::ledger::{Failed, Ledger};

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

/// Producer callbacks: the reports since the worker last looked.
#[derive(Default)]
pub(crate) struct DeliveryTracker {
    reports: Mutex<Reports>,
}

/// Acknowledgements (per epoch, in the order they came) and refusals.
#[derive(Default)]
struct Reports {
    acked: Vec<(u64, u64)>,
    failed: Vec<Failed>,
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = Box<Sent>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: Self::DeliveryOpaque) {
        let mut reports = lock(&self.reports);
        match result {
            Ok(_) => match reports.acked.last_mut() {
                Some((epoch, n)) if *epoch == sent.epoch => *n += 1,
                _ => reports.acked.push((sent.epoch, 1)),
            },
            Err((err, message)) => {
                // Name the topic that refused it: a pipeline can have several outputs.
                let error = format!("{}: {err}", message.topic());
                let output = sent.flushed.then(|| {
                    (
                        message.topic().to_string(),
                        message.key().map(<[u8]>::to_vec),
                    )
                });
                reports.failed.push(Failed {
                    epoch: sent.epoch,
                    origin: sent.origin,
                    error,
                    output,
                    dead_letter: sent.dead_letter,
                    poison: refuses_the_record(err),
                });
            }
        }
    }
}

impl DeliveryTracker {
    /// Tells `ledger` the reports that came since the last call.
    pub fn report_to(&self, ledger: &mut Ledger) {
        let (acked, failed) = {
            let mut reports = lock(&self.reports);
            if reports.acked.is_empty() && reports.failed.is_empty() {
                return;
            }
            (
                std::mem::take(&mut reports.acked),
                std::mem::take(&mut reports.failed),
            )
        };
        for (epoch, n) in acked {
            ledger.acked(epoch, n);
        }
        for f in failed {
            ledger.failed(f);
        }
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
}
