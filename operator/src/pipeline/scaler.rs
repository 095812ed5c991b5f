//! Keeps one [`Autoscaler`] per pipeline and turns each Kafka reading into the replica
//! count to run, the lag figures for status, and (when the count changes) the decision
//! that goes to status and to an event.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use sluice_crds::Pipeline;
use sluice_crds::pipeline::{ScaleDecision, Scaling, ScalingMode, StartFrom};

use super::lag::GroupReading;
use crate::autoscaler::{Autoscaler, Observation, ScalingSettings};

/// What one tick decided for one pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleTick {
    /// Replicas to run.
    pub replicas: i32,
    /// Records waiting across all input partitions.
    pub lag: i64,
    /// Records waiting on the most behind partition.
    pub max_partition_lag: i64,
    /// Records consumed per second.
    pub records_per_second: f64,
    /// Set when the count changes.
    pub decision: Option<ScaleDecision>,
    /// The latest decision this process made for the pipeline (status shows it, even when
    /// the watch cache still holds an older status).
    pub last_scale: Option<ScaleDecision>,
}

/// What the autoscaler sizes: a Pipeline, or a sink Connector reading its topics.
#[derive(Debug, Clone, Copy)]
pub struct Scaled<'a> {
    /// The `scaling` block.
    pub scaling: &'a Scaling,
    /// Where a new consumer group starts.
    pub start_from: StartFrom,
    /// How often the consumer commits (`30s`, `500ms`).
    pub commit_interval: &'a str,
    /// `spec.replicas`, followed in `external` mode.
    pub replicas: Option<i32>,
}

impl<'a> Scaled<'a> {
    /// A Pipeline as the autoscaler sees it.
    pub fn pipeline(p: &'a Pipeline) -> Self {
        Scaled {
            scaling: &p.spec.scaling,
            start_from: p.spec.start_from,
            commit_interval: &p.spec.commit_interval,
            replicas: p.spec.replicas,
        }
    }
}

/// Every pipeline's autoscaler, by `namespace/name`.
pub struct Scalers {
    origin: Instant,
    /// Readings closer together than this are not fed to the autoscaler: its rates need
    /// whole ticks (a reconcile triggered by a Deployment change comes at any moment).
    min_interval: Duration,
    by_pipeline: Mutex<HashMap<String, Autoscaler>>,
    last_scale: Mutex<HashMap<String, ScaleDecision>>,
    last_outcome: Mutex<HashMap<String, (Duration, ScaleTick)>>,
}

impl Default for Scalers {
    fn default() -> Self {
        Self::new(Duration::from_secs(4))
    }
}

impl Scalers {
    /// Scalers that take at most one reading per pipeline every `min_interval`.
    pub fn new(min_interval: Duration) -> Self {
        Self {
            origin: Instant::now(),
            min_interval,
            by_pipeline: Mutex::new(HashMap::new()),
            last_scale: Mutex::new(HashMap::new()),
            last_outcome: Mutex::new(HashMap::new()),
        }
    }

    /// Forgets a deleted pipeline.
    pub fn forget(&self, key: &str) {
        if let Ok(mut map) = self.by_pipeline.lock() {
            map.remove(key);
        }
        if let Ok(mut map) = self.last_scale.lock() {
            map.remove(key);
        }
        if let Ok(mut map) = self.last_outcome.lock() {
            map.remove(key);
        }
    }

    /// Forgets every pipeline whose key is not in `live`.
    pub fn retain(&self, live: &std::collections::HashSet<String>) {
        if let Ok(mut map) = self.by_pipeline.lock() {
            map.retain(|k, _| live.contains(k));
        }
        if let Ok(mut map) = self.last_scale.lock() {
            map.retain(|k, _| live.contains(k));
        }
        if let Ok(mut map) = self.last_outcome.lock() {
            map.retain(|k, _| live.contains(k));
        }
    }

