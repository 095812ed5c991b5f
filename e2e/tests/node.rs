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

/// The label and taint of the kubelet's node (e2e/lib/node.sh): only pods that ask for it
/// run there while the process runner is the other node.
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
        "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}}
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
            "tolerations": [{"key": NODE_SELECTOR.0, "value": NODE_SELECTOR.1, "effect": "NoSchedule"}],
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

async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
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
            &format!("pod {name} {phase}"),
            Duration::from_secs(120),
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
        "the readiness probe to pass",
        Duration::from_secs(120),
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
    let id = first.trim_start_matches("containerd://").to_string();
    let env = TestEnv::require();
    let ctr = std::process::Command::new(format!("{}/ctr", env.var("E2E_BIN")))
        .args([
            "--address",
            &env.var("CONTAINERD_ADDRESS"),
            "-n",
            "k8s.io",
            "tasks",
            "kill",
            "-s",
            "SIGKILL",
            &id,
        ])
        .output()
        .expect("run ctr");
    assert!(
        ctr.status.success(),
        "{}",
        String::from_utf8_lossy(&ctr.stderr)
    );
    let restarted = wait_for(
        "the kubelet to restart the container",
        Duration::from_secs(120),
        || {
            let pods = pods.clone();
            let first = first.clone();
            async move {
                let p = pods.get("web").await.ok()?;
                let s = p
                    .status
                    .as_ref()?
                    .container_statuses
                    .as_ref()?
                    .first()?
                    .clone();
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
}
