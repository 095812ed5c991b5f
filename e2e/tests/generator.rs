//! The generator against the real broker: `sluice-processor generate`, a generator
//! Connector manifest run with `run -f`, and the `connector` subcommand the operator's
//! Deployments run (probes, paused, SIGTERM).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice_e2e::cluster::unique;
use sluice_e2e::env::TestEnv;
use sluice_e2e::processor::*;

#[tokio::test(flavor = "multi_thread")]
async fn generate_writes_records_from_the_template() {
    let env = TestEnv::require();
    let bootstrap = env.var("KAFKA_BOOTSTRAP");
    let topic = unique("gen");
    create_topics(&bootstrap, &[(&topic, 1)]).await;
    let out = Command::new(processor_bin())
        .args(["generate", "--topic", &topic, "--bootstrap", &bootstrap, "--count", "30"])
        .args([
            "--template",
            r#"{"orderId": "'o-' + string(i)", "region": "['eu-west','us-east','ap-south'][i % 3]", "total": "double(i % 50) - 5.0"}"#,
        ])
        .args(["--key", "'o-' + string(i)"])
        .stdin(Stdio::null())
        .output()
        .expect("run generate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("30 records written"), "{stderr}");
    let records = read(&bootstrap, &topic);
    assert_eq!(records.len(), 30);
    let r7 = &records[7];
    assert_eq!(r7.key.as_deref(), Some("o-7"));
    let v: serde_json::Value = serde_json::from_str(r7.value.as_deref().unwrap()).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"orderId": "o-7", "region": "us-east", "total": 2.0})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn run_mode_runs_the_generator_connector_example() {
    let env = TestEnv::require();
    let bootstrap = env.var("KAFKA_BOOTSTRAP");
    let topic = unique("gen-connector");
    create_topics(&bootstrap, &[(&topic, 1)]).await;
    // The README's example, writing 40 records to this test's topic.
    let text =
        std::fs::read_to_string(repo_root().join("manifests/examples/orders-generator.yaml"))
            .unwrap();
    let mut doc: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    doc["spec"]["topics"] = serde_json::json!([topic]);
    doc["spec"]["generator"]["count"] = serde_json::json!(40);
    doc["spec"]["generator"]["rate"] = serde_json::json!("400/s");
    let manifest = log_dir().join(format!("{topic}.json"));
    std::fs::write(&manifest, doc.to_string()).unwrap();
    let out = run_file(&manifest, &bootstrap);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("running connector orders-generator (generator)"),
        "{stderr}"
    );
    assert!(stderr.contains("40 records written"), "{stderr}");
    let records = read(&bootstrap, &topic);
    assert_eq!(records.len(), 40);
    assert_eq!(records[5].key.as_deref(), Some("o-5"));
    let v: serde_json::Value = serde_json::from_str(records[5].value.as_deref().unwrap()).unwrap();
    assert_eq!(v["orderId"], "o-5");
    assert_eq!(v["region"], "ap-south");
    assert_eq!(v["total"], 1.5);
    assert!(v["createdAt"].as_i64().unwrap() > 1_700_000_000_000);

    // A native plugin that does not run here yet is refused in so many words.
    doc["spec"] = serde_json::json!({"type": "source", "topics": [topic],
        "postgresQuery": {"table": "orders", "cursor": {"column": "id", "kind": "incrementing"}}});
    std::fs::write(&manifest, doc.to_string()).unwrap();
    let out = run_file(&manifest, &bootstrap);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the postgresQuery plugin does not run natively"),
        "{stderr}"
    );
}

/// `sluice-processor run -f manifest` to its end.
fn run_file(manifest: &std::path::Path, bootstrap: &str) -> std::process::Output {
    Command::new(processor_bin())
        .args(["run", "-f"])
        .arg(manifest)
        .args(["--bootstrap", bootstrap])
        .stdin(Stdio::null())
        .output()
        .expect("run sluice-processor run -f")
}

#[tokio::test(flavor = "multi_thread")]
async fn connector_mode_generates_serves_probes_idles_when_paused_and_exits_zero_on_sigterm() {
    let env = TestEnv::require();
    let bootstrap = env.var("KAFKA_BOOTSTRAP");
    let topic = unique("gen-pod");
    create_topics(&bootstrap, &[(&topic, 1)]).await;
    // The file the operator would mount: the Connector manifest.
    let manifest = |state: &str| {
        serde_json::json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "Connector",
            "metadata": {"name": "gen", "namespace": "e2e"},
            "spec": {"type": "source", "topics": [topic], "state": state,
                     "generator": {"template": {"n": "i"}, "count": 25}}
        })
    };
    let config = log_dir().join(format!("{topic}.json"));
    let start_connector = |tag: &str| {
        let log = log_dir().join(format!("{topic}-{tag}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(processor_bin())
            .args(["connector", "--config"])
            .arg(&config)
            .env("SLUICE_KAFKA_BOOTSTRAP", &bootstrap)
            .env("SLUICE_HTTP_ADDR", "127.0.0.1:0")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let addr = served_addr(&log, 0);
        let p = Processor { child, log };
        let start = Instant::now();
        while http_get(&addr, "/readyz").map(|r| r.0) != Some(200) {
            assert!(start.elapsed() < WAIT, "never ready; log: {}", p.log_text());
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(http_get(&addr, "/healthz").map(|r| r.0), Some(200));
        p
    };

    std::fs::write(&config, manifest("running").to_string()).unwrap();
    let mut p = start_connector("running");
    let start = Instant::now();
    while read(&bootstrap, &topic).len() < 25 {
        assert!(
            start.elapsed() < WAIT,
            "25 records never arrived; log: {}",
            p.log_text()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // The count is written once: the replica stays up and writes nothing more.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(read(&bootstrap, &topic).len(), 25);
    p.signal("-TERM");
    let status = p.wait();
    assert!(status.success(), "{status}: {}", p.log_text());

    // Paused: up and ready, writing nothing.
    std::fs::write(&config, manifest("paused").to_string()).unwrap();
    let mut p = start_connector("paused");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(read(&bootstrap, &topic).len(), 25);
    p.signal("-TERM");
    assert!(p.wait().success(), "{}", p.log_text());
}
