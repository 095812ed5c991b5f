//! The Topic controller: keeps a Kafka topic as its Topic resource says.
//!
//! One reconcile: fetch (the resource, what Kafka has) -> validate (pure) -> plan (pure diff)
//! -> apply in Kafka -> compute status (pure) -> write status only when it changed.

pub mod conflict;
pub mod finalizer;
pub mod plan;
pub mod status;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use rdkafka::error::RDKafkaErrorCode;
use serde_json::json;
use sluice_crds::topic::DeletionPolicy;
use sluice_crds::{Pipeline, Topic, TopicStatus};
use tracing::debug;

use crate::context::{Context, FIELD_MANAGER};
use crate::controller::Reconcile;
use crate::error::{Error, Result};
use crate::kafka::{AdminError, TopicState};
use conflict::Claim;
use plan::{Desired, Plan, Refusal};
use status::TopicOutcome;

/// The kind, for metrics, logs and events.
pub const KIND: &str = "Topic";

/// How long to wait before looking again after a change Kafka has not shown yet.
const SETTLE: Duration = Duration::from_secs(2);

type Guarded = crate::controller::Guarded<Topic>;

/// The Topic controller's state: the shared context and a cache of every watched Topic.
pub struct TopicController {
    ctx: Arc<Context>,
    store: Store<Guarded>,
    /// The status this process last wrote, by uid: the cache can lag behind our own writes,
    /// and comparing against a stale copy would write again and repeat events.
    written: Mutex<HashMap<String, TopicStatus>>,
}

impl TopicController {
    /// The status `topic` has as far as this process knows.
    fn previous(&self, topic: &Topic) -> Option<TopicStatus> {
        let uid = topic.uid().unwrap_or_default();
        let written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        written.get(&uid).cloned().or_else(|| topic.status.clone())
    }

    fn remember(&self, topic: &Topic, status: TopicStatus) {
        let uid = topic.uid().unwrap_or_default();
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        written.insert(uid, status);
        // Forget Topics that are gone (deleted without a finalizer leave no last reconcile).
        if written.len() > 2 * self.store.state().len() + 16 {
            let live: HashSet<String> = self.store.state().iter().filter_map(|t| t.uid()).collect();
            written.retain(|uid, _| live.contains(uid));
        }
    }

    fn forget(&self, topic: &Topic) {
        let uid = topic.uid().unwrap_or_default();
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        written.remove(&uid);
    }
}

/// Runs the Topic controller until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let api: Api<Guarded> = ctx.watched_api();
    let config = ctx.settings.watcher_config();
    let controller = Controller::new(api.clone(), config.clone());
    let store = controller.store();
    let peers_store = store.clone();
    let state = Arc::new(TopicController {
        ctx,
        store,
        written: Mutex::new(HashMap::new()),
    });
    let controller = controller
        // When a Topic changes or goes away, the others naming the same Kafka topic may
        // change owner: reconcile them too.
        .watches(api, config, move |guard: Guarded| {
            peers(&peers_store, &guard)
        })
        .graceful_shutdown_on(shutdown);
    crate::controller::run(controller, state).await;
}

impl Reconcile for TopicController {
    type Kind = Topic;
    const KIND: &'static str = KIND;

    fn context(&self) -> &Context {
        &self.ctx
    }

    async fn reconcile(&self, topic: &Topic) -> Result<Action> {
        reconcile_topic(topic, self).await
    }
}

/// The other Topics (by reference) that name the same Kafka topic as `guard`.
fn peers(store: &Store<Guarded>, guard: &Guarded) -> Vec<ObjectRef<Guarded>> {
    let Ok(topic) = &guard.0 else {
        return Vec::new();
    };
    let name = topic.kafka_name();
    store
        .state()
        .iter()
        .filter(|other| match &other.0 {
            Ok(t) => t.kafka_name() == name && t.uid() != topic.uid(),
            Err(_) => false,
        })
        .map(|other| ObjectRef::from_obj(other.as_ref()))
        .collect()
}

