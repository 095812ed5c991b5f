//! The Connector controller. A Connector with `spec.kafkaConnect` is kept on its Kafka
//! Connect cluster through the REST API: config (validated first), run state, one-off
//! restarts and offset resets asked by annotation, automatic restarts with backoff, and
//! status read back on every look. A native plugin this release runs becomes a Deployment
//! of the processor image ([`native`]); a native sink's lag is read every autoscaler tick
//! and, with `scaling`, sizes it ([`sink_lag`]). Other native plugins are reported as not
//! run by this release.
//!
//! One reconcile: read the stored config -> write it when it differs (after validation)
//! -> read the status -> ask for the state transition -> one-off actions -> restarts ->
//! topics and offsets -> compute status (pure) -> write it when it changed.

pub mod connect;
pub mod native;
pub mod plan;
pub mod sink_lag;
pub mod status;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use sluice_crds::common::READY;
use sluice_crds::connector::{ConnectorState, KafkaConnectSpec};
use sluice_crds::{Connector, ConnectorStatus};

use crate::context::{Context, FIELD_MANAGER};
use crate::controller::Reconcile;
use crate::error::{Error, Result};
use crate::pipeline::lag::GroupReading;
use crate::pipeline::scaler::Scalers;
use crate::workload::{self, Applied, ProcessorDefaults};
use connect::{ConnectClient, ConnectError, ConnectorHealth, FieldError};
use plan::Ownership;
use status::{ConnectObserved, Found, NativeObserved, SinkProgress, TopicsCheck};

/// The kind, for metrics, logs and events.
pub const KIND: &str = "Connector";
/// The finalizer that deletes the connector from its Kafka Connect cluster.
pub const FINALIZER: &str = "sluice.dev/delete-connect-connector";
/// Annotation: restart the connector and all its tasks once.
pub const RESTART_ANNOTATION: &str = "sluice.dev/restart";
/// Annotation: restart the task with this id once.
pub const RESTART_TASK_ANNOTATION: &str = "sluice.dev/restart-task";
/// Annotation: reset the offsets of a stopped connector once.
pub const RESET_OFFSETS_ANNOTATION: &str = "sluice.dev/reset-offsets";

/// How often a connector that runs as asked is looked at (Kafka Connect has no watch).
const POLL: Duration = Duration::from_secs(30);
/// How soon a connector on its way to the asked state is looked at again.
const SETTLE: Duration = Duration::from_secs(3);

type Guarded = crate::controller::Guarded<Connector>;

/// The Connector controller's state.
pub struct ConnectorController {
    ctx: Arc<Context>,
    /// One HTTP client (connection pool) for every Kafka Connect cluster.
    http: reqwest::Client,
    /// The status this process last wrote, by uid (the watch cache can lag behind it, and
    /// a stale restart count would restart twice).
    written: Mutex<HashMap<String, ConnectorStatus>>,
    /// What every processor Deployment gets (native connectors).
    defaults: ProcessorDefaults,
    /// When each native connector's children were last applied whole, by uid.
    applied_at: Mutex<HashMap<String, std::time::Instant>>,
    /// The autoscaler of each native sink with `scaling`.
    scalers: Scalers,
    /// How often a running native sink's lag is read.
    tick: Duration,
}

/// Runs the Connector controller until `shutdown` resolves; a running native sink's lag
/// is read every `tick`.
pub async fn run(
    ctx: Arc<Context>,
    defaults: ProcessorDefaults,
    tick: Duration,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<Guarded> = ctx.watched_api();
    let deployments: Api<Deployment> = ctx.watched_api();
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=sluice-operator");
    let controller = Controller::new(api, ctx.settings.watcher_config())
        .owns(deployments, owned)
        .graceful_shutdown_on(shutdown);
    let state = Arc::new(ConnectorController {
        ctx,
        http: ConnectClient::shared_http(),
        written: Mutex::new(HashMap::new()),
        defaults,
        applied_at: Mutex::new(HashMap::new()),
        // One reading per tick, less a little for scheduling jitter.
        scalers: Scalers::new(tick.mul_f32(0.8)),
        tick,
    });
    crate::controller::run(controller, state).await;
}