    /// Decides the replica count of `p` from `reading`, given `current` (the Deployment's
    /// replicas) and `ready` of them.
    pub fn decide(
        &self,
        key: &str,
        p: Scaled<'_>,
        reading: &GroupReading,
        current: i32,
        ready: i32,
    ) -> ScaleTick {
        let now = self.origin.elapsed();
        let recent = self.last_outcome.lock().ok().and_then(|m| {
            m.get(key)
                .filter(|(at, _)| now.saturating_sub(*at) < self.min_interval)
                .map(|(_, o)| o.clone())
        });
        if let Some(previous) = recent {
            return ScaleTick {
                decision: None,
                ..previous
            };
        }
        let outcome = self.observe(key, p, reading, current, ready, now);
        if let Ok(mut m) = self.last_outcome.lock() {
            m.insert(key.to_string(), (now, outcome.clone()));
        }
        outcome
    }

    fn observe(
        &self,
        key: &str,
        p: Scaled<'_>,
        reading: &GroupReading,
        current: i32,
        ready: i32,
        now: std::time::Duration,
    ) -> ScaleTick {
        let observation = Observation {
            now,
            partitions: reading.partitions.clone(),
            replicas: u32::try_from(current).unwrap_or(0),
            ready_replicas: u32::try_from(ready).unwrap_or(0),
            rebalancing: reading.rebalancing,
        };
        let settings = ScalingSettings::from_spec(p.scaling, p.start_from, p.commit_interval);
        let decision = match (settings, self.by_pipeline.lock()) {
            (Ok(settings), Ok(mut map)) => {
                let scaler = map
                    .entry(key.to_string())
                    .or_insert_with(|| Autoscaler::new(settings.clone()));
                if scaler.settings() != &settings {
                    scaler.set_settings(settings);
                }
                Some(scaler.observe(&observation))
            }
            _ => None,
        };
        let Some(decision) = decision else {
            // ScalingSettings `validate` refuses (so this is not reached for them): keep the
            // current size.
            tracing::warn!(
                pipeline = key,
                "scaling settings unusable: keeping the current size"
            );
            return ScaleTick {
                replicas: current.max(1),
                lag: 0,
                max_partition_lag: 0,
                records_per_second: 0.0,
                decision: None,
                last_scale: self.last(key),
            };
        };
        let metrics = &decision.metrics;
        log_reading(key, &observation, &decision);
        let (replicas, reason) = match p.scaling.mode {
            ScalingMode::Auto => (
                i32::try_from(decision.replicas).unwrap_or(i32::MAX),
                decision.reason.clone(),
            ),
            ScalingMode::External => {
                let wanted = p.replicas.unwrap_or(p.scaling.min_replicas).max(0);
                (
                    wanted,
                    format!("spec.replicas is {wanted} (scaling.mode external)"),
                )
            }
        };
        let decision = (replicas != current).then(|| ScaleDecision {
            time: Time(Timestamp::now()),
            from: current,
            to: replicas,
            reason,
        });
        if let (Some(d), Ok(mut map)) = (&decision, self.last_scale.lock()) {
            map.insert(key.to_string(), d.clone());
        }
        ScaleTick {
            replicas,
            lag: i64::try_from(metrics.total_lag).unwrap_or(i64::MAX),
            max_partition_lag: i64::try_from(metrics.max_partition_lag).unwrap_or(i64::MAX),
            records_per_second: metrics.records_per_second,
            decision,
            last_scale: self.last(key),
        }
    }

    fn last(&self, key: &str) -> Option<ScaleDecision> {
        self.last_scale
            .lock()
            .ok()
            .and_then(|m| m.get(key).cloned())
    }
}

/// The log target of the autoscaler's readings: `RUST_LOG=info,sluice::autoscaler=debug`
/// (the chart's `operator.logLevel`) shows what it read and decided at every tick.
pub const READINGS_LOG: &str = "sluice::autoscaler";

