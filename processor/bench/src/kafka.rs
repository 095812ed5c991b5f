//! Kafka for the bench: topics, the input orders, offsets, and candidate (a), the bare
//! rdkafka consume-produce loop.

use super::*;

pub(crate) fn client(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c
}

pub(crate) fn create_topic(bootstrap: &str, name: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client(bootstrap).create()?;
    let t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for r in futures::executor::block_on(admin.create_topics([&t], &AdminOptions::new()))? {
        r.map_err(|(t, e)| anyhow::anyhow!("create {t}: {e}"))?;
    }
    Ok(())
}

/// Deletes every topic whose name holds `run` (inputs, outputs, and the candidates'
/// repartition and changelog topics): a run writes gigabytes the broker would keep.
pub(crate) fn delete_run_topics(bootstrap: &str, run: &str) -> anyhow::Result<usize> {
    let consumer: BaseConsumer = client(bootstrap).create()?;
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(10))?;
    let names: Vec<&str> = metadata
        .topics()
        .iter()
        .map(|t| t.name())
        .filter(|n| n.contains(run))
        .collect();
    if names.is_empty() {
        return Ok(0);
    }
    let admin: AdminClient<DefaultClientContext> = client(bootstrap).create()?;
    for r in futures::executor::block_on(admin.delete_topics(&names, &AdminOptions::new()))? {
        r.map_err(|(t, e)| anyhow::anyhow!("delete {t}: {e}"))?;
    }
    Ok(names.len())
}

/// The bench's order `i` (about 90 bytes of JSON).
pub(crate) fn order(i: u64) -> String {
    let regions = ["eu-west", "us-east", "ap-south"];
    format!(
        r#"{{"orderId":"o-{i}","region":"{}","total":{:.1},"items":{}}}"#,
        regions[(i % 3) as usize],
        (i % 50) as f64 - 5.0,
        i % 7 + 1
    )
}

/// Produces orders `from..to`, at `rate`/s when given; each record's CreateTime is its
/// send time. `timed_from`, when given, is set to the CreateTime of the first timed order.
pub(crate) fn produce(
    bootstrap: &str,
    topic: &str,
    from: u64,
    to: u64,
    rate: Option<u64>,
    timed_from: Option<&AtomicI64>,
) -> anyhow::Result<()> {
    let producer: ThreadedProducer<_> = client(bootstrap)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .create()?;
    if from >= to {
        return Ok(());
    }
    // Before the clock starts: an idempotent producer sends nothing until it has its
    // producer id, which took about half a second here. Without this, the records of the
    // first half second waited for it and made up the whole p99 of the latency phase
    // (about 470 ms for every candidate, the bare loop included, against about 15 ms
    // after them). So the first order goes alone, and the timed ones follow (the latency
    // phase leaves out the first one's output).
    send_order(&producer, topic, from)?;
    producer.flush(Duration::from_secs(30))?;
    if let Some(t) = timed_from {
        t.store(now_ms(), Ordering::Release);
    }
    let start = Instant::now();
    let mut last = Instant::now();
    for i in from + 1..to {
        if let Some(r) = rate {
            let due = start + Duration::from_secs_f64((i - from - 1) as f64 / r as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        send_order(&producer, topic, i)?;
        if rate.is_none() && last.elapsed() > Duration::from_secs(2) {
            eprintln!("  produced {} of {}", i - from, to - from);
            last = Instant::now();
        }
    }
    producer.flush(Duration::from_secs(120))?;
    Ok(())
}

/// Sends order `i` with its send time as CreateTime, waiting while the queue is full.
pub(crate) fn send_order(
    producer: &ThreadedProducer<rdkafka::producer::DefaultProducerContext>,
    topic: &str,
    i: u64,
) -> anyhow::Result<()> {
    send(producer, topic, &format!("o-{i}"), &order(i))
}

/// Sends `value` under `key` with its send time as CreateTime, waiting while the queue
/// is full.
pub(crate) fn send(
    producer: &ThreadedProducer<rdkafka::producer::DefaultProducerContext>,
    topic: &str,
    key: &str,
    value: &str,
) -> anyhow::Result<()> {
    let mut rec = BaseRecord::<str, str>::to(topic)
        .key(key)
        .payload(value)
        .timestamp(now_ms());
    loop {
        match producer.send(rec) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                std::thread::sleep(Duration::from_millis(2));
                rec = back;
            }
            Err((e, _)) => return Err(e.into()),
        }
    }
}

