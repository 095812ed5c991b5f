//! The Kafka Connect decisions, pure: the config a resource asks for, whether the stored
//! one is ours and current, which state transition to ask for, and when to restart.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use sluice_crds::Connector;
use sluice_crds::connector::{AutoRestart, ConnectorState, KafkaConnectSpec, RestartStatus};

use super::connect::ConnectorHealth;

/// The config key that marks a connector as owned by one resource (its uid). Connectors
/// ignore keys they do not define, and the mark lets the operator leave alone every
/// connector on the cluster that no resource owns.
pub const OWNER_KEY: &str = "sluice.dev/owner";

/// The first restart comes this long after a failure is seen; each next one waits twice
/// as long as the one before.
pub const RESTART_BACKOFF_START: Duration = Duration::from_secs(2);
/// The longest wait between two restarts.
pub const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Running as asked this long after the last restart starts the count again.
pub const RESTART_COUNT_RESET: Duration = Duration::from_secs(60);

/// The connector's name on its Kafka Connect cluster.
pub fn connect_name(connector: &Connector) -> String {
    format!(
        "{}.{}",
        connector.namespace().unwrap_or_default(),
        connector.name_any()
    )
}

/// The config the resource asks for: its settings, the class, the task limit, the name
/// and the owner mark.
pub fn desired_config(connector: &Connector, spec: &KafkaConnectSpec) -> BTreeMap<String, String> {
    let mut config = spec.config.clone();
    config.insert("connector.class".into(), spec.class.clone());
    config.insert("tasks.max".into(), spec.tasks_max.to_string());
    config.insert("name".into(), connect_name(connector));
    config.insert(OWNER_KEY.into(), connector.uid().unwrap_or_default());
    config
}

/// Who owns a connector found on the cluster under the resource's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// Nothing there yet.
    Absent,
    /// Created for this resource.
    Ours,
    /// Created by someone else (by hand, another tool, or a resource since deleted and
    /// made again while its connector lingered): never touched.
    NotOurs,
}

/// Whose is `stored`, for the resource with `uid`.
pub fn ownership(stored: Option<&BTreeMap<String, String>>, uid: &str) -> Ownership {
    match stored {
        None => Ownership::Absent,
        Some(config) if config.get(OWNER_KEY).map(String::as_str) == Some(uid) => Ownership::Ours,
        Some(_) => Ownership::NotOurs,
    }
}

/// The state the connector reports when it is as asked.
pub fn expected_state(state: ConnectorState) -> &'static str {
    match state {
        ConnectorState::Running => "RUNNING",
        ConnectorState::Paused => "PAUSED",
        ConnectorState::Stopped => "STOPPED",
    }
}

/// The REST verb (`pause`, `resume`, `stop`) that moves the connector toward `wanted`, if
/// one is needed. A failed connector is stopped or paused too when asked (the target state
/// is what Connect keeps; a FAILED connector keeps running otherwise on its next restart);
/// a failed one asked to run is left to restarts.
pub fn transition(wanted: ConnectorState, health: &ConnectorHealth) -> Option<&'static str> {
    let state = health.connector.state.as_str();
    match wanted {
        ConnectorState::Running => matches!(state, "PAUSED" | "STOPPED").then_some("resume"),
        ConnectorState::Paused => {
            let tasks_paused = health.tasks.iter().all(|t| t.health.state == "PAUSED");
            (state != "PAUSED" || !tasks_paused).then_some("pause")
        }
        ConnectorState::Stopped => {
            (state != "STOPPED" || !health.tasks.is_empty()).then_some("stop")
        }
    }
}

/// True when the connector and each task are as asked; a running or paused connector
/// needs at least one task.
pub fn as_asked(wanted: ConnectorState, health: &ConnectorHealth) -> bool {
    let expected = expected_state(wanted);
    if health.connector.state != expected {
        return false;
    }
    match wanted {
        ConnectorState::Stopped => health.tasks.is_empty(),
        _ => !health.tasks.is_empty() && health.tasks.iter().all(|t| t.health.state == expected),
    }
}

