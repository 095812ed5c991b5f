//! Native sink replicas as local processes (`sluice-processor run -f` of a sink
//! Connector manifest), for the sink suites to start, signal and read.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::processor::{log_dir, processor_bin};

/// How long a sink may take to exit after a signal.
const EXIT_WAIT: Duration = Duration::from_secs(120);

/// A sink replica: `sluice-processor run -f` of a sink Connector manifest.
pub struct SinkProcess {
    child: Child,
    log: PathBuf,
    /// Where it serves `/metrics` and the probes, when asked to.
    served: Option<String>,
}

impl SinkProcess {
    /// Starts a replica of the sink in `manifest`, its credentials read from `credentials`
    /// (one file per key), logging to `<tag>.log`.
    pub fn start(bootstrap: &str, manifest: &Path, credentials: &Path, tag: &str) -> SinkProcess {
        Self::start_serving(bootstrap, manifest, credentials, tag, false)
    }

    /// [`Self::start`], serving `/metrics` (and the probes) on a port of the system's
    /// choice when `serve` ([`Self::served`] says where).
    pub fn start_serving(
        bootstrap: &str,
        manifest: &Path,
        credentials: &Path,
        tag: &str,
        serve: bool,
    ) -> SinkProcess {
        let log = log_dir().join(format!("{tag}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let logged_before = out.metadata().map(|m| m.len()).unwrap_or(0);
        let mut command = Command::new(processor_bin());
        if serve {
            command.env(sluice_crds::contract::env::HTTP_ADDR, "127.0.0.1:0");
        }
        let child = command
            .args(["run", "-f"])
            .arg(manifest)
            .args(["--bootstrap", bootstrap])
            .env("SLUICE_CREDENTIALS_DIR", credentials)
            // SLUICE_E2E_SINK_LOG sets the sink's log filter when a test needs a closer look.
            .env(
                "RUST_LOG",
                std::env::var("SLUICE_E2E_SINK_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let served = serve.then(|| crate::processor::served_addr(&log, logged_before));
        SinkProcess { child, log, served }
    }

    /// Where the sink serves `/metrics` (started with `serve`).
    pub fn served(&self) -> &str {
        self.served.as_deref().expect("a sink started to serve")
    }

    /// Sends `sig` (`-KILL`, `-TERM`) and waits for the exit.
    pub fn signal(&mut self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let start = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(start.elapsed() < EXIT_WAIT, "the sink did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `progress` (rows, lines, requests: what the target holds) reaches
    /// `done`; fails with `what` and the sink's log after two minutes.
    pub async fn wait_until<F, Fut>(&self, what: &str, done: usize, progress: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = usize>,
    {
        let start = Instant::now();
        while progress().await < done {
            assert!(start.elapsed() < EXIT_WAIT, "{what}: {}", self.log_text());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits up to `max` for the replica to exit on its own: its exit code.
    pub fn wait_exit(&mut self, max: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < max {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// What it logged.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for SinkProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the sink of `manifest` through two SIGKILLs while `feed` flows: two replicas in
/// turn, each killed once `progress` (rows, lines: what the target holds) has moved past
/// where it stood at its start, then a last one until `progress` reaches `done`, stopped
/// cleanly with SIGTERM.
pub async fn kill_twice_then_finish<F, Fut>(
    bootstrap: &str,
    manifest: &Path,
    credentials: &Path,
    tag: &str,
    feed: tokio::task::JoinHandle<anyhow::Result<()>>,
    done: usize,
    progress: F,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    for round in 0..2 {
        let mut sink =
            SinkProcess::start(bootstrap, manifest, credentials, &format!("{tag}-{round}"));
        let before = progress().await;
        sink.wait_until("nothing written", before + 1, &progress)
            .await;
        sink.signal("-KILL");
    }
    assert!(!feed.is_finished(), "the kills came after the input ended");
    feed.await.unwrap().unwrap();
    let mut sink = SinkProcess::start(bootstrap, manifest, credentials, &format!("{tag}-last"));
    sink.wait_until("records missing", done, &progress).await;
    // Whatever the last replica still had to do is done by now; nothing more arrives.
    tokio::time::sleep(Duration::from_secs(2)).await;
    sink.signal("-TERM");
    assert!(
        sink.log_text().contains("stopped cleanly"),
        "{}",
        sink.log_text()
    );
}

/// Writes a Connector manifest named `tag` in namespace `e2e` with `spec`.
pub fn connector_manifest(tag: &str, spec: serde_json::Value) -> PathBuf {
    let doc = json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "Connector",
        "metadata": {"name": tag, "namespace": "e2e"},
        "spec": spec,
    });
    let path = log_dir().join(format!("{tag}.json"));
    std::fs::write(&path, doc.to_string()).unwrap();
    path
}
