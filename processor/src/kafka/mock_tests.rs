//! Tests of the worker against librdkafka's mock cluster (no broker needed): records flow,
//! bad records are dead-lettered, and an output the broker rejects is dead-lettered
//! after the rewind instead of being lost or retried forever. Each runs twice: with the
//! engine on the worker's thread, and in the transform lane.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::engine::Engine;
use crate::kafka::KafkaSettings;
use crate::kafka::worker::{self, Status, WorkerOptions};
use crate::metrics::Metrics;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sluice_crds::pipeline::{PipelineSpec, StartFrom};

const SPEC: &str = r#"
inputs: [in]
steps:
- name: positive
  filter: value.total > 0.0
- name: shape
  map: {set: {cents: "value.total * 100.0"}}
outputs: [{topic: out}]
deadLetter: {topic: dlq}
"#;

struct Read {
    value: String,
    headers: Vec<(String, String)>,
}

/// A mock cluster with topics `in`, `out` and `dlq` (one partition each), and its
/// bootstrap servers.
fn cluster() -> (MockCluster<'static, DefaultProducerContext>, String) {
    let cluster = MockCluster::new(1).unwrap();
    for t in ["in", "out", "dlq"] {
        cluster.create_topic(t, 1, 1).unwrap();
    }
    let bootstrap = cluster.bootstrap_servers();
    (cluster, bootstrap)
}

fn produce(bootstrap: &str, topic: &str, values: &[impl AsRef<str>]) {
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    for v in values {
        p.send(
            BaseRecord::<str, str>::to(topic)
                .key("k")
                .payload(v.as_ref()),
        )
        .unwrap();
    }
    p.flush(Duration::from_secs(10)).unwrap();
}

fn read(bootstrap: &str, topic: &str, want: usize) -> Vec<Read> {
    read_for(bootstrap, topic, want, Duration::from_secs(60))
}

/// Reads `topic` from the start until `want` records or `deadline`.
fn read_for(bootstrap: &str, topic: &str, want: usize, deadline: Duration) -> Vec<Read> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "reader")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let start = Instant::now();
    while out.len() < want && start.elapsed() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_string(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(Read {
                value: String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                headers,
            });
        }
    }
    out
}

fn start_worker(
    bootstrap: &str,
    lane: bool,
) -> (
    Arc<Status>,
    std::thread::JoinHandle<Result<(), worker::WorkerError>>,
) {
    start_paced_worker(bootstrap, lane, None)
}

fn start_paced_worker(
    bootstrap: &str,
    lane: bool,
    rate_limit: Option<u32>,
) -> (
    Arc<Status>,
    std::thread::JoinHandle<Result<(), worker::WorkerError>>,
) {
    start_worker_with(bootstrap, lane, rate_limit, &[])
}

/// A worker running `SPEC`, with extra librdkafka properties for its clients.
fn start_worker_with(
    bootstrap: &str,
    lane: bool,
    rate_limit: Option<u32>,
    extra: &[(&str, &str)],
) -> (
    Arc<Status>,
    std::thread::JoinHandle<Result<(), worker::WorkerError>>,
) {
    let spec: PipelineSpec = serde_saphyr::from_str(SPEC).unwrap();
    let metrics = Metrics::new();
    let engine = Engine::new("mock", &spec, metrics.pipeline("mock")).unwrap();
    let lane_engine = lane.then(|| Engine::new("mock", &spec, metrics.pipeline("mock")).unwrap());
    let opts = WorkerOptions {
        settings: KafkaSettings {
            bootstrap: bootstrap.to_string(),
            extra: extra
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        },
        group_id: "sluice-test-mock".to_string(),
        transactional_id: "sluice-test-mock-0".to_string(),
        exactly_once: false,
        commit_interval: Duration::from_millis(50),
        rate_limit,
        dead_letter: Some("dlq".to_string()),
        produce_retries: Some(0),
        start_from: StartFrom::Earliest,
        topics: vec!["in".to_string()],
        state: None,
        restore_timeout: Duration::from_secs(30),
    };
    let status = Arc::new(Status::default());
    let s = status.clone();
    let handle = std::thread::spawn(move || worker::run(opts, engine, lane_engine, s));
    (status, handle)
}

