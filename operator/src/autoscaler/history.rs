//! A short ring of past readings, and the rates and load they show.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use sluice_crds::pipeline::StartFrom;

use super::observation::{Observation, PartitionId};

/// One partition in one sample.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PartSample {
    pub log_start: i64,
    pub log_end: i64,
    /// Committed offset when it points into the log.
    pub committed: Option<i64>,
    /// Where the group reads next.
    pub position: i64,
    /// Records waiting that are work (transaction-marker residue removed).
    pub lag: u64,
}

/// One reading of a pipeline.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Sample {
    pub at: Duration,
    pub replicas: u32,
    pub ready: u32,
    pub rebalancing: bool,
    pub parts: BTreeMap<PartitionId, PartSample>,
}

impl Sample {
    /// Replicas were consuming, with no rebalance in progress.
    fn consuming(&self) -> bool {
        !self.rebalancing && self.ready > 0
    }

    /// Distinct input partitions in this sample.
    pub fn partition_count(&self) -> usize {
        self.parts.len()
    }

    pub fn total_lag(&self) -> u64 {
        self.parts
            .values()
            .fold(0u64, |total, p| total.saturating_add(p.lag))
    }

    /// The partition with the most lag, and that lag.
    pub fn worst(&self) -> Option<(&PartitionId, u64)> {
        self.parts
            .iter()
            .map(|(id, p)| (id, p.lag))
            .max_by_key(|(_, lag)| *lag)
    }
}

/// Records appended to a partition between two samples.
fn produced(a: &PartSample, b: &PartSample) -> u64 {
    u64::try_from(b.log_end - a.log_end).unwrap_or(0)
}

/// Records the group consumed on a partition between two samples. Records skipped
/// because retention deleted them are not counted; neither is a reset backwards.
fn consumed(a: &PartSample, b: &PartSample) -> u64 {
    match b.committed {
        None => 0,
        Some(now) => {
            let from = a.committed.unwrap_or(a.position).max(b.log_start);
            u64::try_from(now - from).unwrap_or(0)
        }
    }
}

/// Average rates over a window.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Rates {
    /// Records appended per second, all partitions.
    pub arrival: f64,
    /// Records consumed per second, all partitions.
    pub consumption: f64,
    /// Records appended per second, per partition: the median of the intervals, so a
    /// one-off batch (already counted as lag) does not count as a lasting rate too.
    pub arrival_by_partition: BTreeMap<PartitionId, f64>,
    /// Anything was appended in the window.
    pub any_arrival: bool,
}

/// The median of some rates (0 for none).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// What the newest interval says about the replicas' capacity.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Load {
    /// Not enough information (first sample).
    Unknown,
    /// No partition holds more than a couple of seconds of work: the replicas keep up.
    KeepingUp,
    /// Some partitions hold a real backlog at both ends of the interval, so the replicas
    /// reading them worked flat out: this is what one replica does per second.
    Saturated {
        /// Records per second, per replica.
        per_replica: f64,
        /// Every partition was behind, so every replica worked flat out and this is
        /// what one does; otherwise it is a floor on it.
        exact: bool,
    },
    /// A real backlog, but replicas were starting or rebalancing: capacity not measurable.
    Backlogged,
    /// A real backlog on steady replicas, but nothing was consumed.
    Stalled,
    /// A backlog appeared during the interval (none at its start), on steady replicas
    /// that consumed: they worked flat out for only part of it, so what one of them
    /// consumed per second is a floor on its capacity, not a measurement.
    Rising { per_replica_floor: f64 },
}

impl Load {
    /// Some partition holds more work than the replicas clear in a couple of seconds.
    pub fn behind(&self) -> bool {
        matches!(
            self,
            Load::Saturated { .. } | Load::Backlogged | Load::Stalled
        )
    }
}

/// The fewest records that count as a backlog on a partition; below it, lag is noise.
const MIN_BACKLOG_RECORDS: f64 = 10.0;

/// A ring of samples covering at least `keep`.
#[derive(Clone, Debug)]
pub(crate) struct History {
    samples: VecDeque<Sample>,
    keep: Duration,
}

impl History {
    pub fn new(keep: Duration) -> Self {
        Self {
            samples: VecDeque::new(),
            keep,
        }
    }

    pub fn clear(&mut self) {
        self.samples.clear();
    }

    pub fn latest(&self) -> Option<&Sample> {
        self.samples.back()
    }

