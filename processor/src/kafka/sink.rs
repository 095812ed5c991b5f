//! Kafka as a [`Sink`] of the runtime, for source connectors: each batch goes out in one
//! Kafka transaction together with the source's positions, written to the connector's
//! compacted positions topic, so a `read_committed` reader sees every record exactly
//! once whatever moment the replica is killed at. The transactional id is stable per
//! connector: a new instance fences the last one and aborts its open transaction, and
//! the positions it reads back are those of the last committed transaction.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use serde::{Deserialize, Serialize};

use super::KafkaSettings;
use super::acks::refuses_the_record;
use super::compacted::{AtEnd, CompactedReader, ReadError};
use super::topics::{InternalTopic, ensure, partition_counts};
use crate::runtime::ledger::Offsets;
use crate::runtime::sink::{Promise, Refused, Sink, SinkError, SourcePosition, SourceRecord};

/// How long a transactional call (init, commit, abort) may take.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long reading the positions topic to its end may take.
const READ_POSITIONS_TIMEOUT: Duration = Duration::from_secs(60);
/// The broker aborts a transaction left open this long (a replica that hangs).
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Where a Kafka sink writes and keeps its positions.
#[derive(Debug, Clone)]
pub struct KafkaSinkConfig {
    /// How to reach the brokers.
    pub settings: KafkaSettings,
    /// Stable per connector: one instance writes at a time.
    pub transactional_id: String,
    /// The compacted topic of the source's positions (created when missing).
    pub positions_topic: String,
    /// Where records go that do not name their topic ([`SourceRecord::destination`]).
    pub topic: Option<String>,
}

/// Writes records to Kafka in transactions that also store the source's positions.
pub struct KafkaSink {
    config: KafkaSinkConfig,
    /// `None` until the first [`Sink::positions`], and after a failure that leaves the
    /// producer unusable (it is made again, fencing what it left open).
    producer: Option<Arc<BaseProducer>>,
    topic: Option<Arc<str>>,
    /// Whether a transaction is open.
    open: bool,
    /// The source position of the last record written (or refused) per source
    /// partition in the open transaction.
    pending: HashMap<(Arc<str>, i32), Arc<str>>,
    /// The source positions of the last committed transaction per partition (read back
    /// on start): a partition whose records in a transaction were all refused keeps it.
    committed: HashMap<(Arc<str>, i32), Arc<str>>,
    /// The source positions read back by the last [`Sink::positions`].
    read_back: Vec<SourcePosition>,
}

/// The key of a positions record: the source partition.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, Hash, Clone)]
struct PositionKey {
    topic: String,
    partition: i32,
}

/// The value of a positions record.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, Clone)]
struct PositionValue {
    /// The next offset of the source partition.
    next: i64,
    /// The source's own position there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    position: Option<String>,
}

impl KafkaSink {
    /// A sink writing with `config`; it connects on the first [`Sink::positions`].
    pub fn new(config: KafkaSinkConfig) -> KafkaSink {
        let topic = config.topic.as_deref().map(Arc::from);
        KafkaSink {
            config,
            producer: None,
            topic,
            open: false,
            pending: HashMap::new(),
            committed: HashMap::new(),
            read_back: Vec::new(),
        }
    }

    /// The producer, made (and its predecessors fenced) when there is none.
    fn producer(&mut self) -> Result<Arc<BaseProducer>, SinkError> {
        if let Some(p) = &self.producer {
            return Ok(p.clone());
        }
        let producer: BaseProducer = self
            .config
            .settings
            .client_config()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            // Keys land in the partitions Kafka's Java clients (and Debezium) pick.
            .set("partitioner", "murmur2_random")
            .set("transactional.id", &self.config.transactional_id)
            .set(
                "transaction.timeout.ms",
                TRANSACTION_TIMEOUT.as_millis().to_string(),
            )
            .create()
            .map_err(|e| SinkError::Fatal(format!("cannot create the Kafka producer: {e}")))?;
        producer
            .init_transactions(TXN_TIMEOUT)
            .map_err(|e| failure("cannot start the producer's transactions", &e))?;
        let producer = Arc::new(producer);
        self.producer = Some(producer.clone());
        Ok(producer)
    }

    /// Opens a transaction unless one is open.
    fn begin(&mut self) -> Result<Arc<BaseProducer>, SinkError> {
        let producer = self.producer()?;
        if !self.open {
            producer
                .begin_transaction()
                .map_err(|e| failure("cannot begin a transaction", &e))?;
            self.open = true;
        }
        Ok(producer)
    }

