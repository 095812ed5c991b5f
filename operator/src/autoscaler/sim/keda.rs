//! KEDA's Apache Kafka scaler and the HPA it drives, as `ANCHORS.md` describes them,
//! for the benchmark: per-partition `logEnd - committed` (1 for a partition with no
//! commit under `offsetResetPolicy: latest`), total capped at `partitions x
//! lagThreshold`, HPA `ceil(totalLag / lagThreshold)` with its 10% tolerance every 15 s,
//! scale-up at most `max(+4 pods, x2)` per 60 s, scale-down to the highest
//! recommendation of the last 300 s, and 0 <-> 1 by KEDA itself (polling every 30 s,
//! active when lag > activationLagThreshold, back to 0 after a 300 s cooldown).

use std::collections::VecDeque;

use super::{Scaler, View};

/// KEDA ScaledObject and HPA settings.
#[derive(Clone, Debug, PartialEq)]
pub struct KedaSettings {
    /// `lagThreshold`: target lag per replica (KEDA's default is 10).
    pub lag_threshold: f64,
    /// `activationLagThreshold`: active (0 -> 1) above this lag (default 0).
    pub activation_lag_threshold: f64,
    /// `minReplicaCount` (KEDA's default is 0).
    pub min_replicas: u32,
    /// `maxReplicaCount`.
    pub max_replicas: u32,
    /// `pollingInterval`, seconds (default 30).
    pub polling_secs: u64,
    /// `cooldownPeriod`, seconds (default 300).
    pub cooldown_secs: u64,
    /// HPA sync period, seconds (default 15).
    pub hpa_sync_secs: u64,
    /// HPA scale-down stabilization window, seconds (default 300).
    pub scale_down_window_secs: u64,
    /// Period of the HPA scale-up limit, seconds (60 per ANCHORS.md).
    pub scale_up_period_secs: u64,
    /// HPA tolerance: no change while the usage ratio is within this of 1 (default 0.1).
    pub tolerance: f64,
}

impl KedaSettings {
    /// KEDA's defaults with the given threshold and replica bounds.
    pub fn defaults(lag_threshold: f64, min_replicas: u32, max_replicas: u32) -> Self {
        Self {
            lag_threshold,
            activation_lag_threshold: 0.0,
            min_replicas,
            max_replicas,
            polling_secs: 30,
            cooldown_secs: 300,
            hpa_sync_secs: 15,
            scale_down_window_secs: 300,
            scale_up_period_secs: 60,
            tolerance: 0.1,
        }
    }
}

/// The KEDA + HPA model.
pub struct Keda {
    settings: KedaSettings,
    last_active: Option<u64>,
    recommendations: VecDeque<(u64, u32)>,
    scale_ups: VecDeque<(u64, u32)>,
}

impl Keda {
    /// A model with no history.
    pub fn new(settings: KedaSettings) -> Self {
        Self {
            settings,
            last_active: None,
            recommendations: VecDeque::new(),
            scale_ups: VecDeque::new(),
        }
    }

    /// KEDA's metric: total lag, capped so HPA never asks for more than the partitions.
    fn total_lag(&self, view: &View) -> f64 {
        let lag: i64 = view
            .partitions
            .iter()
            .map(|p| match p.committed {
                None => 1,
                Some(c) => (p.log_end - c).max(0),
            })
            .sum();
        let cap = view.partitions.len() as f64 * self.settings.lag_threshold;
        (lag as f64).min(cap)
    }

