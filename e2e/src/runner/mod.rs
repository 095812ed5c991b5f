//! `sluice-runner`: the scheduler and kubelet of one node in the e2e environment.
//!
//! There is no container runtime on the e2e machine, so the runner registers a Node,
//! binds the pods it can run (those whose images map to locally built binaries) and runs
//! each as local processes. kube-controller-manager's Deployment and ReplicaSet
//! controllers do the rest, so rollouts and rescales behave as on a cluster.
//!
//! What a pod gets, and the rules that stand in for what a container would have:
//! - **Scheduling** ([`scheduler`]): unscheduled pods of the default scheduler whose
//!   every (init) container image is mapped (`--image REPOSITORY=PATH`, tag ignored) and
//!   whose `nodeSelector` matches the node's labels are bound through `pods/binding`.
//!   Other pods are left alone (logged once). `--namespace` limits the runner to some
//!   namespaces, so a test can run its own runner next to the shared one.
//! - **Command** ([`launch`]): `command`/`args` with `$(VAR)` expansion; an empty
//!   command runs the mapped binary, a `command[0]` naming the image's binary is
//!   replaced by it. The process leads its own process group, runs with only the pod's
//!   environment (plus PATH, LANG, ... of the runner; HOME is the pod's work directory)
//!   and appends stdout/stderr to `<logs>/<namespace>_<pod>.log`.
//! - **Env**: `value`, `valueFrom` (ConfigMap/Secret keys, `fieldRef`, `resourceFieldRef`)
//!   and `envFrom`; a missing required ConfigMap/Secret is a `CreateContainerConfigError`,
//!   retried with backoff.
//! - **Volumes** ([`volumes`], [`paths`]): written under the pod's work directory; mount
//!   paths are rewritten in args, env values and workingDir, and listed in
//!   `SLUICE_PATH_REMAP`.
//! - **Identity** ([`kubeconfig`]): the projected ServiceAccount token is a real bound
//!   token (TokenRequest), refreshed at 80 % of its life; `KUBECONFIG` points at a
//!   kubeconfig using it, so in-cluster clients act as the pod's ServiceAccount.
//! - **Ports** ([`ports`]): every declared containerPort gets a free local port:
//!   `SLUICE_HTTP_ADDR`, `SLUICE_PORT_<NAME>`, listen addresses rewritten, probes mapped,
//!   and the annotation `e2e.sluice.dev/ports`. The annotation `e2e.sluice.dev/pids` has
//!   the process ids.
//! - **Lifecycle** ([`container`], [`probe`], [`backoff`]): startup/readiness/liveness
//!   probes; restarts per restartPolicy with backoff (1 s doubling to 30 s by default,
//!   instead of the kubelet's 10 s to 5 min, for test speed); on deletion SIGTERM, the
//!   grace period, SIGKILL, then the pod is deleted with grace 0; on runner exit every
//!   process is stopped the same way (grace at most 10 s).
//! - **Status** ([`status`], [`events`]): phase, conditions (PodScheduled, Initialized,
//!   ContainersReady, Ready), container statuses and events, as the kubelet writes them.
//!
//! Not emulated: securityContext (processes run as the runner's user), resource limits,
//! node affinity and taints, hostNetwork, and Services: a Service's endpoints name the
//! containerPort on 127.0.0.1, not the replica's port, so tests reach replicas through
//! `e2e.sluice.dev/ports`.

pub mod backoff;
pub mod container;
mod env;
pub mod error;
pub mod events;
pub mod expand;
pub mod fields;
pub mod images;
pub mod kubeconfig;
pub mod launch;
pub mod node;
mod objects;
pub mod paths;
pub mod pod;
pub mod ports;
pub mod probe;
pub mod process;
pub mod scheduler;
pub mod status;
pub mod volumes;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use backoff::BackoffPolicy;
pub use container::Stop;
pub use error::RunnerError;
pub use images::ImageMap;
use scheduler::Decision;

/// How the runner is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// The kubeconfig the runner uses (the environment's admin kubeconfig).
    pub kubeconfig: PathBuf,
    /// This node's name.
    pub node_name: String,
    /// Image -> binary mapping.
    pub images: ImageMap,
    /// Namespaces whose pods the runner takes (empty: all).
    pub namespaces: Vec<String>,
    /// Where `<namespace>_<pod>.log` files go.
    pub logs_dir: PathBuf,
    /// Where per-pod directories (volumes, kubeconfig) go.
    pub work_dir: PathBuf,
    /// Restart backoff.
    pub backoff: BackoffPolicy,
    /// Delete the Node object on exit (tests that start their own runner).
    pub delete_node_on_exit: bool,
}