impl Reconcile for ConnectorController {
    type Kind = Connector;
    const KIND: &'static str = KIND;

    fn context(&self) -> &Context {
        &self.ctx
    }

    async fn reconcile(&self, connector: &Connector) -> Result<Action> {
        let namespace = connector
            .namespace()
            .ok_or_else(|| Error::Malformed("a Connector without a namespace".into()))?;
        let api: Api<Connector> = Api::namespaced(self.ctx.client.clone(), &namespace);
        let Some(spec) = &connector.spec.kafka_connect else {
            if native::runs_natively(&connector.spec) {
                return self.reconcile_native(connector, &api).await;
            }
            self.write_status(connector, &api, &Found::NativeNotRunYet)
                .await?;
            return Ok(Action::requeue(self.ctx.settings.resync));
        };
        let one = One {
            controller: self,
            connector,
            spec,
            api,
            client: ConnectClient::new(self.http.clone(), &spec.url),
            name: plan::connect_name(connector),
            oref: connector.object_ref(&()),
        };
        if connector.metadata.deletion_timestamp.is_some() {
            return one.delete().await;
        }
        crate::finalizer::set(connector, &one.api, &self.ctx, KIND, FINALIZER, true).await?;
        one.reconcile().await
    }
}

impl ConnectorController {
    /// A native connector: its ConfigMap, Deployment and metrics Service applied, and its
    /// status read from the Deployment.
    async fn reconcile_native(
        &self,
        connector: &Connector,
        api: &Api<Connector>,
    ) -> Result<Action> {
        let w = native::workload(connector)?;
        // A connector waits at zero replicas until the topics it writes to (a source)
        // or reads (a sink) exist. A sink's lag reading says which are missing too, so
        // Kafka is asked once.
        let (topics, reading) = self.look_at_topics(connector).await;
        let deployments: Api<Deployment> = Api::namespaced(self.ctx.client.clone(), &w.namespace);
        let read = || async {
            deployments
                .get_opt(&w.child_name())
                .await
                .map_err(Error::kube("read the connector Deployment"))
        };
        let mut existing = read().await?;
        let current = existing
            .as_ref()
            .and_then(|d| d.spec.as_ref())
            .and_then(|s| s.replicas);
        let planned = native::planned_replicas(connector, &topics, current);
        let (replicas, progress, decision) =
            self.size_sink(connector, reading, planned, existing.as_ref());
        let children = workload::children(
            &w,
            native::config_text(connector)?,
            &self.defaults,
            replicas,
        )?;
        let applied = workload::apply(
            &self.ctx,
            &w,
            &children,
            existing.as_ref(),
            self.resync_due(connector),
        )
        .await?;
        let found = match applied {
            Applied::Conflict(message) => Found::NativeConflict(message),
            Applied::Written => {
                let oref = connector.object_ref(&());
                match &decision {
                    Some(d) => {
                        let e = crate::pipeline::events::scaled(d);
                        self.ctx
                            .event_action(&oref, KIND, e.warning, e.reason, &e.action, e.note)
                            .await;
                    }
                    None => {
                        self.ctx
                            .event(
                                &oref,
                                KIND,
                                false,
                                "Deployed",
                                format!(
                                    "applied Deployment {} ({replicas} replica(s), state {:?})",
                                    w.child_name(),
                                    connector.spec.state
                                ),
                            )
                            .await;
                    }
                }
                // What was just written has not rolled out yet.
                existing = read().await?;
                Found::Native(
                    self.observe_native(&w, existing.as_ref(), replicas, topics, progress)
                        .await?,
                )
            }
            Applied::Unchanged | Applied::Reapplied => Found::Native(
                self.observe_native(&w, existing.as_ref(), replicas, topics, progress)
                    .await?,
            ),
        };
        let written = self.write_status(connector, api, &found).await?;
        let ready = sluice_crds::common::is_true(&written.conditions, READY);
        Ok(Action::requeue(if !ready {
            SETTLE
        } else if sink_lag::is_native_sink(connector)
            && connector.spec.state != ConnectorState::Stopped
        {
            self.tick
        } else {
            self.ctx.settings.resync
        }))
    }

