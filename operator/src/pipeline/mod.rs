//! The Pipeline controller: renders each Pipeline into its processor config, Deployment
//! and metrics Service, sizes it on consumer lag, and writes status users can trust.
//!
//! One reconcile (on a change of the spec or a child, when the sampler sees a topic come
//! or go, and at resyncs): fetch (the Pipeline, Kafka offsets, what exists) -> validate
//! (pure, once per generation) -> decide replicas (pure) -> render (pure) -> apply only
//! what differs -> compute status (pure) -> write status only when it changed. The
//! autoscaler's 5-second sampling runs apart from it ([`sampler`]).

pub mod events;
pub mod lag;
pub mod offsets;
pub mod render;
pub mod sample;
pub mod sampler;
pub mod scaler;
pub mod status;
pub mod topics;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;
use sluice_crds::{Pipeline, Topic};

use crate::Error;
use crate::autoscaler::SettingsError;
use crate::context::{Context, FIELD_MANAGER};
use crate::controller::Reconcile;
use crate::workload::{self, Applied};
use events::Deployed;
use render::ProcessorDefaults;
use sample::{Sample, TopicFacts};
use scaler::{Scaled, Scalers};

/// The kind, for metrics, logs and events.
pub const KIND: &str = "Pipeline";

/// Pipeline controller settings.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// What every processor Deployment gets.
    pub defaults: ProcessorDefaults,
    /// How often each pipeline's lag is read and its size decided.
    pub tick: Duration,
}

impl PipelineSettings {
    /// From the operator's flags.
    pub fn from_args(args: &crate::Args) -> crate::Result<Self> {
        let resources = json_setting(
            args.processor_resources.as_deref(),
            "SLUICE_PROCESSOR_RESOURCES",
            "resource requirements",
        )?;
        // The chart's empty defaults (`{}`, `[]`) set nothing.
        let node_selector = json_setting::<std::collections::BTreeMap<String, String>>(
            args.processor_node_selector.as_deref(),
            "SLUICE_PROCESSOR_NODE_SELECTOR",
            "a map of node labels",
        )?
        .filter(|m| !m.is_empty());
        let tolerations = json_setting::<Vec<k8s_openapi::api::core::v1::Toleration>>(
            args.processor_tolerations.as_deref(),
            "SLUICE_PROCESSOR_TOLERATIONS",
            "a list of tolerations",
        )?
        .filter(|t| !t.is_empty());
        Ok(Self {
            defaults: ProcessorDefaults {
                image: args.processor_image.clone(),
                allowed_images: args
                    .processor_allowed_images
                    .iter()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect(),
                resources,
                node_selector,
                tolerations,
                kafka_bootstrap: args.kafka_bootstrap.clone(),
                kafka_client_properties: crate::kafka_properties_text(args)?,
            },
            tick: args.autoscale_interval,
        })
    }
}

/// A setting given as JSON (empty: unset), or an error naming it and what it should be.
fn json_setting<T: serde::de::DeserializeOwned>(
    text: Option<&str>,
    name: &str,
    what: &str,
) -> crate::Result<Option<T>> {
    text.filter(|s| !s.trim().is_empty() && s.trim() != "null")
        .map(serde_json::from_str)
        .transpose()
        .map_err(|e| crate::Error::Setting(format!("{name} is not {what}: {e}")))
}

/// Problems that make the spec unrunnable: scaling settings the autoscaler cannot use,
/// then [`sluice_engine::check::check`]'s (every expression that does not compile, with
/// its place and field path, or else what the engine refuses); empty when it runs.
pub fn validate(p: &Pipeline) -> Vec<String> {
    // Scaling settings the autoscaler cannot use (a lag target of zero, a commit interval
    // that is no duration) are refused here, not dropped at the first tick.
    let scaling = crate::autoscaler::ScalingSettings::from_spec(
        &p.spec.scaling,
        p.spec.start_from,
        &p.spec.commit_interval,
    )
    .err()
    // The engine reports a commit interval that is no duration itself.
    .filter(|e| {
        !matches!(
            e,
            SettingsError::Duration {
                field: "commitInterval",
                ..
            }
        )
    })
    .map(|e| e.to_string());
    let problems = sluice_engine::check::check(&p.name_any(), &p.spec);
    scaling
        .into_iter()
        .chain(problems.iter().map(ToString::to_string))
        .collect()
}

/// A spec's problems, and the generation they were found for.
type Validated = (Option<i64>, Vec<String>);

