//! What a workload's pods say when its replicas do not become available: the first
//! container the kubelet holds back (a crash loop, an image it cannot pull, a config it
//! cannot make) or that it killed, with the message of its last run: the processor's own
//! reason for stopping, or the last line of its log. Pure.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

/// Longest message kept.
const MAX_MESSAGE: usize = 400;

/// Waiting reasons that mean the container will not run without a change or a retry.
const FAILING_WAITS: [&str; 7] = [
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// Why a workload's pods do not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodTrouble {
    /// The pod.
    pub pod: String,
    /// The kubelet's word for it (`CrashLoopBackOff`, `ImagePullBackOff`, `OOMKilled`).
    pub reason: String,
    /// What the last run said when it ended, or the kubelet's message; one line.
    pub message: Option<String>,
    /// Restarts of the container so far.
    pub restarts: i32,
}

impl std::fmt::Display for PodTrouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pod {} is {} after {} restart(s)",
            self.pod, self.reason, self.restarts
        )?;
        if let Some(m) = &self.message {
            write!(f, ": {m}")?;
        }
        Ok(())
    }
}

/// The first trouble among `pods`, if any container is failing.
pub fn trouble(pods: &[Pod]) -> Option<PodTrouble> {
    pods.iter().find_map(|pod| {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
        statuses.iter().find_map(|s| container_trouble(&name, s))
    })
}

fn container_trouble(pod: &str, s: &ContainerStatus) -> Option<PodTrouble> {
    let state = s.state.as_ref();
    let waiting = state.and_then(|st| st.waiting.as_ref()).filter(|w| {
        w.reason
            .as_deref()
            .is_some_and(|r| FAILING_WAITS.contains(&r))
    });
    let last = s.last_state.as_ref().and_then(|l| l.terminated.as_ref());
    let last_message = last.and_then(|t| t.message.as_deref()).and_then(last_line);
    if let Some(w) = waiting {
        return Some(PodTrouble {
            pod: pod.to_string(),
            reason: w.reason.clone().unwrap_or_default(),
            message: last_message.or_else(|| w.message.as_deref().and_then(last_line)),
            restarts: s.restart_count,
        });
    }
    // Killed for its memory and started again: it may run for a while before the next.
    let oom = last.filter(|t| t.reason.as_deref() == Some("OOMKilled") && !s.ready)?;
    Some(PodTrouble {
        pod: pod.to_string(),
        reason: "OOMKilled".to_string(),
        message: oom.message.as_deref().and_then(last_line),
        restarts: s.restart_count,
    })
}

/// The last non-empty line of `text`, cut to [`MAX_MESSAGE`] characters.
fn last_line(text: &str) -> Option<String> {
    let line = text.lines().rev().map(str::trim).find(|l| !l.is_empty())?;
    Some(line.chars().take(MAX_MESSAGE).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name}, "status": status})).unwrap()
    }

    #[test]
    fn a_crash_loop_gives_the_last_line_its_last_run_wrote() {
        let running = pod(
            "a",
            json!({"containerStatuses": [{"name": "processor", "image": "i", "imageID": "",
                "ready": true, "restartCount": 0, "state": {"running": {}}}]}),
        );
        let looping = pod(
            "b",
            json!({"containerStatuses": [{"name": "processor", "image": "i", "imageID": "",
                "ready": false, "restartCount": 3,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                    "message": "starting\nsluice-processor: the postgres sink: no host in the Secret\n"}}}]}),
        );
        assert_eq!(trouble(std::slice::from_ref(&running)), None);
        let t = trouble(&[running, looping]).unwrap();
        assert_eq!(
            (t.pod.as_str(), t.reason.as_str(), t.restarts),
            ("b", "CrashLoopBackOff", 3)
        );
        assert_eq!(
            t.message.as_deref(),
            Some("sluice-processor: the postgres sink: no host in the Secret")
        );
        assert!(t.to_string().contains("after 3 restart(s)"), "{t}");
    }

    #[test]
    fn an_image_that_cannot_be_pulled_gives_the_kubelets_message() {
        let p = pod(
            "c",
            json!({"containerStatuses": [{"name": "processor", "image": "i", "imageID": "",
                "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ImagePullBackOff",
                    "message": "Back-off pulling image \"x\""}}}]}),
        );
        let t = trouble(&[p]).unwrap();
        assert_eq!(t.reason, "ImagePullBackOff");
        assert_eq!(t.message.as_deref(), Some("Back-off pulling image \"x\""));
    }

    #[test]
    fn starting_containers_and_pods_without_status_are_no_trouble() {
        let creating = pod(
            "d",
            json!({"containerStatuses": [{"name": "processor", "image": "i", "imageID": "",
                "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ContainerCreating"}}}]}),
        );
        let pending = pod("e", json!({"phase": "Pending"}));
        assert_eq!(trouble(&[creating, pending]), None);
    }

    #[test]
    fn a_container_killed_for_its_memory_is_reported_until_it_is_ready_again() {
        let status = |ready: bool| {
            json!({"containerStatuses": [{"name": "processor", "image": "i", "imageID": "",
                "ready": ready, "restartCount": 1, "state": {"running": {}},
                "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]})
        };
        assert_eq!(
            trouble(&[pod("f", status(false))]).unwrap().reason,
            "OOMKilled"
        );
        assert_eq!(trouble(&[pod("f", status(true))]), None);
    }
}
