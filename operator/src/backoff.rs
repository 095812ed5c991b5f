//! Per-object exponential backoff for failed reconciles, reset on success.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// The delay before retry number `attempt` (1 for the first failure): `base * 2^(attempt-1)`, at most `max`.
pub fn delay(attempt: u32, base: Duration, max: Duration) -> Duration {
    let exp = attempt.saturating_sub(1).min(31);
    base.checked_mul(1u32 << exp).map_or(max, |d| d.min(max))
}

/// Counts consecutive failures per object.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    /// A backoff starting at `base` and doubling up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Records one more failure of `key` and returns how long to wait before retrying.
    pub fn failed(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = failures.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        delay(*n, self.base, self.max)
    }

    /// Forgets the failures of `key` after a successful reconcile.
    pub fn succeeded(&self, key: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.remove(key);
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_secs(1), Duration::from_secs(300))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let s = Duration::from_secs;
        assert_eq!(delay(1, s(1), s(60)), s(1));
        assert_eq!(delay(2, s(1), s(60)), s(2));
        assert_eq!(delay(6, s(1), s(60)), s(32));
        assert_eq!(delay(7, s(1), s(60)), s(60));
        assert_eq!(delay(u32::MAX, s(1), s(60)), s(60));
    }

    #[test]
    fn per_object_and_reset_on_success() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(b.failed("a"), Duration::from_secs(1));
        assert_eq!(b.failed("a"), Duration::from_secs(2));
        assert_eq!(b.failed("b"), Duration::from_secs(1));
        assert_eq!(b.failed("a"), Duration::from_secs(4));
        b.succeeded("a");
        assert_eq!(b.failed("a"), Duration::from_secs(1));
        assert_eq!(b.failed("b"), Duration::from_secs(2));
    }
}
