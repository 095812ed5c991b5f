//! What changing the replica count costs, measured: how long until new replicas consume
//! (start-up plus the rebalance they trigger), and how long a rebalance stops the group.
//! Records keep arriving meanwhile, so sizing counts them.

use std::time::Duration;

use super::observation::Observation;

/// Until measured: a replica starts and joins in about 15 s.
const DEFAULT_DELAY: Duration = Duration::from_secs(15);
/// Until measured: a rebalance pauses the group for about 5 s (with the cooperative
/// protocol only the moved partitions stop, so this is the cautious side).
const DEFAULT_PAUSE: Duration = Duration::from_secs(5);
/// Weight of a new measurement.
const WEIGHT: f64 = 0.5;
/// Measurements above this are outliers (a replica that could not start), not a cost.
const CEILING: Duration = Duration::from_secs(300);

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ChangeCost {
    delay: f64,
    pause: f64,
    scaled_up_at: Option<Duration>,
    rebalancing_since: Option<Duration>,
}

impl ChangeCost {
    pub fn new() -> Self {
        Self {
            delay: DEFAULT_DELAY.as_secs_f64(),
            pause: DEFAULT_PAUSE.as_secs_f64(),
            scaled_up_at: None,
            rebalancing_since: None,
        }
    }

    /// Seconds from asking for more replicas until they consume.
    pub fn delay_secs(&self) -> f64 {
        self.delay
    }

    /// Seconds a rebalance stops the group.
    pub fn pause_secs(&self) -> f64 {
        self.pause
    }

    /// A scale-up was decided at `at`.
    pub fn scaled_up(&mut self, at: Duration) {
        self.scaled_up_at = Some(at);
    }

    /// Learns from a reading: the end of a scale-up (all replicas ready, no rebalance)
    /// and the end of a rebalance.
    pub fn observe(&mut self, obs: &Observation) {
        if let Some(since) = self.rebalancing_since
            && !obs.rebalancing
        {
            learn(&mut self.pause, obs.now.saturating_sub(since));
            self.rebalancing_since = None;
        }
        if obs.rebalancing {
            self.rebalancing_since.get_or_insert(obs.now);
        }
        if let Some(at) = self.scaled_up_at
            && obs.replicas > 0
            && obs.ready_replicas >= obs.replicas
            && !obs.rebalancing
        {
            learn(&mut self.delay, obs.now.saturating_sub(at));
            self.scaled_up_at = None;
        }
    }

    /// Forgets unfinished measurements (the clock was reset).
    pub fn reset_pending(&mut self) {
        self.scaled_up_at = None;
        self.rebalancing_since = None;
    }
}

fn learn(estimate: &mut f64, measured: Duration) {
    if measured <= CEILING {
        *estimate += WEIGHT * (measured.as_secs_f64() - *estimate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(secs: u64, replicas: u32, ready: u32, rebalancing: bool) -> Observation {
        Observation {
            now: Duration::from_secs(secs),
            partitions: vec![],
            replicas,
            ready_replicas: ready,
            rebalancing,
        }
    }

    #[test]
    fn learns_start_up_delay_and_rebalance_pause() {
        let mut cost = ChangeCost::new();
        cost.scaled_up(Duration::from_secs(100));
        cost.observe(&obs(105, 3, 1, false));
        cost.observe(&obs(110, 3, 3, true));
        cost.observe(&obs(125, 3, 3, true));
        cost.observe(&obs(130, 3, 3, false));
        // Pause 20 s (110..130), delay 30 s (100..130), each averaged with the default.
        assert_eq!(cost.pause_secs(), 12.5);
        assert_eq!(cost.delay_secs(), 22.5);
    }
}