async fn reconcile_topic(topic: &Topic, state: &TopicController) -> Result<Action> {
    let ctx = &state.ctx;
    let namespace = topic
        .namespace()
        .ok_or_else(|| Error::Malformed("a Topic without a namespace".into()))?;
    let api: Api<Topic> = Api::namespaced(ctx.client.clone(), &namespace);
    let oref = topic.object_ref(&());

    if topic.metadata.deletion_timestamp.is_some() {
        return cleanup(topic, &api, state, &oref).await;
    }
    finalizer::ensure(topic, &api, ctx).await?;

    let desired = match plan::validate(topic) {
        Ok(d) => d,
        Err(message) => {
            let name = topic.kafka_name();
            write_status(
                topic,
                &api,
                state,
                &oref,
                &name,
                None,
                TopicOutcome::InvalidSpec(message),
            )
            .await?;
            return Ok(Action::requeue(ctx.settings.resync));
        }
    };

    if let Some(owner) = other_owner(topic, &state.store, &desired.name) {
        let outcome = TopicOutcome::Conflict {
            owner: owner.key,
            topic: desired.name.clone(),
        };
        write_status(topic, &api, state, &oref, &desired.name, None, outcome).await?;
        return Ok(Action::requeue(ctx.settings.resync));
    }

    let observed = match ctx.kafka.describe(&desired.name).await {
        Ok(o) => o,
        Err(e) => {
            return kafka_failed(topic, &api, state, &oref, &desired.name, "describe", e).await;
        }
    };
    let mut plan = plan::plan(&desired, observed.as_ref());
    if matches!(
        plan,
        Plan::Update {
            partitions: Some(_),
            ..
        }
    ) {
        // Growing: not while a Pipeline keeps state per partition of this topic.
        let pipelines: Api<Pipeline> = Api::namespaced(ctx.client.clone(), &namespace);
        let items = match pipelines.list(&Default::default()).await {
            Ok(list) => list.items,
            // The Pipeline kind is not installed: no Pipeline reads the topic.
            Err(kube::Error::Api(e)) if e.code == 404 => Vec::new(),
            Err(e) => return Err(Error::kube("list the Pipelines reading the topic")(e)),
        };
        let readers = plan::stateful_readers(&desired.name, &items);
        plan = plan.unless_state_splits(&readers);
    }
    debug!(?plan, "planned");

    if let Some(o) = &observed {
        // First sight: never reconciled to this topic, or only seen as a conflict (taking over).
        let first_sight = state.previous(topic).is_none_or(|s| {
            s.topic_name.is_none()
                || status::ready_of(Some(&s)).is_some_and(|(_, r, _)| r == "ResourceConflict")
        });
        if first_sight {
            let note = format!(
                "Adopted existing Kafka topic {} (partitions: {}, replication factor: {})",
                desired.name, o.partitions, o.replication_factor
            );
            ctx.event(&oref, KIND, false, "Adopted", note).await;
        }
    }

    let applied = match apply(&desired, plan, ctx, &oref).await {
        Ok(a) => a,
        Err(e) => return kafka_failed(topic, &api, state, &oref, &desired.name, "change", e).await,
    };

    let (observed, outcome, next) = match applied {
        Applied::Nothing => (observed, TopicOutcome::Ready, ctx.settings.resync),
        Applied::Refused(r) => (observed, TopicOutcome::Refused(r), ctx.settings.resync),
        Applied::Changed => match ctx.kafka.describe(&desired.name).await {
            Ok(Some(now)) if plan::plan(&desired, Some(&now)).in_sync() => {
                (Some(now), TopicOutcome::Ready, ctx.settings.resync)
            }
            Ok(now) => (
                now,
                TopicOutcome::Pending(format!(
                    "waiting for Kafka to show the changes to topic {}",
                    desired.name
                )),
                SETTLE,
            ),
            Err(e) => {
                return kafka_failed(topic, &api, state, &oref, &desired.name, "describe", e).await;
            }
        },
    };
    write_status(
        topic,
        &api,
        state,
        &oref,
        &desired.name,
        observed.as_ref(),
        outcome,
    )
    .await?;
    Ok(Action::requeue(next))
}

