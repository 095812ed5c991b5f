//! A small discrete-time model of a Kafka topic and a consumer group, to replay the same
//! load through different scalers (Sluice's, and KEDA's Kafka scaler with HPA) and
//! compare them. One step is one second.
//!
//! The model: `P` partitions; each ready replica consumes up to `C` records/s, split
//! over the partitions it is assigned (partitions are spread evenly by count); a new
//! replica is ready after a startup delay, and every change of the ready members pauses
//! the whole group for a rebalance. Each second: records arrive, the scaler (if it
//! polls this second) sees the offsets (so lag includes what arrived since the last
//! commit, as in Kafka), then the replicas consume.

pub mod keda;

use std::time::Duration;

use super::observation::{Observation, PartitionId, PartitionOffsets};
use super::scaler::Autoscaler;

/// The cluster being simulated.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterConfig {
    /// Input partitions.
    pub partitions: usize,
    /// Records per second one replica consumes.
    pub capacity_per_replica: f64,
    /// Seconds from asking for a replica to it consuming.
    pub startup_secs: u64,
    /// Seconds every replica stops while the group rebalances.
    pub rebalance_secs: u64,
    /// The drain time the pipeline should meet, to count the seconds it did not.
    pub lag_target_secs: f64,
}

/// A load trace: records arriving per second, plus one-off bursts.
pub struct Trace {
    /// Name shown in the table.
    pub name: &'static str,
    /// Seconds to run.
    pub duration_secs: u64,
    /// Records arriving in second `t`, all partitions together.
    pub rate: Box<dyn Fn(u64) -> f64>,
    /// `(second, records)` appended at once (a batch upload).
    pub bursts: Vec<(u64, f64)>,
    /// Share of the traffic per partition (normalised); empty means even.
    pub weights: Vec<f64>,
    /// Replicas at the start.
    pub initial_replicas: u32,
    /// The group starts with no committed offsets; a partition gets one once the group
    /// has consumed from it (so a partition that never receives a record has none).
    pub new_group: bool,
    /// Replicas the load needs, and from which second: "time to enough replicas" counts
    /// from then until that many replicas are ready.
    pub need: (u32, u64),
}

/// What a scaler sees.
#[derive(Clone, Debug, PartialEq)]
pub struct View {
    /// Seconds since the start.
    pub t: u64,
    /// Offsets of every partition.
    pub partitions: Vec<PartitionOffsets>,
    /// Replicas asked for.
    pub replicas: u32,
    /// Replicas consuming.
    pub ready_replicas: u32,
    /// The group is paused for a rebalance.
    pub rebalancing: bool,
}

/// A scaler under test: called every second, returns the replica count it wants.
pub trait Scaler {
    /// Name shown in the table.
    fn name(&self) -> String;
    /// The replica count wanted now (the current count for no change).
    fn tick(&mut self, view: &View) -> u32;
}

/// Sluice's autoscaler, polled every `every_secs`.
pub struct Sluice {
    /// The scaler.
    pub autoscaler: Autoscaler,
    /// Seconds between readings.
    pub every_secs: u64,
    /// Every change it made: second, from, to, and why.
    pub log: Vec<(u64, u32, u32, String)>,
}

impl Scaler for Sluice {
    fn name(&self) -> String {
        format!("Sluice (every {}s)", self.every_secs)
    }

    fn tick(&mut self, view: &View) -> u32 {
        if self.every_secs == 0 || !view.t.is_multiple_of(self.every_secs) {
            return view.replicas;
        }
        let decision = self.autoscaler.observe(&Observation {
            now: Duration::from_secs(view.t),
            partitions: view.partitions.clone(),
            replicas: view.replicas,
            ready_replicas: view.ready_replicas,
            rebalancing: view.rebalancing,
        });
        if decision.changed {
            self.log.push((
                view.t,
                decision.previous,
                decision.replicas,
                decision.reason,
            ));
        }
        decision.replicas
    }
}

