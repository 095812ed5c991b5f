//! Restart backoff for crashed containers.
//!
//! The kubelet waits 10 s after the first crash and doubles up to 5 min. The runner keeps
//! the shape but uses 1 s doubling to 30 s by default so tests that kill a replica do not
//! wait minutes. A container that ran for `reset_after` before exiting starts again from
//! the initial delay.

use std::time::Duration;

/// Backoff parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Delay before the first restart.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
    /// A run at least this long resets the delay to `initial`.
    pub reset_after: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(60),
        }
    }
}

/// The restart delay of one container.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: BackoffPolicy,
    last: Option<Duration>,
}

impl Backoff {
    /// A fresh backoff.
    pub fn new(policy: BackoffPolicy) -> Self {
        Self { policy, last: None }
    }

    /// The delay before restarting a process that ran for `ran_for`.
    pub fn next_delay(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= self.policy.reset_after {
            self.last = None;
        }
        let delay = match self.last {
            None => self.policy.initial,
            Some(last) => last.saturating_mul(2).min(self.policy.max),
        };
        self.last = Some(delay);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let mut b = Backoff::new(BackoffPolicy::default());
        let short = Duration::from_millis(10);
        let delays: Vec<u64> = (0..8).map(|_| b.next_delay(short).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn a_long_run_resets_the_delay() {
        let mut b = Backoff::new(BackoffPolicy::default());
        let short = Duration::from_millis(10);
        b.next_delay(short);
        b.next_delay(short);
        assert_eq!(b.next_delay(short), Duration::from_secs(4));
        assert_eq!(
            b.next_delay(Duration::from_secs(120)),
            Duration::from_secs(1)
        );
        assert_eq!(b.next_delay(short), Duration::from_secs(2));
    }
}