    /// A native connector as its Deployment shows it; while replicas it asks for are not
    /// available, its pods are read for why.
    async fn observe_native(
        &self,
        w: &workload::Workload,
        deployment: Option<&Deployment>,
        replicas: i32,
        topics: TopicsCheck,
        progress: Option<SinkProgress>,
    ) -> Result<NativeObserved> {
        let rollout = native::rollout(deployment, replicas);
        let trouble = if rollout.available < rollout.desired {
            let selector = workload::label_selector(&w.selector_labels());
            let pods: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &w.namespace);
            let list = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(Error::kube("list the connector's pods"))?;
            crate::pods::trouble(&list.items)
        } else {
            None
        };
        Ok(NativeObserved {
            rollout,
            topics,
            progress,
            trouble,
        })
    }

    /// A native sink's replicas and progress: its group's lag read from Kafka, and with
    /// `scaling` the autoscaler's decision. Other connectors, and a sink whose lag cannot
    /// be read this time, run `planned` replicas (a sink with `scaling` keeps its size).
    /// Whether the topics of `connector` exist, and for a native sink whose topics all
    /// exist its group's offsets over them.
    async fn look_at_topics(&self, connector: &Connector) -> (TopicsCheck, Option<GroupReading>) {
        let (client, topics, timeout) = (
            self.ctx.kafka.client(),
            connector.spec.topics.clone(),
            self.ctx.kafka.timeout(),
        );
        if !sink_lag::is_native_sink(connector) {
            let check = match crate::pipeline::lag::missing(client, topics, timeout).await {
                Ok(missing) if missing.is_empty() => TopicsCheck::Present,
                Ok(missing) => TopicsCheck::Missing(missing),
                Err(err) => TopicsCheck::Unknown(err.to_string()),
            };
            return (check, None);
        }
        match crate::pipeline::lag::read(client, sink_lag::group(connector), topics, timeout).await
        {
            Ok(r) if r.missing_topics.is_empty() => (TopicsCheck::Present, Some(r)),
            Ok(r) => (TopicsCheck::Missing(r.missing_topics), None),
            Err(err) => (TopicsCheck::Unknown(err.to_string()), None),
        }
    }

    /// A native sink's replicas and progress from its group's `reading`: with `scaling`
    /// the autoscaler's decision. Other connectors, and a sink whose topics are not all
    /// there, run `planned` replicas.
    fn size_sink(
        &self,
        connector: &Connector,
        reading: Option<GroupReading>,
        planned: i32,
        existing: Option<&Deployment>,
    ) -> (
        i32,
        Option<SinkProgress>,
        Option<sluice_crds::pipeline::ScaleDecision>,
    ) {
        let Some(reading) = reading else {
            return (planned, None, None);
        };
        let (current, ready) = existing.map_or((0, 0), crate::pipeline::sampler::replicas_of);
        let size = sink_lag::size(&self.scalers, connector, &reading, planned, current, ready);
        (size.replicas, Some(size.progress), size.decision)
    }

    /// Whether the native connector's children are due to be applied whole again.
    fn resync_due(&self, connector: &Connector) -> bool {
        let now = std::time::Instant::now();
        let uid = connector.uid().unwrap_or_default();
        let mut at = self.applied_at.lock().unwrap_or_else(|p| p.into_inner());
        let due = at
            .get(&uid)
            .is_none_or(|last| now.duration_since(*last) >= self.ctx.settings.resync);
        if due {
            // Connectors deleted since (they keep no finalizer) drop out here.
            let keep = self.ctx.settings.resync.saturating_mul(4);
            at.retain(|_, last| now.duration_since(*last) < keep);
            at.insert(uid, now);
        }
        due
    }

    fn previous(&self, connector: &Connector) -> Option<ConnectorStatus> {
        let uid = connector.uid().unwrap_or_default();
        let written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        written
            .get(&uid)
            .cloned()
            .or_else(|| connector.status.clone())
    }

    /// Writes the status `found` gives when it changed; a Warning event when Ready turns
    /// to a new problem. Returns the status.
    async fn write_status(
        &self,
        connector: &Connector,
        api: &Api<Connector>,
        found: &Found,
    ) -> Result<ConnectorStatus> {
        let previous = self.previous(connector);
        let new = status::compute(connector, previous.as_ref(), found);
        let unchanged = previous.as_ref().is_some_and(|p| {
            let (mut a, mut b) = (p.clone(), new.clone());
            a.conditions.clear();
            b.conditions.clear();
            a == b && sluice_crds::common::same_conditions(&p.conditions, &new.conditions)
        });
        if !unchanged {
            let patch = json!({
                "apiVersion": Connector::api_version(&()),
                "kind": KIND,
                "status": new,
            });
            api.patch_status(
                &connector.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(Error::kube("write status"))?;
            self.ctx.metrics.kube_write(KIND, "status");
            let uid = connector.uid().unwrap_or_default();
            let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
            written.insert(uid, new.clone());
        }
        let ready = |s: Option<&ConnectorStatus>| {
            s.and_then(|s| s.conditions.iter().find(|c| c.type_ == READY))
                .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
        };
        if let Some((state, reason, message)) = ready(Some(&new))
            && state == "False"
            && ready(previous.as_ref()).map(|(s, r, _)| (s, r)) != Some((state, reason.clone()))
            && !matches!(reason.as_str(), "Starting" | "Transitioning")
        {
            let oref = connector.object_ref(&());
            self.ctx.event(&oref, KIND, true, &reason, message).await;
        }
        Ok(new)
    }

    fn forget(&self, connector: &Connector) {
        let uid = connector.uid().unwrap_or_default();
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        written.remove(&uid);
    }
}