    /// One HPA sync.
    fn hpa(&mut self, t: u64, current: u32, lag: f64) -> u32 {
        let s = &self.settings;
        let threshold = s.lag_threshold.max(f64::MIN_POSITIVE);
        let ratio = lag / (threshold * f64::from(current));
        let raw = if (ratio - 1.0).abs() <= s.tolerance {
            current
        } else {
            (lag / threshold).ceil().min(f64::from(u32::MAX)) as u32
        };
        let rec = raw.clamp(s.min_replicas.max(1), s.max_replicas.max(1));
        self.recommendations.push_back((t, rec));
        while self
            .recommendations
            .front()
            .is_some_and(|(at, _)| at + s.scale_down_window_secs < t)
        {
            self.recommendations.pop_front();
        }
        while self
            .scale_ups
            .front()
            .is_some_and(|(at, _)| at + s.scale_up_period_secs <= t)
        {
            self.scale_ups.pop_front();
        }
        if rec > current {
            let added: u32 = self.scale_ups.iter().map(|(_, n)| n).sum();
            let base = current.saturating_sub(added);
            let limit = (base + 4).max(base.saturating_mul(2));
            let to = rec.min(limit).max(current);
            if to > current {
                self.scale_ups.push_back((t, to - current));
            }
            to
        } else {
            let highest = self
                .recommendations
                .iter()
                .map(|(_, n)| *n)
                .max()
                .unwrap_or(current);
            highest.min(current)
        }
    }
}

impl Scaler for Keda {
    fn name(&self) -> String {
        format!("KEDA lagThreshold={}", self.settings.lag_threshold)
    }

    fn tick(&mut self, view: &View) -> u32 {
        let t = view.t;
        let lag = self.total_lag(view);
        let mut desired = view.replicas;
        if self.settings.polling_secs > 0 && t.is_multiple_of(self.settings.polling_secs) {
            let active = lag > self.settings.activation_lag_threshold;
            if active {
                self.last_active = Some(t);
            }
            let quiet_for = t - self.last_active.unwrap_or(0).min(t);
            if desired == 0 && active {
                desired = self.settings.min_replicas.max(1);
            } else if desired > 0
                && self.settings.min_replicas == 0
                && !active
                && quiet_for >= self.settings.cooldown_secs
            {
                desired = 0;
            }
        }
        if desired > 0
            && self.settings.hpa_sync_secs > 0
            && t.is_multiple_of(self.settings.hpa_sync_secs)
        {
            desired = self.hpa(t, desired, lag);
        }
        desired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscaler::observation::{PartitionId, PartitionOffsets};

    fn view(t: u64, lags: &[i64], replicas: u32) -> View {
        View {
            t,
            partitions: lags
                .iter()
                .enumerate()
                .map(|(i, lag)| PartitionOffsets {
                    id: PartitionId {
                        topic: "in".into(),
                        partition: i as i32,
                    },
                    log_start: 0,
                    log_end: 1_000_000,
                    committed: Some(1_000_000 - lag),
                })
                .collect(),
            replicas,
            ready_replicas: replicas,
            rebalancing: false,
        }
    }

    #[test]
    fn scale_up_is_rate_limited_and_capped_by_partitions() {
        let mut k = Keda::new(KedaSettings::defaults(10.0, 1, 100));
        // 12 partitions with lots of lag: capped at 12 x 10 -> 12 replicas wanted.
        let v = view(0, &[10_000; 12], 1);
        assert_eq!(k.tick(&v), 5, "1 + 4 in the first minute");
        let v = view(15, &[10_000; 12], 5);
        assert_eq!(k.tick(&v), 5, "still within the same 60 s");
        let v = view(60, &[10_000; 12], 5);
        assert_eq!(k.tick(&v), 10);
        let v = view(120, &[10_000; 12], 10);
        assert_eq!(k.tick(&v), 12);
    }

    #[test]
    fn scale_down_waits_for_the_window() {
        let mut k = Keda::new(KedaSettings::defaults(10.0, 1, 100));
        assert_eq!(k.tick(&view(0, &[10; 4], 1)), 4);
        assert_eq!(k.tick(&view(15, &[0; 4], 4)), 4);
        assert_eq!(k.tick(&view(300, &[0; 4], 4)), 4);
        assert_eq!(k.tick(&view(315, &[0; 4], 4)), 1);
    }
}
