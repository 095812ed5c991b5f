//! `spec.rateLimit`: spaces the records one replica takes so it consumes at most a set
//! number per second.
//!
//! Pure (time comes in as arguments), so the rule can be tested without a clock. A record
//! may be taken once the previous one's slot has passed; after a quiet spell at most
//! [`BURST`] worth of slots is saved up, so the rate over any longer span stays at the
//! limit and what the autoscaler measures as a replica's capacity is the limit itself.

use std::time::{Duration, Instant};

/// How much unused time a quiet replica may spend at once after it.
pub const BURST: Duration = Duration::from_millis(100);

/// The pace of one consumer.
#[derive(Debug, Clone)]
pub struct Pacer {
    interval: Duration,
    next: Option<Instant>,
}

impl Pacer {
    /// At most `per_second` records per second (at least one).
    pub fn new(per_second: u32) -> Self {
        Self {
            interval: Duration::from_secs(1) / per_second.max(1),
            next: None,
        }
    }

    /// How long to wait at `now` before the next record may be taken (zero: take it).
    pub fn wait(&self, now: Instant) -> Duration {
        self.next
            .map_or(Duration::ZERO, |next| next.saturating_duration_since(now))
    }

    /// A record was taken at `now`.
    pub fn took(&mut self, now: Instant) {
        let earliest = now.checked_sub(BURST).unwrap_or(now);
        let slot = self.next.map_or(now, |next| next.max(earliest));
        self.next = Some(slot + self.interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes records as fast as the pacer lets it from `start` for `span`; returns how
    /// many it took.
    fn drain(pacer: &mut Pacer, start: Instant, span: Duration) -> u32 {
        let mut now = start;
        let mut taken = 0;
        while now < start + span {
            let wait = pacer.wait(now);
            if wait.is_zero() {
                pacer.took(now);
                taken += 1;
            } else {
                now += wait;
            }
        }
        taken
    }

    #[test]
    fn a_busy_consumer_takes_the_limit_per_second() {
        let mut pacer = Pacer::new(1000);
        let taken = drain(&mut pacer, Instant::now(), Duration::from_secs(10));
        assert_eq!(taken, 10_000);
    }

    #[test]
    fn a_quiet_spell_saves_up_one_burst_at_most() {
        let mut pacer = Pacer::new(1000);
        let start = Instant::now();
        pacer.took(start);
        // An hour later: the 100 ms saved up plus this moment's slot go at once (101
        // records at 1 ms each), then the pace holds: the next second takes 999 more
        // (its first slot is the one at +1 ms).
        let later = start + Duration::from_secs(3600);
        let mut at_once = 0;
        while pacer.wait(later).is_zero() {
            pacer.took(later);
            at_once += 1;
        }
        assert_eq!(at_once, 101);
        let taken = drain(&mut pacer, later, Duration::from_secs(1));
        assert_eq!(taken, 999);
    }

    #[test]
    fn the_first_record_waits_for_nothing_and_a_zero_limit_means_one_per_second() {
        let now = Instant::now();
        let mut pacer = Pacer::new(0);
        assert_eq!(pacer.wait(now), Duration::ZERO);
        pacer.took(now);
        assert_eq!(pacer.wait(now), Duration::from_secs(1));
    }
}
