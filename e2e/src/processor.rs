//! The processor binary as the processor e2e tests run it: built once, started as a child
//! process on a manifest (`sluice-processor run -f`), killed when dropped; with the topics,
//! orders and readers those tests share.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

use crate::cluster::unique;
use crate::env::TestEnv;
use crate::kafka::{self, Read};

/// Long enough for a slow shared machine; the tests wait for events, not for time.
pub const WAIT: Duration = Duration::from_secs(180);

pub fn repo_root() -> PathBuf {
    crate::env::repo_root()
}

/// Builds the processor once per test binary and returns its path.
pub fn processor_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| crate::env::cargo_binary("sluice-processor"))
        .clone()
}

pub fn log_dir() -> PathBuf {
    let dir = TestEnv::state_dir().join("logs").join("processor");
    std::fs::create_dir_all(&dir).expect("create log dir");
    dir
}

/// A running `sluice-processor run`, killed when dropped.
pub struct Processor {
    pub child: Child,
    pub log: PathBuf,
}

impl Processor {
    pub fn start(bootstrap: &str, manifest: &Path, tag: &str) -> Self {
        Self::start_replica(bootstrap, manifest, tag, "local-0")
    }

    /// Starts one of several replicas of a pipeline (`replica` goes into its
    /// transactional id).
    pub fn start_replica(bootstrap: &str, manifest: &Path, tag: &str, replica: &str) -> Self {
        let log = log_dir().join(format!("{tag}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open log");
        let child = Command::new(processor_bin())
            .args(["run", "-f"])
            .arg(manifest)
            .args(["--bootstrap", bootstrap, "--replica-id", replica])
            .env("RUST_LOG", "info")
            .stdout(out.try_clone().expect("clone log"))
            .stderr(out)
            .spawn()
            .expect("start sluice-processor");
        Self { child, log }
    }

    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill {sig} {} failed", self.pid());
    }

    /// Waits for the process to exit (it must, within WAIT).
    pub fn wait(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                start.elapsed() < WAIT,
                "processor did not exit; log: {}",
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Processor {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub async fn create_topics(bootstrap: &str, topics: &[(&str, i32)]) {
    let news: Vec<NewTopic> = topics
        .iter()
        .map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(1)))
        .collect();
    create_new_topics(bootstrap, &news).await;
}

/// Creates `topics` as given (with their configs).
pub async fn create_new_topics(bootstrap: &str, topics: &[NewTopic<'_>]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let results = admin
        .create_topics(topics.iter(), &AdminOptions::new())
        .await
        .expect("create topics");
    for r in results {
        r.expect("topic created");
    }
}

/// Creates the topics of a test named after `prefix`: the input with `partitions`, the
/// output and the dead-letter topic with one each. Returns the bootstrap servers, the
/// test's unique name and the three topics.
pub async fn topics(prefix: &str, partitions: i32) -> (String, String, String, String, String) {
    let bootstrap = TestEnv::require().var("KAFKA_BOOTSTRAP");
    let name = unique(prefix);
    let (input, output, dlq) = (
        format!("{name}-in"),
        format!("{name}-out"),
        format!("{name}-dlq"),
    );
    create_topics(&bootstrap, &[(&input, partitions), (&output, 1), (&dlq, 1)]).await;
    (bootstrap, name, input, output, dlq)
}

/// Produces `records` to `topic` and waits for the acknowledgements.
pub async fn produce(bootstrap: &str, topic: &str, records: &[(String, String)]) {
    kafka::produce(&kafka::producer(bootstrap).unwrap(), topic, records)
        .await
        .unwrap();
}

pub fn write_manifest(name: &str, spec: serde_json::Value) -> PathBuf {
    let doc = serde_json::json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": name, "namespace": "e2e"},
        "spec": spec,
    });
    let path = log_dir().join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(&doc).expect("json")).expect("write manifest");
    path
}

/// Orders `from..to`: region by index, total `(i % 50) - 5`; returns them with the
/// totals per region of those that pass `total > 0`, and how many pass.
pub fn orders(from: usize, to: usize) -> (Vec<(String, String)>, BTreeMap<String, f64>, usize) {
    let regions = ["eu-west", "us-east", "ap-south"];
    let mut records = Vec::new();
    let mut totals = BTreeMap::new();
    let mut kept = 0;
    for i in from..to {
        let region = regions[i % 3];
        let total = (i % 50) as f64 - 5.0;
        records.push((
            format!("o-{i}"),
            serde_json::json!({"orderId": format!("o-{i}"), "region": region, "total": total})
                .to_string(),
        ));
        if total > 0.0 {
            *totals.entry(region.to_string()).or_insert(0.0) += total;
            kept += 1;
        }
    }
    (records, totals, kept)
}

/// Reads `topic` until the latest record of every region carries its expected total
/// (or, when not `exact`, at least that: at least once may count a replayed record twice).
pub fn read_until_totals(
    bootstrap: &str,
    topic: &str,
    totals: &BTreeMap<String, f64>,
    exact: bool,
    p: &Processor,
) -> Vec<Read> {
    let start = Instant::now();
    loop {
        let records = read(bootstrap, topic);
        let latest = kafka::latest_by_key(&records);
        let done = totals.iter().all(|(region, total)| {
            latest
                .get(region)
                .and_then(|v| v["total"].as_f64())
                .is_some_and(|t| (t - total).abs() < 1e-9 || (!exact && t > *total))
        });
        if done {
            return records;
        }
        assert!(
            start.elapsed() < WAIT,
            "totals not reached in {topic}; log: {}",
            p.log_text()
        );
    }
}