/// What every pod task shares.
pub struct Shared {
    /// The runner's client.
    pub client: Client,
    /// This node.
    pub node_name: String,
    /// Image mapping.
    pub images: ImageMap,
    /// Pod log directory.
    pub logs_dir: PathBuf,
    /// Pod work directories.
    pub work_dir: PathBuf,
    /// Restart backoff.
    pub backoff: BackoffPolicy,
    /// The cluster entry for pod kubeconfigs.
    pub cluster: kube::config::Cluster,
    /// The cluster CA.
    pub ca_pem: Option<Vec<u8>>,
    /// Variables every process inherits from the runner (PATH, HOME, ...).
    pub base_env: Vec<(String, String)>,
}

/// Variables passed from the runner's environment to every process, standing in for an
/// image's own environment (HOME is the pod's work directory instead).
const INHERITED_ENV: [&str; 7] = [
    "PATH",
    "USER",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "SSL_CERT_FILE",
];

struct Running {
    stop: watch::Sender<Option<Stop>>,
    task: JoinHandle<()>,
}

/// Runs until `shutdown` resolves, then stops every process (SIGTERM, grace, SIGKILL).
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), RunnerError> {
    let access = kubeconfig::load(&config.kubeconfig).await?;
    for dir in [&config.logs_dir, &config.work_dir] {
        std::fs::create_dir_all(dir).map_err(|source| RunnerError::CreateDir {
            path: dir.clone(),
            source,
        })?;
    }
    let started = Timestamp::now();
    node::register(&access.client, &config.node_name, started).await?;
    tracing::info!(node = %config.node_name, namespaces = ?config.namespaces, "node registered and Ready");
    let shared = Arc::new(Shared {
        client: access.client.clone(),
        node_name: config.node_name.clone(),
        images: config.images.clone(),
        logs_dir: config.logs_dir.clone(),
        work_dir: config.work_dir.clone(),
        backoff: config.backoff,
        cluster: access.cluster,
        ca_pem: access.ca_pem,
        base_env: INHERITED_ENV
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
            .collect(),
    });
    let mut kubelet = Kubelet {
        shared: shared.clone(),
        namespaces: config.namespaces.clone(),
        pods: HashMap::new(),
        logged: HashSet::new(),
        init_seen: None,
    };
    let api: Api<Pod> = match config.namespaces.as_slice() {
        [one] => Api::namespaced(access.client.clone(), one),
        _ => Api::all(access.client.clone()),
    };
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut heartbeat = tokio::time::interval(node::LEASE_RENEW);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = heartbeat.tick() => {
                if let Err(err) = node::heartbeat(&shared.client, &shared.node_name, started).await {
                    tracing::warn!(%err, "node heartbeat failed");
                }
                kubelet.forget_finished();
            }
            event = events.next() => match event {
                Some(Ok(event)) => kubelet.on_event(event).await,
                Some(Err(err)) => tracing::warn!(%err, "pod watch error; retrying"),
                None => break,
            },
        }
    }
    tracing::info!(
        pods = kubelet.pods.len(),
        "shutting down: stopping every process"
    );
    kubelet.stop_all().await;
    if config.delete_node_on_exit {
        node::delete(&shared.client, &shared.node_name).await;
    }
    tracing::info!("sluice-runner stopped");
    Ok(())
}

/// The pod bookkeeping of the watch loop.
struct Kubelet {
    shared: Arc<Shared>,
    namespaces: Vec<String>,
    pods: HashMap<String, Running>,
    logged: HashSet<String>,
    init_seen: Option<HashSet<String>>,
}