/// One reconcile of one Kafka Connect connector.
struct One<'a> {
    controller: &'a ConnectorController,
    connector: &'a Connector,
    spec: &'a KafkaConnectSpec,
    api: Api<Connector>,
    client: ConnectClient,
    /// The connector's name on the cluster.
    name: String,
    oref: ObjectReference,
}

impl One<'_> {
    fn ctx(&self) -> &Context {
        &self.controller.ctx
    }

    async fn event(&self, warning: bool, reason: &str, note: String) {
        self.ctx()
            .event(&self.oref, KIND, warning, reason, note)
            .await;
    }

    async fn reconcile(&self) -> Result<Action> {
        match self.reconcile_connect().await {
            Ok(action) => Ok(action),
            Err(Failure::Kube(err)) => Err(err),
            Err(Failure::Connect(ConnectError::Refused { message, .. })) => {
                let found = Found::InvalidConfig(vec![FieldError {
                    field: String::new(),
                    message,
                }]);
                self.controller
                    .write_status(self.connector, &self.api, &found)
                    .await?;
                Ok(Action::requeue(POLL))
            }
            Err(Failure::Connect(err @ ConnectError::Busy { .. })) => Err(Error::Connect(err)),
            Err(Failure::Connect(err)) => {
                let found = Found::Unavailable(err.to_string());
                self.controller
                    .write_status(self.connector, &self.api, &found)
                    .await?;
                Err(Error::Connect(err))
            }
        }
    }

    async fn reconcile_connect(&self) -> Result<Action, Failure> {
        let uid = self.connector.uid().unwrap_or_default();
        let stored = self.client.config(&self.name).await?;
        let desired = plan::desired_config(self.connector, self.spec);
        match plan::ownership(stored.as_ref(), &uid) {
            Ownership::NotOurs => {
                let found = Found::NotOurs(self.name.clone());
                self.controller
                    .write_status(self.connector, &self.api, &found)
                    .await?;
                return Ok(Action::requeue(POLL));
            }
            Ownership::Absent | Ownership::Ours if stored.as_ref() != Some(&desired) => {
                let errors = self.client.validate(&self.spec.class, &desired).await?;
                if !errors.is_empty() {
                    let found = Found::InvalidConfig(errors);
                    self.controller
                        .write_status(self.connector, &self.api, &found)
                        .await?;
                    return Ok(Action::requeue(POLL));
                }
                self.client.put_config(&self.name, &desired).await?;
                let (reason, verb) = if stored.is_none() {
                    ("Created", "created")
                } else {
                    ("Updated", "updated")
                };
                self.event(
                    false,
                    reason,
                    format!(
                        "Kafka Connect connector {} {verb} at {}",
                        self.name, self.spec.url
                    ),
                )
                .await;
            }
            Ownership::Absent | Ownership::Ours => {}
        }

        let mut health = self.client.status(&self.name).await?;
        if let Some(h) = &health
            && let Some(verb) = plan::transition(self.connector.spec.state, h)
        {
            self.client.transition(&self.name, verb).await?;
            self.event(
                false,
                "StateChanged",
                format!(
                    "asked Kafka Connect to {verb} {} (it was {})",
                    self.name, h.connector.state
                ),
            )
            .await;
        }
        if self.one_off_actions(health.as_ref()).await? {
            health = self.client.status(&self.name).await?;
        }

        let decision = self.restarts(health.as_ref()).await?;
        // Topics and offsets are extras: a cluster that cannot give them keeps the last ones
        // in status (`None`).
        let topics = self.client.topics(&self.name).await.ok();
        let offsets = self.client.offsets(&self.name).await.ok();
        let found = Found::ConnectObserved(ConnectObserved {
            health,
            topics,
            offsets,
            restart: decision.clone(),
        });
        let written = self
            .controller
            .write_status(self.connector, &self.api, &found)
            .await?;
        let ready = sluice_crds::common::is_true(&written.conditions, READY);
        let mut wait = if ready {
            POLL.min(self.ctx().settings.resync)
        } else {
            SETTLE
        };
        if let Some(wake) = decision.wake_in {
            wait = wait.min(wake.max(Duration::from_secs(1)));
        }
        Ok(Action::requeue(wait))
    }

    /// Restarts as the policy says; restarts only while the connector is asked to run.
    async fn restarts(
        &self,
        health: Option<&ConnectorHealth>,
    ) -> Result<plan::RestartDecision, Failure> {
        let wanted = self.connector.spec.state;
        let previous = self.controller.previous(self.connector);
        let spec_changed = previous
            .as_ref()
            .is_some_and(|p| p.observed_generation != self.connector.metadata.generation);
        let policy = self
            .connector
            .spec
            .auto_restart
            .as_ref()
            .filter(|_| wanted == ConnectorState::Running);
        let decision = plan::restart_decision(
            policy,
            previous.as_ref().and_then(|p| p.restarts.as_ref()),
            spec_changed,
            health.is_some_and(|h| plan::as_asked(wanted, h)),
            health.is_some_and(plan::failed),
            Timestamp::now(),
        );
        if decision.restart_now {
            self.client.restart(&self.name, true).await?;
            let count = decision.status.as_ref().map_or(0, |s| s.count);
            let limit = policy
                .and_then(|p| p.max_restarts)
                .map(|m| format!(" of at most {m}"))
                .unwrap_or_default();
            self.event(
                true,
                "Restarted",
                format!(
                    "restarted the failed connector or tasks of {} (restart {count}{limit})",
                    self.name
                ),
            )
            .await;
        }
        Ok(decision)
    }

    /// The one-off actions asked by annotation; each annotation is removed once handled.
    /// Returns true when one ran (the status is read again).
    async fn one_off_actions(&self, health: Option<&ConnectorHealth>) -> Result<bool, Failure> {
        let annotations = self.connector.annotations();
        let mut handled = Vec::new();
        if annotations.get(RESTART_ANNOTATION).map(String::as_str) == Some("true") {
            self.client.restart(&self.name, false).await?;
            self.event(
                false,
                "Restarted",
                format!(
                    "restarted {} and all its tasks ({RESTART_ANNOTATION})",
                    self.name
                ),
            )
            .await;
            handled.push(RESTART_ANNOTATION);
        } else if annotations.contains_key(RESTART_ANNOTATION) {
            handled.push(RESTART_ANNOTATION);
        }
        if let Some(task) = annotations.get(RESTART_TASK_ANNOTATION) {
            match task.trim().parse::<i32>() {
                Ok(id) if health.is_some_and(|h| h.tasks.iter().any(|t| t.id == id)) => {
                    self.client.restart_task(&self.name, id).await?;
                    self.event(
                        false,
                        "TaskRestarted",
                        format!(
                            "restarted task {id} of {} ({RESTART_TASK_ANNOTATION})",
                            self.name
                        ),
                    )
                    .await;
                }
                _ => {
                    self.event(
                        true,
                        "NoSuchTask",
                        format!(
                            "{RESTART_TASK_ANNOTATION}: {task:?} is not a task of {}; nothing restarted",
                            self.name
                        ),
                    )
                    .await;
                }
            }
            handled.push(RESTART_TASK_ANNOTATION);
        }
        if let Some(value) = annotations.get(RESET_OFFSETS_ANNOTATION) {
            let state = health.map_or("absent", |h| h.connector.state.as_str());
            if value == "true" && state == "STOPPED" {
                self.client.reset_offsets(&self.name).await?;
                self.event(
                    false,
                    "OffsetsReset",
                    format!(
                        "reset the offsets of {} ({RESET_OFFSETS_ANNOTATION})",
                        self.name
                    ),
                )
                .await;
            } else if value == "true" {
                self.event(
                    true,
                    "OffsetsNotReset",
                    format!(
                        "{RESET_OFFSETS_ANNOTATION} needs the connector stopped (spec.state: stopped); it is {state}, so the offsets were left alone"
                    ),
                )
                .await;
            }
            handled.push(RESET_OFFSETS_ANNOTATION);
        }
        if handled.is_empty() {
            return Ok(false);
        }
        let removed: serde_json::Map<String, serde_json::Value> = handled
            .iter()
            .map(|k| (k.to_string(), serde_json::Value::Null))
            .collect();
        let patch = json!({"metadata": {"annotations": removed}});
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PatchParams::default()
        };
        self.api
            .patch(&self.connector.name_any(), &params, &Patch::Merge(&patch))
            .await
            .map_err(Error::kube("remove a handled annotation"))?;
        self.ctx().metrics.kube_write(KIND, "annotations");
        Ok(true)
    }

    /// The resource is going away: delete its connector (only if it is ours), then let go.
    async fn delete(&self) -> Result<Action> {
        if !crate::finalizer::present(self.connector, FINALIZER) {
            return Ok(Action::await_change());
        }
        let uid = self.connector.uid().unwrap_or_default();
        let stored = match self.client.config(&self.name).await {
            Ok(stored) => stored,
            Err(err) => return self.unavailable_at_deletion(err).await,
        };
        match plan::ownership(stored.as_ref(), &uid) {
            Ownership::Ours => {
                if let Err(err) = self.client.delete(&self.name).await {
                    return self.unavailable_at_deletion(err).await;
                }
                self.event(
                    false,
                    "Deleted",
                    format!(
                        "deleted Kafka Connect connector {} at {}",
                        self.name, self.spec.url
                    ),
                )
                .await;
            }
            Ownership::NotOurs => {
                self.event(
                    false,
                    "NotDeleted",
                    format!("Kafka Connect connector {} was left alone: no Connector resource created it", self.name),
                )
                .await;
            }
            Ownership::Absent => {}
        }
        crate::finalizer::set(
            self.connector,
            &self.api,
            self.ctx(),
            KIND,
            FINALIZER,
            false,
        )
        .await?;
        self.controller.forget(self.connector);
        Ok(Action::await_change())
    }

    async fn unavailable_at_deletion(&self, err: ConnectError) -> Result<Action> {
        self.controller
            .write_status(self.connector, &self.api, &Found::Unavailable(format!(
                "cannot delete the connector yet: {err} (the resource stays until Kafka Connect answers; remove the finalizer {FINALIZER} to let it go without deleting the connector)"
            )))
            .await?;
        Err(Error::Connect(err))
    }
}

/// What stopped a reconcile: the API server, or Kafka Connect.
enum Failure {
    Kube(Error),
    Connect(ConnectError),
}

impl From<ConnectError> for Failure {
    fn from(err: ConnectError) -> Self {
        Failure::Connect(err)
    }
}

impl From<Error> for Failure {
    fn from(err: Error) -> Self {
        Failure::Kube(err)
    }
}
