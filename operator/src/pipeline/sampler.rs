//! The autoscaler's sampling, apart from reconcile. Every tick it reads each pipeline's
//! offsets through the shared Kafka client and sizes the pipeline, then writes only what
//! changed: the children with the new replica count when the decision changes (with a
//! ScaledUp or ScaledDown event), and the lag figures in status (under a field manager of
//! its own) when they change. When what reconcile acts on changes (a topic appears or
//! goes, Kafka stops or starts answering), it asks the controller to reconcile that
//! pipeline. Reconcile itself runs on a change of the spec or a child, and at resyncs.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use sluice_crds::Pipeline;
use tokio::time::MissedTickBehavior;
use tracing::warn;

use super::sample::Sample;
use super::scaler::Scaled;
use super::status::Figures;
use super::{KIND, PipelineController, apply_children, apply_status, events, key_of, render};
use crate::Error;
use crate::controller::Guarded;
use crate::workload::Applied;

/// The field manager of the figures the sampler writes in status.
pub const SAMPLER_FIELD_MANAGER: &str = "sluice-autoscaler";

/// Pipelines sampled at once.
const CONCURRENT_SAMPLES: usize = 8;

/// The sampler of one controller.
pub struct Sampler {
    /// The controller's state (scalers, settings, context).
    pub state: Arc<PipelineController>,
    /// The Pipelines the controller watches.
    pub pipelines: Store<Guarded<Pipeline>>,
    /// The processor Deployments.
    pub deployments: Store<Deployment>,
    /// Asks the controller to reconcile a pipeline.
    pub reconcile: UnboundedSender<ObjectRef<Guarded<Pipeline>>>,
}

impl Sampler {
    /// Samples every pipeline each tick until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        tokio::select! {
            _ = &mut shutdown => return,
            _ = async {
                let _ = self.pipelines.wait_until_ready().await;
                let _ = self.deployments.wait_until_ready().await;
            } => {}
        }
        let mut interval = tokio::time::interval(self.state.settings.tick);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = interval.tick() => self.tick().await,
            }
        }
    }

    /// Samples every live pipeline once, a few at a time.
    async fn tick(&self) {
        let live: Vec<Arc<Guarded<Pipeline>>> = self.pipelines.state();
        let keys: HashSet<String> = live
            .iter()
            .filter_map(|g| g.0.as_ref().ok())
            .filter(|p| p.meta().deletion_timestamp.is_none())
            .map(key_of)
            .collect();
        self.state.forget_all_but(&keys);
        futures::stream::iter(live)
            .for_each_concurrent(CONCURRENT_SAMPLES, |guard| async move {
                let Ok(p) = &guard.0 else { return };
                if p.meta().deletion_timestamp.is_some() {
                    return;
                }
                if let Err(err) = self.sample(p).await {
                    self.state.ctx.metrics.reconciled("Autoscaler", err.label());
                    warn!(pipeline = %key_of(p), error = %err, "sampling failed");
                }
            })
            .await;
    }

    /// Samples one pipeline and acts on what changed.
    async fn sample(&self, p: &Pipeline) -> Result<(), Error> {
        let key = key_of(p);
        let sample = Sample::take(&self.state.ctx, p).await;
        if self.state.facts_changed(&key, &sample) {
            let name = p.name_any();
            let reference = ObjectRef::new(&name).within(&p.namespace().unwrap_or_default());
            // The controller is gone only at shutdown.
            let _ = self.reconcile.unbounded_send(reference);
            return Ok(());
        }
        if !self.state.runnable(p) {
            return Ok(());
        }
        let Some(reading) = sample.runnable_reading() else {
            return Ok(());
        };
        let ns = p.namespace().unwrap_or_default();
        let deployment_ref = ObjectRef::new(&render::processor_name(&p.name_any())).within(&ns);
        // Reconcile makes the Deployment; until it exists there is nothing to size.
        let Some(existing) = self.deployments.get(&deployment_ref) else {
            return Ok(());
        };
        let (current, ready) = replicas_of(&existing);
        let tick = self
            .state
            .scalers
            .decide(&key, Scaled::pipeline(p), reading, current, ready);
        if let Some(decision) = &tick.decision
            && let Applied::Written =
                apply_children(p, &self.state, Some(&existing), tick.replicas).await?
        {
            let e = events::scaled(decision);
            self.state
                .ctx
                .event_action(
                    &p.object_ref(&()),
                    KIND,
                    e.warning,
                    e.reason,
                    &e.action,
                    e.note,
                )
                .await;
        }
        let previous = p.status.clone().unwrap_or_default();
        let figures = Figures::new(
            tick.lag,
            tick.max_partition_lag,
            tick.records_per_second,
            tick.last_scale,
            &previous,
        );
        if figures != Figures::of(&previous) {
            let fields = figures.to_status();
            apply_status(&self.state.ctx, p, SAMPLER_FIELD_MANAGER, fields, "figures").await?;
        }
        Ok(())
    }
}

/// The replicas a Deployment asks for, and how many are ready.
pub fn replicas_of(d: &Deployment) -> (i32, i32) {
    let current = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let ready = d
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    (current, ready)
}
