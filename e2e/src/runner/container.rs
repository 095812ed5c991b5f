//! Supervising one container: start the process, run its probes, restart it on exit
//! according to the pod's restartPolicy with backoff, stop it when the pod goes.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use tokio::sync::{mpsc, watch};

use super::backoff::{Backoff, BackoffPolicy};
use super::launch::LaunchSpec;
use super::probe::{self, Check, Kind, Outcome, Timing};
use super::process;

/// Why a pod's containers are being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The pod was deleted (deletionTimestamp set): stop within this grace period, then
    /// remove the pod from the API.
    Delete {
        /// The grace period.
        grace: Duration,
    },
    /// The runner is exiting: stop within the pod's grace period, at most 10 s (so a
    /// supervisor that kills the runner after 20 s never leaves processes behind).
    Shutdown,
    /// The pod vanished from the API without us: stop within the pod's grace period.
    Gone,
}

/// When a container is restarted after it exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Always (Deployments).
    Always,
    /// Only after a non-zero exit.
    OnFailure,
    /// Never.
    Never,
}

impl Restart {
    /// From `spec.restartPolicy` (default Always).
    pub fn from_policy(policy: Option<&str>) -> Self {
        match policy {
            Some("OnFailure") => Self::OnFailure,
            Some("Never") => Self::Never,
            _ => Self::Always,
        }
    }

    fn restarts_after(self, exit_code: i32) -> bool {
        match self {
            Self::Always => true,
            Self::OnFailure => exit_code != 0,
            Self::Never => false,
        }
    }
}

/// How a run of the process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Termination {
    /// Exit code (128 + signal when killed).
    pub exit_code: i32,
    /// `Completed`, `Error`, `StartError`, ...
    pub reason: String,
    /// Details, e.g. why it could not start.
    pub message: Option<String>,
    /// When it started.
    pub started_at: Timestamp,
    /// When it ended.
    pub finished_at: Timestamp,
}

/// The container's current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Not running: waiting to start or to restart.
    Waiting {
        /// Why (`ContainerCreating`, `CrashLoopBackOff`, ...).
        reason: String,
        /// Details.
        message: Option<String>,
    },
    /// Running since.
    Running {
        /// Start time.
        started_at: Timestamp,
    },
    /// Ended and will not be restarted.
    Terminated(Termination),
}

/// What a supervisor reports about its container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Container name.
    pub name: String,
    /// Image.
    pub image: String,
    /// Binary the image maps to.
    pub binary: PathBuf,
    /// Current state.
    pub state: State,
    /// The previous run's end.
    pub last: Option<Termination>,
    /// Readiness.
    pub ready: bool,
    /// Startup probe passed (or none).
    pub started: bool,
    /// Restarts so far.
    pub restart_count: i32,
    /// The running process, if any.
    pub pid: Option<u32>,
}

impl Report {
    /// The initial report of a container not started yet.
    pub fn waiting(
        name: &str,
        image: &str,
        binary: PathBuf,
        reason: &str,
        message: Option<String>,
    ) -> Self {
        Self {
            name: name.to_string(),
            image: image.to_string(),
            binary,
            state: State::Waiting {
                reason: reason.to_string(),
                message,
            },
            last: None,
            ready: false,
            started: false,
            restart_count: 0,
            pid: None,
        }
    }

    /// Whether the process has run at least once.
    pub fn has_run(&self) -> bool {
        self.last.is_some() || !matches!(self.state, State::Waiting { .. })
    }
}

/// Everything needed to run one container.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Container name.
    pub name: String,
    /// Image.
    pub image: String,
    /// The binary the image maps to.
    pub binary: PathBuf,
    /// The process.
    pub spec: LaunchSpec,
    /// The pod's log file.
    pub log: PathBuf,
    /// startupProbe.
    pub startup: Option<(Check, Timing)>,
    /// readinessProbe.
    pub readiness: Option<(Check, Timing)>,
    /// livenessProbe, with its own grace period if set.
    pub liveness: Option<(Check, Timing, Option<Duration>)>,
    /// terminationGracePeriodSeconds.
    pub grace: Duration,
    /// Restart policy.
    pub restart: Restart,
    /// Backoff between restarts.
    pub backoff: BackoffPolicy,
    /// `namespace/pod` for logs.
    pub pod: String,
}

