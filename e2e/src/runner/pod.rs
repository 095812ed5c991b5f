//! Running one pod bound to this node: prepare volumes and env, run init containers,
//! supervise the containers, report status, and clean up when the pod goes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::Shared;
use super::backoff::Backoff;
use super::container::{self, Plan, Report, Restart, State, Stop};
use super::error::PrepareError;
use super::events::{self, PodEvents};
use super::kubeconfig;
use super::launch;
use super::objects::Objects;
use super::paths::{PATH_REMAP_ENV, PathRemap};
use super::ports::{PORTS_ANNOTATION, PortMap, free_port};
use super::probe;
use super::status::{self, Conditions, Stage};
use super::volumes::{self, TokenFile, VolumeContext};

/// The pod annotation holding each running container's process id (JSON name -> pid).
pub const PIDS_ANNOTATION: &str = "e2e.sluice.dev/pids";

/// Everything prepared for a pod's containers.
struct Prepared {
    init: Vec<Plan>,
    main: Vec<Plan>,
    ports: PortMap,
    tokens: Vec<TokenFile>,
}

/// The pod's identity and API handle.
struct PodRef {
    api: Api<Pod>,
    name: String,
    uid: String,
    label: String,
}

/// Runs `pod` until it ends for good or `stop` says it must go.
pub async fn run(shared: Arc<Shared>, pod: Pod, mut stop: watch::Receiver<Option<Stop>>) {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let me = PodRef {
        api: Api::namespaced(shared.client.clone(), &namespace),
        label: format!("{namespace}/{name}"),
        name,
        uid,
    };
    let dir = shared.work_dir.join(pod_dir_name(&pod));
    let mut reporter = Reporter::new(&me, &shared.node_name, &pod);
    let stop_kind = run_inner(&shared, &pod, &me, &dir, &mut stop, &mut reporter).await;
    if let Err(err) = std::fs::remove_dir_all(&dir)
        && err.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(pod = %me.label, dir = %dir.display(), %err, "cannot remove the pod directory");
    }
    if let Some(Stop::Delete { .. }) = stop_kind {
        delete_now(&me).await;
    }
}

/// Removes the pod from the API at once (grace 0), as the kubelet does once its
/// containers are gone.
pub async fn delete_now_by_name(api: &Api<Pod>, name: &str, uid: &str) {
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => tracing::info!(pod = name, "pod removed from the API"),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
        Err(err) => tracing::warn!(pod = name, %err, "deleting the pod failed"),
    }
}

async fn delete_now(me: &PodRef) {
    delete_now_by_name(&me.api, &me.name, &me.uid).await;
}

