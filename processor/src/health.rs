//! What the probes report: `/readyz` (the worker holds its partitions and is making
//! progress) and `/healthz` (the worker's loop is still turning).
//!
//! A replica that rewinds again and again without committing (a dead-letter topic that
//! refuses what is sent to it, an output that cannot be written) keeps its partitions
//! but moves no record: it reports not ready with the reason, so the Deployment, the
//! Pipeline's status and an alert on unready replicas show it, rather than staying Ready
//! forever. A loop that stopped turning altogether fails `/healthz`, and the kubelet
//! restarts the container.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Rewinds in a row, with no commit between them, after which a replica is reported as
/// making no progress.
pub const STALLED_AFTER: u32 = 3;

/// How long the worker's loop may go without turning before `/healthz` fails. Longer
/// than the longest single step it takes (restoring state, up to 10 minutes).
pub const MAX_SILENCE: Duration = Duration::from_secs(15 * 60);

/// Shared flags between the worker and the HTTP server / signal handler.
#[derive(Debug)]
pub struct Status {
    /// Set once the consumer joined the group and state is restored.
    pub ready: AtomicBool,
    /// Set to stop: the worker commits, leaves the group and returns.
    pub shutdown: AtomicBool,
    origin: Instant,
    /// Milliseconds from `origin` when the loop last turned.
    heartbeat_ms: AtomicU64,
    /// Rewinds since the last successful commit.
    failed_rounds: AtomicU32,
    /// Why the last rewind happened.
    last_failure: Mutex<String>,
}

impl Default for Status {
    fn default() -> Self {
        Self {
            ready: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            origin: Instant::now(),
            heartbeat_ms: AtomicU64::new(0),
            failed_rounds: AtomicU32::new(0),
            last_failure: Mutex::new(String::new()),
        }
    }
}

impl Status {
    /// The worker's loop turned.
    pub fn beat(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.heartbeat_ms.store(ms, Ordering::Relaxed);
    }

    /// Whether the loop turned within `limit`.
    pub fn alive(&self, limit: Duration) -> bool {
        let last = Duration::from_millis(self.heartbeat_ms.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(last) <= limit
    }

    /// The worker rewound to its last commit because of `why`.
    pub fn rewound(&self, why: &str) {
        self.failed_rounds.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_failure.lock() {
            why.clone_into(&mut last);
        }
    }

    /// The worker committed: it is making progress.
    pub fn committed(&self) {
        self.failed_rounds.store(0, Ordering::Relaxed);
    }

    /// Why the replica is not ready, or `None` when it is.
    pub fn not_ready(&self) -> Option<String> {
        if !self.ready.load(Ordering::Relaxed) {
            return Some("joining the group or restoring state".to_string());
        }
        let rounds = self.failed_rounds.load(Ordering::Relaxed);
        (rounds >= STALLED_AFTER).then(|| {
            let last = self
                .last_failure
                .lock()
                .map(|l| l.clone())
                .unwrap_or_default();
            format!("no progress: rewound {rounds} times without a commit; last: {last}")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_rewinds_without_a_commit_make_a_replica_unready_until_it_commits() {
        let s = Status::default();
        assert!(s.not_ready().is_some(), "not ready before joining");
        s.ready.store(true, Ordering::Relaxed);
        assert_eq!(s.not_ready(), None);
        for _ in 0..STALLED_AFTER - 1 {
            s.rewound("cannot flush the producer");
        }
        assert_eq!(
            s.not_ready(),
            None,
            "a rewind or two is recovery, not a stall"
        );
        s.rewound("cannot write to the dead-letter topic dlq: too large");
        let why = s.not_ready().unwrap();
        assert!(why.contains("rewound 3 times"), "{why}");
        assert!(why.contains("dead-letter topic dlq"), "{why}");
        s.committed();
        assert_eq!(s.not_ready(), None);
    }

    #[test]
    fn a_loop_that_stopped_turning_is_not_alive() {
        let s = Status::default();
        s.beat();
        assert!(s.alive(Duration::from_secs(60)));
        std::thread::sleep(Duration::from_millis(20));
        assert!(!s.alive(Duration::from_millis(1)));
    }
}
