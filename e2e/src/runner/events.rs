//! Kubernetes events about pods, as the scheduler and kubelet emit them (`Scheduled`,
//! `Started`, `BackOff`, `Unhealthy`, `Killing`, `Failed`), so `kubectl describe pod` and
//! `kubectl get events` tell what happened.

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use super::container::{Report, State};

/// One event to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEvent {
    /// Warning (true) or Normal.
    pub warning: bool,
    /// Short PascalCase reason.
    pub reason: &'static str,
    /// What happened, in words.
    pub note: String,
}

impl PodEvent {
    fn normal(reason: &'static str, note: String) -> Self {
        Self {
            warning: false,
            reason,
            note,
        }
    }

    fn warning(reason: &'static str, note: String) -> Self {
        Self {
            warning: true,
            reason,
            note,
        }
    }
}

/// The events a container's report change means.
pub fn between(old: &Report, new: &Report) -> Vec<PodEvent> {
    let mut events = Vec::new();
    let name = &new.name;
    let run_changed =
        old.restart_count != new.restart_count || !matches!(old.state, State::Running { .. });
    if matches!(new.state, State::Running { .. }) && run_changed {
        events.push(PodEvent::normal(
            "Started",
            format!("Started container {name} ({})", new.binary.display()),
        ));
    }
    if new.last != old.last
        && let Some(t) = &new.last
        && let Some(why) = t.message.as_deref().filter(|m| m.contains("probe failed"))
    {
        events.push(PodEvent::warning(
            "Unhealthy",
            format!("Container {name}: {why}"),
        ));
        events.push(PodEvent::normal(
            "Killing",
            format!("Container {name} {why}, will be restarted"),
        ));
    }
    if let State::Waiting { reason, message } = &new.state
        && reason == "CrashLoopBackOff"
        && !matches!(&old.state, State::Waiting { reason: r, .. } if r == reason)
    {
        events.push(PodEvent::warning(
            "BackOff",
            message
                .clone()
                .unwrap_or_else(|| format!("Back-off restarting failed container {name}")),
        ));
    }
    if let State::Waiting { reason, message } = &new.state
        && reason == "CreateContainerConfigError"
        && old.state != new.state
    {
        events.push(PodEvent::warning(
            "Failed",
            format!("Error: {}", message.as_deref().unwrap_or(reason)),
        ));
    }
    events
}

/// Publishes events about one pod.
pub struct PodEvents {
    recorder: Recorder,
    reference: k8s_openapi::api::core::v1::ObjectReference,
}

impl PodEvents {
    /// A publisher reporting as `sluice-runner` on `node`.
    pub fn new(client: Client, node: &str, pod: &Pod) -> Self {
        let reporter = Reporter {
            controller: "sluice-runner".into(),
            instance: Some(node.to_string()),
        };
        Self {
            recorder: Recorder::new(client, reporter),
            reference: pod.object_ref(&()),
        }
    }

    /// Publishes `event`; a failure is logged, never fatal.
    pub async fn publish(&self, event: &PodEvent) {
        let ev = Event {
            type_: if event.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: event.reason.to_string(),
            note: Some(event.note.chars().take(1024).collect()),
            action: event.reason.to_string(),
            secondary: None,
        };
        if let Err(err) = self.recorder.publish(&ev, &self.reference).await {
            tracing::debug!(%err, reason = event.reason, "publishing an event failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::container::Termination;
    use k8s_openapi::jiff::Timestamp;

    fn report(state: State, restarts: i32) -> Report {
        let mut r = Report::waiting("c", "img", "/bin/x".into(), "ContainerCreating", None);
        r.state = state;
        r.restart_count = restarts;
        r
    }

    fn reasons(events: &[PodEvent]) -> Vec<&'static str> {
        events.iter().map(|e| e.reason).collect()
    }

    #[test]
    fn start_backoff_and_restart_are_events() {
        let now = Timestamp::now();
        let created = report(
            State::Waiting {
                reason: "ContainerCreating".into(),
                message: None,
            },
            0,
        );
        let running = report(State::Running { started_at: now }, 0);
        assert_eq!(reasons(&between(&created, &running)), vec!["Started"]);
        assert!(between(&running, &running).is_empty());
        let mut backoff = report(
            State::Waiting {
                reason: "CrashLoopBackOff".into(),
                message: None,
            },
            0,
        );
        backoff.last = Some(Termination {
            exit_code: 143,
            reason: "Error".into(),
            message: Some("liveness probe failed".into()),
            started_at: now,
            finished_at: now,
        });
        assert_eq!(
            reasons(&between(&running, &backoff)),
            vec!["Unhealthy", "Killing", "BackOff"]
        );
        let mut again = report(State::Running { started_at: now }, 1);
        again.last = backoff.last.clone();
        assert_eq!(reasons(&between(&backoff, &again)), vec!["Started"]);
    }

    #[test]
    fn config_errors_are_warnings() {
        let created = report(
            State::Waiting {
                reason: "ContainerCreating".into(),
                message: None,
            },
            0,
        );
        let failed = report(
            State::Waiting {
                reason: "CreateContainerConfigError".into(),
                message: Some("Secret ns/x not found".into()),
            },
            0,
        );
        let events = between(&created, &failed);
        assert_eq!(reasons(&events), vec!["Failed"]);
        assert!(events[0].warning && events[0].note.contains("Secret ns/x"));
        assert!(between(&failed, &failed).is_empty());
    }
}
