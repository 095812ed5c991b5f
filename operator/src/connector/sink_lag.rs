//! A native sink's progress: the consumer lag of its group over `spec.topics`, and with
//! `scaling` the replica count the Pipeline autoscaler decides from it. Pure but for the
//! autoscaler's memory ([`Scalers`]).

use kube::ResourceExt;
use sluice_crds::connector::{ConnectorState, ConnectorType};
use sluice_crds::pipeline::{ScaleDecision, StartFrom};
use sluice_crds::{Connector, contract};

use super::status::SinkProgress;
use crate::pipeline::lag::GroupReading;
use crate::pipeline::scaler::{Scaled, Scalers};

/// How often a sink commits when its plugin does not say (the PostgreSQL sink's batch
/// interval): the autoscaler reads records in flight within it as no backlog.
const DEFAULT_BATCH_INTERVAL: &str = "500ms";

/// Where a native sink starts reading a topic it has not read before.
const SINK_START: StartFrom = StartFrom::Earliest;

/// Whether `c` is a native sink, whose lag is read.
pub fn is_native_sink(c: &Connector) -> bool {
    c.spec.type_ == ConnectorType::Sink && c.spec.kafka_connect.is_none()
}

/// The consumer group a native sink reads with.
pub fn group(c: &Connector) -> String {
    contract::connector_group_id(&c.namespace().unwrap_or_default(), &c.name_any())
}

/// What the autoscaler sizes for `c`: a sink with `scaling`.
pub fn scaled(c: &Connector) -> Option<Scaled<'_>> {
    let scaling = c.spec.scaling.as_ref()?;
    let interval = c
        .spec
        .postgres
        .as_ref()
        .and_then(|p| p.batch.as_ref())
        .and_then(|b| b.interval.as_deref())
        .unwrap_or(DEFAULT_BATCH_INTERVAL);
    Some(Scaled {
        scaling,
        start_from: SINK_START,
        commit_interval: interval,
        replicas: None,
    })
}

/// Records in the sink's topics that its group has not committed past.
pub fn lag(reading: &GroupReading) -> i64 {
    let total: u64 = reading.partitions.iter().map(|p| p.lag(SINK_START)).sum();
    i64::try_from(total).unwrap_or(i64::MAX)
}

/// A sink's size this look, and how far behind it is.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkSize {
    /// Replicas to run.
    pub replicas: i32,
    /// For status.
    pub progress: SinkProgress,
    /// Set when the autoscaler changed the count.
    pub decision: Option<ScaleDecision>,
}

/// Sizes sink `c` from `reading`: the autoscaler decides while it runs with `scaling`;
/// otherwise it runs `planned` replicas (one, or none when stopped). `current` and
/// `ready` are its Deployment's.
pub fn size(
    scalers: &Scalers,
    c: &Connector,
    reading: &GroupReading,
    planned: i32,
    current: i32,
    ready: i32,
) -> SinkSize {
    let sized = scaled(c).filter(|_| c.spec.state == ConnectorState::Running);
    let Some(sized) = sized else {
        return SinkSize {
            replicas: planned,
            progress: SinkProgress {
                lag: lag(reading),
                last_scale: None,
            },
            decision: None,
        };
    };
    let key = format!("{}/{}", c.namespace().unwrap_or_default(), c.name_any());
    let tick = scalers.decide(&key, sized, reading, current, ready);
    SinkSize {
        replicas: tick.replicas,
        progress: SinkProgress {
            lag: tick.lag,
            last_scale: tick.last_scale,
        },
        decision: tick.decision,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscaler::{PartitionId, PartitionOffsets};
    use serde_json::json;
    use std::time::Duration;

    fn sink(extra: serde_json::Value) -> Connector {
        let mut spec = json!({"type": "sink", "topics": ["orders"],
                              "postgres": {"table": "t", "batch": {"interval": "2s"}}});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        serde_json::from_value(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "Connector",
            "metadata": {"name": "load", "namespace": "shop"}, "spec": spec
        }))
        .unwrap()
    }

    fn reading(end: i64, committed: Option<i64>) -> GroupReading {
        GroupReading {
            partitions: (0..4)
                .map(|partition| PartitionOffsets {
                    id: PartitionId {
                        topic: "orders".into(),
                        partition,
                    },
                    log_start: 0,
                    log_end: end,
                    committed,
                })
                .collect(),
            missing_topics: vec![],
            rebalancing: false,
        }
    }

    #[test]
    fn a_sink_without_scaling_runs_as_planned_and_reports_its_lag() {
        let scalers = Scalers::new(Duration::ZERO);
        let c = sink(json!({}));
        assert!(is_native_sink(&c));
        assert_eq!(group(&c), contract::connector_group_id("shop", "load"));
        let s = size(&scalers, &c, &reading(100, Some(40)), 1, 1, 1);
        assert_eq!(s.replicas, 1);
        assert_eq!(s.progress.lag, 240, "60 behind on each of 4 partitions");
        assert!(s.decision.is_none());
        // Never committed: everything from the log start is behind.
        assert_eq!(lag(&reading(100, None)), 400);
    }

    #[test]
    fn a_sink_with_scaling_is_sized_by_the_autoscaler_within_its_bounds() {
        let scalers = Scalers::new(Duration::ZERO);
        let c = sink(json!({"scaling": {"minReplicas": 2, "maxReplicas": 3}}));
        let sized = scaled(&c).unwrap();
        assert_eq!(sized.commit_interval, "2s", "the batch interval");
        let s = size(&scalers, &c, &reading(0, None), 1, 0, 0);
        assert_eq!(s.replicas, 2, "at least minReplicas");
        let d = s.decision.expect("a change from 0");
        assert_eq!((d.from, d.to), (0, 2));
        assert_eq!(s.progress.last_scale, Some(d));
    }

    #[test]
    fn a_paused_or_stopped_sink_is_not_sized() {
        let scalers = Scalers::new(Duration::ZERO);
        let mut c = sink(json!({"scaling": {"minReplicas": 3, "maxReplicas": 4}}));
        c.spec.state = ConnectorState::Stopped;
        let s = size(&scalers, &c, &reading(10, Some(10)), 0, 3, 3);
        assert_eq!((s.replicas, s.progress.lag), (0, 0));
        assert!(s.decision.is_none());
    }
}