/// What one run measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SimResult {
    /// Seconds from when the load needs `need` replicas until that many are ready;
    /// `None` when never.
    pub reach_secs: Option<u64>,
    /// Replicas asked for, summed over time, in minutes.
    pub replica_minutes: f64,
    /// The part of `replica_minutes` spent with nothing arriving and nothing waiting.
    pub idle_replica_minutes: f64,
    /// How many times the replica count changed.
    pub changes: u32,
    /// The most records waiting at any second.
    pub peak_lag: f64,
    /// Seconds in which the records waiting could not drain within the lag target at
    /// the ready replicas' full speed (with arrivals continuing).
    pub over_target_secs: u64,
    /// Records still waiting at the end.
    pub final_lag: f64,
    /// Replicas asked for at the end.
    pub final_replicas: u32,
    /// `(second, replicas)` at every change.
    pub timeline: Vec<(u64, u32)>,
}

struct Partition {
    produced: f64,
    consumed: f64,
    /// The group has committed an offset here.
    committed: bool,
}

struct Cluster {
    config: ClusterConfig,
    partitions: Vec<Partition>,
    /// Second at which each replica is ready.
    replicas: Vec<u64>,
    paused_until: u64,
}

impl Cluster {
    fn ready(&self, t: u64) -> usize {
        self.replicas.iter().filter(|&&at| at <= t).count()
    }

    fn lag(&self) -> f64 {
        self.partitions
            .iter()
            .map(|p| p.produced - p.consumed)
            .sum()
    }

    fn view(&self, t: u64) -> View {
        View {
            t,
            partitions: self
                .partitions
                .iter()
                .enumerate()
                .map(|(i, p)| PartitionOffsets {
                    id: PartitionId {
                        topic: "input".to_string(),
                        partition: i32::try_from(i).unwrap_or(i32::MAX),
                    },
                    log_start: 0,
                    log_end: p.produced.floor() as i64,
                    committed: p.committed.then(|| p.consumed.floor() as i64),
                })
                .collect(),
            replicas: u32::try_from(self.replicas.len()).unwrap_or(u32::MAX),
            ready_replicas: u32::try_from(self.ready(t)).unwrap_or(u32::MAX),
            rebalancing: t < self.paused_until,
        }
    }

    fn append(&mut self, records: f64, weights: &[f64]) {
        for (p, w) in self.partitions.iter_mut().zip(weights) {
            p.produced += records * w;
        }
    }

    /// Changes the replica count: new replicas start; removed ones (those not ready
    /// first) leave at once, which rebalances the group.
    fn scale(&mut self, t: u64, to: usize) {
        let startup = self.config.startup_secs;
        while self.replicas.len() < to {
            self.replicas.push(t + startup);
        }
        if self.replicas.len() > to {
            self.replicas.sort_unstable();
            let removed = self.replicas.split_off(to);
            if removed.iter().any(|&at| at <= t) {
                self.paused_until = t + self.config.rebalance_secs;
            }
        }
    }

    /// Replicas ready this second (not those there from the start) join the group,
    /// which rebalances.
    fn join(&mut self, t: u64) {
        if t > 0 && self.replicas.contains(&t) {
            self.paused_until = t + self.config.rebalance_secs;
        }
    }

    /// One second of consumption.
    fn consume(&mut self, t: u64) {
        let ready = self.ready(t);
        if ready == 0 || t < self.paused_until {
            return;
        }
        for r in 0..ready {
            let mut mine: Vec<&mut Partition> = self
                .partitions
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| i % ready == r)
                .map(|(_, p)| p)
                .collect();
            // Water-filling: the budget is shared evenly, what a partition does not need
            // goes to the others.
            mine.sort_by(|a, b| (a.produced - a.consumed).total_cmp(&(b.produced - b.consumed)));
            let mut budget = self.config.capacity_per_replica;
            let count = mine.len();
            for (k, p) in mine.into_iter().enumerate() {
                let share = budget / (count - k) as f64;
                let take = (p.produced - p.consumed).min(share).max(0.0);
                p.consumed += take;
                p.committed |= take > 0.0;
                budget -= take;
            }
        }
    }
}

