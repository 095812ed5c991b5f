//! Emitted records, encoded and handed to the producer.

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord};
use rdkafka::types::RDKafkaErrorCode;
use std::time::Duration;

use super::acks::{DeliveryTracker, Sent};
use crate::engine::{Emit, Failure};
use crate::format::RecordFormat;

/// A record ready to produce.
#[derive(Debug)]
pub(crate) struct Output {
    pub topic: std::sync::Arc<str>,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    /// No value at all (`value` is empty and not sent).
    pub tombstone: bool,
    pub headers: Option<OwnedHeaders>,
    pub timestamp: Option<i64>,
}

impl Output {
    /// Encodes an emitted record, writing text into `buf` (an empty buffer to reuse).
    pub fn encode(format: RecordFormat, e: Emit, buf: Vec<u8>) -> Result<Output, Failure> {
        let tombstone = matches!(e.record.value, crate::record::Payload::Absent);
        let value = if tombstone {
            buf
        } else {
            format
                .encode_owned(e.record.value, buf)
                .map_err(|err| Failure::new("output", err))?
        };
        let headers = (!e.record.headers.is_empty()).then(|| {
            e.record
                .headers
                .iter()
                .fold(OwnedHeaders::new(), |h, (k, v)| {
                    h.insert(Header {
                        key: k,
                        value: Some(v.as_slice()),
                    })
                })
        });
        let timestamp = (e.record.timestamp > 0).then_some(e.record.timestamp);
        Ok(Output {
            topic: e.topic,
            key: e.record.key,
            value,
            tombstone,
            headers,
            timestamp,
        })
    }

    /// Produces it with `opaque` riding along to its delivery report (whose record is
    /// dead-lettered if it cannot be delivered). An error means the producer refused it
    /// at once. The producer copies the bytes: the value's buffer may be reused after.
    pub fn send(
        &mut self,
        producer: &BaseProducer<DeliveryTracker>,
        opaque: Box<Sent>,
    ) -> Result<(), KafkaError> {
        let mut rec = BaseRecord::with_opaque_to(&self.topic, opaque);
        if !self.tombstone {
            rec = rec.payload(&self.value);
        }
        if let Some(k) = &self.key {
            rec = rec.key(k);
        }
        if let Some(h) = self.headers.take() {
            rec = rec.headers(h);
        }
        if let Some(ts) = self.timestamp {
            rec = rec.timestamp(ts);
        }
        send(producer, rec)
    }
}

/// Sends a record, waiting while the producer queue is full (backpressure). The caller
/// tells the ledger it was sent.
pub(crate) fn send<K, P>(
    producer: &BaseProducer<DeliveryTracker>,
    mut rec: BaseRecord<'_, K, P, Box<Sent>>,
) -> Result<(), KafkaError>
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send(rec) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                producer.poll(Duration::from_millis(50));
                rec = back;
            }
            Err((e, _)) => return Err(e),
        }
    }
}