pub(crate) fn end_offsets(c: &BaseConsumer, topic: &str, partitions: i32) -> anyhow::Result<i64> {
    let mut sum = 0;
    for p in 0..partitions {
        sum += high_watermark(c, topic, p)?;
    }
    Ok(sum)
}

/// A partition's end offset, asked again for up to 30 s while the broker is still
/// electing the leader of a topic just made.
pub(crate) fn high_watermark(c: &BaseConsumer, topic: &str, partition: i32) -> anyhow::Result<i64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match c.fetch_watermarks(topic, partition, Duration::from_secs(10)) {
            Ok((_, high)) => return Ok(high),
            // librdkafka says UnknownPartition while the metadata has no leader yet, and
            // the broker the other three while the election is under way.
            Err(KafkaError::MetadataFetch(
                RDKafkaErrorCode::UnknownPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::UnknownTopicOrPartition,
            )) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => {
                return Err(
                    anyhow::Error::new(e).context(format!("end offset of {topic}/{partition}"))
                );
            }
        }
    }
}

pub(crate) fn committed(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<i64> {
    let c: BaseConsumer = client(bootstrap).set("group.id", group).create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10))?;
    Ok(got
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum())
}

/// The ceiling: consume, produce the same bytes, commit every 100 ms without waiting.
pub(crate) fn bare_loop(
    bootstrap: &str,
    input: &str,
    output: &str,
    group: &str,
) -> anyhow::Result<()> {
    let consumer: BaseConsumer = client(bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // The same fetch setting as Sluice's consumers: librdkafka's default waits 1 s
        // after a full local queue, which caps any fast loop.
        .set("fetch.queue.backoff.ms", "20")
        .create()?;
    let producer: BaseProducer = client(bootstrap)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()?;
    consumer.subscribe(&[input])?;
    let mut offsets: HashMap<i32, i64> = HashMap::new();
    let mut last = Instant::now();
    loop {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m?;
            let mut rec = BaseRecord::<[u8], [u8]>::to(output);
            if let Some(k) = m.key() {
                rec = rec.key(k);
            }
            if let Some(p) = m.payload() {
                rec = rec.payload(p);
            }
            if let Some(ts) = m.timestamp().to_millis() {
                rec = rec.timestamp(ts);
            }
            // Headers are part of the record: Sluice carries them to its outputs, and
            // reading them costs librdkafka a parse per record even when there are none.
            if let Some(h) = m.headers() {
                rec = rec.headers(h.detach());
            }
            loop {
                match producer.send(rec) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        producer.poll(Duration::from_millis(10));
                        rec = back;
                    }
                    Err((e, _)) => return Err(e.into()),
                }
            }
            offsets.insert(m.partition(), m.offset() + 1);
        }
        producer.poll(Duration::ZERO);
        // The ceiling: offsets are committed every 100 ms without waiting for the outputs'
        // acknowledgements (the loop never stops; a crash could lose records, which Sluice's
        // atLeastOnce does not allow itself).
        if last.elapsed() >= Duration::from_millis(100) && !offsets.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for (p, o) in offsets.drain() {
                tpl.add_partition_offset(input, p, Offset::Offset(o))?;
            }
            consumer.commit(&tpl, CommitMode::Async)?;
            last = Instant::now();
        }
    }
}
