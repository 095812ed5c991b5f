//! Tables for enrich steps: every replica reads the whole (compacted) table topic into
//! memory before the pipeline starts, then a background thread keeps it current.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::KafkaSettings;
use super::restore::QuietEof;
use crate::format::RecordFormat;
use crate::record::Payload;
use crate::steps::enrich::Table;

/// A table that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("loading table {topic}: {message}")]
pub struct TableError {
    /// The table topic.
    pub topic: String,
    /// Why.
    pub message: String,
}

fn apply(
    table: &Table,
    format: RecordFormat,
    topic: &str,
    m: &rdkafka::message::BorrowedMessage<'_>,
) {
    let Some(key) = m.key() else { return };
    match m.payload() {
        None => table.apply(key, None),
        Some(bytes) => match format.decode(Some(bytes)) {
            Ok(Payload::Json(v)) => table.apply(key, Some(v)),
            Ok(Payload::JsonObject(o)) => match o.to_value() {
                Ok(v) => table.apply(key, Some(v)),
                Err(e) => {
                    tracing::warn!(%topic, partition = m.partition(), offset = m.offset(), error = %e, "table row skipped")
                }
            },
            Ok(Payload::Text(s)) => table.apply(key, Some(serde_json::Value::String(s))),
            Ok(Payload::Bytes(b)) => table.apply(
                key,
                Some(serde_json::Value::String(
                    String::from_utf8_lossy(&b).into_owned(),
                )),
            ),
            Err(e) => {
                tracing::warn!(%topic, partition = m.partition(), offset = m.offset(), error = %e, "table row skipped")
            }
        },
    }
}

/// Reads `topic` to its end, then keeps following it on a background thread.
pub fn load(
    settings: &KafkaSettings,
    group_id: &str,
    topic: &str,
    format: RecordFormat,
    timeout: Duration,
) -> Result<Arc<Table>, TableError> {
    let err = |e: KafkaError| TableError {
        topic: topic.to_string(),
        message: e.to_string(),
    };
    let consumer: BaseConsumer<QuietEof> = settings
        .consumer_config()
        .set("group.id", format!("{group_id}-table"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create_with_context(QuietEof)
        .map_err(err)?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(30))
        .map_err(err)?;
    let partitions: Vec<i32> = md
        .topics()
        .first()
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    let mut tpl = TopicPartitionList::new();
    let mut high = HashMap::new();
    for p in &partitions {
        let (_, hi) = consumer
            .fetch_watermarks(topic, *p, Duration::from_secs(30))
            .map_err(err)?;
        high.insert(*p, hi);
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .map_err(err)?;
    }
    consumer.assign(&tpl).map_err(err)?;
    let table = Arc::new(Table::default());
    let deadline = Instant::now() + timeout;
    let caught_up = |c: &BaseConsumer<QuietEof>| -> Result<bool, KafkaError> {
        let pos = c.position()?;
        Ok(high.iter().all(|(p, hi)| {
            *hi == 0
                || pos
                    .find_partition(topic, *p)
                    .is_some_and(|e| matches!(e.offset(), Offset::Offset(o) if o >= *hi))
        }))
    };
    while !caught_up(&consumer).map_err(err)? {
        if Instant::now() > deadline {
            return Err(TableError {
                topic: topic.to_string(),
                message: format!("not read to its end within {timeout:?}"),
            });
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => apply(&table, format, topic, &m),
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => return Err(err(e)),
        }
    }
    tracing::info!(%topic, rows = table.len(), "table loaded");
    let follower = table.clone();
    let name = topic.to_string();
    std::thread::Builder::new()
        .name(format!("table-{topic}"))
        .spawn(move || {
            loop {
                match consumer.poll(Duration::from_millis(500)) {
                    Some(Ok(m)) => apply(&follower, format, &name, &m),
                    Some(Err(KafkaError::PartitionEOF(_))) | None => {}
                    Some(Err(e)) => {
                        tracing::warn!(topic = %name, error = %e, "table consumer error")
                    }
                }
            }
        })
        .map_err(|e| TableError {
            topic: topic.to_string(),
            message: e.to_string(),
        })?;
    Ok(table)
}