/// Replays `trace` on `config` with `scaler` driving the replica count.
pub fn run(config: &ClusterConfig, trace: &Trace, scaler: &mut dyn Scaler) -> SimResult {
    let partitions = config.partitions.max(1);
    let weights = normalised(&trace.weights, partitions);
    let mut cluster = Cluster {
        config: config.clone(),
        partitions: (0..partitions)
            .map(|_| Partition {
                produced: 0.0,
                consumed: 0.0,
                committed: !trace.new_group,
            })
            .collect(),
        replicas: vec![0; trace.initial_replicas as usize],
        paused_until: 0,
    };
    let (need, need_from) = trace.need;
    let mut out = SimResult::default();
    let mut replica_secs = 0u64;
    let mut idle_replica_secs = 0u64;
    for t in 0..trace.duration_secs {
        let rate = (trace.rate)(t).max(0.0);
        let burst: f64 = trace
            .bursts
            .iter()
            .filter(|(at, _)| *at == t)
            .map(|(_, n)| n)
            .sum();
        cluster.append(rate + burst, &weights);
        cluster.join(t);

        let view = cluster.view(t);
        let wanted = scaler.tick(&view);
        if wanted != view.replicas {
            out.changes += 1;
            out.timeline.push((t, wanted));
            cluster.scale(t, wanted as usize);
            // A replica that starts at once joins at once.
            cluster.join(t);
        }
        cluster.consume(t);

        replica_secs += cluster.replicas.len() as u64;
        let lag = cluster.lag();
        if rate + burst <= 0.0 && lag < 1.0 {
            idle_replica_secs += cluster.replicas.len() as u64;
        }
        out.peak_lag = out.peak_lag.max(lag);
        let spare = cluster.ready(t) as f64 * config.capacity_per_replica - rate;
        if lag >= 1.0 && (spare <= 0.0 || lag / spare > config.lag_target_secs) {
            out.over_target_secs += 1;
        }
        if out.reach_secs.is_none() && t >= need_from && cluster.ready(t) >= need as usize {
            out.reach_secs = Some(t - need_from);
        }
    }
    out.replica_minutes = replica_secs as f64 / 60.0;
    out.idle_replica_minutes = idle_replica_secs as f64 / 60.0;
    out.final_lag = cluster.lag();
    out.final_replicas = u32::try_from(cluster.replicas.len()).unwrap_or(u32::MAX);
    out
}

fn normalised(weights: &[f64], partitions: usize) -> Vec<f64> {
    let mut w: Vec<f64> = (0..partitions)
        .map(|i| weights.get(i).copied().unwrap_or(1.0).max(0.0))
        .collect();
    if weights.is_empty() {
        w = vec![1.0; partitions];
    }
    let sum: f64 = w.iter().sum();
    if sum > 0.0 {
        w.iter_mut().for_each(|x| *x /= sum);
    } else {
        w = vec![1.0 / partitions as f64; partitions];
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(u32);
    impl Scaler for Fixed {
        fn name(&self) -> String {
            "fixed".into()
        }
        fn tick(&mut self, _: &View) -> u32 {
            self.0
        }
    }

    fn config() -> ClusterConfig {
        ClusterConfig {
            partitions: 4,
            capacity_per_replica: 100.0,
            startup_secs: 10,
            rebalance_secs: 5,
            lag_target_secs: 30.0,
        }
    }

    #[test]
    fn replicas_consume_at_their_capacity_after_startup_and_rebalance() {
        let trace = Trace {
            name: "burst",
            duration_secs: 30,
            rate: Box::new(|_| 0.0),
            bursts: vec![(0, 10_000.0)],
            weights: vec![],
            initial_replicas: 0,
            new_group: false,
            need: (2, 0),
        };
        let out = run(&config(), &trace, &mut Fixed(2));
        // Ready at 10, paused until 15, then 15 s x 2 x 100.
        assert!(
            (out.final_lag - (10_000.0 - 3_000.0)).abs() < 1e-6,
            "{out:?}"
        );
        assert_eq!(out.reach_secs, Some(10));
        assert_eq!(out.changes, 1);
        assert_eq!(out.replica_minutes, 1.0);
    }

    #[test]
    fn one_replica_cannot_read_one_partition_faster_than_its_capacity() {
        let trace = Trace {
            name: "hot",
            duration_secs: 20,
            rate: Box::new(|_| 0.0),
            bursts: vec![(0, 1_000.0)],
            weights: vec![1.0, 0.0, 0.0, 0.0],
            initial_replicas: 4,
            new_group: false,
            need: (1, 0),
        };
        let out = run(&config(), &trace, &mut Fixed(4));
        // Four replicas, but only the one reading partition 0 has work: 100/s.
        assert!((out.final_lag - 0.0).abs() < 1e-6, "{out:?}");
        let trace = Trace {
            duration_secs: 5,
            ..trace
        };
        let out = run(&config(), &trace, &mut Fixed(4));
        assert!((out.final_lag - 500.0).abs() < 1e-6, "{out:?}");
    }
}
