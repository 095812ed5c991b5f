//! Prometheus metrics of the operator.

use std::sync::atomic::AtomicI64;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a reconcile: the kind and how it ended (`ok` or an error label).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    /// `Topic`, `Pipeline`, `Connector`.
    pub kind: String,
    /// `ok` or [`crate::Error::label`].
    pub result: String,
}

/// Labels of a reconcile duration.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `Topic`, `Pipeline`, `Connector`.
    pub kind: String,
}

/// Labels of a failed Kafka admin operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KafkaErrorLabels {
    /// `describe`, `create`, `create_partitions`, `alter_configs`, `delete`.
    pub operation: String,
}

/// Labels of a Kubernetes write.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    /// `Topic`, ...
    pub kind: String,
    /// `status`, `finalizer`, `event`.
    pub what: String,
}

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ReconcileLabels, Counter>,
    duration: Family<KindLabels, Histogram>,
    kafka_errors: Family<KafkaErrorLabels, Counter>,
    writes: Family<WriteLabels, Counter>,
    leader: Gauge<i64, AtomicI64>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sluice_operator");
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles by kind and result",
            reconciles.clone(),
        );
        let duration = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        registry.register(
            "reconcile_duration_seconds",
            "How long one reconcile took",
            duration.clone(),
        );
        let kafka_errors = Family::<KafkaErrorLabels, Counter>::default();
        registry.register(
            "kafka_admin_errors",
            "Failed Kafka admin operations",
            kafka_errors.clone(),
        );
        let writes = Family::<WriteLabels, Counter>::default();
        registry.register(
            "kube_writes",
            "Writes to the Kubernetes API (status, finalizers, events)",
            writes.clone(),
        );
        let leader = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            duration,
            kafka_errors,
            writes,
            leader,
        }
    }
}

impl Metrics {
    /// Starts timing one reconcile of `kind`; the returned guard records on drop.
    pub fn reconcile_timer(&self, kind: &str) -> ReconcileTimer<'_> {
        ReconcileTimer {
            metrics: self,
            kind: kind.to_string(),
            start: Instant::now(),
        }
    }

    /// Counts one finished reconcile.
    pub fn reconciled(&self, kind: &str, result: &str) {
        self.reconciles
            .get_or_create(&ReconcileLabels {
                kind: kind.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    /// Counts one failed Kafka admin operation.
    pub fn kafka_error(&self, operation: &str) {
        self.kafka_errors
            .get_or_create(&KafkaErrorLabels {
                operation: operation.to_string(),
            })
            .inc();
    }

    /// Counts one write to the Kubernetes API.
    pub fn kube_write(&self, kind: &str, what: &str) {
        self.writes
            .get_or_create(&WriteLabels {
                kind: kind.to_string(),
                what: what.to_string(),
            })
            .inc();
    }

    /// Records whether this replica leads.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Records a reconcile's duration when dropped.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    kind: String,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .duration
            .get_or_create(&KindLabels {
                kind: std::mem::take(&mut self.kind),
            })
            .observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_in_the_text_format() {
        let m = Metrics::default();
        m.reconciled("Topic", "ok");
        m.reconciled("Topic", "ok");
        m.kafka_error("create");
        m.set_leader(true);
        drop(m.reconcile_timer("Topic"));
        let text = m.encode().unwrap();
        assert!(
            text.contains(r#"sluice_operator_reconciles_total{kind="Topic",result="ok"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"sluice_operator_kafka_admin_errors_total{operation="create"} 1"#),
            "{text}"
        );
        assert!(text.contains("sluice_operator_leader 1"), "{text}");
        assert!(
            text.contains(r#"sluice_operator_reconcile_duration_seconds_count{kind="Topic"} 1"#),
            "{text}"
        );
    }
}
