//! Starting and stopping one container process.
//!
//! Each process leads its own process group, so SIGTERM/SIGKILL reach the children a
//! shell entrypoint starts too. stdout and stderr are appended to the pod's log file.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use super::launch::LaunchSpec;

/// Starts `spec` with its output appended to `log`, a header line first.
pub fn spawn(spec: &LaunchSpec, log: &Path, header: &str) -> std::io::Result<Child> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = OpenOptions::new().create(true).append(true).open(log)?;
    writeln!(file, "==> sluice-runner: {header}")?;
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::from(file.try_clone()?))
        .stderr(Stdio::from(file))
        .process_group(0)
        .kill_on_drop(true);
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    cmd.spawn()
}

/// Sends `signal` to the process group led by `pid`.
pub fn signal_group(pid: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(pid) else {
        return;
    };
    if let Err(err) = killpg(Pid::from_raw(raw), signal)
        && err != nix::errno::Errno::ESRCH
    {
        tracing::warn!(pid, %signal, %err, "signalling process group failed");
    }
}

/// SIGTERM, up to `grace` for the exit, then SIGKILL. Returns the exit status.
pub async fn terminate(child: &mut Child, grace: Duration) -> std::io::Result<ExitStatus> {
    if let Some(status) = child.try_wait()? {
        kill_group_of(child);
        return Ok(status);
    }
    if let Some(pid) = child.id() {
        signal_group(pid, Signal::SIGTERM);
    }
    let status = match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status?,
        Err(_) => {
            if let Some(pid) = child.id() {
                signal_group(pid, Signal::SIGKILL);
            }
            child.wait().await?
        }
    };
    Ok(status)
}

/// Kills what is left of the process group after its leader exited (stray children).
pub fn kill_group_of(child: &Child) {
    if let Some(pid) = child.id() {
        signal_group(pid, Signal::SIGKILL);
    }
}

/// The exit code Kubernetes reports: the code, or 128 + the signal number.
pub fn exit_code(status: &ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn spec(script: &str) -> LaunchSpec {
        LaunchSpec {
            program: PathBuf::from("/bin/sh"),
            args: vec!["-c".into(), script.into()],
            env: vec![("GREETING".into(), "hello".into())],
            cwd: None,
        }
    }

    fn log_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "sluice-runner-test-{}-{name}.log",
            std::process::id()
        ))
    }

    #[tokio::test]
    async fn runs_with_only_the_given_env_and_appends_output() {
        let log = log_path("env");
        let _ = std::fs::remove_file(&log);
        for _ in 0..2 {
            let mut child = spawn(
                &spec("echo $GREETING ${HOME:-nohome}; exit 3"),
                &log,
                "start",
            )
            .unwrap();
            let status = child.wait().await.unwrap();
            assert_eq!(exit_code(&status), 3);
        }
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(text.matches("hello nohome").count(), 2, "{text}");
        assert_eq!(text.matches("==> sluice-runner: start").count(), 2);
        std::fs::remove_file(&log).unwrap();
    }

    #[tokio::test]
    async fn terminate_escalates_to_sigkill() {
        let log = log_path("kill");
        let _ = std::fs::remove_file(&log);
        let script = "trap '' TERM; echo trapped; while true; do sleep 0.1; done";
        let mut child = spawn(&spec(script), &log, "x").unwrap();
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("trapped")
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let status = terminate(&mut child, Duration::from_millis(300))
            .await
            .unwrap();
        assert_eq!(exit_code(&status), 137);
        let _ = std::fs::remove_file(&log);
    }

    #[tokio::test]
    async fn terminate_uses_sigterm_first() {
        let log = log_path("term");
        let mut child = spawn(&spec("sleep 30"), &log, "x").unwrap();
        let status = terminate(&mut child, Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(exit_code(&status), 128 + 15);
        let _ = std::fs::remove_file(&log);
    }
}
