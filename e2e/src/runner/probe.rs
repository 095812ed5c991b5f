//! Startup, readiness and liveness probes.
//!
//! httpGet probes GET `http://127.0.0.1:<allocated port><path>` (2xx/3xx pass; an
//! `HTTPS` scheme is checked as a TCP connect, since the kubelet does not verify the
//! certificate either); tcpSocket probes connect; exec probes run the command with the
//! container's environment (exit 0 passes); gRPC probes are checked as a TCP connect.
//! Timings and thresholds follow the probe (Kubernetes defaults: period 10 s, timeout
//! 1 s, success 1, failure 3).

use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Probe;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::launch::LaunchSpec;
use super::ports::PortMap;

/// What a probe checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// HTTP GET on 127.0.0.1.
    Http {
        /// Local port.
        port: u16,
        /// Request path (with query).
        path: String,
        /// Extra headers.
        headers: Vec<(String, String)>,
    },
    /// TCP connect to 127.0.0.1.
    Tcp {
        /// Local port.
        port: u16,
    },
    /// A command run with the container's environment.
    Exec {
        /// The command, with the container's env and working directory.
        spec: LaunchSpec,
    },
    /// A probe the runner cannot run; always fails, with the reason logged.
    Invalid(String),
}

/// When and how often a probe runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Delay after the container started.
    pub initial_delay: Duration,
    /// Interval between checks.
    pub period: Duration,
    /// Limit on one check.
    pub timeout: Duration,
    /// Consecutive successes that make it pass.
    pub success_threshold: u32,
    /// Consecutive failures that make it fail.
    pub failure_threshold: u32,
}

/// The probe's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not decided yet.
    Unknown,
    /// Passing (reached the success threshold).
    Success,
    /// Failing (reached the failure threshold).
    Failure,
}

fn secs(v: Option<i32>, default: u64, min: u64) -> Duration {
    Duration::from_secs(
        v.and_then(|v| u64::try_from(v).ok())
            .unwrap_or(default)
            .max(min),
    )
}

/// The timing of `probe`, with Kubernetes' defaults.
pub fn timing_of(probe: &Probe) -> Timing {
    let threshold =
        |v: Option<i32>, d: u32| v.and_then(|v| u32::try_from(v).ok()).unwrap_or(d).max(1);
    Timing {
        initial_delay: secs(probe.initial_delay_seconds, 0, 0),
        period: secs(probe.period_seconds, 10, 1),
        timeout: secs(probe.timeout_seconds, 1, 1),
        success_threshold: threshold(probe.success_threshold, 1),
        failure_threshold: threshold(probe.failure_threshold, 3),
    }
}

/// What `probe` of `container` checks, with ports mapped to the allocated ones and exec
/// commands run like `process` (its env and working directory).
pub fn check_of(probe: &Probe, container: &str, ports: &PortMap, process: &LaunchSpec) -> Check {
    let port = |p: &IntOrString| ports.resolve(container, p);
    if let Some(http) = &probe.http_get {
        let Some(port) = port(&http.port) else {
            return Check::Invalid(format!(
                "httpGet port {:?} is not a declared port",
                http.port
            ));
        };
        if http
            .scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("https"))
        {
            return Check::Tcp { port };
        }
        let path = http
            .path
            .clone()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".into());
        let path = if path.starts_with('/') {
            path
        } else {
            format!("/{path}")
        };
        let headers = http
            .http_headers
            .iter()
            .flatten()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect();
        return Check::Http {
            port,
            path,
            headers,
        };
    }
    if let Some(tcp) = &probe.tcp_socket {
        return match port(&tcp.port) {
            Some(port) => Check::Tcp { port },
            None => Check::Invalid(format!(
                "tcpSocket port {:?} is not a declared port",
                tcp.port
            )),
        };
    }
    if let Some(grpc) = &probe.grpc {
        return match ports.resolve(container, &IntOrString::Int(grpc.port)) {
            Some(port) => Check::Tcp { port },
            None => Check::Invalid(format!("grpc port {} is invalid", grpc.port)),
        };
    }
    if let Some(exec) = &probe.exec {
        let command = exec.command.clone().unwrap_or_default();
        let Some((program, args)) = command.split_first() else {
            return Check::Invalid("exec probe without a command".into());
        };
        return Check::Exec {
            spec: LaunchSpec {
                program: program.into(),
                args: args.to_vec(),
                env: process.env.clone(),
                cwd: process.cwd.clone(),
            },
        };
    }
    Check::Invalid("probe has no handler".into())
}

