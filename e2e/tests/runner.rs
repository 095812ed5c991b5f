//! sluice-runner against the real API server and kube-controller-manager of the e2e
//! environment: a Deployment's pods are bound, run as local processes, become Ready,
//! restart after a crash, are stopped and removed on scale-down and on deletion.
//!
//! Needs `e2e/up` (it reads `e2e/.state/env`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use sluice_e2e::env::TestEnv;

const IMAGE: &str = "e2e.local/python-http";
const SHELL_IMAGE: &str = "e2e.local/shell";
const WAIT: Duration = Duration::from_secs(120);

async fn client_from(path: &str) -> Client {
    let kubeconfig = Kubeconfig::read_from(path).expect("read kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    Client::try_from(config).expect("client")
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{prefix}-{}-{:x}", std::process::id(), nanos % 0xfffff)
}

/// Polls `check` until it returns `Some`, panicking with `what` after [`WAIT`].
async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn python() -> PathBuf {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 is needed for this test");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The runner process, stopped with SIGTERM on drop.
struct Runner {
    child: Child,
    log: PathBuf,
    work: PathBuf,
}

impl Runner {
    fn start(env: &TestEnv, namespace: &str) -> Self {
        let logs = PathBuf::from(env.var("E2E_LOGS"));
        std::fs::create_dir_all(&logs).expect("logs dir");
        let log = logs.join(format!("runner-test-{namespace}.log"));
        let file = std::fs::File::create(&log).expect("runner log");
        let work = std::env::temp_dir().join(format!("sluice-runner-test-{namespace}"));
        let child = Command::new(env!("CARGO_BIN_EXE_sluice-runner"))
            .arg("--kubeconfig")
            .arg(env.var("KUBECONFIG"))
            .args(["--node-name", &format!("node-{namespace}")])
            .args(["--namespace", namespace])
            .arg("--image")
            .arg(format!("{IMAGE}={}", python().display()))
            .arg("--image")
            .arg(format!("{SHELL_IMAGE}=/bin/sh"))
            .arg("--logs-dir")
            .arg(logs.join("pods"))
            .arg("--work-dir")
            .arg(&work)
            .arg("--delete-node-on-exit")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start sluice-runner");
        Self { child, log, work }
    }

    /// SIGTERM, then waits; returns whether it exited successfully.
    fn stop(&mut self) -> bool {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        self.child.wait().is_ok_and(|s| s.success())
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop();
        }
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

fn alive(pid: i32) -> bool {
    // A zombie still answers kill(0); the runner reaps its children, so gone means gone.
    kill(Pid::from_raw(pid), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

fn annotation_map(pod: &Pod, key: &str) -> BTreeMap<String, i64> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default()
}

fn pid_of(pod: &Pod) -> Option<i32> {
    annotation_map(pod, "e2e.sluice.dev/pids")
        .get("web")
        .and_then(|p| i32::try_from(*p).ok())
}

fn is_ready(pod: &Pod) -> bool {
    pod.status.as_ref().is_some_and(|s| {
        s.phase.as_deref() == Some("Running")
            && s.conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .map_or(0, |c| c.restart_count)
}

fn http_get(port: i64, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", u16::try_from(port).expect("port")))
        .expect("connect to replica");
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("send");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("read");
    body
}

fn deployment(name: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name },
        "spec": {
            "replicas": 2,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "web",
                        "image": format!("{IMAGE}:3"),
                        "args": ["-m", "http.server", "$(SLUICE_PORT_HTTP)", "--bind", "127.0.0.1", "--directory", "/srv/www"],
                        "env": [
                            { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                            { "name": "GREETING", "valueFrom": { "configMapKeyRef": { "name": name, "key": "greeting" } } },
                        ],
                        "ports": [{ "name": "http", "containerPort": 8080 }],
                        "resources": { "requests": { "cpu": "10m", "memory": "16Mi" } },
                        "readinessProbe": {
                            "httpGet": { "port": "http", "path": "/index.html" },
                            "periodSeconds": 1,
                        },
                        "volumeMounts": [{ "name": "www", "mountPath": "/srv/www" }],
                    }],
                    "volumes": [{ "name": "www", "configMap": { "name": name } }],
                },
            },
        },
    }))
    .expect("deployment")
}

/// Creates a fresh namespace and waits for its default ServiceAccount.
async fn namespace(client: &Client, prefix: &str) -> String {
    let ns = unique(prefix);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({ "metadata": { "name": ns } })).expect("ns"),
        )
        .await
        .expect("create namespace");
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    wait_for("the default service account", || async {
        accounts.get_opt("default").await.ok().flatten()
    })
    .await;
    ns
}

fn shell_pod(name: &str, restart: &str, script: &str, env: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "restartPolicy": restart,
            "terminationGracePeriodSeconds": 5,
            "containers": [{ "name": "sh", "image": SHELL_IMAGE, "args": ["-c", script], "env": env }],
        },
    }))
    .expect("pod")
}