    /// Reads the positions topic to its end: the last value per source partition.
    fn read_positions(&self) -> Result<HashMap<PositionKey, PositionValue>, SinkError> {
        let topic = &self.config.positions_topic;
        let counts = partition_counts(&self.config.settings, Duration::from_secs(10))
            .map_err(|e| SinkError::Unavailable(e.to_string()))?;
        ensure(
            &self.config.settings,
            &counts,
            &[InternalTopic {
                name: topic.clone(),
                partitions: 1,
                config: vec![("cleanup.policy", "compact")],
            }],
        )
        .map_err(|e| SinkError::Unavailable(e.to_string()))?;
        let mut reader = CompactedReader::new(
            &self.config.settings,
            &format!("{topic}-reader"),
            topic,
            &[0],
            READ_POSITIONS_TIMEOUT,
            AtEnd::Stop,
        )
        .map_err(|e| failure("cannot read the positions topic", &e))?;
        let mut stored = HashMap::new();
        while !reader.is_finished() {
            reader
                .step(Duration::from_millis(500), |m| {
                    let Some(key) = m.key() else {
                        return Ok(());
                    };
                    let key: PositionKey = serde_json::from_slice(key)
                        .map_err(|e| format!("a key that is not a position: {e}"))?;
                    match m.payload() {
                        None => {
                            stored.remove(&key);
                        }
                        Some(value) => {
                            let value: PositionValue = serde_json::from_slice(value)
                                .map_err(|e| format!("a value that is not a position: {e}"))?;
                            stored.insert(key, value);
                        }
                    }
                    Ok::<(), String>(())
                })
                .map_err(|e| match e {
                    ReadError::Apply(message) => SinkError::Fatal(format!(
                        "the positions topic {topic} holds {message}: is it used by something else?"
                    )),
                    other => SinkError::Unavailable(format!(
                        "cannot read the positions topic {topic}: {other}"
                    )),
                })?;
        }
        Ok(stored)
    }
}

/// A failed Kafka call as the pump sees it: a producer fenced by a newer instance (or
/// failed for good) stops this one; anything else is read again from the last commit.
fn failure(what: &str, e: &KafkaError) -> SinkError {
    // librdkafka reports a fencing as its own `__FENCED`, and a transactional error it
    // cannot recover from as fatal.
    let fenced = matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
        )
    ) || matches!(e, KafkaError::Transaction(t) if t.is_fatal());
    if fenced {
        SinkError::Fatal(format!(
            "{what}: {e} -- another instance of this connector writes with the same transactional id (the previous replica not gone yet, or a second one); this one stops"
        ))
    } else {
        SinkError::Unavailable(format!("{what}: {e}"))
    }
}