impl Check {
    /// Runs an exec probe naming the image's binary (`name` or a path ending in it) with
    /// the mapped `binary`, as the container's command is.
    pub fn with_image_binary(self, name: &str, binary: &std::path::Path) -> Self {
        match self {
            Check::Exec { mut spec } => {
                if !name.is_empty() && spec.program.file_name().is_some_and(|f| f == name) {
                    spec.program = binary.to_path_buf();
                }
                Check::Exec { spec }
            }
            other => other,
        }
    }
}

/// Runs one check within `timeout`.
pub async fn check_once(check: &Check, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, run_check(check))
        .await
        .unwrap_or(false)
}

async fn run_check(check: &Check) -> bool {
    match check {
        Check::Tcp { port } => TcpStream::connect(("127.0.0.1", *port)).await.is_ok(),
        Check::Http {
            port,
            path,
            headers,
        } => http_get(*port, path, headers)
            .await
            .is_some_and(|s| (200..400).contains(&s)),
        Check::Exec { spec } => {
            let mut cmd = tokio::process::Command::new(&spec.program);
            cmd.args(&spec.args)
                .env_clear()
                .envs(spec.env.iter().map(|(k, v)| (k, v)))
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true);
            if let Some(cwd) = &spec.cwd {
                cmd.current_dir(cwd);
            }
            cmd.status().await.is_ok_and(|s| s.success())
        }
        Check::Invalid(_) => false,
    }
}

async fn http_get(port: u16, path: &str, headers: &[(String, String)]) -> Option<u16> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    let driver = tokio::spawn(conn);
    let mut request = hyper::Request::get(path)
        .header(hyper::header::HOST, format!("127.0.0.1:{port}"))
        .header(hyper::header::USER_AGENT, "kube-probe/1.34")
        .header(hyper::header::CONNECTION, "close");
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request.body(Empty::<Bytes>::new()).ok()?;
    let status = sender
        .send_request(request)
        .await
        .ok()
        .map(|r| r.status().as_u16());
    driver.abort();
    status
}

/// Which probe a loop runs: startup stops at its first pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// startupProbe.
    Startup,
    /// readinessProbe.
    Readiness,
    /// livenessProbe.
    Liveness,
}

/// Runs a probe loop: waits until `gate` is true (the startup probe passed), then checks
/// every period and publishes the outcome. Abort the handle when the process exits.
pub fn spawn(
    kind: Kind,
    check: Check,
    timing: Timing,
    gate: Option<watch::Receiver<bool>>,
) -> (watch::Receiver<Outcome>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(Outcome::Unknown);
    let handle = tokio::spawn(async move {
        if let Some(mut gate) = gate
            && gate.wait_for(|open| *open).await.is_err()
        {
            return;
        }
        if let Check::Invalid(why) = &check {
            tracing::warn!(?kind, %why, "probe cannot run and will fail");
        }
        tokio::time::sleep(timing.initial_delay).await;
        let mut counter = Counter::default();
        loop {
            let ok = check_once(&check, timing.timeout).await;
            if let Some(outcome) = counter.record(ok, &timing) {
                tx.send_replace(outcome);
                if kind == Kind::Startup && outcome == Outcome::Success {
                    return;
                }
            }
            tokio::time::sleep(timing.period).await;
        }
    });
    (rx, handle)
}

/// Consecutive pass/fail counting against the thresholds.
#[derive(Debug, Default)]
pub struct Counter {
    successes: u32,
    failures: u32,
}

