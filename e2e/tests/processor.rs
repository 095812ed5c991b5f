//! The processor binary against the real Kafka broker: the seed's aggregation, a SIGKILL
//! during an exactly-once run, dead-lettering, routing and the local `run` mode.
//!
//! The tests build `sluice-processor` with cargo once and run it as a child process
//! (`sluice-processor run -f <manifest>`). Topic names are unique per test.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{NewTopic, TopicReplication};
use sluice_e2e::cluster::unique;
use sluice_e2e::env::TestEnv;
use sluice_e2e::kafka::{self, Read};
use sluice_e2e::processor::*;

#[tokio::test(flavor = "multi_thread")]
async fn an_exactly_once_commit_interval_above_ten_seconds_commits() {
    // Each commit interval is one transaction. With the transaction timeout fixed at
    // 10 s, a 12 s interval was aborted by the broker before it could commit, every time.
    let (bootstrap, name, input, output, _) = topics("slowcommit", 1).await;
    let (records, _, kept) = orders(0, 300);
    produce(&bootstrap, &input, &records).await;
    let mut spec = cents_spec(&input, &output, "exactlyOnce");
    spec["commitInterval"] = serde_json::json!("12s");
    let manifest = write_manifest(&name, spec);
    let p = Processor::start(&bootstrap, &manifest, &name);
    let out = read_until(&bootstrap, &output, kept, &p);
    let mut ids = order_ids_with_cents(&out);
    assert_eq!(ids.len(), kept, "each kept order once");
    ids.dedup();
    assert_eq!(ids.len(), kept);
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_aggregation_gives_exact_totals_per_region() {
    let (bootstrap, name, input, output, dlq) = topics("seed", 3).await;
    let (records, totals, kept) = orders(0, 600);
    produce(&bootstrap, &input, &records).await;

    let manifest = write_manifest(&name, seed_spec(&input, &output, &dlq));
    let mut p = Processor::start(&bootstrap, &manifest, &name);
    let out = read_until(&bootstrap, &output, kept, &p);
    p.signal("-TERM");
    let status = p.wait();
    assert!(
        status.success(),
        "SIGTERM should exit 0, got {status}; log: {}",
        p.log.display()
    );

    let out_after = read(&bootstrap, &output);
    assert_eq!(out_after.len(), kept, "one update per kept order, no more");
    assert_totals(&out, &totals);
    assert!(read(&bootstrap, &dlq).is_empty());
    assert!(
        p.log_text().contains("committed and left the group"),
        "{}",
        p.log_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn on_commit_aggregation_emits_coalesced_exact_totals() {
    let (bootstrap, name, input, output, dlq) = topics("oncommit", 3).await;
    let (records, totals, kept) = orders(0, 3000);
    produce(&bootstrap, &input, &records).await;
    let mut spec = seed_spec(&input, &output, &dlq);
    spec["steps"][1]["aggregate"]["emit"] = serde_json::json!("onCommit");
    let manifest = write_manifest(&name, spec);
    let mut p = Processor::start(&bootstrap, &manifest, &name);
    // Wait until every region's total is final, then stop.
    let out = read_until_totals(&bootstrap, &output, &totals, true, &p);
    p.signal("-TERM");
    assert!(p.wait().success(), "log: {}", p.log.display());
    assert_totals(&out, &totals);
    assert!(
        out.len() < kept / 10,
        "{} updates for {kept} orders: not coalesced per commit",
        out.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn on_commit_outputs_the_broker_refuses_are_dead_lettered_and_the_pipeline_goes_on() {
    // Exactly once: dead letters become visible only when a transaction commits, which
    // an endless rewind loop never does.
    refused_totals_are_dead_lettered("exactlyOnce").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_commit_outputs_the_broker_refuses_are_dead_lettered_at_least_once_too() {
    refused_totals_are_dead_lettered("atLeastOnce").await;
}

/// Every per-region total is refused by the output topic (too large for it). The refusal
/// rewinds the pipeline; after the rewind each refused group's next total goes to the
/// dead-letter topic instead, and the replay commits. A second batch then flows the
/// same way: the pipeline goes on.
async fn refused_totals_are_dead_lettered(delivery: &str) {
    let bootstrap = TestEnv::require().var("KAFKA_BOOTSTRAP");
    let name = unique("refused");
    let (input, output, dlq) = (
        format!("{name}-in"),
        format!("{name}-out"),
        format!("{name}-dlq"),
    );
    create_new_topics(
        &bootstrap,
        &[
            NewTopic::new(&input, 1, TopicReplication::Fixed(1)),
            NewTopic::new(&output, 1, TopicReplication::Fixed(1)).set("max.message.bytes", "100"),
            NewTopic::new(&dlq, 1, TopicReplication::Fixed(1)),
        ],
    )
    .await;
    let (records, mut totals, _) = orders(0, 12);
    produce(&bootstrap, &input, &records).await;
    let mut spec = seed_spec(&input, &output, &dlq);
    spec["steps"][1]["aggregate"]["emit"] = serde_json::json!("onCommit");
    spec["delivery"] = serde_json::json!(delivery);
    let manifest = write_manifest(&name, spec);
    let mut p = Processor::start(&bootstrap, &manifest, &name);
    // At least once, the changelog written before the refusal already counts what the
    // rewind replays: totals may come out higher, never lower.
    let exact = delivery == "exactlyOnce";
    read_until_totals(&bootstrap, &dlq, &totals, exact, &p);

    let (more, more_totals, _) = orders(12, 30);
    merge(&mut totals, more_totals);
    produce(&bootstrap, &input, &more).await;
    let dead = read_until_totals(&bootstrap, &dlq, &totals, exact, &p);
    p.signal("-TERM");
    assert!(p.wait().success(), "log: {}", p.log.display());

    for d in &dead {
        assert_eq!(d.headers["sluice.step"], "produce", "{:?}", d.headers);
        assert!(
            d.headers["sluice.error"].contains(&output),
            "{:?}",
            d.headers
        );
    }
    assert!(read(&bootstrap, &output).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_too_large_for_the_dead_letter_topic_is_dead_lettered_without_its_value() {
    // The dead-letter topic takes at most 1,000 bytes a record. A bad record of 5,000
    // bytes used to make the worker rewind forever; its dead letter now goes again
    // without key, value and headers, and the pipeline goes on.
    let bootstrap = TestEnv::require().var("KAFKA_BOOTSTRAP");
    let name = unique("bigdlq");
    let (input, output, dlq) = (
        format!("{name}-in"),
        format!("{name}-out"),
        format!("{name}-dlq"),
    );
    create_new_topics(
        &bootstrap,
        &[
            NewTopic::new(&input, 1, TopicReplication::Fixed(1)),
            NewTopic::new(&output, 1, TopicReplication::Fixed(1)),
            NewTopic::new(&dlq, 1, TopicReplication::Fixed(1)).set("max.message.bytes", "1000"),
        ],
    )
    .await;
    let (mut records, _, kept) = orders(0, 20);
    records.insert(5, ("big".into(), format!("not json {}", "x".repeat(5_000))));
    produce(&bootstrap, &input, &records).await;
    let mut spec = cents_spec(&input, &output, "exactlyOnce");
    spec["deadLetter"] = serde_json::json!({"topic": dlq});
    let manifest = write_manifest(&name, spec);
    let mut p = Processor::start(&bootstrap, &manifest, &name);
    let out = read_until(&bootstrap, &output, kept, &p);
    let dead = read(&bootstrap, &dlq);
    p.signal("-TERM");
    assert!(p.wait().success(), "log: {}", p.log.display());

    assert_eq!(
        order_ids_with_cents(&out).len(),
        kept,
        "every good order once"
    );
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].value, None, "{:?}", dead[0]);
    assert_eq!(dead[0].headers["sluice.source.offset"], "5");
    assert_eq!(dead[0].headers["sluice.step"], "decode");
    assert!(
        dead[0].headers["sluice.dropped"].contains("refused"),
        "{:?}",
        dead[0].headers
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_exactly_once_run_loses_and_duplicates_nothing() {
    let (bootstrap, name, input, output, dlq) = topics("kill", 3).await;
    let producer = kafka::producer(&bootstrap).unwrap();
    let (first, mut totals, kept_first) = orders(0, 4000);
    let manifest = write_manifest(&name, seed_spec(&input, &output, &dlq));

    // With a transaction open.
    kill_mid_stream(&bootstrap, &manifest, &name, &input, &output, first).await;

    let (second, more, kept_second) = orders(4000, 6000);
    merge(&mut totals, more);
    kafka::produce(&producer, &input, &second).await.unwrap();
    let kept = kept_first + kept_second;
    let mut p = Processor::start(&bootstrap, &manifest, &name);
    read_until(&bootstrap, &output, kept, &p);
    p.signal("-TERM");
    let status = p.wait();
    assert!(status.success(), "{status}; log: {}", p.log.display());

    let out = read(&bootstrap, &output);
    assert_eq!(
        out.len(),
        kept,
        "exactly one committed update per kept order across the kill"
    );
    assert_totals(&out, &totals);
    // Each region's running total only ever grows by that region's orders: no update
    // was applied twice.
    let mut last: BTreeMap<String, f64> = BTreeMap::new();
    for r in &out {
        let v: serde_json::Value = serde_json::from_str(r.value.as_deref().unwrap()).unwrap();
        let key = r.key.clone().unwrap();
        let total = v["total"].as_f64().unwrap();
        let prev = last.insert(key.clone(), total).unwrap_or(0.0);
        assert!(total > prev, "{key}: {total} after {prev}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_at_least_once_run_loses_nothing() {
    // atLeastOnce commits offsets without stopping the loop, once the outputs below them
    // are acknowledged: a kill at any moment may replay records but never skips one.
    let env = TestEnv::require();
    let bootstrap = env.var("KAFKA_BOOTSTRAP");
    let name = unique("alo-kill");
    let (input, output) = (format!("{name}-orders"), format!("{name}-cents"));
    create_topics(&bootstrap, &[(&input, 3), (&output, 2)]).await;
    let producer = kafka::producer(&bootstrap).unwrap();
    let (first, _, kept_first) = orders(0, 20_000);
    let manifest = write_manifest(&name, cents_spec(&input, &output, "atLeastOnce"));

    kill_mid_stream(&bootstrap, &manifest, &name, &input, &output, first).await;

    let (second, _, kept_second) = orders(20_000, 21_000);
    kafka::produce(&producer, &input, &second).await.unwrap();
    let mut p = Processor::start(&bootstrap, &manifest, &name);
    read_until(&bootstrap, &output, kept_first + kept_second, &p);
    p.signal("-TERM");
    let status = p.wait();
    assert!(status.success(), "{status}; log: {}", p.log.display());

    let out = read(&bootstrap, &output);
    let seen: std::collections::BTreeSet<String> = order_ids_with_cents(&out).into_iter().collect();
    let expected: std::collections::BTreeSet<String> = (0..21_000)
        .filter(|i| (i % 50) as f64 - 5.0 > 0.0)
        .map(|i| format!("o-{i}"))
        .collect();
    let missing: Vec<&String> = expected.difference(&seen).take(5).collect();
    assert!(missing.is_empty(), "lost across the kill: {missing:?} ...");
    assert_eq!(seen.len(), expected.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_hand_partitions_over_mid_stream_without_loss_or_duplicates() {
    // A pipeline without state runs its steps in the transform lane. A second replica
    // joins mid-stream, so the first gives up partitions while its lane holds records: it
    // must handle them and commit before letting go. Then the first leaves (SIGTERM)
    // and hands the rest over. Exactly once: every kept order is in the output once.
    let env = TestEnv::require();
    let bootstrap = env.var("KAFKA_BOOTSTRAP");
    let name = unique("handover");
    let (input, output) = (format!("{name}-orders"), format!("{name}-cents"));
    create_topics(&bootstrap, &[(&input, 4), (&output, 2)]).await;
    let (records, _, kept) = orders(0, 60_000);
    let manifest = write_manifest(&name, cents_spec(&input, &output, "exactlyOnce"));
    let mut first = Processor::start_replica(&bootstrap, &manifest, &format!("{name}-1"), "1");
    // About 15 s of input: 75 chunks, 200 ms apart.
    let feed = kafka::produce_paced(
        kafka::producer(&bootstrap).unwrap(),
        input.clone(),
        records,
        800,
        Duration::from_millis(200),
    );
    kafka::wait_for_first(&bootstrap, &output, WAIT).unwrap();
    let mut second = Processor::start_replica(&bootstrap, &manifest, &format!("{name}-2"), "2");
    // The first replica gives partitions up to the second (the cooperative protocol
    // revokes only what moves).
    let start = Instant::now();
    while !first.log_text().contains("partitions revoked") {
        assert!(
            start.elapsed() < WAIT,
            "the first replica gave up no partitions; logs: {}\n{}",
            first.log_text(),
            second.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !feed.is_finished(),
        "the input ended before the second replica joined"
    );
    first.signal("-TERM");
    let status = first.wait();
    assert!(status.success(), "{status}; log: {}", first.log.display());
    feed.await.unwrap().unwrap();
    read_until(&bootstrap, &output, kept, &second);
    second.signal("-TERM");
    let status = second.wait();
    assert!(status.success(), "{status}; log: {}", second.log.display());

    let out = read(&bootstrap, &output);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for id in order_ids_with_cents(&out) {
        *seen.entry(id).or_insert(0) += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(
        twice.is_empty(),
        "duplicated across the handover: {twice:?}"
    );
    let expected: std::collections::BTreeSet<String> = (0..60_000)
        .filter(|i| (i % 50) as f64 - 5.0 > 0.0)
        .map(|i| format!("o-{i}"))
        .collect();
    let missing: Vec<&String> = expected
        .iter()
        .filter(|k| !seen.contains_key(*k))
        .take(5)
        .collect();
    assert!(missing.is_empty(), "lost across the handover: {missing:?}");
    assert_eq!(seen.len(), kept);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_records_go_to_the_dead_letter_topic_with_headers() {
    let (bootstrap, name, input, output, dlq) = topics("dlq", 1).await;
    let records: Vec<(String, String)> = [
        ("a", r#"{"region":"eu","total":5.0}"#),
        ("b", "{oops"),
        ("c", r#"{"region":"eu"}"#),
        ("d", r#"{"region":"us","total":150.0}"#),
        ("e", r#"{"region":"us","total":-1.0}"#),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    produce(&bootstrap, &input, &records).await;
    let manifest = write_manifest(
        &name,
        serde_json::json!({
            "inputs": [input],
            "steps": [
                {"name": "positive", "filter": "value.total > 0.0"},
                {"name": "shape", "map": {"set": {"big": "value.total > 100.0"}}}
            ],
            "outputs": [{"topic": output}],
            "deadLetter": {"topic": dlq},
        }),
    );
    let mut p = Processor::start(&bootstrap, &manifest, &name);
    let dead = read_until(&bootstrap, &dlq, 2, &p);
    let out = read_until(&bootstrap, &output, 2, &p);
    p.signal("-TERM");
    assert!(p.wait().success());

    let values: Vec<serde_json::Value> = out
        .iter()
        .map(|r| serde_json::from_str(r.value.as_deref().unwrap()).unwrap())
        .collect();
    assert_eq!(
        values,
        vec![
            serde_json::json!({"region": "eu", "total": 5.0, "big": false}),
            serde_json::json!({"region": "us", "total": 150.0, "big": true}),
        ]
    );
    assert_eq!(dead.len(), 2);
    let (bad_json, bad_expr) = (&dead[0], &dead[1]);
    assert_eq!(bad_json.key.as_deref(), Some("b"));
    assert_eq!(
        bad_json.value.as_deref(),
        Some("{oops"),
        "the original value is kept"
    );
    assert_eq!(bad_json.headers["sluice.step"], "decode");
    assert_eq!(bad_json.headers["sluice.source.topic"], input);
    assert_eq!(bad_json.headers["sluice.source.partition"], "0");
    assert_eq!(bad_json.headers["sluice.source.offset"], "1");
    assert!(
        bad_json.headers["sluice.error"].contains("JSON"),
        "{:?}",
        bad_json.headers
    );
    assert_eq!(bad_expr.key.as_deref(), Some("c"));
    assert_eq!(bad_expr.headers["sluice.step"], "positive");
    assert_eq!(bad_expr.headers["sluice.source.offset"], "2");
    assert!(
        bad_expr.headers["sluice.error"].contains("value.total"),
        "{:?}",
        bad_expr.headers
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn route_sends_each_record_to_the_first_matching_topic() {
    let env = TestEnv::require();
    let bootstrap = env.var("KAFKA_BOOTSTRAP");
    let name = unique("route");
    let (input, eu, big, rest) = (
        format!("{name}-in"),
        format!("{name}-eu"),
        format!("{name}-big"),
        format!("{name}-rest"),
    );
    create_topics(&bootstrap, &[(&input, 2), (&eu, 1), (&big, 1), (&rest, 1)]).await;
    let (records, _, _) = orders(0, 300);
    produce(&bootstrap, &input, &records).await;
    let manifest = write_manifest(
        &name,
        serde_json::json!({
            "inputs": [input],
            "steps": [{"name": "split", "route": {
                "routes": [
                    {"when": "value.region == 'eu-west'", "topic": eu},
                    {"when": "value.total >= 40.0", "topic": big}
                ],
                "default": rest
            }}],
        }),
    );
    let expect = |pred: &dyn Fn(&serde_json::Value) -> bool| {
        let mut ids: Vec<String> = records
            .iter()
            .map(|(_, v)| serde_json::from_str::<serde_json::Value>(v).unwrap())
            .filter(|v| pred(v))
            .map(|v| v["orderId"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    let is_eu = |v: &serde_json::Value| v["region"] == "eu-west";
    let is_big = |v: &serde_json::Value| !is_eu(v) && v["total"].as_f64().unwrap() >= 40.0;
    let is_rest = |v: &serde_json::Value| !is_eu(v) && !is_big(v);
    let mut p = Processor::start(&bootstrap, &manifest, &name);
    let ids = |records: Vec<Read>| {
        let mut ids: Vec<String> = records
            .iter()
            .map(|r| {
                serde_json::from_str::<serde_json::Value>(r.value.as_deref().unwrap()).unwrap()
                        ["orderId"]
                        .as_str()
                        .unwrap()
                        .to_string()
            })
            .collect();
        ids.sort();
        ids
    };
    let want_eu = expect(&is_eu);
    let want_big = expect(&is_big);
    let want_rest = expect(&is_rest);
    assert_eq!(ids(read_until(&bootstrap, &eu, want_eu.len(), &p)), want_eu);
    assert_eq!(
        ids(read_until(&bootstrap, &big, want_big.len(), &p)),
        want_big
    );
    assert_eq!(
        ids(read_until(&bootstrap, &rest, want_rest.len(), &p)),
        want_rest
    );
    p.signal("-TERM");
    assert!(p.wait().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn run_mode_names_the_missing_topics_and_exits_non_zero() {
    let env = TestEnv::require();
    let bootstrap = env.var("KAFKA_BOOTSTRAP");
    let name = unique("missing");
    let (input, output, dlq) = (
        format!("{name}-in"),
        format!("{name}-out"),
        format!("{name}-dlq"),
    );
    create_topics(&bootstrap, &[(&output, 1)]).await;
    let manifest = write_manifest(
        &name,
        serde_json::json!({"inputs": [input], "outputs": [{"topic": output}], "deadLetter": {"topic": dlq}}),
    );
    let out = Command::new(processor_bin())
        .args(["run", "-f"])
        .arg(&manifest)
        .args(["--bootstrap", &bootstrap])
        .stdin(Stdio::null())
        .output()
        .expect("run sluice-processor");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("missing topics: {dlq}, {input}")),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_dead_letter_topic_a_bad_record_stops_the_pipeline_after_committing_the_good_ones()
 {
    let env = TestEnv::require();
    let bootstrap = env.var("KAFKA_BOOTSTRAP");
    let name = unique("nodlq");
    let (input, output) = (format!("{name}-in"), format!("{name}-out"));
    create_topics(&bootstrap, &[(&input, 1), (&output, 1)]).await;
    // The bad record is the 301st of 1,000: the records after it fill more batches of
    // the transform lane, which must be neither produced nor committed.
    let records: Vec<(String, String)> = (0..1_000)
        .map(|i| {
            let v = if i == 300 {
                "not json".to_string()
            } else {
                format!(r#"{{"a":{i}}}"#)
            };
            (i.to_string(), v)
        })
        .collect();
    produce(&bootstrap, &input, &records).await;
    let manifest = write_manifest(
        &name,
        serde_json::json!({"inputs": [input], "outputs": [{"topic": output}], "delivery": "exactlyOnce"}),
    );
    let mut p = Processor::start(&bootstrap, &manifest, &name);
    let status = p.wait();
    assert_eq!(status.code(), Some(1), "log: {}", p.log_text());
    assert!(
        p.log_text().contains("has no spec.deadLetter topic"),
        "{}",
        p.log_text()
    );
    let out = read(&bootstrap, &output);
    let values: Vec<i64> = out
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_str(r.value.as_deref().unwrap()).unwrap();
            v["a"].as_i64().unwrap()
        })
        .collect();
    let want: Vec<i64> = (0..300).collect();
    assert_eq!(
        values, want,
        "the records before the bad one are committed, and none after it"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pipeline_mode_serves_readiness_and_metrics_and_exits_zero_on_sigterm() {
    let (bootstrap, name, input, output, dlq) = topics("http", 1).await;
    let (records, _, kept) = orders(0, 100);
    produce(&bootstrap, &input, &records).await;
    // The file the operator mounts: a Pipeline manifest.
    let config = write_manifest(
        &name,
        serde_json::json!({
            "inputs": [input],
            "steps": [{"name": "positive", "filter": "value.total > 0.0"}],
            "outputs": [{"topic": output}],
            "deadLetter": {"topic": dlq},
        }),
    );
    let log = log_dir().join(format!("{name}.log"));
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(processor_bin())
        .args(["pipeline", "--config"])
        .arg(&config)
        .env("SLUICE_KAFKA_BOOTSTRAP", &bootstrap)
        .env("SLUICE_HTTP_ADDR", "127.0.0.1:0")
        .env("SLUICE_LOG_FORMAT", "json")
        .env("POD_NAME", format!("{name}-0"))
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let addr = served_addr(&log, 0);
    let mut p = Processor { child, log };
    let start = Instant::now();
    loop {
        if let Some((200, body)) = http_get(&addr, "/readyz") {
            assert!(body.contains("ready"));
            break;
        }
        assert!(start.elapsed() < WAIT, "never ready; log: {}", p.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(http_get(&addr, "/healthz").map(|r| r.0), Some(200));
    read_until(&bootstrap, &output, kept, &p);
    let filtered = records.len() - kept;
    let want = [
        format!(
            "sluice_records_in_total{{pipeline=\"{name}\"}} {}",
            records.len()
        ),
        format!("sluice_records_out_total{{pipeline=\"{name}\"}} {kept}"),
        format!(
            "sluice_records_filtered_total{{pipeline=\"{name}\",step=\"positive\"}} {filtered}"
        ),
    ];
    let start = Instant::now();
    loop {
        let (code, metrics) = http_get(&addr, "/metrics").expect("metrics");
        assert_eq!(code, 200);
        if want.iter().all(|w| metrics.contains(w.as_str())) {
            assert!(metrics.contains("sluice_rebalances_total"), "{metrics}");
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "metrics never showed {want:?}:\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    p.signal("-TERM");
    let status = p.wait();
    assert!(status.success(), "{status}: {}", p.log_text());
    let first = p.log_text().lines().next().unwrap_or_default().to_string();
    assert!(
        serde_json::from_str::<serde_json::Value>(&first).is_ok(),
        "SLUICE_LOG_FORMAT=json gives JSON lines: {first}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn enrich_joins_records_with_a_table_topic() {
    let env = TestEnv::require();
    let bootstrap = env.var("KAFKA_BOOTSTRAP");
    let name = unique("enrich");
    let (input, table, output, dlq) = (
        format!("{name}-orders"),
        format!("{name}-customers"),
        format!("{name}-out"),
        format!("{name}-dlq"),
    );
    create_topics(
        &bootstrap,
        &[(&input, 1), (&table, 2), (&output, 1), (&dlq, 1)],
    )
    .await;
    let producer = kafka::producer(&bootstrap).unwrap();
    let rows: Vec<(String, String)> = vec![
        ("c1".into(), r#"{"name":"Ada","tier":"gold"}"#.into()),
        ("c2".into(), r#"{"name":"Bob","tier":"silver"}"#.into()),
        ("c1".into(), r#"{"name":"Ada","tier":"platinum"}"#.into()),
    ];
    kafka::produce(&producer, &table, &rows).await.unwrap();
    let orders: Vec<(String, String)> = vec![
        ("o1".into(), r#"{"customer":"c1","total":5.0}"#.into()),
        ("o2".into(), r#"{"customer":"c9","total":6.0}"#.into()),
        ("o3".into(), r#"{"customer":"c2","total":7.0}"#.into()),
    ];
    kafka::produce(&producer, &input, &orders).await.unwrap();
    let manifest = write_manifest(
        &name,
        serde_json::json!({
            "inputs": [input],
            "steps": [{"name": "who", "enrich": {"table": table, "key": "value.customer", "into": "buyer", "onMissing": "deadLetter"}}],
            "outputs": [{"topic": output}],
            "deadLetter": {"topic": dlq},
        }),
    );
    let mut p = Processor::start(&bootstrap, &manifest, &name);
    let out = read_until(&bootstrap, &output, 2, &p);
    let dead = read_until(&bootstrap, &dlq, 1, &p);
    p.signal("-TERM");
    assert!(p.wait().success());
    let values: Vec<serde_json::Value> = out
        .iter()
        .map(|r| serde_json::from_str(r.value.as_deref().unwrap()).unwrap())
        .collect();
    assert_eq!(
        values,
        vec![
            serde_json::json!({"customer": "c1", "total": 5.0, "buyer": {"name": "Ada", "tier": "platinum"}}),
            serde_json::json!({"customer": "c2", "total": 7.0, "buyer": {"name": "Bob", "tier": "silver"}}),
        ]
    );
    assert_eq!(dead[0].key.as_deref(), Some("o2"));
    assert_eq!(dead[0].headers["sluice.step"], "who");
}