/// True when the connector or one of its tasks has failed.
pub fn failed(health: &ConnectorHealth) -> bool {
    health.connector.state == "FAILED" || health.tasks.iter().any(|t| t.health.state == "FAILED")
}

/// What to do about restarts at one look.
#[derive(Debug, Clone, PartialEq)]
pub struct RestartDecision {
    /// Ask Connect to restart the failed connector and tasks now.
    pub restart_now: bool,
    /// The restart record to keep in status.
    pub status: Option<RestartStatus>,
    /// The limit is reached: no more restarts until the spec changes.
    pub limit_reached: bool,
    /// Look again in this long (a restart is due then).
    pub wake_in: Option<Duration>,
}

/// The wait after the `count`th restart in a row before the next one.
pub fn backoff(count: i32) -> Duration {
    let doublings = count.saturating_sub(1).clamp(0, 16) as u32;
    RESTART_BACKOFF_START
        .saturating_mul(1 << doublings)
        .min(RESTART_BACKOFF_MAX)
}

/// Decides about restarts. `spec_changed` is true when the spec's generation moved since
/// the status was written (the count starts again); `healthy` when the connector runs as
/// asked; `failed` when it or a task has failed.
pub fn restart_decision(
    policy: Option<&AutoRestart>,
    previous: Option<&RestartStatus>,
    spec_changed: bool,
    healthy: bool,
    failed: bool,
    now: Timestamp,
) -> RestartDecision {
    let enabled = policy.is_some_and(|p| p.enabled);
    let previous = if spec_changed {
        None
    } else {
        previous.cloned()
    };
    let last = previous
        .as_ref()
        .and_then(|p| p.last_restart_time.as_deref())
        .and_then(|t| t.parse::<Timestamp>().ok());
    let count = previous.as_ref().map_or(0, |p| p.count);
    let idle = RestartDecision {
        restart_now: false,
        status: None,
        limit_reached: false,
        wake_in: None,
    };
    if !enabled {
        return idle;
    }
    if !failed {
        // Running as asked for long enough after the last restart: start the count again.
        let settled = healthy && last.is_none_or(|l| elapsed(l, now) >= RESTART_COUNT_RESET);
        return RestartDecision {
            status: if settled {
                None
            } else {
                previous.map(|p| RestartStatus {
                    next_restart_time: None,
                    ..p
                })
            },
            wake_in: (!settled && healthy).then_some(RESTART_COUNT_RESET),
            ..idle
        };
    }
    let max = policy.and_then(|p| p.max_restarts);
    if max.is_some_and(|m| count >= m) {
        return RestartDecision {
            status: previous.map(|p| RestartStatus {
                next_restart_time: None,
                ..p
            }),
            limit_reached: true,
            ..idle
        };
    }
    // The first restart waits a little too, so the failure shows in status and events
    // before anything is done about it.
    let scheduled = previous
        .as_ref()
        .and_then(|p| p.next_restart_time.as_deref())
        .and_then(|t| t.parse::<Timestamp>().ok());
    let due = match (scheduled, last) {
        (Some(next), _) => next,
        (None, Some(last)) => add(last, backoff(count)),
        (None, None) => add(now, RESTART_BACKOFF_START),
    };
    if due <= now {
        let next = count + 1;
        let status = RestartStatus {
            count: next,
            last_restart_time: Some(now.to_string()),
            next_restart_time: None,
        };
        RestartDecision {
            restart_now: true,
            status: Some(status),
            limit_reached: false,
            wake_in: Some(backoff(next)),
        }
    } else {
        RestartDecision {
            status: Some(RestartStatus {
                count,
                last_restart_time: last.map(|l| l.to_string()),
                next_restart_time: Some(due.to_string()),
            }),
            wake_in: Some(elapsed(now, due)),
            ..idle
        }
    }
}