/// Sends `record`, waiting while the producer's queue is full.
fn send(producer: &BaseProducer, mut record: BaseRecord<'_, [u8], [u8]>) -> Result<(), KafkaError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                producer.poll(Duration::from_millis(10));
                record = back;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Commits the open transaction; a retriable error is tried again (librdkafka's answer:
/// the commit may be under way) until the timeout.
fn commit_transaction(producer: &BaseProducer) -> Result<(), KafkaError> {
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

impl Sink for KafkaSink {
    fn promise(&self) -> Promise {
        Promise::Transactional
    }

    async fn positions(&mut self, partitions: &[(Arc<str>, i32)]) -> Result<Offsets, SinkError> {
        self.producer()?;
        let stored = self.read_positions()?;
        let mut offsets = Offsets::new();
        self.read_back.clear();
        self.committed.clear();
        for (topic, partition) in partitions {
            let key = PositionKey {
                topic: topic.to_string(),
                partition: *partition,
            };
            if let Some(value) = stored.get(&key) {
                offsets.push((topic.clone(), *partition, value.next));
                if let Some(position) = &value.position {
                    let position: Arc<str> = Arc::from(position.as_str());
                    self.committed
                        .insert((topic.clone(), *partition), position.clone());
                    self.read_back.push(SourcePosition {
                        topic: topic.clone(),
                        partition: *partition,
                        position,
                    });
                }
            }
        }
        Ok(offsets)
    }

    fn source_positions(&self) -> Vec<SourcePosition> {
        self.read_back.clone()
    }

    async fn write(&mut self, batch: &[SourceRecord]) -> Result<Vec<Refused>, SinkError> {
        let producer = self.begin()?;
        let mut refused = Vec::new();
        for (index, record) in batch.iter().enumerate() {
            let Some(topic) = record.destination.as_ref().or(self.topic.as_ref()) else {
                return Err(SinkError::Fatal(format!(
                    "record {}/{}@{} names no topic and the connector has no default topic",
                    record.origin.topic, record.origin.partition, record.origin.offset
                )));
            };
            let mut out = BaseRecord::<[u8], [u8]>::to(topic);
            if let Some(key) = &record.key {
                out = out.key(key.as_slice());
            }
            if let Some(value) = &record.value {
                out = out.payload(value.as_slice());
            }
            if let Some(ts) = record.timestamp {
                out = out.timestamp(ts);
            }
            if !record.headers.is_empty() {
                let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
                for (name, value) in &record.headers {
                    headers = headers.insert(Header {
                        key: name,
                        value: Some(value.as_slice()),
                    });
                }
                out = out.headers(headers);
            }
            match send(&producer, out) {
                Ok(()) => {}
                // A refused record goes to the dead-letter topic: the source is past it.
                Err(e) if refuses_the_record(&e) => refused.push(Refused {
                    index,
                    error: e.to_string(),
                }),
                Err(e) => return Err(failure(&format!("cannot send to {topic}"), &e)),
            }
            if let Some(position) = &record.position {
                self.pending.insert(
                    (record.origin.topic.clone(), record.origin.partition),
                    position.clone(),
                );
            }
        }
        Ok(refused)
    }

    async fn commit(&mut self, positions: &Offsets) -> Result<(), SinkError> {
        let producer = self.begin()?;
        let topic = self.config.positions_topic.clone();
        for (source_topic, partition, next) in positions {
            let key = PositionKey {
                topic: source_topic.to_string(),
                partition: *partition,
            };
            let value = PositionValue {
                next: *next,
                position: self
                    .pending
                    .get(&(source_topic.clone(), *partition))
                    .or_else(|| self.committed.get(&(source_topic.clone(), *partition)))
                    .map(|p| p.to_string()),
            };
            let key = serde_json::to_vec(&key).map_err(|e| SinkError::Fatal(e.to_string()))?;
            let value = serde_json::to_vec(&value).map_err(|e| SinkError::Fatal(e.to_string()))?;
            send(
                &producer,
                BaseRecord::<[u8], [u8]>::to(&topic)
                    .key(key.as_slice())
                    .payload(value.as_slice()),
            )
            .map_err(|e| failure(&format!("cannot send to the positions topic {topic}"), &e))?;
        }
        let committing = producer.clone();
        tokio::task::spawn_blocking(move || commit_transaction(&committing))
            .await
            .map_err(|e| SinkError::Unavailable(format!("the commit did not finish: {e}")))?
            .map_err(|e| failure("cannot commit the transaction", &e))?;
        self.open = false;
        self.committed.extend(self.pending.drain());
        Ok(())
    }

    async fn abort(&mut self) {
        self.pending.clear();
        if !self.open {
            return;
        }
        self.open = false;
        if let Some(producer) = self.producer.clone() {
            let aborting = producer.clone();
            let aborted =
                tokio::task::spawn_blocking(move || aborting.abort_transaction(TXN_TIMEOUT)).await;
            if !matches!(aborted, Ok(Ok(()))) {
                tracing::warn!(result = ?aborted, "cannot abort the transaction: the producer is made again, which aborts it");
                self.producer = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_a_position_is_optional() {
        let value = PositionValue {
            next: 42,
            position: Some("{\"lsn\":\"0/16B3748\"}".into()),
        };
        let text = serde_json::to_string(&value).unwrap();
        assert_eq!(serde_json::from_str::<PositionValue>(&text).unwrap(), value);
        let bare: PositionValue = serde_json::from_str("{\"next\":7}").unwrap();
        assert_eq!(bare.position, None);
        let key: PositionKey =
            serde_json::from_str("{\"topic\":\"slot\",\"partition\":0}").unwrap();
        assert_eq!(key.topic, "slot");
    }

    #[test]
    fn a_fenced_producer_stops_and_other_errors_are_read_again() {
        let fenced = KafkaError::MessageProduction(RDKafkaErrorCode::ProducerFenced);
        assert!(
            matches!(failure("commit", &fenced), SinkError::Fatal(m) if m.contains("same transactional id"))
        );
        let slow = KafkaError::MessageProduction(RDKafkaErrorCode::RequestTimedOut);
        assert!(matches!(
            failure("commit", &slow),
            SinkError::Unavailable(_)
        ));
    }
}
