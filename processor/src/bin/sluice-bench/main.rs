//! `sluice-bench`: the processor against its ceiling and its peer, on one broker, one data set.
//!
//! Candidates, each run as a child process on the same pre-loaded input topic:
//! (a) a bare rdkafka consume-produce loop (no parsing; key, value, headers and timestamp
//!     copied as Sluice copies them; offsets committed without waiting for
//!     acknowledgements: the ceiling),
//! (b0) Sluice with no steps and `format: bytes` (its loop alone: a topic copy),
//! (b) Sluice filter+map, (c) Sluice per-region sum emitting every update, (c2) the same
//! emitting each region's latest total once per commit (`emit: onCommit`),
//! (d) the same two topologies in Kafka Streams (processor/bench/kafka-streams, built with Maven),
//! the aggregate emitting every update as Sluice does, and (e) that aggregate with Kafka
//! Streams' default record cache, which emits only each region's latest total per commit.
//!
//! For each: records/s while draining the backlog, CPU seconds per million records (the
//! child's utime+stime over the drain), peak memory (the child's VmHWM), then p99
//! end-to-end latency under a steady live load (input CreateTime to the moment the output
//! record is read; outputs carry their input's timestamp). All use at-least-once delivery
//! and a 100 ms commit interval.
//!
//! Usage: `cargo run --release -p sluice-processor --bin sluice-bench -- [--records N]
//! [--partitions P] [--rate R] [--latency-records L] [--bootstrap B] [--skip-streams]
//! [--only <candidate letters, comma-separated>] [--kafka-config <librdkafka properties
//! for Sluice>] [--pairs N]`. The bootstrap defaults to KAFKA_BOOTSTRAP, then to
//! e2e/.state/env.
//!
//! `--pairs N` runs (a) back to back with each Sluice candidate `--only` selects (b when
//! it is not given), N times, and prints each pair's ratio and their median: on a shared
//! machine whose speed drifts between minutes, back-to-back pairs give a steadier ratio
//! than one run of each.
//!
//! `sluice-bench engine [records] [b|c]` measures the engine alone, without Kafka (see
//! [`engine_cost`]).

mod engine_cost;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

// The processor's allocator, so the engine measurement matches the processor.
#[global_allocator]
static ALLOCATOR: sluice_processor::allocator::Allocator = sluice_processor::allocator::Allocator;

struct Args {
    bootstrap: String,
    records: u64,
    partitions: i32,
    rate: u64,
    latency_records: u64,
    skip_streams: bool,
    only: Option<String>,
    kafka_config: Option<String>,
    pairs: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        bootstrap: String::new(),
        records: 3_000_000,
        partitions: 2,
        rate: 10_000,
        latency_records: 50_000,
        skip_streams: false,
        only: None,
        kafka_config: None,
        pairs: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--bootstrap" => args.bootstrap = val()?,
            "--records" => args.records = val()?.parse()?,
            "--partitions" => args.partitions = val()?.parse()?,
            "--rate" => args.rate = val()?.parse()?,
            "--latency-records" => args.latency_records = val()?.parse()?,
            "--skip-streams" => args.skip_streams = true,
            "--only" => args.only = Some(val()?),
            "--kafka-config" => args.kafka_config = Some(val()?),
            "--pairs" => args.pairs = val()?.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }
    if args.bootstrap.is_empty() {
        args.bootstrap = std::env::var("KAFKA_BOOTSTRAP").or_else(|_| bootstrap_from_e2e())?;
    }
    Ok(args)
}

/// The processor package in the checkout being run: Cargo says it at run time (a target
/// directory shared by several checkouts can hold a binary compiled in another one).
fn package_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

fn bootstrap_from_e2e() -> anyhow::Result<String> {
    let path = std::env::var_os("SLUICE_E2E_STATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| package_dir().join("../e2e/.state"))
        .join("env");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no --bootstrap, no KAFKA_BOOTSTRAP and no {}: start e2e/up",
            path.display()
        )
    })?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("KAFKA_BOOTSTRAP="))
        .map(|v| v.trim_matches('"').to_string())
        .context("KAFKA_BOOTSTRAP missing from e2e/.state/env")
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn client(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c
}

