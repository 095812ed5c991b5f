//! The Pod status the runner reports, computed from its containers' reports.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::container::{Report, State, Termination};
use super::fields::POD_IP;

/// Pod conditions with their last transition times.
#[derive(Debug, Clone, Default)]
pub struct Conditions {
    by_type: BTreeMap<&'static str, (bool, Timestamp)>,
}

impl Conditions {
    /// Sets a condition, moving its transition time only when its status changes.
    pub fn set(&mut self, kind: &'static str, status: bool, now: Timestamp) {
        match self.by_type.get_mut(kind) {
            Some(entry) if entry.0 == status => {}
            Some(entry) => *entry = (status, now),
            None => {
                self.by_type.insert(kind, (status, now));
            }
        }
    }

    fn to_vec(&self) -> Vec<PodCondition> {
        const ORDER: [&str; 6] = [
            "PodReadyToStartContainers",
            "Initialized",
            "Ready",
            "ContainersReady",
            "PodScheduled",
            "DisruptionTarget",
        ];
        ORDER
            .iter()
            .filter_map(|k| self.by_type.get(k).map(|v| (*k, v)))
            .map(|(kind, (status, at))| PodCondition {
                type_: kind.to_string(),
                status: if *status { "True" } else { "False" }.to_string(),
                last_transition_time: Some(Time(*at)),
                ..Default::default()
            })
            .collect()
    }
}

/// Where the pod is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Volumes and env are being prepared (or failed to be).
    Preparing,
    /// Init containers are running.
    Initializing,
    /// Main containers are running (or done).
    Running,
}

/// Everything the status is computed from.
pub struct Input<'a> {
    /// When the runner took the pod.
    pub start_time: Timestamp,
    /// The stage.
    pub stage: Stage,
    /// Init container reports.
    pub init: &'a [Report],
    /// Main container reports.
    pub main: &'a [Report],
    /// Now.
    pub now: Timestamp,
}

/// The phase: Pending until every container ran once; Succeeded or Failed when all
/// ended for good; Running otherwise.
pub fn phase(input: &Input<'_>) -> &'static str {
    let failed = |r: &Report| matches!(&r.state, State::Terminated(t) if t.exit_code != 0);
    if input.stage == Stage::Initializing
        && input.init.iter().any(failed)
        && input
            .init
            .iter()
            .all(|r| matches!(r.state, State::Terminated(_)))
    {
        return "Failed";
    }
    if input.stage != Stage::Running || input.main.is_empty() {
        return "Pending";
    }
    if input
        .main
        .iter()
        .all(|r| matches!(r.state, State::Terminated(_)))
    {
        return if input.main.iter().any(failed) {
            "Failed"
        } else {
            "Succeeded"
        };
    }
    if input.main.iter().all(Report::has_run) {
        "Running"
    } else {
        "Pending"
    }
}

/// The pod status to write.
pub fn pod_status(input: &Input<'_>, conditions: &mut Conditions) -> PodStatus {
    let now = input.now;
    let ready = input.stage == Stage::Running
        && !input.main.is_empty()
        && input.main.iter().all(|r| r.ready);
    conditions.set("PodScheduled", true, now);
    conditions.set(
        "PodReadyToStartContainers",
        input.stage != Stage::Preparing,
        now,
    );
    conditions.set("Initialized", input.stage == Stage::Running, now);
    conditions.set("ContainersReady", ready, now);
    conditions.set("Ready", ready, now);
    PodStatus {
        phase: Some(phase(input).to_string()),
        conditions: Some(conditions.to_vec()),
        host_ip: Some(POD_IP.into()),
        host_ips: Some(vec![HostIP { ip: POD_IP.into() }]),
        pod_ip: Some(POD_IP.into()),
        pod_ips: Some(vec![PodIP { ip: POD_IP.into() }]),
        start_time: Some(Time(input.start_time)),
        init_container_statuses: (!input.init.is_empty())
            .then(|| input.init.iter().map(container_status).collect()),
        container_statuses: Some(input.main.iter().map(container_status).collect()),
        ..Default::default()
    }
}

fn terminated(t: &Termination) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code: t.exit_code,
        reason: Some(t.reason.clone()),
        message: t.message.clone(),
        started_at: Some(Time(t.started_at)),
        finished_at: Some(Time(t.finished_at)),
        ..Default::default()
    }
}