/// Logs one reading and its decision at debug level, one line per tick and pipeline:
/// per partition `topic-partition=logStart..logEnd@committed` (`-` when never committed).
fn log_reading(key: &str, obs: &Observation, decision: &crate::autoscaler::Decision) {
    if !tracing::enabled!(target: READINGS_LOG, tracing::Level::DEBUG) {
        return;
    }
    let partitions = obs
        .partitions
        .iter()
        .map(|p| {
            let committed = p
                .committed
                .map_or_else(|| "-".to_string(), |c| c.to_string());
            format!("{}={}..{}@{committed}", p.id, p.log_start, p.log_end)
        })
        .collect::<Vec<_>>()
        .join(" ");
    let m = &decision.metrics;
    tracing::debug!(
        target: READINGS_LOG,
        pipeline = key,
        at_secs = obs.now.as_secs_f64(),
        replicas = obs.replicas,
        ready = obs.ready_replicas,
        rebalancing = obs.rebalancing,
        lag = m.total_lag,
        max_partition_lag = m.max_partition_lag,
        consumed_per_second = m.records_per_second,
        arrived_per_second = m.arrival_per_second,
        capacity_per_replica = ?m.capacity_per_replica,
        decided = decision.replicas,
        reason = %decision.reason,
        %partitions,
        "autoscaler reading"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscaler::{PartitionId, PartitionOffsets};

    fn pipeline(extra: serde_json::Value) -> Pipeline {
        let mut spec = serde_json::json!({"inputs": ["in"], "outputs": [{"topic": "out"}]});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "Pipeline",
            "metadata": {"name": "p", "namespace": "n"}, "spec": spec
        }))
        .unwrap()
    }

    fn reading() -> GroupReading {
        GroupReading {
            partitions: vec![PartitionOffsets {
                id: PartitionId {
                    topic: "in".into(),
                    partition: 0,
                },
                log_start: 0,
                log_end: 0,
                committed: None,
            }],
            missing_topics: vec![],
            rebalancing: false,
        }
    }

    #[test]
    fn a_new_pipeline_starts_at_min_and_the_decision_is_remembered() {
        let scalers = Scalers::new(Duration::ZERO);
        let p = pipeline(serde_json::json!({}));
        let first = scalers.decide("n/p", Scaled::pipeline(&p), &reading(), 0, 0);
        assert_eq!(first.replicas, 1);
        let decision = first.decision.unwrap();
        assert_eq!((decision.from, decision.to), (0, 1));
        let again = scalers.decide("n/p", Scaled::pipeline(&p), &reading(), 1, 1);
        assert_eq!(again.replicas, 1);
        assert!(again.decision.is_none(), "no change, no decision");
        assert_eq!(again.last_scale.map(|d| (d.from, d.to)), Some((0, 1)));
        scalers.forget("n/p");
        assert!(scalers.last("n/p").is_none());
    }

    #[test]
    fn readings_closer_than_a_tick_reuse_the_last_outcome() {
        let scalers = Scalers::new(Duration::from_secs(3600));
        let p = pipeline(serde_json::json!({}));
        let first = scalers.decide("n/p", Scaled::pipeline(&p), &reading(), 0, 0);
        assert!(first.decision.is_some());
        // Seconds later (a Deployment event): same size, no second decision.
        let soon = scalers.decide("n/p", Scaled::pipeline(&p), &reading(), 1, 0);
        assert_eq!(soon.replicas, first.replicas);
        assert!(soon.decision.is_none());
    }

    #[test]
    fn external_mode_follows_spec_replicas() {
        let scalers = Scalers::new(Duration::ZERO);
        let p = pipeline(serde_json::json!({"scaling": {"mode": "external"}, "replicas": 3}));
        let out = scalers.decide("n/p", Scaled::pipeline(&p), &reading(), 1, 1);
        assert_eq!(out.replicas, 3);
        assert!(out.decision.unwrap().reason.contains("external"));
    }
}
