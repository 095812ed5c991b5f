//! How many replicas a demand needs, given one replica's capacity.

use super::observation::PartitionId;

/// A replica is sized to run at this share of its measured capacity, leaving room to
/// drain what arrives in bursts; scaling up only triggers when the current replicas fall
/// behind, so the band between the two is the hysteresis that stops flapping.
pub(crate) const TARGET_UTILIZATION: f64 = 0.9;

/// How far past its capacity the replica that reads the hottest partition may be loaded
/// before more replicas are added for it: below this, adding replicas barely helps.
const HOT_TOLERANCE: f64 = 0.1;

/// Rounding slack, so 2.0000000001 replicas are 2.
const EPSILON: f64 = 1e-9;

/// Records per second each partition needs to keep up with arrivals and drain its
/// backlog within the lag target.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Demand {
    pub by_partition: Vec<(PartitionId, f64)>,
    /// The arrival part of it, per partition (same order).
    pub arrivals: Vec<f64>,
    /// The arrival part of it, all partitions.
    pub arrival: f64,
}

impl Demand {
    /// Only the arrivals, without the backlog.
    pub fn arrivals_only(&self) -> Demand {
        Demand {
            by_partition: self
                .by_partition
                .iter()
                .zip(&self.arrivals)
                .map(|((id, _), a)| (id.clone(), *a))
                .collect(),
            arrivals: self.arrivals.clone(),
            arrival: self.arrival,
        }
    }

    /// This demand plus `records` more to drain within `target_secs`, spread over the
    /// partitions like the arrivals (they are records that will arrive), or evenly when
    /// no arrival rate is known yet.
    pub fn plus_arriving(&self, records: f64, target_secs: f64) -> Demand {
        let partitions = self.by_partition.len();
        if !(records > 0.0 && target_secs > 0.0 && partitions > 0) {
            return self.clone();
        }
        let mut more = self.clone();
        for (i, (_, d)) in more.by_partition.iter_mut().enumerate() {
            let share = if self.arrival > 0.0 {
                self.arrivals.get(i).copied().unwrap_or(0.0) / self.arrival
            } else {
                1.0 / partitions as f64
            };
            *d += records * share / target_secs;
        }
        more
    }

    pub fn total(&self) -> f64 {
        self.by_partition.iter().map(|(_, d)| d).sum()
    }

    fn hottest(&self) -> Option<&(PartitionId, f64)> {
        self.by_partition.iter().max_by(|a, b| a.1.total_cmp(&b.1))
    }
}

/// The replicas a demand needs.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Sizing {
    /// The larger of the two counts below.
    pub replicas: u32,
    /// Enough replicas for the total demand, each partition counting for at most one
    /// replica (one partition is read by one replica: more cannot make it faster).
    pub total: u32,
    /// When the hottest partition needs more than `total`: which partition, its demand,
    /// and the replicas it takes so that the replica reading it keeps up.
    pub hot: Option<(PartitionId, f64, u32)>,
}

/// Sizes for `demand` with `capacity` records/s per replica, each replica loaded to
/// `utilization` of it. Partitions are assumed to be spread evenly by count (what Kafka's
/// assignors do), so with `n` replicas the hottest partition shares its replica with up
/// to `ceil(P/n) - 1` others.
pub(crate) fn size(demand: &Demand, capacity: f64, utilization: f64) -> Sizing {
    if !(capacity.is_finite() && capacity > 0.0) {
        return Sizing {
            replicas: 0,
            total: 0,
            hot: None,
        };
    }
    let per_replica = capacity * utilization.clamp(0.01, 1.0);
    let share: f64 = demand
        .by_partition
        .iter()
        .map(|(_, d)| (d.max(0.0) / per_replica).min(1.0))
        .sum();
    let total = replicas_for(share);
    let hot = demand.hottest().and_then(|(id, hot)| {
        let partitions = demand.by_partition.len();
        if *hot <= 0.0 || partitions < 2 {
            return None;
        }
        let others = (demand.total() - hot).max(0.0) / (partitions - 1) as f64;
        let needed = (1..=partitions)
            .find(|&n| {
                let sharing = partitions.div_ceil(n) - 1;
                hot.min(capacity) + sharing as f64 * others <= capacity * (1.0 + HOT_TOLERANCE)
            })
            .unwrap_or(partitions);
        let needed = u32::try_from(needed).unwrap_or(u32::MAX);
        (needed > total).then(|| (id.clone(), *hot, needed))
    });
    Sizing {
        replicas: hot.as_ref().map_or(total, |(_, _, n)| *n),
        total,
        hot,
    }
}

