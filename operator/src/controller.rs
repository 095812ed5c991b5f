//! The one controller shape every kind uses. A kind says how to reconcile one object
//! ([`Reconcile`]); this runs it: a span per reconcile, the duration and result metrics
//! (failures labelled by what failed), error backoff per object (or the fixed retry an
//! error asks for), and a guard that reports an object that cannot be read as its kind
//! (once per version, as an event) instead of failing the watch. Leader gating and the
//! resync interval are the caller's: controllers run only while this replica leads, and
//! each reconcile returns when to look again.

use std::collections::HashSet;
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::context::Context;
use crate::error::{Error, Result};

/// An object of kind `K` as the watch delivers it: `Err` when it cannot be read as `K`.
pub type Guarded<K> = DeserializeGuard<K>;

/// How one kind reconciles one object.
pub trait Reconcile: Send + Sync + 'static {
    /// The kind.
    type Kind: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static;
    /// Its name, for metrics, logs and events.
    const KIND: &'static str;
    /// The shared context.
    fn context(&self) -> &Context;
    /// Brings the world in line with `object`; says when to look again.
    fn reconcile(&self, object: &Self::Kind) -> impl Future<Output = Result<Action>> + Send;
}

/// A kind's reconciler with what the wrapper keeps for it.
pub struct Managed<R> {
    reconciler: Arc<R>,
    /// `uid@resourceVersion` of the malformed objects already reported.
    reported_malformed: Mutex<HashSet<String>>,
}

/// Runs `controller` (its watches set up by the kind) with `reconciler` until the
/// controller's shutdown signal.
pub async fn run<R: Reconcile>(controller: Controller<Guarded<R::Kind>>, reconciler: Arc<R>) {
    let managed = Arc::new(Managed {
        reconciler,
        reported_malformed: Mutex::new(HashSet::new()),
    });
    controller
        .run(reconcile::<R>, error_policy::<R>, managed)
        .for_each(|result| async move {
            if let Err(err) = result {
                debug!(%err, kind = R::KIND, "reconcile did not complete");
            }
        })
        .await;
    info!(kind = R::KIND, "controller stopped");
}

fn key_of<K: Resource>(object: &K) -> String {
    format!(
        "{}/{}",
        object.meta().namespace.clone().unwrap_or_default(),
        object.meta().name.clone().unwrap_or_default()
    )
}

async fn reconcile<R: Reconcile>(
    guard: Arc<Guarded<R::Kind>>,
    managed: Arc<Managed<R>>,
) -> Result<Action> {
    let span = info_span!(
        "reconcile",
        kind = R::KIND,
        namespace = %guard.namespace().unwrap_or_default(),
        name = %guard.name_any()
    );
    async move {
        let ctx = managed.reconciler.context();
        let _timer = ctx.metrics.reconcile_timer(R::KIND);
        let result = match &guard.0 {
            Ok(object) => managed.reconciler.reconcile(object).await,
            Err(invalid) => report_malformed(&guard, &invalid.error, &managed).await,
        };
        ctx.metrics
            .reconciled(R::KIND, result.as_ref().map_or_else(Error::label, |_| "ok"));
        if result.is_ok() {
            ctx.backoff.succeeded(&key_of(guard.as_ref()));
        }
        result
    }
    .instrument(span)
    .await
}

fn error_policy<R: Reconcile>(
    guard: Arc<Guarded<R::Kind>>,
    err: &Error,
    managed: Arc<Managed<R>>,
) -> Action {
    let ctx = managed.reconciler.context();
    let delay = err
        .fixed_retry()
        .unwrap_or_else(|| ctx.backoff.failed(&key_of(guard.as_ref())));
    warn!(
        kind = R::KIND,
        namespace = %guard.namespace().unwrap_or_default(),
        name = %guard.name_any(),
        error = %err,
        retry_in = ?delay,
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// An object that cannot be read as its kind: say so once per version, never crash.
async fn report_malformed<R: Reconcile>(
    guard: &Guarded<R::Kind>,
    error: &str,
    managed: &Managed<R>,
) -> Result<Action> {
    let version = format!(
        "{}@{}",
        guard.uid().unwrap_or_default(),
        guard.resource_version().unwrap_or_default()
    );
    let first = managed
        .reported_malformed
        .lock()
        .map(|mut seen| seen.insert(version))
        .unwrap_or(true);
    warn!(%error, kind = R::KIND, "object is malformed");
    if first {
        managed
            .reconciler
            .context()
            .event(
                &guard.object_ref(&()),
                R::KIND,
                true,
                "Malformed",
                format!("This {} cannot be read: {error}", R::KIND),
            )
            .await;
    }
    Ok(Action::await_change())
}