fn pod_dir_name(pod: &Pod) -> String {
    let uid: String = pod
        .metadata
        .uid
        .as_deref()
        .unwrap_or_default()
        .chars()
        .take(8)
        .collect();
    format!(
        "{}_{}_{uid}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Returns the stop that ended the pod, or `None` when its containers ended for good.
async fn run_inner(
    shared: &Arc<Shared>,
    pod: &Pod,
    me: &PodRef,
    dir: &Path,
    stop: &mut watch::Receiver<Option<Stop>>,
    reporter: &mut Reporter,
) -> Option<Stop> {
    let spec = pod.spec.clone().unwrap_or_default();
    let restart = Restart::from_policy(spec.restart_policy.as_deref());
    reporter.init = waiting_reports(
        shared,
        spec.init_containers.as_deref().unwrap_or_default(),
        "PodInitializing",
    );
    reporter.main = waiting_reports(shared, &spec.containers, "ContainerCreating");
    reporter.publish(Stage::Preparing).await;

    let mut backoff = Backoff::new(shared.backoff);
    let prepared = loop {
        match prepare(shared, pod, dir).await {
            Ok(p) => break p,
            Err(err) => {
                tracing::warn!(pod = %me.label, %err, "cannot prepare the pod; will retry");
                for r in reporter.init.iter_mut().chain(reporter.main.iter_mut()) {
                    r.state = State::Waiting {
                        reason: "CreateContainerConfigError".into(),
                        message: Some(err.to_string()),
                    };
                }
                reporter.publish(Stage::Preparing).await;
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay(Duration::ZERO)) => {}
                    s = container::stopped(stop) => return Some(s),
                }
            }
        }
    };
    reporter.ports = prepared.ports.annotation();
    reporter.publish_annotations().await;
    let token_refresh = refresh_interval(&prepared.tokens);

    // Init containers, one after the other, each to a successful end.
    let init_restart = if restart == Restart::Never {
        Restart::Never
    } else {
        Restart::OnFailure
    };
    for (i, mut plan) in prepared.init.into_iter().enumerate() {
        plan.restart = init_restart;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(container::supervise(plan, i, stop.clone(), tx));
        while let Some((idx, r)) = rx.recv().await {
            if let Some(slot) = reporter.init.get_mut(idx) {
                *slot = r;
            }
            reporter.publish(Stage::Initializing).await;
        }
        let last = task.await.ok();
        if let Some(s) = *stop.borrow() {
            return Some(s);
        }
        let ok = matches!(last.as_ref().map(|r| &r.state), Some(State::Terminated(t)) if t.exit_code == 0);
        if !ok {
            reporter.publish(Stage::Initializing).await;
            return None;
        }
    }

    // Main containers.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut tasks = JoinSet::new();
    for (i, mut plan) in prepared.main.into_iter().enumerate() {
        plan.restart = restart;
        tasks.spawn(container::supervise(plan, i, stop.clone(), tx.clone()));
    }
    drop(tx);
    reporter.publish(Stage::Running).await;
    let mut refresh =
        tokio::time::interval_at(tokio::time::Instant::now() + token_refresh, token_refresh);
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some((idx, r)) => {
                    if let Some(slot) = reporter.main.get_mut(idx) {
                        *slot = r;
                    }
                    while let Ok((idx, r)) = rx.try_recv() {
                        if let Some(slot) = reporter.main.get_mut(idx) {
                            *slot = r;
                        }
                    }
                    if stop.borrow().is_none() {
                        reporter.publish(Stage::Running).await;
                    }
                }
                None => break,
            },
            _ = refresh.tick() => {
                for token in &prepared.tokens {
                    if let Err(err) = volumes::issue_token(&shared.client, pod, token).await {
                        tracing::warn!(pod = %me.label, %err, "refreshing the service account token failed");
                    }
                }
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    let s = *stop.borrow();
    if s.is_none() {
        reporter.publish(Stage::Running).await;
    }
    s
}

fn refresh_interval(tokens: &[TokenFile]) -> Duration {
    let seconds = tokens
        .iter()
        .map(|t| t.expiration_seconds)
        .min()
        .unwrap_or(volumes::DEFAULT_TOKEN_SECONDS)
        .max(600);
    Duration::from_secs(u64::try_from(seconds * 4 / 5).unwrap_or(2880))
}

fn waiting_reports(shared: &Shared, containers: &[Container], reason: &str) -> Vec<Report> {
    containers
        .iter()
        .map(|c| {
            let image = c.image.clone().unwrap_or_default();
            let binary = shared
                .images
                .binary(&image)
                .map(Path::to_path_buf)
                .unwrap_or_default();
            Report::waiting(&c.name, &image, binary, reason, None)
        })
        .collect()
}