fn container_status(pod: &Pod) -> Option<k8s_openapi::api::core::v1::ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_config_errors_exit_codes_and_deletes_pods() {
    let env = TestEnv::require();
    let client = client_from(&env.var("KUBECONFIG")).await;
    let ns = namespace(&client, "runner-pods").await;
    let mut runner = Runner::start(&env, &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);

    // restartPolicy Never: the exit code ends the pod as Failed.
    pods.create(
        &PostParams::default(),
        &shell_pod("fails", "Never", "exit 3", json!([])),
    )
    .await
    .expect("create pod");
    let failed = wait_for("pod phase Failed", || async {
        let p = pods.get("fails").await.ok()?;
        (p.status.as_ref()?.phase.as_deref() == Some("Failed")).then_some(p)
    })
    .await;
    let status = container_status(&failed).expect("container status");
    assert_eq!(
        status.state.and_then(|s| s.terminated).map(|t| t.exit_code),
        Some(3)
    );
    assert_eq!(status.restart_count, 0);

    // Init containers run first, to completion; an emptyDir is shared through its
    // rewritten mount path; a zero exit with restartPolicy Never is Succeeded.
    let inits: Pod = serde_json::from_value(json!({
        "metadata": { "name": "inits" },
        "spec": {
            "restartPolicy": "Never",
            "initContainers": [{
                "name": "prepare", "image": SHELL_IMAGE,
                "args": ["-c", "echo from-init > /data/msg"],
                "volumeMounts": [{ "name": "data", "mountPath": "/data" }],
            }],
            "containers": [{
                "name": "main", "image": SHELL_IMAGE,
                "args": ["-c", "echo \"read $(cat /data/msg)\"; test \"$(cat /data/msg)\" = from-init"],
                "volumeMounts": [{ "name": "data", "mountPath": "/data" }],
            }],
            "volumes": [{ "name": "data", "emptyDir": {} }],
        },
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &inits)
        .await
        .expect("create pod");
    let done = wait_for("the init pod to finish", || async {
        let p = pods.get("inits").await.ok()?;
        let phase = p.status.as_ref()?.phase.clone()?;
        matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase)
    })
    .await;
    let log = PathBuf::from(env.var("E2E_LOGS"))
        .join("pods")
        .join(format!("{ns}_inits.log"));
    assert_eq!(done, "Succeeded", "see {}", log.display());
    assert!(
        std::fs::read_to_string(&log)
            .expect("pod log")
            .contains("read from-init")
    );

    // A missing Secret is a CreateContainerConfigError until the Secret exists.
    let secret_env = json!([{ "name": "TOKEN", "valueFrom": { "secretKeyRef": { "name": "later", "key": "token" } } }]);
    let script = "echo \"token=$TOKEN\"; exec sleep 300";
    pods.create(
        &PostParams::default(),
        &shell_pod("waits", "Always", script, secret_env),
    )
    .await
    .expect("create pod");
    wait_for("CreateContainerConfigError", || async {
        let p = pods.get("waits").await.ok()?;
        let waiting = container_status(&p)?.state?.waiting?;
        (waiting.reason.as_deref() == Some("CreateContainerConfigError")
            && waiting.message.is_some_and(|m| m.contains("later")))
        .then_some(())
    })
    .await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({ "metadata": { "name": "later" }, "stringData": { "token": "s3cr3t" } }),
            )
            .expect("secret"),
        )
        .await
        .expect("create secret");
    let running = wait_for("the pod to run once its Secret exists", || async {
        let p = pods.get("waits").await.ok()?;
        is_ready(&p).then_some(p)
    })
    .await;
    let log = PathBuf::from(env.var("E2E_LOGS"))
        .join("pods")
        .join(format!("{ns}_waits.log"));
    wait_for("the process output in the pod log", || async {
        std::fs::read_to_string(&log)
            .ok()?
            .contains("token=s3cr3t")
            .then_some(())
    })
    .await;

    // Deleting the pod stops its process and removes it from the API.
    let pid = annotation_map(&running, "e2e.sluice.dev/pids")["sh"];
    let pid = i32::try_from(pid).expect("pid");
    pods.delete("waits", &DeleteParams::default())
        .await
        .expect("delete pod");
    wait_for("the pod to be removed", || async {
        pods.get_opt("waits").await.ok()?.is_none().then_some(())
    })
    .await;
    wait_for("the process to exit", || async {
        (!alive(pid)).then_some(())
    })
    .await;

    // Stopping the runner stops the processes it still runs.
    pods.create(
        &PostParams::default(),
        &shell_pod("lingers", "Always", "exec sleep 300", json!([])),
    )
    .await
    .expect("create pod");
    let lingering = wait_for("the lingering pod to run", || async {
        let p = pods.get("lingers").await.ok()?;
        is_ready(&p).then_some(p)
    })
    .await;
    let lingering_pid =
        i32::try_from(annotation_map(&lingering, "e2e.sluice.dev/pids")["sh"]).expect("pid");
    assert!(alive(lingering_pid));
    assert!(
        runner.stop(),
        "runner exited with an error; see {}",
        runner.log.display()
    );
    assert!(!alive(lingering_pid), "the runner left a process behind");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_a_deployment_as_local_processes() {
    let env = TestEnv::require();
    let client = client_from(&env.var("KUBECONFIG")).await;
    let ns = namespace(&client, "runner").await;
    let namespaces: Api<Namespace> = Api::all(client.clone());

    let mut runner = Runner::start(&env, &ns);
    let name = "web";
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), &ns);
    config_maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": name },
                "data": { "index.html": "hello from a configMap volume", "greeting": "hi" },
            }))
            .expect("cm"),
        )
        .await
        .expect("create configmap");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deployments
        .create(&PostParams::default(), &deployment(name))
        .await
        .expect("create deployment");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let list = ListParams::default().labels(&format!("app={name}"));

    // Both replicas run as processes and become Ready through their readiness probes.
    let ready = wait_for("2 Ready pods", || async {
        let l = pods.list(&list).await.ok()?;
        (l.items.len() == 2 && l.items.iter().all(|p| is_ready(p) && pid_of(p).is_some()))
            .then_some(l.items)
    })
    .await;
    let mut ports = Vec::new();
    for pod in &ready {
        assert_eq!(
            pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            Some(format!("node-{ns}"))
        );
        let port = annotation_map(pod, "e2e.sluice.dev/ports")["http"];
        assert!(http_get(port, "/index.html").contains("hello from a configMap volume"));
        ports.push(port);
        let pid = pid_of(pod).expect("pid");
        let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
        let environ: BTreeMap<String, String> = environ
            .split(|b| *b == 0)
            .filter_map(|kv| {
                String::from_utf8_lossy(kv)
                    .split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        assert_eq!(environ.get("POD_NAME"), pod.metadata.name.as_ref());
        assert_eq!(environ.get("GREETING").map(String::as_str), Some("hi"));
        assert_eq!(
            environ.get("SLUICE_HTTP_ADDR"),
            Some(&format!("127.0.0.1:{port}"))
        );
        // The pod's kubeconfig authenticates as its ServiceAccount (which may not list pods).
        let kubeconfig = environ
            .get("KUBECONFIG")
            .expect("KUBECONFIG set for the pod");
        let as_pod: Api<Pod> = Api::namespaced(client_from(kubeconfig).await, &ns);
        match as_pod.list(&ListParams::default()).await {
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 403);
                assert!(
                    s.message
                        .contains(&format!("system:serviceaccount:{ns}:default")),
                    "{}",
                    s.message
                );
            }
            other => panic!("expected 403 for the default service account, got {other:?}"),
        }
    }
    assert_ne!(ports[0], ports[1], "each replica has its own port");

    // kill -9 a replica: the runner restarts it and counts the restart.
    let victim = ready[0].metadata.name.clone().expect("name");
    let old_pid = pid_of(&ready[0]).expect("pid");
    kill(Pid::from_raw(old_pid), Signal::SIGKILL).expect("kill -9");
    let restarted = wait_for("a restart after kill -9", || async {
        let p = pods.get(&victim).await.ok()?;
        (restarts(&p) >= 1 && is_ready(&p) && pid_of(&p).is_some_and(|pid| pid != old_pid))
            .then_some(p)
    })
    .await;
    let last = restarted
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c[0].last_state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .map(|t| t.exit_code);
    assert_eq!(last, Some(137));
    // What happened is told by events, as a kubelet tells it.
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), &ns);
    wait_for("Scheduled, Started and BackOff events", || async {
        let reasons: Vec<String> = events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .filter(|e| e.involved_object.name.as_deref() == Some(victim.as_str()))
            .filter_map(|e| e.reason)
            .collect();
        ["Scheduled", "Started", "BackOff"]
            .iter()
            .all(|r| reasons.iter().any(|x| x == r))
            .then_some(())
    })
    .await;

    // Scale to 1: one pod is terminated, its process stopped and the pod removed.
    let pids: Vec<i32> = pods
        .list(&list)
        .await
        .expect("list")
        .items
        .iter()
        .filter_map(pid_of)
        .collect();
    deployments
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "replicas": 1 } })),
        )
        .await
        .expect("scale");
    let remaining = wait_for("1 pod after scaling down", || async {
        let l = pods.list(&list).await.ok()?;
        (l.items.len() == 1).then(|| l.items[0].clone())
    })
    .await;
    let kept = pid_of(&remaining);
    for pid in &pids {
        if Some(*pid) != kept {
            wait_for("the scaled-down process to exit", || async {
                (!alive(*pid)).then_some(())
            })
            .await;
        }
    }

    // Delete the Deployment: garbage collection removes the ReplicaSet and the pod, the
    // runner stops the process.
    deployments
        .delete(name, &DeleteParams::foreground())
        .await
        .expect("delete deployment");
    wait_for("no pods left", || async {
        pods.list(&list).await.ok()?.items.is_empty().then_some(())
    })
    .await;
    for pid in pids {
        wait_for("every process to exit", || async {
            (!alive(pid)).then_some(())
        })
        .await;
    }

    assert!(
        runner.stop(),
        "runner exited with an error; see {}",
        runner.log.display()
    );
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
}