/// State shared by every Pipeline reconcile.
pub struct PipelineController {
    ctx: Arc<Context>,
    settings: PipelineSettings,
    scalers: Scalers,
    /// `validate`'s answer per pipeline and generation: the spec is compiled once per
    /// change, not at every tick.
    validated: std::sync::Mutex<std::collections::HashMap<String, Validated>>,
    /// When each pipeline's children were last applied whole.
    applied_at: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// What reconcile last acted on per pipeline, for the sampler to notice a change.
    facts: Mutex<HashMap<String, TopicFacts>>,
    /// Every Topic resource in the watched scope.
    topics: Store<crate::controller::Guarded<Topic>>,
}

/// Runs the Pipeline controller, its autoscaler's sampler and the watches they read until
/// `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    settings: PipelineSettings,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let shutdown = shutdown.boxed().shared();
    let pipelines: Api<crate::controller::Guarded<Pipeline>> = ctx.watched_api();
    let deployments: Api<Deployment> = ctx.watched_api();
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=sluice-operator");
    let (topics, topic_writer) = reflector::store();
    let topic_watch = watcher(ctx.watched_api(), watcher::Config::default())
        .default_backoff()
        .reflect(topic_writer);
    let (deployment_store, deployment_writer) = reflector::store();
    let deployment_watch = watcher(deployments.clone(), owned.clone())
        .default_backoff()
        .reflect(deployment_writer);
    let watches = futures::stream::select(
        topic_watch.map(|_| ()).boxed(),
        deployment_watch.map(|_| ()).boxed(),
    )
    .for_each(|()| futures::future::ready(()));
    let state = Arc::new(PipelineController {
        ctx,
        // One reading per tick, less a little for scheduling jitter.
        scalers: Scalers::new(settings.tick.mul_f32(0.8)),
        validated: Default::default(),
        applied_at: Default::default(),
        facts: Default::default(),
        topics,
        settings,
    });
    let (reconcile, requests) = futures::channel::mpsc::unbounded();
    let selector = state.ctx.settings.watcher_config();
    let controller = Controller::new(pipelines, selector)
        .owns(deployments, owned)
        .reconcile_on(requests)
        .graceful_shutdown_on(shutdown.clone());
    let sampler = sampler::Sampler {
        state: state.clone(),
        pipelines: controller.store(),
        deployments: deployment_store,
        reconcile,
    };
    let background = async {
        tokio::select! {
            _ = watches => {}
            _ = sampler.run(shutdown.clone()) => {}
            _ = shutdown.clone() => {}
        }
    };
    tokio::join!(crate::controller::run(controller, state), background);
}

impl Reconcile for PipelineController {
    type Kind = Pipeline;
    const KIND: &'static str = KIND;

    fn context(&self) -> &Context {
        &self.ctx
    }

    async fn reconcile(&self, p: &Pipeline) -> Result<Action, Error> {
        reconcile_pipeline(p, self).await
    }
}

impl PipelineController {
    /// Whether `p`'s children are due to be applied whole again (a resync has passed
    /// since the last time, or they never were); the answer `true` starts a new period.
    fn resync_due(&self, p: &Pipeline) -> bool {
        let now = std::time::Instant::now();
        let Ok(mut at) = self.applied_at.lock() else {
            return true;
        };
        let due = at
            .get(&key_of(p))
            .is_none_or(|last| now.duration_since(*last) >= self.ctx.settings.resync);
        if due {
            at.insert(key_of(p), now);
        }
        due
    }

    /// Remembers what `sample` says reconcile should act on for pipeline `key`; answers
    /// whether that differs from what was remembered before (or nothing was).
    fn facts_changed(&self, key: &str, sample: &Sample) -> bool {
        let facts = sample.facts();
        let Ok(mut map) = self.facts.lock() else {
            return true;
        };
        map.insert(key.to_string(), facts.clone()).as_ref() != Some(&facts)
    }

    /// Whether `p`'s spec may run (valid, with an allowed image).
    fn runnable(&self, p: &Pipeline) -> bool {
        self.validate(p).is_empty() && self.settings.defaults.image_refusal(&p.spec).is_none()
    }

    /// Forgets a deleted pipeline.
    fn forget(&self, key: &str) {
        self.scalers.forget(key);
        if let Ok(mut v) = self.validated.lock() {
            v.remove(key);
        }
        if let Ok(mut a) = self.applied_at.lock() {
            a.remove(key);
        }
        if let Ok(mut f) = self.facts.lock() {
            f.remove(key);
        }
    }

    /// Forgets every pipeline whose key is not in `live`.
    fn forget_all_but(&self, live: &HashSet<String>) {
        self.scalers.retain(live);
        if let Ok(mut v) = self.validated.lock() {
            v.retain(|k, _| live.contains(k));
        }
        if let Ok(mut a) = self.applied_at.lock() {
            a.retain(|k, _| live.contains(k));
        }
        if let Ok(mut f) = self.facts.lock() {
            f.retain(|k, _| live.contains(k));
        }
    }