fn elapsed(from: Timestamp, to: Timestamp) -> Duration {
    Duration::try_from(to.duration_since(from)).unwrap_or_default()
}

fn add(at: Timestamp, wait: Duration) -> Timestamp {
    SignedDuration::try_from(wait)
        .ok()
        .and_then(|d| at.checked_add(d).ok())
        .unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::super::connect::{Health, TaskHealth};
    use super::*;

    fn health(connector: &str, tasks: &[&str]) -> ConnectorHealth {
        let h = |state: &str| Health {
            state: state.into(),
            worker_id: Some("w1".into()),
            trace: None,
        };
        ConnectorHealth {
            connector: h(connector),
            tasks: tasks
                .iter()
                .enumerate()
                .map(|(id, s)| TaskHealth {
                    id: id as i32,
                    health: h(s),
                })
                .collect(),
        }
    }

    fn policy(max: Option<i32>) -> AutoRestart {
        AutoRestart {
            enabled: true,
            max_restarts: max,
        }
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    #[test]
    fn a_stored_connector_is_ours_only_with_our_uid() {
        let mut config = BTreeMap::new();
        assert_eq!(ownership(None, "u1"), Ownership::Absent);
        assert_eq!(ownership(Some(&config), "u1"), Ownership::NotOurs);
        config.insert(OWNER_KEY.to_string(), "u2".to_string());
        assert_eq!(ownership(Some(&config), "u1"), Ownership::NotOurs);
        config.insert(OWNER_KEY.to_string(), "u1".to_string());
        assert_eq!(ownership(Some(&config), "u1"), Ownership::Ours);
    }

    #[test]
    fn transitions_move_toward_the_asked_state_even_from_failed() {
        use ConnectorState::*;
        assert_eq!(transition(Running, &health("RUNNING", &["RUNNING"])), None);
        assert_eq!(
            transition(Running, &health("PAUSED", &["PAUSED"])),
            Some("resume")
        );
        assert_eq!(transition(Running, &health("STOPPED", &[])), Some("resume"));
        assert_eq!(transition(Running, &health("FAILED", &[])), None);
        assert_eq!(
            transition(Paused, &health("RUNNING", &["RUNNING"])),
            Some("pause")
        );
        assert_eq!(
            transition(Paused, &health("PAUSED", &["RUNNING"])),
            Some("pause")
        );
        assert_eq!(transition(Paused, &health("PAUSED", &["PAUSED"])), None);
        assert_eq!(
            transition(Stopped, &health("FAILED", &["FAILED"])),
            Some("stop")
        );
        assert_eq!(
            transition(Stopped, &health("RUNNING", &["FAILED"])),
            Some("stop")
        );
        assert_eq!(transition(Stopped, &health("STOPPED", &[])), None);
    }

    #[test]
    fn as_asked_needs_every_task_and_at_least_one() {
        use ConnectorState::*;
        assert!(as_asked(
            Running,
            &health("RUNNING", &["RUNNING", "RUNNING"])
        ));
        assert!(!as_asked(
            Running,
            &health("RUNNING", &["RUNNING", "FAILED"])
        ));
        assert!(!as_asked(Running, &health("RUNNING", &[])));
        assert!(as_asked(Stopped, &health("STOPPED", &[])));
        assert!(!as_asked(Paused, &health("RUNNING", &["PAUSED"])));
        assert!(failed(&health("RUNNING", &["RUNNING", "FAILED"])));
        assert!(!failed(&health("PAUSED", &["PAUSED"])));
    }

    #[test]
    fn backoff_starts_at_seconds_and_doubles_to_a_cap() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(2), Duration::from_secs(4));
        assert_eq!(backoff(4), Duration::from_secs(16));
        assert_eq!(backoff(30), RESTART_BACKOFF_MAX);
        assert_eq!(backoff(0), Duration::from_secs(2));
    }

    #[test]
    fn nothing_restarts_without_the_policy() {
        let d = restart_decision(None, None, false, false, true, at(0));
        assert!(!d.restart_now && d.status.is_none() && !d.limit_reached);
        let off = AutoRestart {
            enabled: false,
            max_restarts: None,
        };
        assert!(!restart_decision(Some(&off), None, false, false, true, at(0)).restart_now);
    }

    #[test]
    fn a_failure_is_restarted_after_two_seconds_then_twice_as_long_each_time() {
        let p = policy(None);
        // First seen: the restart is scheduled, not made, so the failure shows first.
        let seen = restart_decision(Some(&p), None, false, false, true, at(0));
        assert!(!seen.restart_now);
        assert_eq!(seen.wake_in, Some(Duration::from_secs(2)));
        let s0 = seen.status.unwrap();
        assert_eq!(s0.count, 0);
        assert_eq!(
            s0.next_restart_time.as_deref(),
            Some(at(2).to_string().as_str())
        );
        assert!(!restart_decision(Some(&p), Some(&s0), false, false, true, at(1)).restart_now);
        let first = restart_decision(Some(&p), Some(&s0), false, false, true, at(2));
        assert!(first.restart_now);
        let s1 = first.status.unwrap();
        assert_eq!(s1.count, 1);
        assert_eq!(
            s1.last_restart_time.as_deref(),
            Some(at(2).to_string().as_str())
        );
        // Still failed a second later: the second restart is due 2 s after the first.
        let waiting = restart_decision(Some(&p), Some(&s1), false, false, true, at(3));
        assert!(!waiting.restart_now);
        assert_eq!(waiting.wake_in, Some(Duration::from_secs(1)));
        let s1_waiting = waiting.status.unwrap();
        assert_eq!(s1_waiting.count, 1);
        assert_eq!(
            s1_waiting.next_restart_time.as_deref(),
            Some(at(4).to_string().as_str())
        );
        let second = restart_decision(Some(&p), Some(&s1_waiting), false, false, true, at(4));
        assert!(second.restart_now);
        let s2 = second.status.unwrap();
        assert_eq!(s2.count, 2);
        assert_eq!(second.wake_in, Some(Duration::from_secs(4)));
        assert!(!restart_decision(Some(&p), Some(&s2), false, false, true, at(7)).restart_now);
        assert!(restart_decision(Some(&p), Some(&s2), false, false, true, at(8)).restart_now);
    }

    #[test]
    fn the_limit_stops_restarts_until_the_spec_changes() {
        let p = policy(Some(2));
        let s = RestartStatus {
            count: 2,
            last_restart_time: Some(at(0).to_string()),
            next_restart_time: None,
        };
        let d = restart_decision(Some(&p), Some(&s), false, false, true, at(600));
        assert!(d.limit_reached && !d.restart_now);
        assert_eq!(d.status.unwrap().count, 2);
        let changed = restart_decision(Some(&p), Some(&s), true, false, true, at(600));
        assert!(!changed.restart_now && !changed.limit_reached);
        assert_eq!(changed.status.unwrap().count, 0);
    }

    #[test]
    fn the_count_starts_again_after_a_minute_as_asked() {
        let p = policy(Some(3));
        let s = RestartStatus {
            count: 2,
            last_restart_time: Some(at(0).to_string()),
            next_restart_time: Some(at(4).to_string()),
        };
        let soon = restart_decision(Some(&p), Some(&s), false, true, false, at(30));
        assert_eq!(soon.status.as_ref().unwrap().count, 2);
        assert_eq!(soon.status.unwrap().next_restart_time, None);
        assert!(soon.wake_in.is_some());
        let later = restart_decision(Some(&p), Some(&s), false, true, false, at(60));
        assert_eq!(later.status, None);
    }
}
