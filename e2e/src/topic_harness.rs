//! The operator binary as the Topic e2e tests run it (a child process per test, watching
//! only that test's namespace, with a short resync), and what those tests read from Kafka
//! and the API server.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use crate::cluster;
use crate::env::TestEnv;
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use rdkafka::ClientConfig;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewTopic, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use serde_json::json;
use sluice_crds::Topic;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

pub const WAIT: Duration = Duration::from_secs(60);
/// The operator instance of these tests: their Topics carry `sluice.dev/instance` with this
/// value, so an operator installed in the same cluster (which handles unlabelled resources)
/// leaves them to the operators these tests start.
pub const INSTANCE: &str = "e2e-topic-tests";
pub const RESYNC: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------------------
// The operator as a child process.

pub fn repo_root() -> PathBuf {
    crate::env::repo_root()
}

/// Builds the operator once per test run and returns its path.
pub fn operator_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| crate::env::cargo_binary("sluice-operator"))
        .clone()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub struct Operator {
    pub child: Child,
    pub port: u16,
    pub identity: String,
    pub log: PathBuf,
}

impl Operator {
    /// Starts an operator watching `ns`, electing its leader on a Lease in `ns`.
    pub async fn start(env: &TestEnv, ns: &str, identity: &str, bootstrap: &str) -> Self {
        Self::start_with(env, ns, identity, bootstrap, &[]).await
    }

    /// [`Operator::start`] with more flags.
    pub async fn start_with(
        env: &TestEnv,
        ns: &str,
        identity: &str,
        bootstrap: &str,
        extra: &[&str],
    ) -> Self {
        let logs = TestEnv::state_dir().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let log = logs.join(format!("operator-{ns}-{identity}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        // This start's lines follow what the log holds now.
        let logged_before = out.metadata().map(|m| m.len()).unwrap_or(0);
        let err = out.try_clone().unwrap();
        let child = Command::new(operator_binary())
            .args([
                "--kafka-bootstrap",
                bootstrap,
                "--namespace",
                ns,
                "--instance",
                INSTANCE,
                "--lease-namespace",
                ns,
                "--lease-duration",
                "6s",
                "--identity",
                identity,
                "--resync",
                &format!("{}s", RESYNC.as_secs()),
                "--kafka-timeout",
                "5s",
                // The operator binds a port of the system's choice and logs it: a port
                // found free here could be taken before the operator binds it.
                "--listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .env("KUBECONFIG", env.var("KUBECONFIG"))
            .env("RUST_LOG", "info,sluice_operator=debug")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .expect("start sluice-operator");
        let mut operator = Self {
            child,
            port: 0,
            identity: identity.to_string(),
            log,
        };
        operator.port = operator.bound_port(logged_before).await;
        operator
    }

    /// The port this start's HTTP server bound, read from its log (0 when the operator
    /// stopped before, or did not bind within a minute).
    async fn bound_port(&mut self, logged_before: u64) -> u16 {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            let logged =
                crate::processor::logged_addr(&self.log, logged_before, "HTTP server listening");
            if let Some(addr) = logged {
                return addr.port();
            }
            if self.child.try_wait().ok().flatten().is_some() {
                return 0;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        0
    }

    /// The `/metrics` text (empty while the server is not up).
    pub async fn metrics(&self) -> String {
        http_get(self.port, "/metrics").await.unwrap_or_default()
    }

    /// One metric's value (summed over label sets matching `labels`), 0 when absent.
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        metric_value(&self.metrics().await, name, labels)
    }

    /// SIGTERM, then wait for the process to exit.
    pub async fn stop(mut self) -> std::process::ExitStatus {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("operator did not stop within 20s of SIGTERM")
            .unwrap()
    }

    /// SIGKILL: a crash, nothing released.
    pub async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }
}

pub async fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    stream.write_all(req.as_bytes()).await.ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await.ok()?;
    Some(body)
}

pub fn metric_value(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter(|l| {
            let rest = &l[name.len()..];
            rest.starts_with('{') || rest.starts_with(' ')
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ---------------------------------------------------------------------------------------
// Kafka, seen directly.

pub fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("allow.auto.create.topics", "false")
        .create()
        .unwrap()
}

pub fn opts() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)))
}

/// Partitions and replication factor of `topic`, `None` when it does not exist.
pub async fn kafka_layout(bootstrap: &str, topic: &str) -> Option<(usize, usize)> {
    let bootstrap = bootstrap.to_string();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let a = admin(&bootstrap);
        let md = a
            .inner()
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .unwrap();
        let t = md.topics().iter().find(|t| t.name() == topic)?;
        if t.error().is_some() || t.partitions().is_empty() {
            return None;
        }
        Some((t.partitions().len(), t.partitions()[0].replicas().len()))
    })
    .await
    .unwrap()
}

/// The topic-level configs of `topic`.
pub async fn kafka_config(bootstrap: &str, topic: &str) -> BTreeMap<String, String> {
    let a = admin(bootstrap);
    let res = a
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &opts())
        .await
        .unwrap();
    let r = res.into_iter().next().unwrap().unwrap();
    r.entries
        .into_iter()
        .filter(|e| e.source == ConfigSource::DynamicTopic)
        .filter_map(|e| Some((e.name, e.value?)))
        .collect()
}

pub async fn kafka_create(bootstrap: &str, topic: &str, partitions: i32, config: &[(&str, &str)]) {
    let a = admin(bootstrap);
    let mut t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (k, v) in config {
        t = t.set(k, v);
    }
    let r = a.create_topics(&[t], &opts()).await.unwrap();
    r[0].as_ref().unwrap();
}