/// Writes volumes, the pod kubeconfig, allocates ports and builds every container's plan.
async fn prepare(shared: &Shared, pod: &Pod, dir: &Path) -> Result<Prepared, PrepareError> {
    let spec = pod.spec.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(PrepareError::io(dir))?;
    }
    std::fs::create_dir_all(dir).map_err(PrepareError::io(dir))?;
    let mut objects = Objects::new(shared.client.clone(), &namespace);
    let ctx = VolumeContext {
        client: &shared.client,
        node: &shared.node_name,
        ca_pem: shared.ca_pem.as_deref(),
    };
    let written = volumes::write_all(&ctx, &mut objects, pod, &dir.join("volumes")).await?;
    let kubeconfig = match written.tokens.iter().find(|t| t.audience.is_none()) {
        Some(token) => Some(kubeconfig::write_for_pod(
            &dir.join("kubeconfig"),
            &shared.cluster,
            &namespace,
            &token.path,
        )?),
        None => None,
    };
    let init_containers = spec.init_containers.clone().unwrap_or_default();
    let all: Vec<Container> = init_containers
        .iter()
        .chain(spec.containers.iter())
        .cloned()
        .collect();
    let ports = PortMap::allocate(&all, free_port).map_err(PrepareError::Port)?;
    let log = shared.logs_dir.join(format!(
        "{namespace}_{}.log",
        pod.metadata.name.as_deref().unwrap_or_default()
    ));
    let common = Common {
        shared,
        pod,
        dir,
        ports: &ports,
        dirs: &written.dirs,
        kubeconfig: kubeconfig.as_deref(),
        log: &log,
        grace: Duration::from_secs(
            u64::try_from(spec.termination_grace_period_seconds.unwrap_or(30)).unwrap_or(30),
        ),
    };
    let mut init = Vec::new();
    for c in &init_containers {
        init.push(plan_for(&common, &mut objects, c).await?);
    }
    let mut main = Vec::new();
    for c in &spec.containers {
        main.push(plan_for(&common, &mut objects, c).await?);
    }
    Ok(Prepared {
        init,
        main,
        ports,
        tokens: written.tokens,
    })
}

struct Common<'a> {
    shared: &'a Shared,
    pod: &'a Pod,
    dir: &'a Path,
    ports: &'a PortMap,
    dirs: &'a BTreeMap<String, PathBuf>,
    kubeconfig: Option<&'a Path>,
    log: &'a Path,
    grace: Duration,
}

async fn plan_for(
    common: &Common<'_>,
    objects: &mut Objects,
    c: &Container,
) -> Result<Plan, PrepareError> {
    let image = c.image.clone().unwrap_or_default();
    let binary = common
        .shared
        .images
        .binary(&image)
        .ok_or_else(|| PrepareError::UnmappedImage(image.clone()))?
        .to_path_buf();
    let remap = PathRemap::new(c.volume_mounts.iter().flatten().filter_map(|m| {
        let base = common.dirs.get(&m.name)?;
        let path = match m.sub_path.as_deref().and_then(volumes::safe_relative) {
            Some(sub) => base.join(sub),
            None => base.clone(),
        };
        Some((m.mount_path.clone(), path))
    }));
    let mut base = common.shared.base_env.clone();
    // The pod's own home, as an image would have: nothing of the runner's (such as
    // ~/.kube/config) leaks into the pod.
    base.push(("HOME".into(), common.dir.to_string_lossy().into_owned()));
    base.push((
        "HOSTNAME".into(),
        common.pod.metadata.name.clone().unwrap_or_default(),
    ));
    if let Some(kc) = common.kubeconfig {
        base.push(("KUBECONFIG".into(), kc.to_string_lossy().into_owned()));
    }
    base.push((PATH_REMAP_ENV.into(), remap.to_json()));
    base.extend(common.ports.env(&c.name));
    let env = super::env::resolve(objects, common.pod, &common.shared.node_name, c).await?;
    let mut spec = launch::build(c, &binary, base, &env, &remap, common.ports);
    if spec.cwd.is_none() {
        spec.cwd = Some(common.dir.to_path_buf());
    }
    let binary_name = super::images::binary_name(&image).to_string();
    let check_of = |p: &Probe| {
        probe::check_of(p, &c.name, common.ports, &spec).with_image_binary(&binary_name, &binary)
    };
    let probe_of = |p: &Option<Probe>| p.as_ref().map(|p| (check_of(p), probe::timing_of(p)));
    let startup = probe_of(&c.startup_probe);
    let readiness = probe_of(&c.readiness_probe);
    let liveness = c.liveness_probe.as_ref().map(|p| {
        let grace = p
            .termination_grace_period_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs);
        (check_of(p), probe::timing_of(p), grace)
    });
    Ok(Plan {
        name: c.name.clone(),
        image,
        binary,
        startup,
        readiness,
        liveness,
        spec,
        log: common.log.to_path_buf(),
        grace: common.grace,
        restart: Restart::Always,
        backoff: common.shared.backoff,
        pod: format!(
            "{}/{}",
            common.pod.metadata.namespace.as_deref().unwrap_or_default(),
            common.pod.metadata.name.as_deref().unwrap_or_default()
        ),
    })
}

