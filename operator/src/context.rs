//! What every reconcile shares: clients, metrics, settings, the event recorder.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource};

use crate::backoff::Backoff;
use crate::kafka::KafkaAdmin;
use crate::metrics::Metrics;

/// The one field manager for every server-side apply and patch.
pub const FIELD_MANAGER: &str = "sluice-operator";

/// ReconcileSettings that shape reconciles.
#[derive(Debug, Clone)]
pub struct ReconcileSettings {
    /// Reconcile every object this often even when nothing changed.
    pub resync: Duration,
    /// Watch only this namespace; `None` for all.
    pub namespace: Option<String>,
    /// Handle only resources labelled with this instance; `None` for unlabelled ones.
    pub instance: Option<String>,
}

/// The label that assigns a resource to one operator instance.
pub const INSTANCE_LABEL: &str = "sluice.dev/instance";

impl ReconcileSettings {
    /// The label selector of the resources this operator handles.
    pub fn selector(&self) -> String {
        match &self.instance {
            Some(instance) => format!("{INSTANCE_LABEL}={instance}"),
            None => format!("!{INSTANCE_LABEL}"),
        }
    }

    /// The watcher configuration of the resources this operator handles.
    pub fn watcher_config(&self) -> kube::runtime::watcher::Config {
        kube::runtime::watcher::Config::default().labels(&self.selector())
    }
}

/// Shared by every controller.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// The Kafka admin client.
    pub kafka: KafkaAdmin,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// ReconcileSettings.
    pub settings: ReconcileSettings,
    /// Publishes Kubernetes events.
    pub recorder: Recorder,
    /// Per-object retry backoff.
    pub backoff: Backoff,
}

impl Context {
    /// Builds the context; `identity` names this replica in events.
    pub fn new(
        client: Client,
        kafka: KafkaAdmin,
        metrics: Arc<Metrics>,
        settings: ReconcileSettings,
        identity: &str,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_string(),
            instance: Some(identity.to_string()),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            kafka,
            metrics,
            settings,
            // Retries start at 1 s and double; capped at a minute so a long Kafka outage
            // is noticed as over within a minute of its end.
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)),
        }
    }

    /// An API for kind `K` over the watched scope.
    pub fn watched_api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match &self.settings.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }

    /// Publishes an event about `object`. A failure is logged, not returned: an event that
    /// cannot be written must not stop a reconcile.
    pub async fn event(
        &self,
        object: &ObjectReference,
        kind: &str,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        self.event_action(object, kind, warning, reason, reason, note)
            .await
    }

    /// Like [`Context::event`], with an `action` of its own. Events with the same reason
    /// and action on one object are folded into one series that keeps the first note, so a
    /// decision whose numbers matter (a rescale) names itself in its action.
    pub async fn event_action(
        &self,
        object: &ObjectReference,
        kind: &str,
        warning: bool,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_string(),
            note: Some(note),
            action: action.to_string(),
            secondary: None,
        };
        self.metrics.kube_write(kind, "event");
        if let Err(err) = self.recorder.publish(&event, object).await {
            tracing::warn!(%err, reason, "could not publish event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_select_their_own_resources() {
        let mut s = ReconcileSettings {
            resync: Duration::from_secs(60),
            namespace: None,
            instance: None,
        };
        assert_eq!(s.selector(), "!sluice.dev/instance");
        s.instance = Some("e2e-1".into());
        assert_eq!(s.selector(), "sluice.dev/instance=e2e-1");
    }
}