pub async fn kafka_set_config(bootstrap: &str, topic: &str, config: &[(&str, &str)]) {
    let a = admin(bootstrap);
    let mut alter = AlterConfig::new(ResourceSpecifier::Topic(topic));
    for (k, v) in config {
        alter = alter.set(k, v);
    }
    let r = a.alter_configs(&[alter], &opts()).await.unwrap();
    r[0].as_ref().unwrap();
}

// ---------------------------------------------------------------------------------------
// Kubernetes helpers.

/// Installs (server-side applies) the Sluice CRDs and waits until they are Established.
pub async fn install_topic_crd(client: &Client) {
    // The operator checks every CRD its controllers watch when it starts.
    cluster::install_crds(client).await.unwrap();
}

pub async fn install_crd(client: &Client, name: &str) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = sluice_crds::generate::crds()
        .into_iter()
        .find(|c| c.metadata.name.as_deref() == Some(name))
        .expect("the CRD");
    api.patch(
        name,
        &PatchParams::apply(cluster::FIELD_MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap();
    let established = kube::runtime::wait::conditions::is_crd_established();
    tokio::time::timeout(
        WAIT,
        kube::runtime::wait::await_condition(api, name, established),
    )
    .await
    .expect("CRD Established")
    .unwrap();
}

pub struct Setup {
    pub env: TestEnv,
    pub client: Client,
    pub ns: String,
    pub bootstrap: String,
    pub topics: Api<Topic>,
}

pub async fn setup(prefix: &str) -> Setup {
    let env = TestEnv::require();
    let client = cluster::client(&env).await.unwrap();
    install_topic_crd(&client).await;
    let ns = cluster::namespace(&client, prefix).await.unwrap();
    let bootstrap = env.var("KAFKA_BOOTSTRAP");
    let topics = Api::namespaced(client.clone(), &ns);
    Setup {
        env,
        client,
        ns,
        bootstrap,
        topics,
    }
}

impl Setup {
    /// Deletes the test namespace after a passing test (a failing one leaves it to look at).
    /// Tests delete their Delete-policy Topics while their operator still runs, so nothing
    /// is left with a finalizer.
    pub async fn finish(self) {
        cluster::delete_namespace(&self.client, &self.ns)
            .await
            .unwrap();
    }
}

pub fn topic(name: &str, spec: serde_json::Value) -> Topic {
    serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "Topic",
        "metadata": {"name": name, "labels": {"sluice.dev/instance": INSTANCE}},
        "spec": spec,
    }))
    .unwrap()
}

pub async fn create(api: &Api<Topic>, name: &str, spec: serde_json::Value) -> Topic {
    api.create(&PostParams::default(), &topic(name, spec))
        .await
        .unwrap()
}

pub async fn patch_spec(api: &Api<Topic>, name: &str, spec: serde_json::Value) {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": spec})),
    )
    .await
    .unwrap();
}

/// The Ready condition as (status, reason, message), when it describes the current generation.
pub fn ready(t: &Topic) -> Option<(String, String, String)> {
    let s = t.status.as_ref()?;
    if s.observed_generation != t.metadata.generation {
        return None;
    }
    let c = s.conditions.iter().find(|c| c.type_ == "Ready")?;
    (c.observed_generation == t.metadata.generation)
        .then(|| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Polls `name` until `check` holds, failing with the last state seen.
pub async fn wait_until<K>(api: &Api<K>, name: &str, what: &str, check: impl Fn(&K) -> bool) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut last = None;
    while tokio::time::Instant::now() < deadline {
        if let Some(t) = api.get_opt(name).await.unwrap() {
            if check(&t) {
                return t;
            }
            last = Some(t);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!(
        "{name}: not {what} within {WAIT:?}; last seen: {}",
        serde_json::to_string_pretty(&last).unwrap()
    );
}

pub async fn wait_ready(api: &Api<Topic>, name: &str) -> Topic {
    wait_until(api, name, "Ready", |t| {
        ready(t).is_some_and(|(s, _, _)| s == "True")
    })
    .await
}

pub async fn wait_reason(api: &Api<Topic>, name: &str, reason: &str) -> Topic {
    wait_until(api, name, reason, |t| {
        ready(t).is_some_and(|(s, r, _)| s == "False" && r == reason)
    })
    .await
}

pub async fn wait_kafka<T: PartialEq + std::fmt::Debug, F: std::future::Future<Output = T>>(
    what: &str,
    want: T,
    probe: impl Fn() -> F,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut last;
    loop {
        last = probe().await;
        if last == want || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(last, want, "{what}");
}

/// Events about `name` in `ns` as (reason, note, reporting instance).
pub async fn events(client: &Client, ns: &str, name: &str) -> Vec<(String, String, String)> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| {
            (
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default(),
                e.reporting_instance.unwrap_or_default(),
            )
        })
        .collect()
}

pub async fn event_reasons(client: &Client, ns: &str, name: &str) -> Vec<String> {
    events(client, ns, name)
        .await
        .into_iter()
        .map(|e| e.0)
        .collect()
}

pub async fn wait_event(client: &Client, ns: &str, name: &str, reason: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let reasons = event_reasons(client, ns, name).await;
        if reasons.iter().any(|r| r == reason) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}: no {reason} event within {WAIT:?}; events: {reasons:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

// ---------------------------------------------------------------------------------------
// The tests.
