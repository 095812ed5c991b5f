//! Pods on the environment's real node: kube-scheduler places them, the kubelet runs them
//! through containerd and runc from the images `make images` built (pulled from the local
//! registry under the chart's names), and the runtime enforces what the chart asks for.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Client;
use kube::api::{Api, ListParams, LogParams, PostParams};
use serde_json::json;
use sluice_e2e::cluster;
use sluice_e2e::env::TestEnv;
use sluice_e2e::installed::wait_for;

/// The label of the kubelet's node (e2e/lib/node.sh); the tests' pods select it, as a
/// cluster's users select the nodes their pods may run on.
const NODE_SELECTOR: (&str, &str) = ("sluice.dev/node", "kubelet");

/// The securityContext the chart renders for processors.
fn restricted_container(name: &str, image: &str, args: &[&str]) -> serde_json::Value {
    json!({
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": args,
        "securityContext": {
            "runAsNonRoot": true,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}
        },
        "resources": {"limits": {"memory": "64Mi", "cpu": "100m"}}
    })
}

fn pod_on_node(name: &str, restart: &str, containers: Vec<serde_json::Value>) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": restart,
            "nodeSelector": {NODE_SELECTOR.0: NODE_SELECTOR.1},
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "terminationGracePeriodSeconds": 5,
            "containers": containers
        }
    }))
    .expect("a pod")
}

fn image(name: &str) -> String {
    format!("ghcr.io/sluice/{name}:0.1.0")
}

struct Fixture {
    client: Client,
    namespace: String,
    node: String,
}