    /// [`validate`], remembered until the spec's generation changes.
    fn validate(&self, p: &Pipeline) -> Vec<String> {
        let key = key_of(p);
        let generation = p.metadata.generation;
        if let Ok(cache) = self.validated.lock()
            && let Some((g, errors)) = cache.get(&key)
            && *g == generation
        {
            return errors.clone();
        }
        let errors = validate(p);
        if let Ok(mut cache) = self.validated.lock() {
            cache.insert(key, (generation, errors.clone()));
        }
        errors
    }
}

fn key_of(p: &Pipeline) -> String {
    format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any())
}

async fn reconcile_pipeline(p: &Pipeline, state: &PipelineController) -> Result<Action, Error> {
    let ctx = &state.ctx;
    if p.meta().deletion_timestamp.is_some() {
        state.forget(&key_of(p));
        return Ok(Action::await_change());
    }
    let ns = p.namespace().unwrap_or_default();
    let name = p.name_any();
    let oref = p.object_ref(&());
    let previous = p.status.clone().unwrap_or_default();
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = deployments
        .get_opt(&render::processor_name(&name))
        .await
        .map_err(Error::kube("read the processor Deployment"))?;

    // Validate, then read Kafka.
    let mut spec_errors = state.validate(p);
    spec_errors.extend(state.settings.defaults.image_refusal(&p.spec));
    let mut observed = status::Observed {
        spec_errors,
        deployment: existing.clone(),
        ..status::Observed::default()
    };
    let sample = Sample::take(ctx, p).await;
    state.facts_changed(&key_of(p), &sample);
    observed.kafka_error = sample.kafka_error.clone();
    observed.missing_inputs = sample.missing_inputs().to_vec();
    observed.missing_others = sample.missing_others.clone();
    let reading = sample.reading.as_ref();
    let (current, ready) = existing.as_ref().map_or((0, 0), sampler::replicas_of);
    let deployable =
        observed.spec_errors.is_empty() && observed.missing_inputs.is_empty() && reading.is_some();

    let mut decision = None;
    let deployed = if deployable {
        if let Some(reading) = reading {
            let outcome =
                state
                    .scalers
                    .decide(&key_of(p), Scaled::pipeline(p), reading, current, ready);
            observed.desired_replicas = outcome.replicas;
            observed.lag = outcome.lag;
            observed.max_partition_lag = outcome.max_partition_lag;
            observed.records_per_second = outcome.records_per_second;
            decision = outcome.decision;
            observed.last_scale = outcome.last_scale;
        }
        topics::ensure(ctx, &state.topics, p).await?;
        let applied =
            apply_children(p, state, existing.as_ref(), observed.desired_replicas).await?;
        match applied {
            Applied::Conflict(message) => {
                observed.conflict = Some(message.clone());
                Deployed::Conflict(message)
            }
            Applied::Written => {
                observed.deployment = deployments
                    .get_opt(&render::processor_name(&name))
                    .await
                    .map_err(Error::kube("read the processor Deployment"))?;
                Deployed::Written(observed.desired_replicas)
            }
            Applied::Unchanged | Applied::Reapplied => Deployed::Unchanged,
        }
    } else {
        observed.desired_replicas = current;
        Deployed::Refused
    };

    let new_status = status::compute(
        p.metadata.generation,
        render::selector_string(&name),
        &observed,
        &previous,
    );
    if status::changed(&previous, &new_status) {
        // The lag figures are the sampler's, under its own field manager.
        let fields = status::reconciled_fields(&new_status);
        apply_status(ctx, p, FIELD_MANAGER, fields, "status").await?;
    }
    for e in events::events(
        p.metadata.generation,
        &render::processor_name(&name),
        &previous,
        &observed,
        decision.as_ref(),
        &deployed,
    ) {
        ctx.event_action(&oref, KIND, e.warning, e.reason, &e.action, e.note)
            .await;
    }
    Ok(Action::requeue(ctx.settings.resync))
}

/// Applies the ConfigMap, Deployment, Service (and Kafka client Secret) with `replicas`
/// when what is rendered changed or a resync is due ([`workload::apply`]).
async fn apply_children(
    p: &Pipeline,
    state: &PipelineController,
    existing: Option<&Deployment>,
    replicas: i32,
) -> Result<Applied, Error> {
    let w = render::workload(p)?;
    let children = render::children(p, &state.settings.defaults, replicas)?;
    workload::apply(&state.ctx, &w, &children, existing, state.resync_due(p)).await
}

