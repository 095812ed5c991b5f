//! Prometheus metrics of the processor. Hot-path handles are resolved once per step so
//! recording a record costs an atomic add, not a label lookup.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of pipeline-wide series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PipelineLabels {
    /// Pipeline name.
    pub pipeline: String,
}

/// Labels of per-step series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    /// Pipeline name.
    pub pipeline: String,
    /// Step name.
    pub step: String,
}

/// Labels of a native sink's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    /// The Connector's name.
    pub connector: String,
    /// The plugin (`postgres`, `s3`, `http`).
    pub sink: String,
}

/// Labels of a native source's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// The Connector's name.
    pub connector: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 us .. ~16 s
    Histogram::new(exponential_buckets(1e-6, 4.0, 13))
}

fn write_histogram() -> Histogram {
    // 1 ms .. ~16 s
    Histogram::new(exponential_buckets(1e-3, 2.0, 15))
}

fn batch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 4.0, 10))
}

/// Every metric the processor exports.
pub struct Metrics {
    registry: Registry,
    records_in: Family<PipelineLabels, Counter>,
    records_out: Family<PipelineLabels, Counter>,
    records_dead_lettered: Family<PipelineLabels, Counter>,
    records_filtered: Family<StepLabels, Counter>,
    records_failed: Family<StepLabels, Counter>,
    step_latency: HistogramFamily<StepLabels>,
    batch_size: HistogramFamily<PipelineLabels>,
    state_groups: Family<StepLabels, Gauge>,
    rebalances: Family<PipelineLabels, Counter>,
    commits: Family<PipelineLabels, Counter>,
    aborts: Family<PipelineLabels, Counter>,
    assigned_partitions: Family<PipelineLabels, Gauge>,
    sink_write_seconds: HistogramFamily<SinkLabels>,
    sink_bytes: Family<SinkLabels, Counter>,
    sink_retries: Family<SinkLabels, Counter>,
    cdc_confirmed_lsn: Family<SourceLabels, Gauge>,
    cdc_lag_bytes: Family<SourceLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let records_in = Family::default();
        let records_out = Family::default();
        let records_dead_lettered = Family::default();
        let records_filtered = Family::default();
        let records_failed = Family::default();
        let step_latency =
            HistogramFamily::new_with_constructor(latency_histogram as fn() -> Histogram);
        let batch_size =
            HistogramFamily::new_with_constructor(batch_histogram as fn() -> Histogram);
        let state_groups = Family::default();
        let rebalances = Family::default();
        let commits = Family::default();
        let aborts = Family::default();
        let assigned_partitions = Family::default();
        let sink_write_seconds =
            HistogramFamily::new_with_constructor(write_histogram as fn() -> Histogram);
        let sink_bytes = Family::default();
        let sink_retries = Family::default();
        let cdc_confirmed_lsn = Family::default();
        let cdc_lag_bytes = Family::default();
        registry.register(
            "cdc_confirmed_lsn",
            "The LSN a change-data-capture source last confirmed to PostgreSQL (everything before it is in Kafka)",
            cdc_confirmed_lsn.clone(),
        );
        registry.register(
            "cdc_lag_bytes",
            "Bytes of WAL between the server's position and the confirmed LSN (what the slot holds back)",
            cdc_lag_bytes.clone(),
        );
        registry.register(
            "sink_write_seconds",
            "Time a native sink takes to write and commit one batch",
            sink_write_seconds.clone(),
        );
        registry.register(
            "sink_bytes",
            "Bytes of keys and values a native sink wrote",
            sink_bytes.clone(),
        );
        registry.register(
            "sink_retries",
            "Batches a native sink read again after a failure, and requests it sent again",
            sink_retries.clone(),
        );
        registry.register("records_in", "Records consumed", records_in.clone());
        registry.register(
            "records_out",
            "Records written to output topics",
            records_out.clone(),
        );
        registry.register(
            "records_dead_lettered",
            "Records written to the dead-letter topic",
            records_dead_lettered.clone(),
        );
        registry.register(
            "records_filtered",
            "Records dropped by a filter step",
            records_filtered.clone(),
        );
        registry.register(
            "records_failed",
            "Records that failed in a step",
            records_failed.clone(),
        );
        registry.register(
            "step_duration_seconds",
            "Time one record spends in a step (sampled)",
            step_latency.clone(),
        );
        registry.register("batch_records", "Records per commit", batch_size.clone());
        registry.register(
            "state_groups",
            "Groups held by an aggregate step",
            state_groups.clone(),
        );
        registry.register(
            "rebalances",
            "Consumer group rebalances seen",
            rebalances.clone(),
        );
        registry.register(
            "commits",
            "Offset commits (transactions in exactlyOnce)",
            commits.clone(),
        );
        registry.register("aborts", "Aborted transactions and rewinds", aborts.clone());
        registry.register(
            "assigned_partitions",
            "Input partitions assigned to this replica",
            assigned_partitions.clone(),
        );
        Self {
            registry,
            records_in,
            records_out,
            records_dead_lettered,
            records_filtered,
            records_failed,
            step_latency,
            batch_size,
            state_groups,
            rebalances,
            commits,
            aborts,
            assigned_partitions,
            sink_write_seconds,
            sink_bytes,
            sink_retries,
            cdc_confirmed_lsn,
            cdc_lag_bytes,
        }
    }

    /// Handles for the change-data-capture source of `connector`.
    pub fn cdc(&self, connector: &str) -> CdcMetrics {
        let l = SourceLabels {
            connector: connector.to_string(),
        };
        CdcMetrics {
            confirmed_lsn: self.cdc_confirmed_lsn.get_or_create_owned(&l),
            lag_bytes: self.cdc_lag_bytes.get_or_create_owned(&l),
        }
    }

    /// Handles for the native sink of `connector`, a `sink` plugin.
    pub fn sink(&self, connector: &str, sink: &str) -> SinkMetrics {
        let l = SinkLabels {
            connector: connector.to_string(),
            sink: sink.to_string(),
        };
        SinkMetrics {
            write_seconds: self.sink_write_seconds.get_or_create_owned(&l),
            bytes: self.sink_bytes.get_or_create_owned(&l),
            retries: self.sink_retries.get_or_create_owned(&l),
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Handles for one pipeline.
    pub fn pipeline(&self, pipeline: &str) -> PipelineMetrics {
        let l = PipelineLabels {
            pipeline: pipeline.to_string(),
        };
        PipelineMetrics {
            name: pipeline.to_string(),
            records_in: self.records_in.get_or_create_owned(&l),
            records_out: self.records_out.get_or_create_owned(&l),
            dead_lettered: self.records_dead_lettered.get_or_create_owned(&l),
            batch_size: self.batch_size.get_or_create_owned(&l),
            rebalances: self.rebalances.get_or_create_owned(&l),
            commits: self.commits.get_or_create_owned(&l),
            aborts: self.aborts.get_or_create_owned(&l),
            assigned_partitions: self.assigned_partitions.get_or_create_owned(&l),
            families: StepFamilies {
                filtered: self.records_filtered.clone(),
                failed: self.records_failed.clone(),
                latency: self.step_latency.clone(),
                state_groups: self.state_groups.clone(),
            },
        }
    }
}

#[derive(Clone)]
struct StepFamilies {
    filtered: Family<StepLabels, Counter>,
    failed: Family<StepLabels, Counter>,
    latency: HistogramFamily<StepLabels>,
    state_groups: Family<StepLabels, Gauge>,
}

/// Pipeline-wide metric handles.
#[derive(Clone)]
pub struct PipelineMetrics {
    name: String,
    /// Records consumed.
    pub records_in: Counter,
    /// Records written to outputs.
    pub records_out: Counter,
    /// Records dead-lettered.
    pub dead_lettered: Counter,
    /// Records per commit.
    pub batch_size: Histogram,
    /// Rebalances.
    pub rebalances: Counter,
    /// Commits.
    pub commits: Counter,
    /// Aborts and rewinds.
    pub aborts: Counter,
    /// Assigned partitions.
    pub assigned_partitions: Gauge,
    families: StepFamilies,
}

impl PipelineMetrics {
    /// Handles for one step.
    pub fn step(&self, step: &str) -> Arc<StepMetrics> {
        let l = StepLabels {
            pipeline: self.name.clone(),
            step: step.to_string(),
        };
        Arc::new(StepMetrics {
            filtered: self.families.filtered.get_or_create_owned(&l),
            failed: self.families.failed.get_or_create_owned(&l),
            latency: self.families.latency.get_or_create_owned(&l),
            state_groups: self.families.state_groups.get_or_create_owned(&l),
        })
    }

    /// Handles that count into a throwaway registry (tests, benchmarks).
    pub fn detached(pipeline: &str) -> Self {
        Metrics::new().pipeline(pipeline)
    }
}

/// A native sink's metric handles.
#[derive(Clone, Debug)]
pub struct SinkMetrics {
    /// Time to write and commit one batch.
    pub write_seconds: Histogram,
    /// Bytes of keys and values written.
    pub bytes: Counter,
    /// Batches read again after a failure, and requests sent again.
    pub retries: Counter,
}

impl SinkMetrics {
    /// Handles that count into a throwaway registry (tests, benchmarks).
    pub fn detached(sink: &str) -> Self {
        Metrics::new().sink("detached", sink)
    }
}

/// A change-data-capture source's handles.
#[derive(Debug, Clone, Default)]
pub struct CdcMetrics {
    /// The LSN last confirmed to the server.
    pub confirmed_lsn: Gauge,
    /// WAL bytes between the server's position and the confirmed LSN.
    pub lag_bytes: Gauge,
}

/// Per-step metric handles.
#[derive(Debug)]
pub struct StepMetrics {
    /// Records a filter dropped.
    pub filtered: Counter,
    /// Records that failed here.
    pub failed: Counter,
    /// Sampled time per record.
    pub latency: Histogram,
    /// Groups held (aggregate steps).
    pub state_groups: Gauge,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_named_series() {
        let m = Metrics::new();
        let p = m.pipeline("orders");
        p.records_in.inc_by(3);
        p.step("only-eu").filtered.inc();
        let text = m.encode();
        assert!(
            text.contains("sluice_records_in_total{pipeline=\"orders\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("sluice_records_filtered_total{pipeline=\"orders\",step=\"only-eu\"} 1"),
            "{text}"
        );
        let sink = m.sink("totals-to-pg", "postgres");
        sink.bytes.inc_by(42);
        sink.write_seconds.observe(0.01);
        let text = m.encode();
        assert!(
            text.contains(
                "sluice_sink_bytes_total{connector=\"totals-to-pg\",sink=\"postgres\"} 42"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "sluice_sink_write_seconds_count{connector=\"totals-to-pg\",sink=\"postgres\"} 1"
            ),
            "{text}"
        );
    }
}