pub fn merge(a: &mut BTreeMap<String, f64>, b: BTreeMap<String, f64>) {
    for (k, v) in b {
        *a.entry(k).or_insert(0.0) += v;
    }
}

pub fn read(bootstrap: &str, topic: &str) -> Vec<Read> {
    kafka::read_all(bootstrap, topic, Duration::from_secs(2), WAIT).expect("read topic")
}

/// Reads `topic` until it holds at least `count` committed records.
pub fn read_until(bootstrap: &str, topic: &str, count: usize, p: &Processor) -> Vec<Read> {
    read_until_or(bootstrap, topic, count, || {
        format!("processor log: {}\n{}", p.log.display(), p.log_text())
    })
}

/// Reads `topic` until it holds at least `count` committed records; `describe` says what
/// to look at when they never come.
pub fn read_until_or(
    bootstrap: &str,
    topic: &str,
    count: usize,
    describe: impl Fn() -> String,
) -> Vec<Read> {
    let start = Instant::now();
    loop {
        let records = read(bootstrap, topic);
        if records.len() >= count {
            return records;
        }
        assert!(
            start.elapsed() < WAIT,
            "{topic} has {} of {count} records; {}",
            records.len(),
            describe()
        );
    }
}

pub fn assert_totals(records: &[Read], expected: &BTreeMap<String, f64>) {
    let latest = kafka::latest_by_key(records);
    let got: BTreeMap<String, f64> = latest
        .iter()
        .map(|(k, v)| (k.clone(), v["total"].as_f64().expect("numeric total")))
        .collect();
    assert_eq!(&got, expected);
    for (k, v) in &latest {
        assert_eq!(
            v["region"],
            serde_json::json!(k),
            "output record {v} keyed by its region"
        );
    }
}

/// Starts a processor, feeds it `records` over about 4 s (20 chunks, 200 ms apart), and
/// kills it with SIGKILL as soon as its first output is committed: mid-stream.
pub async fn kill_mid_stream(
    bootstrap: &str,
    manifest: &std::path::Path,
    name: &str,
    input: &str,
    output: &str,
    records: Vec<(String, String)>,
) {
    let mut p = Processor::start(bootstrap, manifest, name);
    let chunk = records.len().div_ceil(20);
    let feed = kafka::produce_paced(
        kafka::producer(bootstrap).unwrap(),
        input.to_string(),
        records,
        chunk,
        Duration::from_millis(200),
    );
    kafka::wait_for_first(bootstrap, output, WAIT).unwrap();
    p.signal("-KILL");
    p.wait();
    assert!(!feed.is_finished(), "the kill came after the input ended");
    feed.await.unwrap().unwrap();
}

/// Keeps orders with a positive total and adds their total in cents: a pipeline without
/// state.
pub fn cents_spec(input: &str, output: &str, delivery: &str) -> serde_json::Value {
    serde_json::json!({
        "inputs": [input],
        "steps": [
            {"name": "positive", "filter": "value.total > 0.0"},
            {"name": "cents", "map": {"set": {"cents": "value.total * 100.0"}}}
        ],
        "outputs": [{"topic": output}],
        "delivery": delivery,
        "commitInterval": "100ms"
    })
}

/// The order ids of `cents_spec`'s output records, each checked for its cents.
pub fn order_ids_with_cents(out: &[Read]) -> Vec<String> {
    out.iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_str(r.value.as_deref().unwrap()).unwrap();
            assert_eq!(v["cents"].as_f64(), v["total"].as_f64().map(|t| t * 100.0));
            v["orderId"].as_str().unwrap().to_string()
        })
        .collect()
}

pub fn seed_spec(input: &str, output: &str, dlq: &str) -> serde_json::Value {
    serde_json::json!({
        "inputs": [input],
        "steps": [
            {"name": "positive", "filter": "value.total > 0.0"},
            {"name": "per-region", "aggregate": {
                "groupBy": {"region": "value.region"},
                "aggregations": [{"name": "total", "op": "sum", "of": "value.total"}]
            }}
        ],
        "outputs": [{"topic": output}],
        "deadLetter": {"topic": dlq},
        "delivery": "exactlyOnce",
        "commitInterval": "200ms"
    })
}

/// A plain HTTP/1.0 GET: (status code, body).
/// The address a server logged that it bound, in the lines of `log` past `logged_before`
/// bytes (its own start's) that hold `marker`: text logs say `addr=127.0.0.1:1234`, JSON
/// logs `"addr":"127.0.0.1:1234"`. A port of 0 (the address asked for) is not one.
pub fn logged_addr(log: &Path, logged_before: u64, marker: &str) -> Option<std::net::SocketAddr> {
    let text = std::fs::read(log).unwrap_or_default();
    let from = usize::try_from(logged_before).unwrap_or(0).min(text.len());
    String::from_utf8_lossy(&text[from..])
        .lines()
        .filter(|line| line.contains(marker))
        .find_map(|line| {
            let rest = line
                .split("addr=")
                .nth(1)
                .or_else(|| line.split("\"addr\":\"").nth(1))?;
            let addr: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                .collect();
            addr.parse::<std::net::SocketAddr>()
                .ok()
                .filter(|a| a.port() != 0)
        })
}

/// The address a processor started with `SLUICE_HTTP_ADDR=127.0.0.1:0` serves on, from
/// its log ([`logged_addr`]); fails after a minute. A port found free beforehand could
/// be taken before the processor binds it.
pub fn served_addr(log: &Path, logged_before: u64) -> String {
    let start = Instant::now();
    loop {
        if let Some(addr) = logged_addr(log, logged_before, "serving /metrics") {
            return addr.to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the processor never said where it serves; log {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}
