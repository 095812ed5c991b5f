//! Structured logs: text by default, JSON when `SLUICE_LOG_FORMAT=json`; level from
//! `RUST_LOG` (default `info`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber (logs go to stderr; colours only on a terminal, so
/// `kubectl logs` and log files show plain text).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var(sluice_crds::contract::env::LOG_FORMAT)
        .is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        builder.json().with_current_span(false).init();
    } else {
        builder.init();
    }
}