/// Longest grace the runner gives processes when it exits.
const SHUTDOWN_GRACE_CAP: Duration = Duration::from_secs(10);

/// Waits until a stop is requested (a dropped sender means the pod task is gone).
pub async fn stopped(stop: &mut watch::Receiver<Option<Stop>>) -> Stop {
    match stop.wait_for(Option::is_some).await {
        Ok(s) => s.unwrap_or(Stop::Gone),
        Err(_) => Stop::Gone,
    }
}

fn grace_for(stop: Stop, plan: &Plan) -> Duration {
    match stop {
        Stop::Delete { grace } => grace,
        Stop::Shutdown => plan.grace.min(SHUTDOWN_GRACE_CAP),
        Stop::Gone => plan.grace,
    }
}

fn termination(
    status: &std::io::Result<std::process::ExitStatus>,
    started_at: Timestamp,
    why: Option<&str>,
) -> Termination {
    let (exit_code, message) = match status {
        Ok(s) => (process::exit_code(s), why.map(str::to_string)),
        Err(e) => (128, Some(format!("waiting for the process: {e}"))),
    };
    Termination {
        exit_code,
        reason: match why {
            Some(_) => "Error".into(),
            None if exit_code == 0 => "Completed".into(),
            None => "Error".into(),
        },
        message,
        started_at,
        finished_at: Timestamp::now(),
    }
}

/// Runs the container until it ends for good or a stop is requested; reports every
/// change as `(index, report)`. Returns the final report.
pub async fn supervise(
    plan: Plan,
    index: usize,
    mut stop: watch::Receiver<Option<Stop>>,
    reports: mpsc::UnboundedSender<(usize, Report)>,
) -> Report {
    let mut report = Report::waiting(
        &plan.name,
        &plan.image,
        plan.binary.clone(),
        "ContainerCreating",
        None,
    );
    let send = |r: &Report| {
        let _ = reports.send((index, r.clone()));
    };
    let mut backoff = Backoff::new(plan.backoff);
    loop {
        if let Some(s) = *stop.borrow() {
            tracing::debug!(pod = %plan.pod, container = %plan.name, ?s, "stopped before start");
            return finish(report, &send);
        }
        let started_at = Timestamp::now();
        let began = Instant::now();
        let header = format!(
            "{} container {} starts (restart {}) at {started_at}: {} {:?}",
            plan.pod,
            plan.name,
            report.restart_count,
            plan.spec.program.display(),
            plan.spec.args
        );
        let end = match process::spawn(&plan.spec, &plan.log, &header) {
            Err(err) => {
                tracing::warn!(pod = %plan.pod, container = %plan.name, program = %plan.spec.program.display(), %err, "cannot start process");
                Termination {
                    exit_code: 128,
                    reason: "StartError".into(),
                    message: Some(format!("starting {}: {err}", plan.spec.program.display())),
                    started_at,
                    finished_at: Timestamp::now(),
                }
            }
            Ok(mut child) => {
                report.pid = child.id();
                report.state = State::Running { started_at };
                report.started = plan.startup.is_none();
                report.ready = plan.readiness.is_none() && report.started;
                send(&report);
                tracing::info!(pod = %plan.pod, container = %plan.name, pid = ?report.pid, restarts = report.restart_count, "process started");
                match run_once(&plan, &mut child, &mut report, &mut stop, &send, started_at).await {
                    RunEnd::Exited(t) => t,
                    RunEnd::Stopped(t) => {
                        report.state = State::Terminated(t);
                        report.pid = None;
                        report.ready = false;
                        send(&report);
                        return report;
                    }
                }
            }
        };
        tracing::info!(pod = %plan.pod, container = %plan.name, exit_code = end.exit_code, reason = %end.reason, "process ended");
        report.pid = None;
        report.ready = false;
        if !plan.restart.restarts_after(end.exit_code) {
            report.state = State::Terminated(end);
            send(&report);
            return report;
        }
        let delay = backoff.next_delay(began.elapsed());
        report.last = Some(end);
        report.state = State::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: Some(format!(
                "back-off {delay:?} restarting failed container {}",
                plan.name
            )),
        };
        send(&report);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopped(&mut stop) => return finish(report, &send),
        }
        report.restart_count = report.restart_count.saturating_add(1);
    }
}