fn create_topic(bootstrap: &str, name: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client(bootstrap).create()?;
    let t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for r in futures::executor::block_on(admin.create_topics([&t], &AdminOptions::new()))? {
        r.map_err(|(t, e)| anyhow::anyhow!("create {t}: {e}"))?;
    }
    Ok(())
}

/// Deletes every topic whose name holds `run` (inputs, outputs, and the candidates'
/// repartition and changelog topics): a run writes gigabytes the broker would keep.
fn delete_run_topics(bootstrap: &str, run: &str) -> anyhow::Result<usize> {
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
fn order(i: u64) -> String {
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
fn produce(
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
fn send_order(
    producer: &ThreadedProducer<rdkafka::producer::DefaultProducerContext>,
    topic: &str,
    i: u64,
) -> anyhow::Result<()> {
    let key = format!("o-{i}");
    let value = order(i);
    let mut rec = BaseRecord::<str, str>::to(topic)
        .key(&key)
        .payload(&value)
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

fn end_offsets(c: &BaseConsumer, topic: &str, partitions: i32) -> anyhow::Result<i64> {
    let mut sum = 0;
    for p in 0..partitions {
        sum += high_watermark(c, topic, p)?;
    }
    Ok(sum)
}

/// A partition's end offset, asked again for up to 30 s while the broker is still
/// electing the leader of a topic just made.
fn high_watermark(c: &BaseConsumer, topic: &str, partition: i32) -> anyhow::Result<i64> {
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

fn committed(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> anyhow::Result<i64> {
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

/// utime+stime of a process in seconds, and its peak RSS in MiB.
fn usage(pid: u32, ticks: f64) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let cpu = fields
        .get(11)
        .and_then(|u| u.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    (cpu / ticks, hwm_kb / 1024.0)
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

struct Result {
    name: String,
    records_per_s: f64,
    cpu_s_per_million: f64,
    /// Not measured for `--pairs`.
    p99_ms: Option<f64>,
    peak_mib: f64,
}

struct Candidate {
    name: &'static str,
    group: String,
    command: Command,
}

fn run_candidate(
    args: &Args,
    input: &str,
    output: &str,
    mut cand: Candidate,
    ticks: f64,
) -> anyhow::Result<Result> {
    eprintln!("== {}: draining {} records", cand.name, args.records);
    let log = std::env::temp_dir().join(format!("sluice-bench-{}.log", cand.group));
    let out = std::fs::File::create(&log)?;
    let mut child: Child = cand
        .command
        .stdout(out.try_clone()?)
        .stderr(out)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("start {}", cand.name))?;
    let pid = child.id();
    let watcher: BaseConsumer = client(&args.bootstrap).create()?;
    let started = Instant::now();
    let mut first: Option<(Instant, f64)> = None;
    let mut last_change = Instant::now();
    let mut last_end = 0;
    let (cpu_end, mut drained_at) = loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "{} exited early ({status}); log: {}",
                cand.name,
                log.display()
            );
        }
        if started.elapsed() > Duration::from_secs(900) {
            let _ = child.kill();
            bail!(
                "{} did not drain within 15 minutes; log: {}",
                cand.name,
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
        let end = end_offsets(&watcher, output, args.partitions)?;
        if end > 0 && first.is_none() {
            first = Some((Instant::now(), usage(pid, ticks).0));
        }
        if end != last_end {
            last_end = end;
            last_change = Instant::now();
            continue;
        }
        if first.is_some()
            && last_change.elapsed() > Duration::from_millis(1500)
            && committed(&args.bootstrap, &cand.group, input, args.partitions)?
                >= args.records as i64
        {
            break (usage(pid, ticks).0, last_change);
        }
    };
    let (t_first, cpu_first) = first.context("no output")?;
    if drained_at <= t_first {
        drained_at = t_first + Duration::from_millis(1);
    }
    let secs = (drained_at - t_first).as_secs_f64();
    let records_per_s = args.records as f64 / secs;
    let cpu_s_per_million = (cpu_end - cpu_first) / args.records as f64 * 1e6;
    eprintln!("   {records_per_s:.0} records/s, {cpu_s_per_million:.2} CPU s per million records");

    // Pairs compare throughput only.
    let p99_ms = if args.pairs > 0 {
        None
    } else {
        eprintln!(
            "   latency: {} records at {}/s",
            args.latency_records, args.rate
        );
        Some(latency(args, input, output)?)
    };
    let (_, peak_mib) = usage(pid, ticks);
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    match p99_ms {
        Some(p99) => eprintln!("   p99 {p99:.1} ms, peak RSS {peak_mib:.0} MiB"),
        None => eprintln!("   peak RSS {peak_mib:.0} MiB"),
    }
    Ok(Result {
        name: cand.name.to_string(),
        records_per_s,
        cpu_s_per_million,
        p99_ms,
        peak_mib,
    })
}

/// Produces a steady load and measures output time minus input CreateTime.
fn latency(args: &Args, input: &str, output: &str) -> anyhow::Result<f64> {
    let consumer: BaseConsumer = client(&args.bootstrap)
        .set("group.id", format!("latency-{output}"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..args.partitions {
        let hi = high_watermark(&consumer, output, p)?;
        tpl.add_partition_offset(output, p, Offset::Offset(hi))?;
    }
    consumer.assign(&tpl)?;
    // Let the consumer connect and start fetching before the load starts.
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_secs(2) {
        if let Some(Err(e)) = consumer.poll(Duration::from_millis(100)) {
            bail!("reading {output}: {e}");
        }
    }
    let done = Arc::new(AtomicBool::new(false));
    // Outputs of orders sent before the timed ones are left out.
    let timed_from = Arc::new(AtomicI64::new(i64::MAX));
    let producer = {
        let (b, t, from, n, rate, done, timed) = (
            args.bootstrap.clone(),
            input.to_string(),
            args.records,
            args.latency_records,
            args.rate,
            done.clone(),
            timed_from.clone(),
        );
        std::thread::spawn(move || {
            let r = produce(&b, &t, from * 10, from * 10 + n, Some(rate), Some(&timed));
            done.store(true, Ordering::Relaxed);
            r
        })
    };
    let mut lat = Vec::new();
    let mut quiet_since: Option<Instant> = None;
    loop {
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => {
                quiet_since = None;
                if let Some(ts) = m.timestamp().to_millis()
                    && ts >= timed_from.load(Ordering::Acquire)
                {
                    lat.push((now_ms() - ts) as f64);
                }
            }
            Some(Err(e)) => bail!("reading {output}: {e}"),
            None => {
                if done.load(Ordering::Relaxed) {
                    let q = quiet_since.get_or_insert_with(Instant::now);
                    if q.elapsed() > Duration::from_secs(2) {
                        break;
                    }
                }
            }
        }
    }
    producer
        .join()
        .map_err(|_| anyhow::anyhow!("producer thread panicked"))??;
    if lat.is_empty() {
        bail!("no output during the latency phase");
    }
    lat.sort_by(f64::total_cmp);
    let at = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    eprintln!(
        "  latency ms: p50 {:.0}, p90 {:.0}, p99 {:.0}, max {:.0} ({} records)",
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0),
        lat.len()
    );
    Ok(at(0.99))
}

/// The ceiling: consume, produce the same bytes, commit every 100 ms without waiting.
fn bare_loop(bootstrap: &str, input: &str, output: &str, group: &str) -> anyhow::Result<()> {
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

/// What a Sluice candidate runs.
#[derive(Clone, Copy)]
enum Topology {
    /// No steps, `format: bytes`: Sluice's loop alone.
    Copy,
    /// Filter, then map.
    FilterMap,
    /// Filter, then the per-region sum with this emit mode.
    Aggregate(&'static str),
}

fn sluice_manifest(
    dir: &Path,
    name: &str,
    input: &str,
    output: &str,
    topology: Topology,
) -> anyhow::Result<PathBuf> {
    let (steps, format) = match topology {
        Topology::Copy => (serde_json::json!([]), "bytes"),
        Topology::FilterMap => (
            serde_json::json!([
                {"name": "positive", "filter": "value.total > 0.0"},
                {"name": "shape", "map": {"set": {"totalCents": "value.total * 100.0"}, "drop": ["orderId"]}}
            ]),
            "json",
        ),
        Topology::Aggregate(emit) => (
            serde_json::json!([
                {"name": "positive", "filter": "value.total > 0.0"},
                {"name": "per-region", "aggregate": {"groupBy": {"region": "value.region"},
                    "aggregations": [{"name": "total", "op": "sum", "of": "value.total"}],
                    "emit": emit}}
            ]),
            "json",
        ),
    };
    let doc = serde_json::json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "Pipeline",
        "metadata": {"name": name, "namespace": "bench"},
        "spec": {"inputs": [input], "steps": steps, "format": format,
                 "outputs": [{"topic": output}],
                 "delivery": "atLeastOnce", "commitInterval": "100ms"}
    });
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(&doc)?)?;
    Ok(path)
}

fn streams_jar() -> Option<PathBuf> {
    let project = package_dir().join("bench/kafka-streams");
    let jar = project.join("target/streams-bench.jar");
    let built = |jar: &Path| std::fs::metadata(jar).and_then(|m| m.modified()).ok();
    let sources = [
        project.join("pom.xml"),
        project.join("src/main/java/dev/sluice/bench/StreamsBench.java"),
    ];
    let newest_source = sources
        .iter()
        .filter_map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .max();
    if built(&jar).is_some_and(|b| newest_source.is_none_or(|s| s <= b)) {
        return Some(jar);
    }
    eprintln!("building the Kafka Streams peer with Maven (first run downloads kafka-streams)...");
    let ok = Command::new("mvn")
        .args(["-q", "-B", "package", "-DskipTests"])
        .current_dir(&project)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok && jar.exists() {
        Some(jar)
    } else {
        eprintln!("Kafka Streams peer not built (is Maven installed?): skipping (d)");
        None
    }
}

/// `--pairs`: each back-to-back pair's ratios (the Sluice candidate against a), and
/// their median per candidate.
fn print_pairs(results: &[Result]) -> anyhow::Result<()> {
    // (candidate letter, throughput ratio, CPU-per-record ratio), in run order.
    let ratios: Vec<(&str, f64, f64)> = results
        .chunks_exact(2)
        .map(|p| {
            (
                p[1].name.split(' ').next().unwrap_or_default(),
                p[1].records_per_s / p[0].records_per_s,
                p[1].cpu_s_per_million / p[0].cpu_s_per_million,
            )
        })
        .collect();
    if ratios.is_empty() {
        bail!("no complete pair");
    }
    println!();
    for (i, (x, throughput, cpu)) in ratios.iter().enumerate() {
        println!(
            "pair {}: {x}/a throughput {throughput:.2}, {x}'s CPU per record {cpu:.2}x a's",
            i + 1
        );
    }
    let mut letters: Vec<&str> = ratios.iter().map(|r| r.0).collect();
    letters.sort_unstable();
    letters.dedup();
    for x in letters {
        let mut t: Vec<f64> = ratios.iter().filter(|r| r.0 == x).map(|r| r.1).collect();
        let mut c: Vec<f64> = ratios.iter().filter(|r| r.0 == x).map(|r| r.2).collect();
        println!(
            "median of {} pairs: {x}/a throughput {:.2}, {x}'s CPU per record {:.2}x a's",
            t.len(),
            median(&mut t),
            median(&mut c)
        );
    }
    Ok(())
}

/// The median (of a non-empty list).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The bare loop (a), writing to `{run}-{tag}-out`.
fn bare_candidate(
    exe: &Path,
    args: &Args,
    input: &str,
    run: &str,
    tag: &str,
) -> (Candidate, String) {
    let group = format!("{run}-{tag}");
    let output = format!("{run}-{tag}-out");
    let mut cmd = Command::new(exe);
    cmd.args(["bare", &args.bootstrap, input, &output, &group]);
    (
        Candidate {
            name: "a bare rdkafka loop",
            group,
            command: cmd,
        },
        output,
    )
}

/// A Sluice pipeline (`tag`, what it runs, and its name), run with
/// `sluice-processor run`, writing to `{run}-{tag}-out`.
fn sluice_candidate(
    processor: &Path,
    args: &Args,
    dir: &Path,
    input: &str,
    run: &str,
    (tag, topology, name): (&str, Topology, &'static str),
) -> anyhow::Result<(Candidate, String)> {
    let pname = format!("{run}-{tag}");
    let output = format!("{run}-{tag}-out");
    let manifest = sluice_manifest(dir, &pname, input, &output, topology)?;
    let mut cmd = Command::new(processor);
    cmd.arg("run")
        .arg("-f")
        .arg(&manifest)
        .args(["--bootstrap", &args.bootstrap])
        .env("RUST_LOG", "warn");
    if let Some(k) = &args.kafka_config {
        cmd.args(["--kafka-config", k]);
    }
    Ok((
        Candidate {
            name,
            group: format!("sluice-bench-{pname}"),
            command: cmd,
        },
        output,
    ))
}

/// Whether `--only` (candidate letters, comma-separated) selects the candidate `name`.
fn selected(only: &str, name: &str) -> bool {
    let letter = name.split(' ').next().unwrap_or_default();
    only.split(',').any(|o| o.trim() == letter)
}

/// Runs each candidate (those `--only` selects) on the loaded input, one after another.
fn run_all(
    args: &Args,
    input: &str,
    cands: Vec<(Candidate, String)>,
    ticks: f64,
) -> anyhow::Result<Vec<Result>> {
    let mut results = Vec::new();
    for (cand, output) in cands {
        if args.pairs == 0
            && args
                .only
                .as_deref()
                .is_some_and(|o| !selected(o, cand.name))
        {
            continue;
        }
        create_topic(&args.bootstrap, &output, args.partitions)?;
        results.push(run_candidate(args, input, &output, cand, ticks)?);
    }
    Ok(results)
}

fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("bare") {
        let [_, _, bootstrap, input, output, group] = argv.as_slice() else {
            bail!("usage: sluice-bench bare <bootstrap> <input> <output> <group>");
        };
        return bare_loop(bootstrap, input, output, group);
    }
    if argv.get(1).map(String::as_str) == Some("engine") {
        let n = argv
            .get(2)
            .map(|s| s.parse())
            .transpose()?
            .unwrap_or(1_000_000);
        return engine_cost::engine_cost(n, argv.get(3).map(String::as_str));
    }
    let args = parse_args()?;
    let ticks = clock_ticks();
    let exe = std::env::current_exe()?;
    let processor = exe.with_file_name("sluice-processor");
    if !processor.exists() {
        bail!(
            "{} not found: build it (cargo build --release -p sluice-processor)",
            processor.display()
        );
    }
    let run = format!("bench-{}-{}", std::process::id(), now_ms() % 100_000);
    let input = format!("{run}-orders");
    let dir = std::env::temp_dir().join(&run);
    std::fs::create_dir_all(&dir)?;
    eprintln!(
        "sluice-bench: broker {}, {} records of ~90 bytes on {} partitions ({input})",
        args.bootstrap, args.records, args.partitions
    );
    create_topic(&args.bootstrap, &input, args.partitions)?;
    produce(&args.bootstrap, &input, 0, args.records, None, None)?;

    let mut cands = Vec::new();
    let out = |c: &str| format!("{run}-{c}-out");
    let sluices = [
        ("copy", Topology::Copy, "b0 sluice copy, no steps"),
        ("filtermap", Topology::FilterMap, "b sluice filter+map"),
        (
            "aggregate",
            Topology::Aggregate("onUpdate"),
            "c sluice aggregate",
        ),
        (
            "aggregate-oncommit",
            Topology::Aggregate("onCommit"),
            "c2 sluice aggregate, onCommit",
        ),
    ];
    if args.pairs > 0 {
        // a against each selected Sluice candidate (b unless --only says otherwise).
        let only = args.only.clone().unwrap_or_else(|| "b".to_string());
        for i in 0..args.pairs {
            for (tag, topology, name) in sluices.iter().filter(|s| selected(&only, s.2)) {
                cands.push(bare_candidate(
                    &exe,
                    &args,
                    &input,
                    &run,
                    &format!("bare-{tag}-{i}"),
                ));
                cands.push(sluice_candidate(
                    &processor,
                    &args,
                    &dir,
                    &input,
                    &run,
                    (&format!("{tag}-{i}"), *topology, name),
                )?);
            }
        }
    } else {
        cands.push(bare_candidate(&exe, &args, &input, &run, "bare"));
        for sluice in sluices {
            cands.push(sluice_candidate(
                &processor, &args, &dir, &input, &run, sluice,
            )?);
        }
    }
    if args.pairs == 0
        && !args.skip_streams
        && let Some(jar) = streams_jar()
    {
        for (tag, name) in [
            ("filtermap", "d kafka-streams filter+map"),
            ("aggregate", "d kafka-streams aggregate"),
            ("aggregate-cached", "e kafka-streams aggregate, cached"),
        ] {
            let app = format!("{run}-ks-{tag}");
            let o = out(&format!("ks-{tag}"));
            let mut cmd = Command::new("java");
            cmd.arg("-jar")
                .arg(&jar)
                .args([&args.bootstrap, tag, &input, &o, &app]);
            cands.push((
                Candidate {
                    name,
                    group: app,
                    command: cmd,
                },
                o,
            ));
        }
    }
    let results = run_all(&args, &input, cands, ticks);
    match delete_run_topics(&args.bootstrap, &run) {
        Ok(n) => eprintln!("sluice-bench: deleted this run's {n} topics"),
        Err(e) => eprintln!("sluice-bench: could not delete this run's topics ({run}*): {e}"),
    }
    let results = results?;

    println!();
    println!(
        "{:<34} {:>12} {:>16} {:>10} {:>10}",
        "candidate", "records/s", "CPU s/M records", "p99 ms", "peak MiB"
    );
    for r in &results {
        println!(
            "{:<34} {:>12.0} {:>16.2} {:>10} {:>10.0}",
            r.name,
            r.records_per_s,
            r.cpu_s_per_million,
            r.p99_ms.map_or("-".to_string(), |p| format!("{p:.1}")),
            r.peak_mib
        );
    }
    if args.pairs > 0 {
        return print_pairs(&results);
    }
    let find = |prefix: &str| results.iter().find(|r| r.name.starts_with(prefix));
    let ratio = |a: &Result, b: &Result| {
        let p99 = match (a.p99_ms, b.p99_ms) {
            (Some(x), Some(y)) => format!("{:.2}x", x / y),
            _ => "-".to_string(),
        };
        println!(
            "{} / {}: throughput {:.2}x, records per CPU second {:.2}x, peak memory {:.2}x, p99 {p99}",
            a.name,
            b.name,
            a.records_per_s / b.records_per_s,
            b.cpu_s_per_million / a.cpu_s_per_million,
            a.peak_mib / b.peak_mib,
        );
    };
    println!();
    if let (Some(b), Some(a)) = (find("b "), find("a ")) {
        ratio(b, a);
    }
    if let (Some(b), Some(d)) = (find("b "), find("d kafka-streams filter")) {
        ratio(b, d);
    }
    if let (Some(c), Some(d)) = (find("c "), find("d kafka-streams agg")) {
        ratio(c, d);
    }
    if let (Some(c), Some(e)) = (find("c2 "), find("e kafka-streams agg")) {
        ratio(c, e);
    }
    println!(
        "sluice-bench: done ({} candidates, {} records each); child logs in {}",
        results.len(),
        args.records,
        std::env::temp_dir().display()
    );
    Ok(())
}
