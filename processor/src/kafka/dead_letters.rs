//! The dead-letter topic of a connector: records its target refused, as they were read,
//! with the target's message in `sluice.sink.error`.

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, Producer};

use super::KafkaSettings;
use super::acks::{DeliveryTracker, refuses_the_record};
use super::dead_letter::{DeadLetterSource, dead_letter_record};
use super::output::send;
use crate::engine::Failure;
use crate::runtime::ledger::Ledger;
use crate::runtime::sink::SourceRecord;

/// How long a flush of the dead letters may take.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// A producer of dead letters to one topic.
pub struct DeadLetters {
    producer: BaseProducer<DeliveryTracker>,
    topic: String,
}

impl DeadLetters {
    /// A producer for `topic`, retrying each record `retries` times.
    pub fn new(settings: &KafkaSettings, topic: &str, retries: i32) -> Result<Self, KafkaError> {
        let producer = settings
            .client_config()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.send.max.retries", retries.max(1).to_string())
            .create_with_context(DeliveryTracker::default())?;
        Ok(DeadLetters {
            producer,
            topic: topic.to_string(),
        })
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Sends the dead letter of `record`, which `sink` refused with `error`. A dead
    /// letter the producer refuses at once for what it is goes without the record.
    pub fn send(
        &self,
        record: &SourceRecord,
        sink: &str,
        error: &str,
        ledger: &mut Ledger,
    ) -> Result<(), KafkaError> {
        let src = DeadLetterSource::of_source(record);
        let failure = Failure::new(sink, error);
        let extra = [("sluice.sink.error", error)];
        let mut stripped: Option<String> = None;
        loop {
            let rec = dead_letter_record(
                &self.topic,
                &src,
                &failure,
                stripped.as_deref(),
                &record.origin,
                ledger.epoch(),
                &extra,
            );
            match send(&self.producer, rec) {
                Ok(()) => {
                    ledger.sent();
                    return Ok(());
                }
                Err(e) if stripped.is_none() && refuses_the_record(&e) => {
                    stripped = Some(format!("{}: {e}", self.topic));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits until every dead letter sent is acknowledged or refused, and tells `ledger`.
    pub fn flush(&self, ledger: &mut Ledger) -> Result<(), KafkaError> {
        let flushed = self.producer.flush(FLUSH_TIMEOUT);
        self.producer.context().report_to(ledger);
        flushed
    }
}