/// The final report of a container stopped while not running.
fn finish(mut report: Report, send: &impl Fn(&Report)) -> Report {
    if !matches!(report.state, State::Terminated(_)) {
        let now = Timestamp::now();
        report.state = State::Terminated(report.last.clone().unwrap_or(Termination {
            exit_code: 0,
            reason: "Completed".into(),
            message: None,
            started_at: now,
            finished_at: now,
        }));
    }
    report.ready = false;
    report.pid = None;
    send(&report);
    report
}

enum RunEnd {
    /// The process ended (by itself or killed for a failed probe).
    Exited(Termination),
    /// It was stopped because the pod goes.
    Stopped(Termination),
}

async fn run_once(
    plan: &Plan,
    child: &mut tokio::process::Child,
    report: &mut Report,
    stop: &mut watch::Receiver<Option<Stop>>,
    send: &impl Fn(&Report),
    started_at: Timestamp,
) -> RunEnd {
    let (started_tx, started_rx) = watch::channel(plan.startup.is_none());
    let mut tasks = Vec::new();
    let mut startup = plan.startup.clone().map(|(check, timing)| {
        let (rx, task) = probe::spawn(Kind::Startup, check, timing, None);
        tasks.push(task);
        rx
    });
    let mut readiness = plan.readiness.clone().map(|(check, timing)| {
        let (rx, task) = probe::spawn(Kind::Readiness, check, timing, Some(started_rx.clone()));
        tasks.push(task);
        rx
    });
    let mut liveness = plan.liveness.clone().map(|(check, timing, grace)| {
        let (rx, task) = probe::spawn(Kind::Liveness, check, timing, Some(started_rx.clone()));
        tasks.push(task);
        (rx, grace)
    });
    let end = loop {
        tokio::select! {
            status = child.wait() => {
                break RunEnd::Exited(termination(&status, started_at, None));
            }
            s = stopped(stop) => {
                let grace = grace_for(s, plan);
                tracing::info!(pod = %plan.pod, container = %plan.name, ?grace, "stopping process");
                let status = process::terminate(child, grace).await;
                break RunEnd::Stopped(termination(&status, started_at, None));
            }
            outcome = changed(startup.as_mut()) => {
                match outcome {
                    Outcome::Success => {
                        started_tx.send_replace(true);
                        report.started = true;
                        report.ready = plan.readiness.is_none();
                        send(report);
                    }
                    Outcome::Failure => {
                        let status = process::terminate(child, plan.grace).await;
                        break RunEnd::Exited(termination(&status, started_at, Some("startup probe failed")));
                    }
                    Outcome::Unknown => {}
                }
            }
            outcome = changed(readiness.as_mut()) => {
                let ready = outcome == Outcome::Success;
                if ready != report.ready {
                    report.ready = ready;
                    send(report);
                }
            }
            outcome = changed(liveness.as_mut().map(|(rx, _)| rx)) => {
                if outcome == Outcome::Failure {
                    let grace = liveness.as_ref().and_then(|(_, g)| *g).unwrap_or(plan.grace);
                    tracing::info!(pod = %plan.pod, container = %plan.name, "liveness probe failed: restarting");
                    let status = process::terminate(child, grace).await;
                    break RunEnd::Exited(termination(&status, started_at, Some("liveness probe failed")));
                }
            }
        }
    };
    for task in tasks {
        task.abort();
    }
    process::kill_group_of(child);
    end
}