/// The `total` of each output of `SPEC`, each checked for its cents.
fn totals_with_cents(out: &[Read]) -> Vec<f64> {
    out.iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_str(&r.value).unwrap();
            assert_eq!(v["cents"].as_f64(), v["total"].as_f64().map(|t| t * 100.0));
            v["total"].as_f64().unwrap()
        })
        .collect()
}

fn header<'a>(r: &'a Read, key: &str) -> &'a str {
    r.headers
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no header {key} in {:?}", r.headers))
}

#[test]
fn good_records_flow_and_bad_ones_are_dead_lettered() {
    records_flow_and_bad_ones_are_dead_lettered(false);
}

#[test]
fn good_records_flow_and_bad_ones_are_dead_lettered_through_the_lane() {
    records_flow_and_bad_ones_are_dead_lettered(true);
}

fn records_flow_and_bad_ones_are_dead_lettered(lane: bool) {
    let (_cluster, bootstrap) = cluster();
    produce(
        &bootstrap,
        "in",
        &[
            r#"{"total": 1.5}"#,
            "nope",
            r#"{"total": -1.0}"#,
            r#"{"x": 1}"#,
            r#"{"total": 2.0}"#,
        ],
    );
    let (status, handle) = start_worker(&bootstrap, lane);
    let out = read(&bootstrap, "out", 2);
    let dlq = read(&bootstrap, "dlq", 2);
    status.shutdown.store(true, Ordering::Relaxed);
    handle.join().unwrap().unwrap();

    let values: Vec<serde_json::Value> = out
        .iter()
        .map(|r| serde_json::from_str(&r.value).unwrap())
        .collect();
    assert_eq!(
        values,
        vec![
            serde_json::json!({"total": 1.5, "cents": 150.0}),
            serde_json::json!({"total": 2.0, "cents": 200.0})
        ]
    );
    assert_eq!(dlq.len(), 2);
    assert_eq!(dlq[0].value, "nope");
    assert_eq!(header(&dlq[0], "sluice.step"), "decode");
    assert_eq!(header(&dlq[0], "sluice.source.offset"), "1");
    assert_eq!(header(&dlq[1], "sluice.step"), "positive");
    assert_eq!(header(&dlq[1], "sluice.source.offset"), "3");
    assert_eq!(header(&dlq[1], "sluice.source.topic"), "in");
}

#[test]
fn an_output_the_broker_rejects_is_dead_lettered_after_a_rewind() {
    rejected_output_is_dead_lettered_after_a_rewind(false);
}

#[test]
fn an_output_the_broker_rejects_is_dead_lettered_after_a_rewind_through_the_lane() {
    rejected_output_is_dead_lettered_after_a_rewind(true);
}