/// Writes the pod's status and annotations when they change.
struct Reporter {
    api: Api<Pod>,
    name: String,
    label: String,
    start_time: Timestamp,
    conditions: Conditions,
    init: Vec<Report>,
    main: Vec<Report>,
    ports: String,
    last_status: Option<serde_json::Value>,
    last_annotations: Option<(String, String)>,
    events: PodEvents,
    evented: Vec<Report>,
}

impl Reporter {
    fn new(me: &PodRef, node: &str, pod: &Pod) -> Self {
        Self {
            api: me.api.clone(),
            name: me.name.clone(),
            label: me.label.clone(),
            start_time: pod
                .status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map_or_else(Timestamp::now, |t| t.0),
            conditions: Conditions::default(),
            init: Vec::new(),
            main: Vec::new(),
            ports: "{}".into(),
            last_status: None,
            last_annotations: None,
            events: PodEvents::new(me.api.clone().into_client(), node, pod),
            evented: Vec::new(),
        }
    }

    async fn publish(&mut self, stage: Stage) {
        self.publish_events().await;
        let input = status::Input {
            start_time: self.start_time,
            stage,
            init: &self.init,
            main: &self.main,
            now: Timestamp::now(),
        };
        let status = status::pod_status(&input, &mut self.conditions);
        let value = match serde_json::to_value(&status) {
            Ok(v) => v,
            Err(err) => {
                tracing::warn!(pod = %self.label, %err, "cannot serialize pod status");
                return;
            }
        };
        if self.last_status.as_ref() != Some(&value) {
            let patch = Patch::Merge(json!({ "status": value }));
            match self
                .api
                .patch_status(&self.name, &PatchParams::default(), &patch)
                .await
            {
                Ok(_) => self.last_status = Some(value),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(err) => tracing::warn!(pod = %self.label, %err, "writing pod status failed"),
            }
        }
        self.publish_annotations().await;
    }

    /// Publishes the events the containers' changes since the last call mean.
    async fn publish_events(&mut self) {
        let current: Vec<Report> = self.init.iter().chain(self.main.iter()).cloned().collect();
        for (i, now) in current.iter().enumerate() {
            let before = self.evented.get(i).cloned().unwrap_or_else(|| {
                Report::waiting(
                    &now.name,
                    &now.image,
                    now.binary.clone(),
                    "ContainerCreating",
                    None,
                )
            });
            for event in events::between(&before, now) {
                self.events.publish(&event).await;
            }
        }
        self.evented = current;
    }

    async fn publish_annotations(&mut self) {
        let pids: BTreeMap<&str, u32> = self
            .main
            .iter()
            .filter_map(|r| r.pid.map(|p| (r.name.as_str(), p)))
            .collect();
        let pids = serde_json::to_string(&pids).unwrap_or_else(|_| "{}".into());
        let current = (self.ports.clone(), pids.clone());
        if self.last_annotations.as_ref() == Some(&current) {
            return;
        }
        let patch = Patch::Merge(json!({
            "metadata": { "annotations": { PORTS_ANNOTATION: self.ports, PIDS_ANNOTATION: pids } }
        }));
        match self
            .api
            .patch(&self.name, &PatchParams::default(), &patch)
            .await
        {
            Ok(_) => self.last_annotations = Some(current),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(err) => tracing::warn!(pod = %self.label, %err, "writing pod annotations failed"),
        }
    }
}