/// The next outcome of an optional probe; pending forever when there is none or its
/// loop ended.
async fn changed(rx: Option<&mut watch::Receiver<Outcome>>) -> Outcome {
    match rx {
        Some(rx) => match rx.changed().await {
            Ok(()) => *rx.borrow_and_update(),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(script: &str, restart: Restart) -> Plan {
        let log = std::env::temp_dir().join(format!(
            "sluice-runner-sup-{}-{:x}.log",
            std::process::id(),
            script
                .bytes()
                .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b.into()))
        ));
        Plan {
            name: "c".into(),
            image: "img".into(),
            binary: "/bin/sh".into(),
            spec: LaunchSpec {
                program: "/bin/sh".into(),
                args: vec!["-c".into(), script.into()],
                env: vec![],
                cwd: None,
            },
            log,
            startup: None,
            readiness: None,
            liveness: None,
            grace: Duration::from_secs(5),
            restart,
            backoff: BackoffPolicy {
                initial: Duration::from_millis(10),
                max: Duration::from_millis(40),
                reset_after: Duration::from_secs(60),
            },
            pod: "ns/p".into(),
        }
    }

    #[tokio::test]
    async fn on_failure_restarts_until_success() {
        let dir = std::env::temp_dir().join(format!("sluice-runner-onfail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let counter = dir.join("n");
        let script = format!(
            "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; [ $n -ge 3 ]",
            c = counter.display()
        );
        let (_stop_tx, stop_rx) = watch::channel(None);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let p = plan(&script, Restart::OnFailure);
        let log = p.log.clone();
        let last = supervise(p, 0, stop_rx, tx).await;
        let _ = std::fs::remove_file(log);
        assert_eq!(last.restart_count, 2);
        match &last.state {
            State::Terminated(t) => assert_eq!((t.exit_code, t.reason.as_str()), (0, "Completed")),
            other => panic!("unexpected state {other:?}"),
        }
        assert_eq!(last.last.as_ref().map(|t| t.exit_code), Some(1));
        let mut saw_backoff = false;
        while let Ok((_, r)) = rx.try_recv() {
            saw_backoff |=
                matches!(&r.state, State::Waiting { reason, .. } if reason == "CrashLoopBackOff");
        }
        assert!(saw_backoff);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_failing_liveness_probe_restarts_the_process() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut p = plan("exec sleep 60", Restart::Always);
        let log = p.log.clone();
        let timing = probe::timing_of(&k8s_openapi::api::core::v1::Probe {
            period_seconds: Some(1),
            failure_threshold: Some(1),
            ..Default::default()
        });
        p.liveness = Some((
            Check::Tcp { port: closed },
            timing,
            Some(Duration::from_secs(5)),
        ));
        let (stop_tx, stop_rx) = watch::channel(None);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(supervise(p, 0, stop_rx, tx));
        let restarted = loop {
            let (_, r) = rx.recv().await.unwrap();
            if r.restart_count >= 1 && matches!(r.state, State::Running { .. }) {
                break r;
            }
        };
        let last = restarted.last.expect("previous run");
        assert_eq!(last.message.as_deref(), Some("liveness probe failed"));
        assert_eq!(last.exit_code, 143);
        stop_tx.send_replace(Some(Stop::Shutdown));
        task.await.unwrap();
        let _ = std::fs::remove_file(log);
    }

    #[tokio::test]
    async fn never_reports_the_failure() {
        let (_stop_tx, stop_rx) = watch::channel(None);
        let (tx, _rx) = mpsc::unbounded_channel();
        let p = plan("exit 7", Restart::Never);
        let log = p.log.clone();
        let last = supervise(p, 0, stop_rx, tx).await;
        let _ = std::fs::remove_file(log);
        assert_eq!(last.restart_count, 0);
        assert!(
            matches!(&last.state, State::Terminated(t) if t.exit_code == 7 && t.reason == "Error")
        );
    }

    #[tokio::test]
    async fn stop_terminates_a_running_process() {
        let (stop_tx, stop_rx) = watch::channel(None);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let p = plan("sleep 60", Restart::Always);
        let log = p.log.clone();
        let task = tokio::spawn(supervise(p, 0, stop_rx, tx));
        loop {
            let (_, r) = rx.recv().await.unwrap();
            if matches!(r.state, State::Running { .. }) {
                assert!(r.pid.is_some());
                assert!(r.ready, "no readiness probe: ready once started");
                break;
            }
        }
        stop_tx.send_replace(Some(Stop::Delete {
            grace: Duration::from_secs(10),
        }));
        let last = task.await.unwrap();
        assert!(matches!(&last.state, State::Terminated(t) if t.exit_code == 143));
        assert!(!last.ready);
        let _ = std::fs::remove_file(log);
    }
}