impl Kubelet {
    async fn on_event(&mut self, event: watcher::Event<Pod>) {
        match event {
            watcher::Event::Init => self.init_seen = Some(HashSet::new()),
            watcher::Event::InitApply(pod) => {
                if let (Some(seen), Some(uid)) = (self.init_seen.as_mut(), pod.metadata.uid.clone())
                {
                    seen.insert(uid);
                }
                self.on_pod(pod).await;
            }
            watcher::Event::InitDone => {
                if let Some(seen) = self.init_seen.take() {
                    let vanished: Vec<String> = self
                        .pods
                        .keys()
                        .filter(|u| !seen.contains(*u))
                        .cloned()
                        .collect();
                    for uid in vanished {
                        self.on_gone(&uid);
                    }
                }
            }
            watcher::Event::Apply(pod) => self.on_pod(pod).await,
            watcher::Event::Delete(pod) => {
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    self.on_gone(uid);
                    self.logged.remove(uid);
                }
            }
        }
    }

    async fn on_pod(&mut self, pod: Pod) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let label = format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.name.as_deref().unwrap_or_default()
        );
        match scheduler::decide(
            &pod,
            &self.shared.node_name,
            &self.shared.images,
            &self.namespaces,
        ) {
            Decision::Ignore => {}
            Decision::CannotRun(why) => {
                if self.logged.insert(uid) {
                    tracing::info!(pod = %label, %why, "leaving pod unscheduled");
                }
            }
            Decision::Bind => {
                let api: Api<Pod> = Api::namespaced(
                    self.shared.client.clone(),
                    pod.metadata.namespace.as_deref().unwrap_or_default(),
                );
                match scheduler::bind(&api, &pod, &self.shared.node_name).await {
                    Ok(()) => {
                        tracing::info!(pod = %label, node = %self.shared.node_name, "bound");
                        let note =
                            format!("Successfully assigned {label} to {}", self.shared.node_name);
                        self.event(
                            &pod,
                            events::PodEvent {
                                warning: false,
                                reason: "Scheduled",
                                note,
                            },
                        );
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {}
                    Err(err) => tracing::warn!(pod = %label, %err, "binding failed"),
                }
            }
            Decision::Ours => self.on_our_pod(pod, uid, label),
        }
    }

    fn on_our_pod(&mut self, pod: Pod, uid: String, label: String) {
        if pod.metadata.deletion_timestamp.is_some() {
            let grace = pod
                .metadata
                .deletion_grace_period_seconds
                .or(pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds))
                .and_then(|s| u64::try_from(s).ok())
                .unwrap_or(30);
            let stop = Stop::Delete {
                grace: std::time::Duration::from_secs(grace),
            };
            match self.pods.get(&uid) {
                Some(r) if !r.task.is_finished() => {
                    if r.stop.borrow().is_none() {
                        tracing::info!(pod = %label, grace, "pod deleted: stopping its processes");
                        r.stop.send_replace(Some(stop));
                        let note = format!("Stopping the pod's processes (grace period {grace}s)");
                        self.event(
                            &pod,
                            events::PodEvent {
                                warning: false,
                                reason: "Killing",
                                note,
                            },
                        );
                    }
                }
                _ => {
                    // Nothing runs for it (finished, or from an earlier runner): remove it now.
                    let api: Api<Pod> = Api::namespaced(
                        self.shared.client.clone(),
                        pod.metadata.namespace.as_deref().unwrap_or_default(),
                    );
                    let name = pod.metadata.name.clone().unwrap_or_default();
                    let uid_for_delete = uid.clone();
                    self.pods.remove(&uid);
                    tokio::spawn(async move {
                        pod::delete_now_by_name(&api, &name, &uid_for_delete).await
                    });
                }
            }
            return;
        }
        if self.pods.contains_key(&uid) {
            return;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            return;
        }
        tracing::info!(pod = %label, "starting pod");
        let (stop, stop_rx) = watch::channel(None);
        let task = tokio::spawn(pod::run(self.shared.clone(), pod, stop_rx));
        self.pods.insert(uid, Running { stop, task });
    }

    /// Publishes an event about `pod` in the background.
    fn event(&self, pod: &Pod, event: events::PodEvent) {
        let publisher =
            events::PodEvents::new(self.shared.client.clone(), &self.shared.node_name, pod);
        tokio::spawn(async move { publisher.publish(&event).await });
    }

    fn on_gone(&mut self, uid: &str) {
        if let Some(r) = self.pods.get(uid)
            && r.stop.borrow().is_none()
        {
            r.stop.send_replace(Some(Stop::Gone));
        }
    }

    /// Drops the bookkeeping of pods whose task ended after a stop.
    fn forget_finished(&mut self) {
        self.pods
            .retain(|_, r| !(r.task.is_finished() && r.stop.borrow().is_some()));
    }

    async fn stop_all(&mut self) {
        for r in self.pods.values() {
            if r.stop.borrow().is_none() {
                r.stop.send_replace(Some(Stop::Shutdown));
            }
        }
        for (_, r) in self.pods.drain() {
            let _ = r.task.await;
        }
    }
}