    /// Records a reading. A partition whose log end did not move since the previous
    /// sample and that is at most one record behind holds a transaction marker, not a
    /// record: a consumer's committed offset never passes the control record that ends
    /// a transaction (and librdkafka reads committed data by default), so that residue
    /// is not work and must not keep a replica up. A real record always moves the log
    /// end, so the rule never hides one that arrived since the previous sample.
    pub fn push(&mut self, obs: &Observation, start_from: StartFrom) {
        if self.samples.back().is_some_and(|s| s.at == obs.now) {
            self.samples.pop_back();
        }
        let previous = self.samples.back();
        let parts = obs
            .partitions
            .iter()
            .map(|p| {
                let (log_start, log_end) = p.bounds();
                let mut lag = p.lag(start_from);
                let quiet = previous
                    .and_then(|s| s.parts.get(&p.id))
                    .is_some_and(|before| before.log_end == log_end);
                if quiet && lag <= 1 {
                    lag = 0;
                }
                let sample = PartSample {
                    log_start,
                    log_end,
                    committed: p.valid_committed(),
                    position: p.read_position(start_from),
                    lag,
                };
                (p.id.clone(), sample)
            })
            .collect();
        self.samples.push_back(Sample {
            at: obs.now,
            replicas: obs.replicas,
            ready: obs.ready_replicas,
            rebalancing: obs.rebalancing,
            parts,
        });
        let now = obs.now;
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|s| now.saturating_sub(s.at) >= self.keep)
        {
            self.samples.pop_front();
        }
    }

    /// Arrival and consumption rates over the last `window` (at least one interval).
    pub fn rates(&self, window: Duration) -> Rates {
        let Some(newest) = self.samples.back() else {
            return Rates::default();
        };
        let len = self.samples.len();
        let first = self
            .samples
            .iter()
            .position(|s| newest.at.saturating_sub(s.at) <= window)
            .unwrap_or(len - 1)
            .min(len.saturating_sub(2));
        let span = newest
            .at
            .saturating_sub(self.samples[first].at)
            .as_secs_f64();
        if span <= 0.0 {
            return Rates::default();
        }
        let mut produced_total = 0u64;
        let mut consumed_total = 0u64;
        let mut by_partition: BTreeMap<&PartitionId, Vec<f64>> = BTreeMap::new();
        let pairs = self
            .samples
            .iter()
            .skip(first)
            .zip(self.samples.iter().skip(first + 1));
        for (a, b) in pairs {
            let dt = b.at.saturating_sub(a.at).as_secs_f64();
            if dt <= 0.0 {
                continue;
            }
            for (id, pb) in &b.parts {
                let Some(pa) = a.parts.get(id) else { continue };
                let p = produced(pa, pb);
                produced_total = produced_total.saturating_add(p);
                consumed_total = consumed_total.saturating_add(consumed(pa, pb));
                by_partition.entry(id).or_default().push(p as f64 / dt);
            }
        }
        Rates {
            arrival: produced_total as f64 / span,
            consumption: consumed_total as f64 / span,
            arrival_by_partition: newest
                .parts
                .keys()
                .map(|id| {
                    let rate = by_partition.get_mut(id).map_or(0.0, |r| median(r));
                    (id.clone(), rate)
                })
                .collect(),
            any_arrival: produced_total > 0,
        }
    }

    /// Something was appended between the two newest samples.
    pub fn arrived_last_interval(&self) -> bool {
        let len = self.samples.len();
        if len < 2 {
            return false;
        }
        let (a, b) = (&self.samples[len - 2], &self.samples[len - 1]);
        b.parts
            .iter()
            .any(|(id, pb)| a.parts.get(id).is_some_and(|pa| produced(pa, pb) > 0))
    }

    /// The newest interval started at or after `since`, with every replica ready and
    /// consuming throughout: a change made at `since` has taken effect.
    pub fn settled_since(&self, since: Duration) -> bool {
        let len = self.samples.len();
        if len < 2 {
            return false;
        }
        let (a, b) = (&self.samples[len - 2], &self.samples[len - 1]);
        a.at >= since
            && a.consuming()
            && b.consuming()
            && a.ready == b.ready
            && b.ready >= b.replicas
    }

    /// What the newest interval says about load. A partition is backlogged when, at both
    /// ends of the interval, it holds more than `backlog_secs` of its own traffic (and
    /// at least a few records): a consumer that keeps up holds only what arrived since
    /// its last commit.
    pub fn load(&self, backlog_secs: f64) -> Load {
        let len = self.samples.len();
        if len < 2 {
            return Load::Unknown;
        }
        let (a, b) = (&self.samples[len - 2], &self.samples[len - 1]);
        let dt = b.at.saturating_sub(a.at).as_secs_f64();
        if dt <= 0.0 {
            return Load::Unknown;
        }
        let mut backlogged = 0u32;
        let mut compared = 0u32;
        let mut rising = false;
        let mut consumed_there = 0u64;
        let mut consumed_all = 0u64;
        for (id, pb) in &b.parts {
            let Some(pa) = a.parts.get(id) else { continue };
            compared += 1;
            let c = consumed(pa, pb);
            consumed_all = consumed_all.saturating_add(c);
            let rate = (c.max(produced(pa, pb))) as f64 / dt;
            let threshold = (rate * backlog_secs).max(MIN_BACKLOG_RECORDS);
            if pa.lag as f64 >= threshold && pb.lag as f64 >= threshold {
                backlogged += 1;
                consumed_there = consumed_there.saturating_add(c);
            } else if pb.lag as f64 >= threshold {
                rising = true;
            }
        }
        let steady = a.consuming() && b.consuming() && a.ready == b.ready;
        if backlogged == 0 {
            if rising && steady && consumed_all > 0 {
                let per_replica_floor = consumed_all as f64 / dt / f64::from(b.ready.max(1));
                return Load::Rising { per_replica_floor };
            }
            return Load::KeepingUp;
        }
        if !steady {
            return Load::Backlogged;
        }
        if consumed_there == 0 {
            return Load::Stalled;
        }
        // Two floors on what one replica does, both true whatever the assignment: the
        // average over the ready replicas, and what the replicas reading backlogged
        // partitions (at most one per such partition) consumed from them. With every
        // replica behind the first is exact; with a hot partition the second is close.
        let ready = f64::from(b.ready);
        let busy = f64::from(backlogged.min(b.ready).max(1));
        let per_replica = (consumed_all as f64 / dt / ready).max(consumed_there as f64 / dt / busy);
        Load::Saturated {
            per_replica,
            exact: backlogged == compared,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscaler::observation::PartitionOffsets;

    fn obs(secs: u64, parts: &[(i64, Option<i64>)], replicas: u32) -> Observation {
        Observation {
            now: Duration::from_secs(secs),
            partitions: parts
                .iter()
                .enumerate()
                .map(|(i, (end, committed))| PartitionOffsets {
                    id: PartitionId {
                        topic: "in".into(),
                        partition: i as i32,
                    },
                    log_start: 0,
                    log_end: *end,
                    committed: *committed,
                })
                .collect(),
            replicas,
            ready_replicas: replicas,
            rebalancing: false,
        }
    }

    #[test]
    fn rates_come_from_offset_deltas() {
        let mut h = History::new(Duration::from_secs(120));
        h.push(
            &obs(0, &[(1000, Some(1000)), (0, Some(0))], 1),
            StartFrom::Earliest,
        );
        h.push(
            &obs(10, &[(3000, Some(2000)), (500, Some(500))], 1),
            StartFrom::Earliest,
        );
        let r = h.rates(Duration::from_secs(60));
        assert_eq!(r.arrival, 250.0);
        assert_eq!(r.consumption, 150.0);
        assert!(r.any_arrival);
    }

    #[test]
    fn marker_residue_on_a_quiet_partition_is_not_lag() {
        let mut h = History::new(Duration::from_secs(120));
        h.push(&obs(0, &[(101, Some(100))], 1), StartFrom::Earliest);
        // First reading: one record could be real.
        assert_eq!(h.latest().unwrap().total_lag(), 1);
        h.push(&obs(5, &[(101, Some(100))], 1), StartFrom::Earliest);
        assert_eq!(h.latest().unwrap().total_lag(), 0);
        // A new record moves the log end: counted again.
        h.push(&obs(10, &[(102, Some(100))], 1), StartFrom::Earliest);
        assert_eq!(h.latest().unwrap().total_lag(), 2);
    }

    #[test]
    fn saturated_interval_measures_per_replica_capacity() {
        let mut h = History::new(Duration::from_secs(120));
        // Two backlogged partitions, two replicas, each consuming 100/s.
        h.push(
            &obs(0, &[(10_000, Some(0)), (10_000, Some(0))], 2),
            StartFrom::Earliest,
        );
        h.push(
            &obs(5, &[(10_000, Some(500)), (10_000, Some(500))], 2),
            StartFrom::Earliest,
        );
        assert_eq!(
            h.load(2.0),
            Load::Saturated {
                per_replica: 100.0,
                exact: true
            }
        );
    }

    #[test]
    fn records_in_flight_are_not_a_backlog() {
        let mut h = History::new(Duration::from_secs(120));
        // 900/s arriving, consumer 900 records behind (one second of commits).
        h.push(&obs(0, &[(9_000, Some(8_100))], 1), StartFrom::Earliest);
        h.push(&obs(5, &[(13_500, Some(12_600))], 1), StartFrom::Earliest);
        assert_eq!(h.load(2.0), Load::KeepingUp);
    }

    #[test]
    fn history_is_trimmed_to_its_window() {
        let mut h = History::new(Duration::from_secs(20));
        for t in 0..100 {
            h.push(&obs(t * 5, &[(0, Some(0))], 1), StartFrom::Earliest);
        }
        assert!(h.samples.len() <= 6, "{}", h.samples.len());
    }
}
