//! `sluice-operator`: the Sluice Kubernetes operator.

use std::io::IsTerminal;

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() {
    let args = sluice_operator::Args::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if args.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        // Colours only on a terminal: `kubectl logs` shows plain text.
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stdout().is_terminal())
            .init();
    }
    if let Err(err) = sluice_operator::run(args).await {
        tracing::error!(%err, "sluice-operator stopped");
        eprintln!("sluice-operator: {err}");
        std::process::exit(1);
    }
}