fn rejected_output_is_dead_lettered_after_a_rewind(lane: bool) {
    let (cluster, bootstrap) = cluster();
    produce(&bootstrap, "in", &[r#"{"total": 1.0}"#]);
    // The next produce request (the output) is refused for good.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_RECORD],
    );
    let (status, handle) = start_worker(&bootstrap, lane);
    let dlq = read(&bootstrap, "dlq", 1);
    produce(&bootstrap, "in", &[r#"{"total": 2.0}"#]);
    let out = read(&bootstrap, "out", 1);
    status.shutdown.store(true, Ordering::Relaxed);
    handle.join().unwrap().unwrap();

    assert_eq!(dlq.len(), 1);
    assert_eq!(
        dlq[0].value, r#"{"total": 1.0}"#,
        "the original record is dead-lettered"
    );
    assert_eq!(header(&dlq[0], "sluice.step"), "produce");
    assert_eq!(header(&dlq[0], "sluice.source.offset"), "0");
    assert_eq!(out.len(), 1);
    assert!(out[0].value.contains("200"), "{}", out[0].value);
}

#[test]
fn records_cross_the_lane_in_many_batches_and_keep_their_order() {
    let (_cluster, bootstrap) = cluster();
    // Several full batches; every 100th record cannot be decoded.
    let values: Vec<String> = (0..2_000)
        .map(|i| {
            if i % 100 == 99 {
                format!("bad {i}")
            } else {
                format!(r#"{{"total": {}.0}}"#, i + 1)
            }
        })
        .collect();
    produce(&bootstrap, "in", &values);
    let (status, handle) = start_worker(&bootstrap, true);
    let out = read(&bootstrap, "out", 1_980);
    let dlq = read(&bootstrap, "dlq", 20);
    status.shutdown.store(true, Ordering::Relaxed);
    handle.join().unwrap().unwrap();

    let totals = totals_with_cents(&out);
    let want: Vec<f64> = (0..2_000)
        .filter(|i| i % 100 != 99)
        .map(|i| f64::from(i + 1))
        .collect();
    assert_eq!(totals, want, "every good record once, in order");
    let offsets: Vec<&str> = dlq
        .iter()
        .map(|r| header(r, "sluice.source.offset"))
        .collect();
    let want: Vec<String> = (0..20).map(|k| (k * 100 + 99).to_string()).collect();
    assert_eq!(offsets, want, "every bad record once, in order");
    assert_eq!(dlq[0].value, "bad 99");
}

#[test]
fn large_records_cross_the_lane_whole_and_in_order() {
    let (_cluster, bootstrap) = cluster();
    // 400 kB each: a batch is handed over after three (1 MiB), not 256.
    let pad = "x".repeat(400_000);
    let values: Vec<String> = (0..10)
        .map(|i| format!(r#"{{"total": {}.0, "pad": "{pad}"}}"#, i + 1))
        .collect();
    produce(&bootstrap, "in", &values);
    let (status, handle) = start_worker(&bootstrap, true);
    let out = read(&bootstrap, "out", 10);
    status.shutdown.store(true, Ordering::Relaxed);
    handle.join().unwrap().unwrap();

    let totals: Vec<f64> = out
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_str(&r.value).unwrap();
            assert_eq!(v["pad"].as_str().map(str::len), Some(400_000));
            v["total"].as_f64().unwrap()
        })
        .collect();
    assert_eq!(totals, (1..=10).map(f64::from).collect::<Vec<_>>());
}

#[test]
fn a_rate_limited_worker_delivers_every_record_once_and_commits_them() {
    let (_cluster, bootstrap) = cluster();
    let values: Vec<String> = (0..300)
        .map(|i| format!(r#"{{"total": {}.0}}"#, i + 1))
        .collect();
    produce(&bootstrap, "in", &values);
    // 1,000 a second: the loop sleeps between records and commits in the pauses.
    let (status, handle) = start_paced_worker(&bootstrap, false, Some(1_000));
    let out = read(&bootstrap, "out", 300);
    status.shutdown.store(true, Ordering::Relaxed);
    handle.join().unwrap().unwrap();

    let totals = totals_with_cents(&out);
    assert_eq!(totals, (1..=300).map(f64::from).collect::<Vec<_>>());
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "sluice-test-mock")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition("in", 0);
    let committed = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    assert_eq!(
        committed.find_partition("in", 0).map(|p| p.offset()),
        Some(Offset::Offset(300)),
        "everything read is committed"
    );
}

#[test]
fn a_header_name_that_is_not_utf8_passes_through_without_a_panic() {
    header_name_not_utf8(false);
}

#[test]
fn a_header_name_that_is_not_utf8_passes_through_the_lane_without_a_panic() {
    header_name_not_utf8(true);
}

/// Headers with a name of raw bytes, which the rdkafka crate's `insert` cannot write.
#[allow(unsafe_code)]
fn raw_headers(name: &[u8], value: &[u8]) -> rdkafka::message::OwnedHeaders {
    let headers = rdkafka::message::OwnedHeaders::new();
    // The crate's borrowed headers are the native `rd_kafka_headers_t` itself.
    let native = std::ptr::from_ref(headers.as_borrowed())
        .cast::<rdkafka::bindings::rd_kafka_headers_t>()
        .cast_mut();
    // SAFETY: `native` is the live header list `headers` owns; librdkafka copies both
    // buffers before returning.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_header_add(
            native,
            name.as_ptr().cast(),
            isize::try_from(name.len()).unwrap(),
            value.as_ptr().cast(),
            isize::try_from(value.len()).unwrap(),
        )
    };
    assert_eq!(
        err,
        rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
    );
    headers
}

fn header_name_not_utf8(lane: bool) {
    let (_cluster, bootstrap) = cluster();
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    p.send(
        BaseRecord::<str, str>::to("in")
            .payload(r#"{"total": 1.0}"#)
            .headers(raw_headers(b"\xff\xfetrace", b"abc")),
    )
    .unwrap();
    p.send(BaseRecord::<str, str>::to("in").payload(r#"{"total": 2.0}"#))
        .unwrap();
    p.flush(Duration::from_secs(10)).unwrap();
    let (status, handle) = start_worker(&bootstrap, lane);
    let out = read(&bootstrap, "out", 2);
    status.shutdown.store(true, Ordering::Relaxed);
    handle.join().expect("the worker did not panic").unwrap();

    assert_eq!(out.len(), 2);
    assert!(out[0].value.contains("100"), "{}", out[0].value);
    // Decoded as Kafka's Java client decodes it: invalid bytes become U+FFFD.
    assert_eq!(header(&out[0], "\u{fffd}\u{fffd}trace"), "abc");
    assert!(out[1].value.contains("200"), "{}", out[1].value);
}

#[test]
fn an_output_that_fails_for_a_passing_reason_is_produced_again_not_dead_lettered() {
    let (cluster, bootstrap) = cluster();
    produce(&bootstrap, "in", &[r#"{"total": 1.0}"#]);
    // The broker times out the output's produce request more often than the producer
    // retries (a broker restarting): the delivery fails, the worker rewinds, and the
    // record must then be produced again, not taken for a record the broker refuses.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 3],
    );
    let (status, handle) = start_worker(&bootstrap, false);
    let out = read(&bootstrap, "out", 1);
    status.shutdown.store(true, Ordering::Relaxed);
    handle.join().unwrap().unwrap();
    // The worker has stopped: anything dead-lettered is there to read.
    let dlq = read_for(&bootstrap, "dlq", 1, Duration::from_secs(5));

    assert_eq!(out.len(), 1, "the record reaches its output");
    assert!(out[0].value.contains("100"), "{}", out[0].value);
    assert!(
        dlq.is_empty(),
        "nothing is dead-lettered: {:?}",
        dlq.iter().map(|r| &r.headers).collect::<Vec<_>>()
    );
}

#[test]
fn a_replica_that_keeps_rewinding_reports_no_progress_until_it_commits_again() {
    let (cluster, bootstrap) = cluster();
    produce(&bootstrap, "in", &["not json"]);
    // The dead-letter topic refuses the record again and again: each refusal rewinds
    // the worker, which tries again; nothing moves.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 20],
    );
    let (status, handle) = start_worker(&bootstrap, false);
    let start = Instant::now();
    let stalled = loop {
        if let Some(why) = status.not_ready().filter(|w| w.contains("no progress")) {
            break why;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "never reported");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        stalled.contains("dead letter") || stalled.contains("flush"),
        "{stalled}"
    );
    // Once the broker takes records again the record is dead-lettered, the offset is
    // committed, and the replica is ready again.
    let dlq = read(&bootstrap, "dlq", 1);
    let start = Instant::now();
    while status.not_ready().is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{:?}",
            status.not_ready()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    status.shutdown.store(true, Ordering::Relaxed);
    handle.join().unwrap().unwrap();
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].value, "not json");
}

/// `n` orders of 1.0 each, alternating between regions r0 and r1.
fn two_region_orders(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!(r#"{{"region": "r{}", "total": 1.0}}"#, i % 2))
        .collect()
}

/// Runs a first aggregate worker over `n` new orders until their outputs are read, then
/// stops it (it commits and leaves the group).
fn run_aggregate_to_the_end(bootstrap: &str, n: usize) {
    produce(bootstrap, "in", &two_region_orders(n));
    let (status, handle) = start_aggregate_worker(bootstrap);
    read(bootstrap, "out", n);
    status.shutdown.store(true, Ordering::Relaxed);
    handle.join().unwrap().unwrap();
}

/// The last total of each region in outputs of `AGGREGATE_SPEC`.
fn latest_total_per_region(out: &[Read]) -> std::collections::BTreeMap<String, f64> {
    out.iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_str(&r.value).unwrap();
            (
                v["region"].as_str().unwrap().to_string(),
                v["total"].as_f64().unwrap(),
            )
        })
        .collect()
}

const AGGREGATE_SPEC: &str = r#"
inputs: [in]
steps:
- name: per-region
  aggregate:
    groupBy: {region: value.region}
    aggregations: [{name: total, op: sum, of: value.total}]
outputs: [{topic: out}]
deadLetter: {topic: dlq}
"#;

/// A worker running `AGGREGATE_SPEC`, its state following `in` and logged to `chg`.
fn start_aggregate_worker(
    bootstrap: &str,
) -> (
    Arc<Status>,
    std::thread::JoinHandle<Result<(), worker::WorkerError>>,
) {
    let spec: PipelineSpec = serde_saphyr::from_str(AGGREGATE_SPEC).unwrap();
    let metrics = Metrics::new();
    let engine = Engine::new("mock", &spec, metrics.pipeline("mock")).unwrap();
    let opts = WorkerOptions {
        settings: KafkaSettings {
            bootstrap: bootstrap.to_string(),
            extra: Default::default(),
        },
        group_id: "sluice-test-mock".to_string(),
        transactional_id: "sluice-test-mock-0".to_string(),
        exactly_once: false,
        commit_interval: Duration::from_millis(50),
        rate_limit: None,
        dead_letter: Some("dlq".to_string()),
        produce_retries: Some(0),
        start_from: StartFrom::Earliest,
        topics: vec!["in".to_string()],
        state: Some(("in".to_string(), "chg".to_string())),
        restore_timeout: Duration::from_secs(30),
    };
    let status = Arc::new(Status::default());
    let s = status.clone();
    let handle = std::thread::spawn(move || worker::run(opts, engine, None, s));
    (status, handle)
}

#[test]
fn a_restarted_aggregate_restores_its_state_between_polls_and_counts_on() {
    let (cluster, bootstrap) = cluster();
    cluster.create_topic("chg", 1, 1).unwrap();
    let orders = two_region_orders;
    run_aggregate_to_the_end(&bootstrap, 100);

    // The next replica restores the 2 groups from the changelog, then counts on.
    produce(&bootstrap, "in", &orders(100));
    let (status, handle) = start_aggregate_worker(&bootstrap);
    let out = read(&bootstrap, "out", 200);
    assert!(status.ready.load(Ordering::Relaxed), "ready once restored");
    status.shutdown.store(true, Ordering::Relaxed);
    handle.join().unwrap().unwrap();

    assert_eq!(out.len(), 200, "one update per order");
    let last = latest_total_per_region(&out);
    assert_eq!(
        last,
        [("r0".to_string(), 100.0), ("r1".to_string(), 100.0)].into(),
        "the totals count on from the restored state"
    );
}

#[test]
fn a_table_is_read_to_its_end_across_partitions_then_followed() {
    let (cluster, bootstrap) = cluster();
    cluster.create_topic("tbl", 2, 1).unwrap();
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let row = |key: String, partition: i32, value: Option<String>| {
        let mut r = BaseRecord::<String, String>::to("tbl")
            .key(&key)
            .partition(partition);
        r = match &value {
            Some(v) => r.payload(v),
            None => r,
        };
        p.send(r).map_err(|(e, _)| e).unwrap();
    };
    for i in 0..50 {
        row(format!("c-{i}"), i % 2, Some(format!(r#"{{"tier": {i}}}"#)));
    }
    row("c-7".to_string(), 1, None);
    p.flush(Duration::from_secs(10)).unwrap();

    let settings = KafkaSettings {
        bootstrap: bootstrap.clone(),
        extra: Default::default(),
    };
    let table = crate::kafka::table::load(
        &settings,
        "sluice-test-mock",
        "tbl",
        crate::format::RecordFormat::Json,
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(table.len(), 49, "every row of both partitions, c-7 deleted");
    assert_eq!(table.get(b"c-8"), Some(serde_json::json!({"tier": 8})));

    row("c-50".to_string(), 0, Some(r#"{"tier": 50}"#.to_string()));
    p.flush(Duration::from_secs(10)).unwrap();
    let start = Instant::now();
    while table.get(b"c-50").is_none() && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        table.get(b"c-50"),
        Some(serde_json::json!({"tier": 50})),
        "followed"
    );
}

#[test]
fn a_dead_letter_the_broker_refuses_goes_again_without_the_record() {
    let (cluster, bootstrap) = cluster();
    produce(&bootstrap, "in", &["not json"]);
    // The first produce request (the dead letter) is refused for what it is.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    let (status, handle) = start_worker(&bootstrap, false);
    let dlq = read(&bootstrap, "dlq", 1);
    produce(&bootstrap, "in", &[r#"{"total": 2.0}"#]);
    let out = read(&bootstrap, "out", 1);
    status.shutdown.store(true, Ordering::Relaxed);
    handle.join().unwrap().unwrap();

    assert_stripped_dead_letter_of_the_first_record(&dlq, &out);
}

/// `dlq` holds one dead letter, of record 0 (which failed to decode), without its value
/// and saying why; `out` holds the next record: the pipeline went on.
fn assert_stripped_dead_letter_of_the_first_record(dlq: &[Read], out: &[Read]) {
    assert_eq!(dlq.len(), 1, "one dead letter, not a rewind loop");
    assert_eq!(dlq[0].value, "", "the refused record's value is left out");
    assert_eq!(header(&dlq[0], "sluice.step"), "decode");
    assert_eq!(header(&dlq[0], "sluice.source.offset"), "0");
    assert!(
        header(&dlq[0], "sluice.dropped").contains("refused"),
        "{:?}",
        dlq[0].headers
    );
    assert_eq!(out.len(), 1, "the pipeline goes on");
}

#[test]
fn a_dead_letter_the_producer_refuses_at_once_goes_without_the_record() {
    let (_cluster, bootstrap) = cluster();
    let big = format!("not json {}", "x".repeat(5_000));
    produce(&bootstrap, "in", &[big.as_str(), r#"{"total": 2.0}"#]);
    // The worker's producer takes records of at most 2,000 bytes.
    let (status, handle) =
        start_worker_with(&bootstrap, false, None, &[("message.max.bytes", "2000")]);
    let dlq = read(&bootstrap, "dlq", 1);
    let out = read(&bootstrap, "out", 1);
    status.shutdown.store(true, Ordering::Relaxed);
    handle.join().unwrap().unwrap();

    assert_stripped_dead_letter_of_the_first_record(&dlq, &out);
}

#[test]
fn a_restore_that_waits_for_its_changelog_keeps_the_loop_turning() {
    // The changelog's end cannot be learnt for a while (each ListOffsets request is
    // refused: no leader). The restore used to run inside the rebalance callback, so the
    // loop stopped for as long: no heartbeat, no commit of the partitions kept, and a
    // restore longer than the transaction timeout fenced the replica. Now it is read
    // between polls: the replica is not ready meanwhile, but its loop keeps turning.
    let (cluster, bootstrap) = cluster();
    cluster.create_topic("chg", 1, 1).unwrap();
    let orders = two_region_orders;
    run_aggregate_to_the_end(&bootstrap, 10);

    // The group has committed offsets, so only the restore asks for offsets now.
    cluster.request_errors(
        RDKafkaApiKey::ListOffsets,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE; 100],
    );
    produce(&bootstrap, "in", &orders(10));
    let (status, handle) = start_aggregate_worker(&bootstrap);
    let start = Instant::now();
    let mut waiting = Duration::ZERO;
    let mut stalled = Vec::new();
    while !status.ready.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(250));
        waiting = start.elapsed();
        // A step may wait up to 1 s for an answer: 3 s of silence is a stop.
        if waiting > Duration::from_secs(2) && !status.alive(Duration::from_secs(3)) {
            stalled.push(waiting);
        }
    }
    assert!(
        waiting > Duration::from_secs(6),
        "the restore did not wait (ListOffsets errors not injected?): ready after {waiting:?}"
    );
    assert!(
        stalled.is_empty(),
        "the loop stopped turning while the restore waited: at {stalled:?}"
    );
    let out = read(&bootstrap, "out", 20);
    status.shutdown.store(true, Ordering::Relaxed);
    handle.join().unwrap().unwrap();
    assert_eq!(out.len(), 20);
    let last = latest_total_per_region(&out);
    assert_eq!(
        last,
        [("r0".to_string(), 10.0), ("r1".to_string(), 10.0)].into(),
        "restored, then counted on"
    );
}