fn replicas_for(share: f64) -> u32 {
    let n = (share - EPSILON).ceil();
    if n <= 0.0 {
        0
    } else if n >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        n as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demand(values: &[f64]) -> Demand {
        Demand {
            by_partition: values
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let id = PartitionId {
                        topic: "in".into(),
                        partition: i as i32,
                    };
                    (id, *d)
                })
                .collect(),
            arrivals: vec![0.0; values.len()],
            arrival: 0.0,
        }
    }

    #[test]
    fn even_load_sizes_by_total_at_target_utilization() {
        // 12 partitions x 150/s = 1800/s; 1000/s per replica at 90% -> 2 replicas,
        // and with 2 replicas each reads 6 x 150 = 900/s: fine.
        let s = size(&demand(&[150.0; 12]), 1000.0, TARGET_UTILIZATION);
        assert_eq!(s.replicas, 2);
        assert_eq!(s.hot, None);
    }

    #[test]
    fn assignment_granularity_is_respected() {
        // 12 x 375/s = 4500/s: 5 replicas by total, but with 5 replicas two of them read
        // 3 partitions = 1125/s > 1100/s; 6 replicas give each 2 partitions.
        let s = size(&demand(&[375.0; 12]), 1000.0, TARGET_UTILIZATION);
        assert_eq!(s.total, 5);
        assert_eq!(s.replicas, 6);
    }

    #[test]
    fn a_hot_partition_counts_for_one_replica_only() {
        // One partition with a huge backlog, eleven quiet ones: two replicas at most
        // help (the hot one alone, and the rest), not twelve.
        let mut d = vec![1.0; 12];
        d[3] = 50_000.0;
        let s = size(&demand(&d), 1000.0, TARGET_UTILIZATION);
        assert!(s.replicas <= 2, "{s:?}");
    }

    #[test]
    fn a_hot_partition_gets_a_replica_that_is_not_overloaded() {
        // Hot partition at 800/s, eleven at 100/s: 1900/s total -> 3 by total, but with 3
        // replicas the hot one shares with 3 others (1100/s, the edge); with 2 it would
        // share with 5 (1300/s).
        let mut d = vec![100.0; 12];
        d[0] = 800.0;
        let s = size(&demand(&d), 1000.0, TARGET_UTILIZATION);
        assert_eq!(s.total, 3);
        assert_eq!(s.replicas, 3);
        d[0] = 950.0;
        let s = size(&demand(&d), 1000.0, TARGET_UTILIZATION);
        // 950 + k*100 <= 1100 -> k = 1 -> ceil(12/n) = 2 -> n = 6.
        assert_eq!(s.replicas, 6);
        assert_eq!(s.hot.map(|h| h.2), Some(6));
    }

    #[test]
    fn arriving_records_are_spread_like_the_arrivals() {
        let mut d = demand(&[0.0; 2]);
        let even = d.plus_arriving(600.0, 30.0);
        assert_eq!(even.by_partition[0].1, 10.0);
        d.arrivals = vec![3.0, 1.0];
        d.arrival = 4.0;
        let skewed = d.plus_arriving(600.0, 30.0);
        assert_eq!(skewed.by_partition[0].1, 15.0);
        assert_eq!(skewed.by_partition[1].1, 5.0);
    }

    #[test]
    fn no_capacity_or_no_demand_sizes_zero() {
        assert_eq!(
            size(&demand(&[0.0; 4]), 1000.0, TARGET_UTILIZATION).replicas,
            0
        );
        assert_eq!(
            size(&demand(&[10.0; 4]), 0.0, TARGET_UTILIZATION).replicas,
            0
        );
        assert_eq!(
            size(&demand(&[10.0; 4]), f64::NAN, TARGET_UTILIZATION).replicas,
            0
        );
    }
}
