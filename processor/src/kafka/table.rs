//! Tables for enrich steps: every replica reads the whole (compacted) table topic into
//! memory before the pipeline starts, then a background thread keeps it current.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;

use super::KafkaSettings;
use super::compacted::{AtEnd, CompactedReader};
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
            Ok(Payload::Absent) => table.apply(key, None),
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

/// How long the loading loop reads before it looks at the clock again.
const LOAD_STEP: Duration = Duration::from_secs(1);

/// Reads `topic` to its end, then keeps following it on a background thread.
pub fn load(
    settings: &KafkaSettings,
    group_id: &str,
    topic: &str,
    format: RecordFormat,
    timeout: Duration,
) -> Result<Arc<Table>, TableError> {
    let err = |message: String| TableError {
        topic: topic.to_string(),
        message,
    };
    let partitions = partitions_of(settings, topic).map_err(|e| err(e.to_string()))?;
    let mut reader = CompactedReader::new(
        settings,
        &format!("{group_id}-table"),
        topic,
        &partitions,
        timeout,
        AtEnd::Follow,
    )
    .map_err(|e| err(e.to_string()))?;
    let table = Arc::new(Table::default());
    while !reader.is_finished() {
        reader
            .step(LOAD_STEP, |m| {
                apply(&table, format, topic, m);
                Ok::<(), std::convert::Infallible>(())
            })
            .map_err(|e| err(e.to_string()))?;
    }
    tracing::info!(%topic, rows = table.len(), took_ms = reader.elapsed().as_millis() as u64, "table loaded");
    let consumer = reader.into_consumer();
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
        .map_err(|e| err(e.to_string()))?;
    Ok(table)
}

/// The partitions of `topic`.
fn partitions_of(settings: &KafkaSettings, topic: &str) -> Result<Vec<i32>, KafkaError> {
    let consumer: BaseConsumer = settings.client_config().create()?;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(30))?;
    Ok(md
        .topics()
        .first()
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default())
}