impl Fixture {
    async fn new(prefix: &str) -> Self {
        let env = TestEnv::require();
        let client = cluster::client(&env).await.expect("a client");
        let namespace = cluster::namespace(&client, prefix)
            .await
            .expect("a namespace");
        Fixture {
            client,
            namespace,
            node: env.var("NODE_NAME"),
        }
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    async fn create(&self, pod: &Pod) {
        self.pods()
            .create(&PostParams::default(), pod)
            .await
            .expect("create the pod");
    }

    /// Waits until `name`'s phase is `phase`.
    async fn phase(&self, name: &str, phase: &str) -> Pod {
        let pods = self.pods();
        wait_for(
            Duration::from_secs(120),
            &format!("pod {name} {phase}"),
            || {
                let pods = pods.clone();
                async move {
                    let p = pods.get(name).await.ok()?;
                    let now = p.status.as_ref()?.phase.clone()?;
                    (now == phase).then_some(p)
                }
            },
        )
        .await
    }

    /// Deletes the test's namespace (a failed test leaves it for a look).
    async fn done(self) {
        cluster::delete_namespace(&self.client, &self.namespace)
            .await
            .expect("delete the namespace");
    }

    async fn logs(&self, name: &str) -> String {
        self.pods()
            .logs(name, &LogParams::default())
            .await
            .expect("the kubelet serves the logs")
    }
}

/// SIGKILLs a container's process through containerd (`containerd://<id>`), as a crash
/// would end it.
fn kill_container(id: &str) {
    let env = TestEnv::require();
    let out = std::process::Command::new(format!("{}/ctr", env.var("E2E_BIN")))
        .args(["--address", &env.var("CONTAINERD_ADDRESS"), "-n", "k8s.io"])
        .args(["tasks", "kill", "-s", "SIGKILL"])
        .arg(id.trim_start_matches("containerd://"))
        .output()
        .expect("run ctr");
    assert!(
        out.status.success(),
        "ctr tasks kill {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The status of a pod's first container.
fn first_status(pod: &Pod) -> Option<k8s_openapi::api::core::v1::ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()
        .cloned()
}

fn container_id(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.container_id.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn the_processor_image_runs_on_the_node_scheduled_by_kube_scheduler_as_the_chart_runs_it() {
    let f = Fixture::new("node-image").await;
    let processor = image("sluice-processor");
    f.create(&pod_on_node(
        "help",
        "Never",
        vec![restricted_container("processor", &processor, &["--help"])],
    ))
    .await;
    let pod = f.phase("help", "Succeeded").await;
    let spec = pod.spec.as_ref().expect("a spec");
    assert_eq!(spec.node_name.as_deref(), Some(f.node.as_str()));
    assert!(
        container_id(&pod).starts_with("containerd://"),
        "{:?}",
        pod.status
    );
    let status = &pod
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0];
    assert!(
        status.image_id.contains("sha256:"),
        "pulled by digest: {}",
        status.image_id
    );
    assert!(f.logs("help").await.contains("Usage"));
    let events: Api<Event> = Api::namespaced(f.client.clone(), &f.namespace);
    let scheduled = events
        .list(&ListParams::default().fields("involvedObject.name=help,reason=Scheduled"))
        .await
        .expect("events");
    let by = scheduled.items.first().and_then(|e| {
        e.reporting_component
            .clone()
            .or_else(|| e.source.as_ref().and_then(|s| s.component.clone()))
    });
    assert_eq!(by.as_deref(), Some("default-scheduler"), "{scheduled:?}");
    f.done().await;
}

#[tokio::test]
async fn the_runtime_enforces_a_read_only_root_a_non_root_user_no_capabilities_and_seccomp() {
    let f = Fixture::new("node-sec").await;
    let busybox = image("e2e-busybox");
    let script = "id -u; grep -E '^(CapEff|Seccomp):' /proc/self/status; \
                  if touch /written 2>/dev/null; then echo root-writable; else echo root-read-only; fi; \
                  touch /tmp/x 2>/dev/null || echo tmp-read-only";
    f.create(&pod_on_node(
        "check",
        "Never",
        vec![restricted_container(
            "check",
            &busybox,
            &["sh", "-c", script],
        )],
    ))
    .await;
    f.phase("check", "Succeeded").await;
    let out = f.logs("check").await;
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines.first(), Some(&"65532"), "{out}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("CapEff:") && l.ends_with("0000000000000000")),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["Seccomp:", "2"]),
        "a seccomp filter (mode 2): {out}"
    );
    assert!(lines.contains(&"root-read-only"), "{out}");
    assert!(
        lines.contains(&"tmp-read-only"),
        "no volume, no writable /tmp: {out}"
    );
    f.done().await;
}

/// A plain HTTP GET of `path` from `addr` (host:port), the body.
fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[tokio::test]
async fn a_pod_reaches_the_api_server_through_the_kubernetes_service() {
    let f = Fixture::new("node-svc").await;
    let busybox = image("e2e-busybox");
    // Plain HTTP to the API server's TLS port: Go's TLS server answers it with a 400 (the
    // Service's only endpoint is the API server).
    let script = "echo \"$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT\"; \
                  printf 'GET /version HTTP/1.0\\r\\n\\r\\n' | \
                  nc -w 5 \"$KUBERNETES_SERVICE_HOST\" \"$KUBERNETES_SERVICE_PORT\"";
    f.create(&pod_on_node(
        "api",
        "Never",
        vec![restricted_container("api", &busybox, &["sh", "-c", script])],
    ))
    .await;
    f.phase("api", "Succeeded").await;
    let out = f.logs("api").await;
    assert!(
        out.starts_with("10.96.0.1:443"),
        "the Service's ClusterIP: {out}"
    );
    assert!(
        out.contains("HTTP/1.0 400 Bad Request"),
        "through kube-proxy to the API server: {out}"
    );
    f.done().await;
}

#[tokio::test]
async fn the_kubelet_runs_the_probes_restarts_a_killed_container_and_kills_one_over_its_memory_limit()
 {
    let f = Fixture::new("node-life").await;
    let busybox = image("e2e-busybox");
    let mut server = restricted_container(
        "web",
        &busybox,
        &[
            "sh",
            "-c",
            "mkdir -p /tmp/www && echo ok > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www",
        ],
    );
    server["volumeMounts"] = json!([{"name": "tmp", "mountPath": "/tmp"}]);
    server["readinessProbe"] = json!({"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1});
    server["livenessProbe"] = json!({"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 2});
    let mut pod = pod_on_node("web", "Always", vec![server]);
    pod.spec.as_mut().unwrap().volumes = Some(vec![
        serde_json::from_value(json!({"name": "tmp", "emptyDir": {}})).unwrap(),
    ]);
    f.create(&pod).await;
    let pods = f.pods();
    let ready = wait_for(
        Duration::from_secs(120),
        "the readiness probe to pass",
        || {
            let pods = pods.clone();
            async move {
                let p = pods.get("web").await.ok()?;
                let ready = p
                    .status
                    .as_ref()?
                    .conditions
                    .as_ref()?
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                ready.then_some(p)
            }
        },
    )
    .await;
    let first = container_id(&ready);
    // Kill the container's process from outside, as a crash would end it.
    kill_container(&first);
    let restarted = wait_for(
        Duration::from_secs(120),
        "the kubelet to restart the container",
        || {
            let pods = pods.clone();
            let first = first.clone();
            async move {
                let p = pods.get("web").await.ok()?;
                let s = first_status(&p)?;
                let ready = s.ready && s.restart_count >= 1 && container_id(&p) != first;
                ready.then_some(s)
            }
        },
    )
    .await;
    assert_eq!(restarted.restart_count, 1);

    // A container over its memory limit is killed by the kernel, and the kubelet says so.
    let hog = restricted_container(
        "hog",
        &busybox,
        &["sh", "-c", "head -c 200000000 /dev/zero | tail"],
    );
    f.create(&pod_on_node("hog", "Never", vec![hog])).await;
    let failed = f.phase("hog", "Failed").await;
    let terminated = failed.status.unwrap().container_statuses.unwrap()[0]
        .state
        .clone()
        .and_then(|s| s.terminated)
        .expect("terminated");
    assert_eq!(
        terminated.reason.as_deref(),
        Some("OOMKilled"),
        "{terminated:?}"
    );
    f.done().await;
}

/// An operator for one test that puts processors on the node with the placement settings
/// the chart has (`processor.nodeSelector`, `processor.tolerations`), reaching Kafka at
/// `bootstrap`.
async fn operator_on_node(
    f: &Fixture,
    env: &TestEnv,
    bootstrap: &str,
) -> sluice_e2e::topic_harness::Operator {
    sluice_e2e::topic_harness::install_topic_crd(&f.client).await;
    let selector = format!(r#"{{"{}":"{}"}}"#, NODE_SELECTOR.0, NODE_SELECTOR.1);
    let tolerations = format!(
        r#"[{{"key":"{}","value":"{}","effect":"NoSchedule"}}]"#,
        NODE_SELECTOR.0, NODE_SELECTOR.1
    );
    sluice_e2e::topic_harness::Operator::start_with(
        env,
        &f.namespace,
        "node",
        bootstrap,
        &[
            "--processor-node-selector",
            &selector,
            "--processor-tolerations",
            &tolerations,
        ],
    )
    .await
}

/// The seed pipeline (a filter, then a sum per region, exactly once) with its processors
/// on the node: an operator started for this test puts them there with the placement
/// settings the chart has (`processor.nodeSelector`, `processor.tolerations`), and they
/// reach Kafka on the node's address as pods of a cluster reach their brokers.
#[tokio::test]
async fn the_seed_pipeline_runs_on_the_node_exactly_once_through_a_container_killed_and_restarted()
{
    use sluice_e2e::installed::{assert_totals, orders};
    use sluice_e2e::kafka;
    use sluice_e2e::topic_harness::{INSTANCE, kafka_create};

    let f = Fixture::new("node-seed").await;
    let env = TestEnv::require();
    let bootstrap = env.var("KAFKA_NODE_BOOTSTRAP");
    let (input, output) = (
        format!("orders-{}", f.namespace),
        format!("totals-{}", f.namespace),
    );
    kafka_create(&bootstrap, &input, 4, &[]).await;
    kafka_create(&bootstrap, &output, 2, &[]).await;
    let operator = operator_on_node(&f, &env, &bootstrap).await;
    let pipeline = json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "Pipeline",
        "metadata": {"name": "region-totals", "labels": {"sluice.dev/instance": INSTANCE}},
        "spec": {
            "inputs": [input],
            "steps": [
                {"name": "positive-orders", "filter": "value.total > 0.0"},
                {"name": "totals-per-region", "aggregate": {
                    "groupBy": {"region": "value.region"},
                    "aggregations": [{"name": "total", "op": "sum", "of": "value.total"}]
                }}
            ],
            "outputs": [{"topic": output, "key": "value.region"}],
            "delivery": "exactlyOnce",
            "replicas": 2,
            "scaling": {"mode": "external"}
        }
    });
    cluster::apply(&f.client, &f.namespace, &pipeline)
        .await
        .expect("apply the Pipeline");

    let pods = f.pods();
    let running = || {
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&ListParams::default().labels("sluice.dev/pipeline=region-totals"))
                .await
                .ok()?;
            let ready: Vec<Pod> = list
                .items
                .into_iter()
                .filter(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                })
                .collect();
            (ready.len() == 2).then_some(ready)
        }
    };
    let replicas = wait_for(
        Duration::from_secs(180),
        "2 processors Ready on the node",
        running,
    )
    .await;
    for p in &replicas {
        assert_eq!(
            p.spec.as_ref().unwrap().node_name.as_deref(),
            Some(f.node.as_str())
        );
        assert!(container_id(p).starts_with("containerd://"));
    }

    // The processors' metrics Service answers on its ClusterIP (kube-proxy), here from
    // the host as from any pod.
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(f.client.clone(), &f.namespace);
    let service = services
        .get("region-totals-processor-metrics")
        .await
        .expect("the metrics Service");
    let spec = service.spec.expect("a spec");
    let address = format!(
        "{}:{}",
        spec.cluster_ip.expect("a ClusterIP"),
        spec.ports.expect("ports")[0].port
    );
    let metrics = wait_for(
        Duration::from_secs(60),
        "metrics through the ClusterIP",
        || {
            let address = address.clone();
            async move {
                http_get(&address, "/metrics")
                    .ok()
                    .filter(|b| b.contains("sluice_records_in_total"))
            }
        },
    )
    .await;
    assert!(
        metrics.starts_with("HTTP/1.0 200") || metrics.starts_with("HTTP/1.1 200"),
        "{metrics}"
    );

    let producer = kafka::producer(&bootstrap).expect("a producer");
    let (first, mut expected, mut kept) = orders(0, 600);
    kafka::produce(&producer, &input, &first)
        .await
        .expect("produce");
    // One processor's container dies mid-stream; the kubelet starts it again.
    kill_container(&container_id(&replicas[0]));
    let (second, more, more_kept) = orders(600, 1200);
    kafka::produce(&producer, &input, &second)
        .await
        .expect("produce");
    for (region, total) in more {
        *expected.entry(region).or_insert(0.0) += total;
    }
    kept += more_kept;
    let name = replicas[0].metadata.name.clone().unwrap();
    wait_for(
        Duration::from_secs(180),
        "the killed container restarted",
        || {
            let pods = pods.clone();
            let name = name.clone();
            async move {
                let p = pods.get(&name).await.ok()?;
                let s = first_status(&p)?;
                (s.restart_count >= 1 && s.ready).then_some(())
            }
        },
    )
    .await;

    let read = |count: usize| {
        let bootstrap = bootstrap.clone();
        let output = output.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(180);
            loop {
                let records = kafka::read_all(
                    &bootstrap,
                    &output,
                    Duration::from_secs(3),
                    Duration::from_secs(120),
                )
                .expect("read the output");
                if records.len() >= count || Instant::now() > deadline {
                    return records;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    let out = read(kept).await;
    assert_totals(&out, &expected, kept);
    operator.stop().await;
    f.done().await;
}

/// A native sink Connector whose processor cannot start says why in its status: the
/// processor leaves its reason in the container's termination message, the kubelet keeps
/// it in the container's last state, and the operator reads it from the pods.
#[tokio::test]
async fn a_native_sink_whose_processor_fails_on_the_node_says_why_in_status() {
    use k8s_openapi::api::core::v1::Secret;
    use sluice_crds::Connector;
    use sluice_e2e::topic_harness::{INSTANCE, kafka_create};

    let f = Fixture::new("node-sink").await;
    let env = TestEnv::require();
    let bootstrap = env.var("KAFKA_NODE_BOOTSTRAP");
    let topic = format!("orders-{}", f.namespace);
    kafka_create(&bootstrap, &topic, 1, &[]).await;
    let operator = operator_on_node(&f, &env, &bootstrap).await;
    // The Secret has no `host`: the sink cannot reach any database.
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "half-db"},
        "stringData": {"user": "sluice", "password": "x"}
    }))
    .expect("a Secret");
    Api::<Secret>::namespaced(f.client.clone(), &f.namespace)
        .create(&PostParams::default(), &secret)
        .await
        .expect("create the Secret");
    let connector = json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "Connector",
        "metadata": {"name": "orders-to-pg", "labels": {"sluice.dev/instance": INSTANCE}},
        "spec": {"type": "sink", "topics": [topic], "secretRef": {"name": "half-db"},
                 "postgres": {"table": "orders"}}
    });
    cluster::apply(&f.client, &f.namespace, &connector)
        .await
        .expect("apply the Connector");
    let connectors: Api<Connector> = Api::namespaced(f.client.clone(), &f.namespace);
    let status = wait_for(
        Duration::from_secs(180),
        "Ready=False with the processor's reason",
        || {
            let connectors = connectors.clone();
            async move {
                let s = connectors.get("orders-to-pg").await.ok()?.status?;
                let message = s
                    .conditions
                    .iter()
                    .find(|c| c.type_ == "Ready" && c.reason == "ReplicasFailing")?
                    .message
                    .clone();
                Some((message, s))
            }
        },
    )
    .await;
    let (message, status) = status;
    let last_error = status.last_error.expect("lastError");
    assert!(last_error.contains("host"), "{last_error}");
    assert!(
        message.contains("CrashLoopBackOff") || message.contains("restart"),
        "{message}"
    );
    assert!(message.contains(&last_error), "{message}");
    let pods = f
        .pods()
        .list(&ListParams::default().labels("sluice.dev/connector=orders-to-pg"))
        .await
        .expect("the connector's pods");
    for p in &pods.items {
        assert_eq!(
            p.spec.as_ref().unwrap().node_name.as_deref(),
            Some(f.node.as_str()),
            "on the node"
        );
    }
    operator.stop().await;
    f.done().await;
}