/// What applying a plan did.
enum Applied {
    Nothing,
    Changed,
    Refused(Refusal),
}

async fn apply(
    desired: &Desired,
    plan: Plan,
    ctx: &Context,
    oref: &ObjectReference,
) -> Result<Applied, AdminError> {
    let name = &desired.name;
    match plan {
        Plan::Refuse(r) => Ok(Applied::Refused(r)),
        Plan::Create => {
            let created = ctx
                .kafka
                .create(
                    name,
                    desired.partitions,
                    desired.replication_factor,
                    &desired.config,
                )
                .await;
            match created {
                Ok(()) => {
                    let note = format!(
                        "Created Kafka topic {name} (partitions: {}, replication factor: {}, configs: {})",
                        desired.partitions,
                        desired
                            .replication_factor
                            .map_or("broker default".to_string(), |r| r.to_string()),
                        desired.config.len()
                    );
                    ctx.event(oref, KIND, false, "Created", note).await;
                    Ok(Applied::Changed)
                }
                // Someone created it in between: look again.
                Err(AdminError::Rejected {
                    code: RDKafkaErrorCode::TopicAlreadyExists,
                    ..
                }) => Ok(Applied::Changed),
                Err(AdminError::Rejected { code, message }) => Ok(Applied::Refused(refusal(
                    code,
                    format!("Kafka refused to create topic {name}: {message}"),
                ))),
                Err(e) => Err(e),
            }
        }
        Plan::Update { partitions, config } => {
            if partitions.is_none() && config.is_none() {
                return Ok(Applied::Nothing);
            }
            // Check configs before changing anything, so a refusal leaves the topic as it is.
            if let Some(diff) = &config {
                match ctx.kafka.alter_configs(name, diff.ops(), true).await {
                    Ok(()) => {}
                    Err(AdminError::Rejected { message, .. }) => {
                        return Ok(Applied::Refused(Refusal::InvalidConfig(format!(
                            "Kafka refused the config of topic {name}: {message}"
                        ))));
                    }
                    Err(e) => return Err(e),
                }
            }
            if let Some((from, to)) = partitions {
                match ctx.kafka.create_partitions(name, to).await {
                    Ok(()) => {
                        let note = format!(
                            "Increased partitions of Kafka topic {name} from {from} to {to}"
                        );
                        ctx.event(oref, KIND, false, "PartitionsIncreased", note)
                            .await;
                    }
                    Err(AdminError::Rejected { code, message }) => {
                        return Ok(Applied::Refused(refusal(
                            code,
                            format!("Kafka refused to add partitions to topic {name}: {message}"),
                        )));
                    }
                    Err(e) => return Err(e),
                }
            }
            if let Some(diff) = config {
                match ctx.kafka.alter_configs(name, diff.ops(), false).await {
                    Ok(()) => {
                        let note =
                            format!("Changed config of Kafka topic {name}: {}", diff.describe());
                        ctx.event(oref, KIND, false, "ConfigChanged", note).await;
                    }
                    Err(AdminError::Rejected { message, .. }) => {
                        return Ok(Applied::Refused(Refusal::InvalidConfig(format!(
                            "Kafka refused the config of topic {name}: {message}"
                        ))));
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(Applied::Changed)
        }
    }
}

/// The refusal a Kafka error code stands for.
fn refusal(code: RDKafkaErrorCode, message: String) -> Refusal {
    match code {
        RDKafkaErrorCode::InvalidConfig | RDKafkaErrorCode::PolicyViolation => {
            Refusal::InvalidConfig(message)
        }
        _ => Refusal::NotSupported(message),
    }
}

/// Records a failed Kafka call in status and returns the error (retried with backoff).
async fn kafka_failed(
    topic: &Topic,
    api: &Api<Topic>,
    state: &TopicController,
    oref: &ObjectReference,
    name: &str,
    action: &'static str,
    err: AdminError,
) -> Result<Action> {
    let (outcome, error) = match err {
        AdminError::Unavailable(m) => (
            TopicOutcome::KafkaUnavailable(format!("Kafka did not answer: {m}")),
            Error::KafkaUnavailable(m),
        ),
        AdminError::Rejected { message, .. } => (
            TopicOutcome::KafkaError(format!("Kafka could not {action} topic {name}: {message}")),
            Error::KafkaAdmin {
                action,
                topic: name.to_string(),
                message,
            },
        ),
    };
    write_status(topic, api, state, oref, name, None, outcome).await?;
    Err(error)
}

/// The owner of the Kafka topic `name` when it is not `topic`.
fn other_owner(topic: &Topic, store: &Store<Guarded>, name: &str) -> Option<Claim> {
    let me = Claim::of(topic);
    let mut claims: Vec<Claim> = store
        .state()
        .iter()
        .filter_map(|g| g.0.as_ref().ok())
        .filter(|t| t.kafka_name() == name && t.uid() != topic.uid())
        .map(Claim::of)
        .collect();
    claims.push(me.clone());
    conflict::other_owner(&me, &claims).cloned()
}

/// Writes the status when it changed, and an event when the Ready condition moved to a problem.
async fn write_status(
    topic: &Topic,
    api: &Api<Topic>,
    state: &TopicController,
    oref: &ObjectReference,
    name: &str,
    observed: Option<&TopicState>,
    outcome: TopicOutcome,
) -> Result<()> {
    let ctx = &state.ctx;
    let previous = state.previous(topic);
    let new = status::compute(topic, previous.as_ref(), name, observed, &outcome);
    if status::changed(previous.as_ref(), &new) {
        let patch = json!({
            "apiVersion": Topic::api_version(&()),
            "kind": KIND,
            "status": new,
        });
        api.patch_status(
            &topic.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(Error::kube("write status"))?;
        ctx.metrics.kube_write(KIND, "status");
        state.remember(topic, new.clone());
    }
    let before = status::ready_of(previous.as_ref()).map(|(s, r, _)| (s, r));
    let after = status::ready_of(Some(&new)).map(|(s, r, _)| (s, r));
    if before != after {
        // A refusal, conflict or Kafka failure is worth a Warning event, named by its reason.
        if !matches!(outcome, TopicOutcome::Ready | TopicOutcome::Pending(_)) {
            let (_, reason, message) = outcome.condition(name, observed);
            ctx.event(oref, KIND, true, reason, message).await;
        }
    }
    Ok(())
}

/// The resource is going away: delete the Kafka topic when the policy says so, then let go.
async fn cleanup(
    topic: &Topic,
    api: &Api<Topic>,
    state: &TopicController,
    oref: &ObjectReference,
) -> Result<Action> {
    let ctx = &state.ctx;
    if !finalizer::present(topic) {
        return Ok(Action::await_change());
    }
    let name = topic.kafka_name();
    if topic.spec.deletion_policy == DeletionPolicy::Delete && plan::validate(topic).is_ok() {
        match other_owner(topic, &state.store, &name) {
            Some(owner) => {
                let note = format!(
                    "Kafka topic {name} was not deleted: it is managed by Topic {}",
                    owner.key
                );
                ctx.event(oref, KIND, false, "NotDeleted", note).await;
            }
            None => {
                if let Err(e) = ctx.kafka.delete(&name).await {
                    return kafka_failed(topic, api, state, oref, &name, "delete", e).await;
                }
                let note = format!("Deleted Kafka topic {name} (deletionPolicy: Delete)");
                ctx.event(oref, KIND, false, "Deleted", note).await;
            }
        }
    }
    finalizer::remove(topic, api, ctx).await?;
    state.forget(topic);
    Ok(Action::await_change())
}
