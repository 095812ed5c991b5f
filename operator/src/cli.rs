//! Command-line flags and their environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// How the operator is started.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "sluice-operator",
    version,
    about = "The Sluice Kubernetes operator"
)]
pub struct Args {
    /// Kafka bootstrap servers (host:port, comma separated).
    #[arg(long, env = "SLUICE_KAFKA_BOOTSTRAP")]
    pub kafka_bootstrap: String,

    /// A file of librdkafka properties (`key=value` lines) for SASL/TLS, e.g. a mounted Secret.
    #[arg(long, env = "SLUICE_KAFKA_CONFIG_FILE")]
    pub kafka_config_file: Option<PathBuf>,

    /// Timeout of one Kafka admin request.
    #[arg(long, env = "SLUICE_KAFKA_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub kafka_timeout: Duration,

    /// Address of the HTTP server (`/metrics`, `/healthz`, `/readyz`).
    #[arg(long, env = "SLUICE_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// How often every resource is reconciled even when nothing changed (catches drift in Kafka).
    #[arg(long, env = "SLUICE_RESYNC", default_value = "60s", value_parser = humantime::parse_duration)]
    pub resync: Duration,

    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "SLUICE_WATCH_NAMESPACE")]
    pub namespace: Option<String>,

    /// Handle only resources labelled `sluice.dev/instance=<this>` (default: only resources
    /// without that label). Lets a test or a second installation run beside the main one.
    #[arg(long, env = "SLUICE_INSTANCE")]
    pub instance: Option<String>,

    /// Name of the coordination.k8s.io Lease used for leader election.
    #[arg(long, env = "SLUICE_LEASE_NAME", default_value = "sluice-operator")]
    pub lease_name: String,

    /// Namespace of the Lease (usually the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,

    /// Lease duration: how long a silent leader keeps the lease before another replica takes over.
    #[arg(long, env = "SLUICE_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,

    /// This replica's identity in the Lease and in events (defaults to the host name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Image of the processor Deployments (unless a Pipeline sets `spec.image`).
    #[arg(
        long,
        env = "SLUICE_PROCESSOR_IMAGE",
        default_value = "ghcr.io/sluice/sluice-processor:0.1.0"
    )]
    pub processor_image: String,

    /// Images a Pipeline's `spec.image` may name besides `--processor-image`, comma
    /// separated (the chart's `processor.allowedImages`).
    #[arg(long, env = "SLUICE_PROCESSOR_ALLOWED_IMAGES", value_delimiter = ',')]
    pub processor_allowed_images: Vec<String>,

    /// Default resources of a processor container, as JSON (`{"requests":{"cpu":"100m"}}`).
    #[arg(long, env = "SLUICE_PROCESSOR_RESOURCES")]
    pub processor_resources: Option<String>,

    /// The nodeSelector of processor pods, as JSON (`{"disktype":"ssd"}`).
    #[arg(long, env = "SLUICE_PROCESSOR_NODE_SELECTOR")]
    pub processor_node_selector: Option<String>,

    /// The tolerations of processor pods, as JSON (a list of Kubernetes tolerations).
    #[arg(long, env = "SLUICE_PROCESSOR_TOLERATIONS")]
    pub processor_tolerations: Option<String>,

    /// How often each pipeline's lag is read and its size decided.
    #[arg(long, env = "SLUICE_AUTOSCALE_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub autoscale_interval: Duration,

    /// Log as JSON lines instead of text.
    #[arg(long, env = "SLUICE_LOG_JSON", default_value_t = false)]
    pub log_json: bool,
}

impl Args {
    /// The replica's identity: `--identity`, else the host name, else a fixed fallback.
    pub fn identity(&self) -> String {
        self.identity
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("sluice-operator-{}", std::process::id()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_durations() {
        let args = Args::try_parse_from([
            "sluice-operator",
            "--kafka-bootstrap",
            "127.0.0.1:9092",
            "--resync",
            "3s",
        ])
        .unwrap();
        assert_eq!(args.resync, Duration::from_secs(3));
        assert_eq!(args.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(args.lease_name, "sluice-operator");
        assert!(args.namespace.is_none());
    }

    #[test]
    fn bad_duration_is_refused() {
        let err = Args::try_parse_from([
            "sluice-operator",
            "--kafka-bootstrap",
            "x:1",
            "--resync",
            "often",
        ]);
        assert!(err.is_err());
    }
}
