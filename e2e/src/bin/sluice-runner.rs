//! `sluice-runner`: plays scheduler and kubelet for one node of the e2e environment,
//! running the pods whose images map to local binaries as local processes.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use sluice_e2e::env::TestEnv;
use sluice_e2e::runner::{self, BackoffPolicy, Config, ImageMap};

/// Plays scheduler and kubelet for one node: binds pods whose images map to local
/// binaries and runs them as local processes.
#[derive(Debug, Parser)]
#[command(name = "sluice-runner", version)]
struct Args {
    /// Kubeconfig of the API server (the environment's admin kubeconfig).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// Name of the Node to register.
    #[arg(long, default_value = "sluice-e2e-node")]
    node_name: String,
    /// Image mapping REPOSITORY=PATH (tag ignored); repeatable.
    #[arg(long = "image", value_name = "REPOSITORY=PATH", required = true)]
    images: Vec<String>,
    /// Only take pods of this namespace; repeatable (default: all namespaces).
    #[arg(long = "namespace")]
    namespaces: Vec<String>,
    /// Directory of the pod log files (default: $E2E_LOGS/pods, else e2e/.state/logs/pods).
    #[arg(long)]
    logs_dir: Option<PathBuf>,
    /// Directory of the per-pod work directories (default: `e2e/.state/runner/<node>`).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// First restart delay in seconds (the kubelet uses 10; tests want less).
    #[arg(long, default_value_t = 1)]
    backoff_initial_seconds: u64,
    /// Largest restart delay in seconds (the kubelet uses 300).
    #[arg(long, default_value_t = 30)]
    backoff_max_seconds: u64,
    /// Delete the Node object on exit.
    #[arg(long)]
    delete_node_on_exit: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_RUNNER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let images = match ImageMap::parse(&args.images) {
        Ok(m) => m,
        Err(err) => {
            eprintln!("sluice-runner: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    let logs_dir = args.logs_dir.unwrap_or_else(|| {
        std::env::var_os("E2E_LOGS")
            .map(PathBuf::from)
            .unwrap_or_else(|| TestEnv::state_dir().join("logs"))
            .join("pods")
    });
    let work_dir = args
        .work_dir
        .unwrap_or_else(|| TestEnv::state_dir().join("runner").join(&args.node_name));
    let initial = Duration::from_secs(args.backoff_initial_seconds.max(1));
    let config = Config {
        kubeconfig: args.kubeconfig,
        node_name: args.node_name,
        images,
        namespaces: args.namespaces,
        logs_dir,
        work_dir,
        backoff: BackoffPolicy {
            initial,
            max: Duration::from_secs(args.backoff_max_seconds).max(initial),
            reset_after: Duration::from_secs(args.backoff_max_seconds.saturating_mul(2).max(60)),
        },
        delete_node_on_exit: args.delete_node_on_exit,
    };
    match runner::run(config, shutdown_signal()).await {
        Ok(()) => {
            eprintln!("sluice-runner: stopped; every process it started has exited");
            std::process::ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("sluice-runner: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