/// One container's status.
pub fn container_status(r: &Report) -> ContainerStatus {
    let state = match &r.state {
        State::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: message.clone(),
            }),
            ..Default::default()
        },
        State::Running { started_at } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(Time(*started_at)),
            }),
            ..Default::default()
        },
        State::Terminated(t) => ContainerState {
            terminated: Some(terminated(t)),
            ..Default::default()
        },
    };
    ContainerStatus {
        name: r.name.clone(),
        image: r.image.clone(),
        image_id: format!("sluice-runner://{}", r.binary.display()),
        container_id: r.pid.map(|pid| format!("sluice-runner://{pid}")),
        ready: r.ready,
        started: Some(r.started && matches!(r.state, State::Running { .. })),
        restart_count: r.restart_count,
        state: Some(state),
        last_state: Some(ContainerState {
            terminated: r.last.as_ref().map(terminated),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(state: State, ready: bool) -> Report {
        let mut r = Report::waiting("c", "img", "/bin/x".into(), "ContainerCreating", None);
        r.state = state;
        r.ready = ready;
        r.started = true;
        r
    }

    fn term(code: i32) -> State {
        let now = Timestamp::now();
        State::Terminated(Termination {
            exit_code: code,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            message: None,
            started_at: now,
            finished_at: now,
        })
    }

    fn input<'a>(stage: Stage, init: &'a [Report], main: &'a [Report]) -> Input<'a> {
        Input {
            start_time: Timestamp::now(),
            stage,
            init,
            main,
            now: Timestamp::now(),
        }
    }

    #[test]
    fn phases_follow_the_containers() {
        let running = report(
            State::Running {
                started_at: Timestamp::now(),
            },
            true,
        );
        let waiting = report(
            State::Waiting {
                reason: "ContainerCreating".into(),
                message: None,
            },
            false,
        );
        assert_eq!(
            phase(&input(
                Stage::Preparing,
                &[],
                std::slice::from_ref(&waiting)
            )),
            "Pending"
        );
        assert_eq!(
            phase(&input(
                Stage::Running,
                &[],
                &[running.clone(), waiting.clone()]
            )),
            "Pending"
        );
        assert_eq!(
            phase(&input(Stage::Running, &[], std::slice::from_ref(&running))),
            "Running"
        );
        let mut crashing = waiting.clone();
        crashing.last = match term(1) {
            State::Terminated(t) => Some(t),
            _ => None,
        };
        assert_eq!(
            phase(&input(Stage::Running, &[], &[running.clone(), crashing])),
            "Running"
        );
        assert_eq!(
            phase(&input(Stage::Running, &[], &[report(term(0), false)])),
            "Succeeded"
        );
        assert_eq!(
            phase(&input(
                Stage::Running,
                &[],
                &[report(term(0), false), report(term(2), false)]
            )),
            "Failed"
        );
        assert_eq!(
            phase(&input(
                Stage::Initializing,
                &[report(term(1), false)],
                &[waiting]
            )),
            "Failed"
        );
    }

    #[test]
    fn ready_needs_every_container_ready_and_keeps_transition_times() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let t1 = Timestamp::from_second(2_000).unwrap();
        let t2 = Timestamp::from_second(3_000).unwrap();
        let ready = report(State::Running { started_at: t0 }, true);
        let not_ready = report(State::Running { started_at: t0 }, false);
        let mut conditions = Conditions::default();
        let mut i = input(Stage::Running, &[], std::slice::from_ref(&not_ready));
        i.now = t0;
        let s = pod_status(&i, &mut conditions);
        let cond = |s: &PodStatus, k: &str| {
            s.conditions
                .as_ref()
                .unwrap()
                .iter()
                .find(|c| c.type_ == k)
                .cloned()
                .unwrap()
        };
        assert_eq!(cond(&s, "Ready").status, "False");
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(s.pod_ip.as_deref(), Some("127.0.0.1"));
        let both = [ready.clone(), not_ready];
        let mut i = input(Stage::Running, &[], &both);
        i.now = t1;
        assert_eq!(
            cond(&pod_status(&i, &mut conditions), "Ready").status,
            "False"
        );
        let mut i = input(Stage::Running, &[], std::slice::from_ref(&ready));
        i.now = t2;
        let s = pod_status(&i, &mut conditions);
        assert_eq!(cond(&s, "Ready").status, "True");
        assert_eq!(cond(&s, "Ready").last_transition_time, Some(Time(t2)));
        assert_eq!(
            cond(&s, "PodScheduled").last_transition_time,
            Some(Time(t0))
        );
        let cs = &s.container_statuses.unwrap()[0];
        assert!(cs.ready);
        assert!(cs.state.as_ref().unwrap().running.is_some());
    }
}
