//! Kafka helpers for the e2e tests: produce JSON records, read a topic to its end.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

/// One record read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Read {
    /// Key as text.
    pub key: Option<String>,
    /// Value as text.
    pub value: Option<String>,
    /// Headers as text.
    pub headers: BTreeMap<String, String>,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// An idempotent producer.
pub fn producer(bootstrap: &str) -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()?)
}

/// Produces `(key, value)` records and waits for every acknowledgement.
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    records: &[(String, String)],
) -> anyhow::Result<()> {
    let sends = records.iter().map(|(k, v)| {
        producer.send(
            FutureRecord::to(topic).key(k).payload(v),
            Duration::from_secs(30),
        )
    });
    for result in futures::future::join_all(sends).await {
        result.map_err(|(e, _)| anyhow::anyhow!("producing to {topic}: {e}"))?;
    }
    Ok(())
}

/// Produces `records` in chunks of `chunk` with `pause` between them, in the background:
/// a live stream for tests that act while records are still arriving.
pub fn produce_paced(
    producer: FutureProducer,
    topic: String,
    records: Vec<(String, String)>,
    chunk: usize,
    pause: Duration,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        for part in records.chunks(chunk.max(1)) {
            produce(&producer, &topic, part).await?;
            tokio::time::sleep(pause).await;
        }
        Ok(())
    })
}

/// Waits until `topic` holds at least one committed record (at most `max`).
pub fn wait_for_first(bootstrap: &str, topic: &str, max: Duration) -> anyhow::Result<()> {
    let consumer = committed_reader(bootstrap, topic)?;
    let start = Instant::now();
    while start.elapsed() < max {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            m?;
            return Ok(());
        }
    }
    anyhow::bail!("no committed record in {topic} within {max:?}")
}

/// A read_committed consumer of every partition of `topic` from the beginning.
fn committed_reader(bootstrap: &str, topic: &str) -> anyhow::Result<BaseConsumer> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set(
            "group.id",
            format!("e2e-reader-{}", crate::cluster::unique("r")),
        )
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let partitions = partitions_of(&consumer, topic)?;
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// The partitions of `topic`, asked again for up to 30 s while the metadata of a topic
/// just created does not show them yet.
fn partitions_of(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<Vec<i32>> {
    let start = Instant::now();
    loop {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .first()
            .map(|t| t.partitions().iter().map(|p| p.id()).collect())
            .unwrap_or_default();
        if !partitions.is_empty() {
            return Ok(partitions);
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(30),
            "topic {topic} has no partitions"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Reads every committed record of `topic` from the beginning until nothing new arrived
/// for `quiet` (or `max` elapsed).
pub fn read_all(
    bootstrap: &str,
    topic: &str,
    quiet: Duration,
    max: Duration,
) -> anyhow::Result<Vec<Read>> {
    let consumer = committed_reader(bootstrap, topic)?;
    let start = Instant::now();
    let mut last = Instant::now();
    let mut out = Vec::new();
    while last.elapsed() < quiet && start.elapsed() < max {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                last = Instant::now();
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Read {
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    value: m.payload().map(|v| String::from_utf8_lossy(v).into_owned()),
                    headers,
                    partition: m.partition(),
                    offset: m.offset(),
                });
            }
            Some(Err(e)) => anyhow::bail!("reading {topic}: {e}"),
            None => {}
        }
    }
    Ok(out)
}

/// The last value per key, parsed as JSON.
pub fn latest_by_key(records: &[Read]) -> BTreeMap<String, serde_json::Value> {
    records
        .iter()
        .filter_map(|r| {
            let key = r.key.clone()?;
            let value = serde_json::from_str(r.value.as_deref()?).ok()?;
            Some((key, value))
        })
        .collect()
}