impl Counter {
    /// Records one check; returns the outcome when a threshold is reached.
    pub fn record(&mut self, ok: bool, timing: &Timing) -> Option<Outcome> {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            (self.successes >= timing.success_threshold).then_some(Outcome::Success)
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            (self.failures >= timing.failure_threshold).then_some(Outcome::Failure)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, ContainerPort, HTTPGetAction, TCPSocketAction};

    fn ports() -> PortMap {
        let c = Container {
            name: "main".into(),
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..Default::default()
            }]),
            ..Default::default()
        };
        PortMap::allocate::<()>(&[c], || Ok(45000)).unwrap()
    }

    fn process() -> LaunchSpec {
        LaunchSpec {
            program: "/bin/x".into(),
            args: vec![],
            env: vec![("A".into(), "1".into())],
            cwd: None,
        }
    }

    #[test]
    fn http_probe_ports_map_to_allocated_ports() {
        for port in [IntOrString::String("http".into()), IntOrString::Int(8080)] {
            let probe = Probe {
                http_get: Some(HTTPGetAction {
                    port,
                    path: Some("readyz".into()),
                    ..Default::default()
                }),
                ..Default::default()
            };
            assert_eq!(
                check_of(&probe, "main", &ports(), &process()),
                Check::Http {
                    port: 45000,
                    path: "/readyz".into(),
                    headers: vec![]
                }
            );
        }
        let tcp = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String("nope".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(matches!(
            check_of(&tcp, "main", &ports(), &process()),
            Check::Invalid(_)
        ));
        assert!(matches!(
            check_of(&Probe::default(), "main", &ports(), &process()),
            Check::Invalid(_)
        ));
    }

    #[test]
    fn exec_probes_run_the_mapped_binary() {
        let probe = Probe {
            exec: Some(k8s_openapi::api::core::v1::ExecAction {
                command: Some(vec!["/usr/bin/sluice-processor".into(), "health".into()]),
            }),
            ..Default::default()
        };
        let check = check_of(&probe, "main", &ports(), &process())
            .with_image_binary("sluice-processor", std::path::Path::new("/t/proc"));
        match check {
            Check::Exec { spec } => {
                assert_eq!(spec.program, std::path::PathBuf::from("/t/proc"));
                assert_eq!(spec.args, vec!["health"]);
                assert_eq!(spec.env, process().env);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn defaults_follow_kubernetes() {
        let t = timing_of(&Probe::default());
        assert_eq!(t.period, Duration::from_secs(10));
        assert_eq!(t.timeout, Duration::from_secs(1));
        assert_eq!((t.success_threshold, t.failure_threshold), (1, 3));
        let t = timing_of(&Probe {
            period_seconds: Some(0),
            failure_threshold: Some(0),
            ..Default::default()
        });
        assert_eq!(t.period, Duration::from_secs(1));
        assert_eq!(t.failure_threshold, 1);
    }

    #[test]
    fn thresholds_need_consecutive_results() {
        let timing = Timing {
            success_threshold: 2,
            failure_threshold: 3,
            ..timing_of(&Probe::default())
        };
        let mut c = Counter::default();
        assert_eq!(c.record(true, &timing), None);
        assert_eq!(c.record(false, &timing), None);
        assert_eq!(c.record(true, &timing), None);
        assert_eq!(c.record(true, &timing), Some(Outcome::Success));
        assert_eq!(c.record(false, &timing), None);
        assert_eq!(c.record(false, &timing), None);
        assert_eq!(c.record(false, &timing), Some(Outcome::Failure));
    }

    #[tokio::test]
    async fn http_check_reads_the_status_code() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            for code in ["200 OK", "503 Service Unavailable"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await.unwrap();
                let resp =
                    format!("HTTP/1.1 {code}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                s.write_all(resp.as_bytes()).await.unwrap();
            }
        });
        let check = Check::Http {
            port,
            path: "/".into(),
            headers: vec![("X-Test".into(), "1".into())],
        };
        assert!(check_once(&check, Duration::from_secs(5)).await);
        assert!(!check_once(&check, Duration::from_secs(5)).await);
    }
}