/// Applies `fields` of a Pipeline's status as `manager` (reconcile's fields and the
/// sampler's figures each have their own), counting the write as `what`.
async fn apply_status(
    ctx: &Context,
    p: &Pipeline,
    manager: &str,
    fields: serde_json::Value,
    what: &'static str,
) -> Result<(), Error> {
    let api: Api<Pipeline> =
        Api::namespaced(ctx.client.clone(), &p.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": KIND,
        "status": fields,
    });
    api.patch_status(
        &p.name_any(),
        &PatchParams::apply(manager).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::kube(format!("write Pipeline status ({what})")))?;
    ctx.metrics.kube_write(KIND, what);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(steps: serde_json::Value) -> Pipeline {
        serde_json::from_value(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "Pipeline",
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"inputs": ["orders"], "steps": steps, "outputs": [{"topic": "out"}]}
        }))
        .unwrap()
    }

    #[test]
    fn processor_placement_comes_from_json_settings_and_empty_ones_set_nothing() {
        use clap::Parser;
        let args = crate::Args::parse_from([
            "sluice-operator",
            "--kafka-bootstrap",
            "k:9092",
            "--processor-node-selector",
            r#"{"sluice.dev/node":"kubelet"}"#,
            "--processor-tolerations",
            r#"[{"key":"sluice.dev/node","value":"kubelet","effect":"NoSchedule"}]"#,
        ]);
        let d = PipelineSettings::from_args(&args).unwrap().defaults;
        assert_eq!(d.node_selector.unwrap()["sluice.dev/node"], "kubelet");
        assert_eq!(
            d.tolerations.unwrap()[0].effect.as_deref(),
            Some("NoSchedule")
        );
        let empty = crate::Args::parse_from([
            "sluice-operator",
            "--kafka-bootstrap",
            "k:9092",
            "--processor-node-selector",
            "{}",
            "--processor-tolerations",
            "[]",
        ]);
        let d = PipelineSettings::from_args(&empty).unwrap().defaults;
        assert_eq!((d.node_selector, d.tolerations), (None, None));
        let bad = crate::Args::parse_from([
            "sluice-operator",
            "--kafka-bootstrap",
            "k:9092",
            "--processor-tolerations",
            "{}",
        ]);
        let err = PipelineSettings::from_args(&bad).err().unwrap().to_string();
        assert!(
            err.contains("SLUICE_PROCESSOR_TOLERATIONS is not a list of tolerations"),
            "{err}"
        );
    }

    #[test]
    fn a_runnable_spec_has_no_errors() {
        let p = pipeline(json!([
            {"name": "positive", "filter": "value.total > 0.0"},
            {"name": "sum", "aggregate": {"groupBy": {"region": "value.region"},
                "aggregations": [{"name": "total", "op": "sum", "of": "value.total"}]}}
        ]));
        assert_eq!(validate(&p), Vec::<String>::new());
    }

    #[test]
    fn every_bad_expression_is_named_with_its_step_and_field_path() {
        let p = pipeline(json!([
            {"name": "first", "filter": "value.total >"},
            {"name": "second", "map": {"set": {"x": "1 +"}}}
        ]));
        let errors = validate(&p);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with("step first filter (spec.steps[0].filter): invalid expression"),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with("step second map.set.x (spec.steps[1].map.set.x)"),
            "{errors:?}"
        );
    }

    #[test]
    fn what_the_processor_would_refuse_is_refused_here() {
        let session = pipeline(json!([
            {"name": "w", "aggregate": {"groupBy": {"k": "value.k"},
                "aggregations": [{"name": "n", "op": "count"}],
                "window": {"session": {"gap": "1m"}}}}
        ]));
        assert_eq!(
            validate(&session),
            vec!["step w: a session window is not supported yet".to_string()]
        );
        let two_stateful = pipeline(json!([
            {"name": "once", "dedupe": {"key": "value.id", "within": "1h"}},
            {"name": "sum", "aggregate": {"groupBy": {"k": "value.k"},
                "aggregations": [{"name": "n", "op": "count"}]}}
        ]));
        let errors = validate(&two_stateful);
        assert!(
            errors.len() == 1 && errors[0].contains("more than one stateful step"),
            "{errors:?}"
        );
    }

    #[test]
    fn scaling_settings_the_autoscaler_cannot_use_are_refused() {
        let mut p = pipeline(json!([]));
        p.spec.scaling.lag_target = "0s".into();
        assert_eq!(
            validate(&p),
            vec!["scaling.lagTarget must be longer than zero".to_string()]
        );
        p.spec.scaling.lag_target = "30s".into();
        p.spec.commit_interval = "5 parsecs".into();
        let errors = validate(&p);
        assert!(
            errors.len() == 1
                && errors[0].starts_with("commitInterval \"5 parsecs\" is not a duration"),
            "{errors:?}"
        );
        p.spec.commit_interval = "10m".into();
        p.spec.delivery = sluice_crds::pipeline::Delivery::ExactlyOnce;
        let errors = validate(&p);
        assert!(
            errors.len() == 1 && errors[0].contains("longer than 5m"),
            "{errors:?}"
        );
    }
}
