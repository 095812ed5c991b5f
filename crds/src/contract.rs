//! Names the operator and the processor must agree on: the processor's environment
//! variables, command, port and probe paths, the consumer group and transactional id
//! formats, and the `client.properties` format. Both use this module, so neither can
//! change one side alone.

use std::collections::BTreeMap;

/// Environment variables the operator sets on a processor container.
pub mod env {
    /// Kafka bootstrap servers.
    pub const KAFKA_BOOTSTRAP: &str = "SLUICE_KAFKA_BOOTSTRAP";
    /// Path of a `client.properties` file (SASL/TLS settings).
    pub const KAFKA_CONFIG_FILE: &str = "SLUICE_KAFKA_CONFIG_FILE";
    /// Path of the processor config.
    pub const PIPELINE_CONFIG: &str = "SLUICE_PIPELINE_CONFIG";
    /// Path of a native connector's config (its Connector manifest).
    pub const CONNECTOR_CONFIG: &str = "SLUICE_CONNECTOR_CONFIG";
    /// Directory where a native connector's `secretRef` Secret is mounted, one file per key.
    pub const CREDENTIALS_DIR: &str = "SLUICE_CREDENTIALS_DIR";
    /// Address of the HTTP server (metrics and probes).
    pub const HTTP_ADDR: &str = "SLUICE_HTTP_ADDR";
    /// The replica's identity (its pod name): part of its transactional id.
    pub const REPLICA_ID: &str = "SLUICE_REPLICA_ID";
    /// The consumer group.
    pub const GROUP_ID: &str = "SLUICE_GROUP_ID";
    /// `json` for JSON log lines.
    pub const LOG_FORMAT: &str = "SLUICE_LOG_FORMAT";
}

/// The processor's subcommand that runs a pipeline from its mounted config.
pub const PIPELINE_COMMAND: &str = "pipeline";
/// The processor's subcommand that runs a native connector from its mounted config.
pub const CONNECTOR_COMMAND: &str = "connector";
/// The flag of [`PIPELINE_COMMAND`] and [`CONNECTOR_COMMAND`] naming the config file.
pub const CONFIG_FLAG: &str = "--config";
/// The processor's HTTP port.
pub const HTTP_PORT: u16 = 8080;
/// Readiness probe path.
pub const READY_PATH: &str = "/readyz";
/// Liveness probe path.
pub const HEALTH_PATH: &str = "/healthz";
/// Prometheus metrics path.
pub const METRICS_PATH: &str = "/metrics";
/// Where the processor writes why it stopped before it exits with an error: the
/// kubelet's default `terminationMessagePath`, which the operator reads back from the
/// container's last state into the resource's status.
pub const TERMINATION_LOG: &str = "/dev/termination-log";

/// The consumer group of a pipeline: stable, so rollouts and rescales keep its offsets.
pub fn group_id(namespace: &str, name: &str) -> String {
    format!("sluice-{namespace}-{name}")
}

/// The consumer group of a native sink Connector (a prefix no Pipeline's group has).
pub fn connector_group_id(namespace: &str, name: &str) -> String {
    format!("sluice.connector.{namespace}.{name}")
}

/// The compacted topic where a native source Connector keeps its positions, written in
/// the same Kafka transaction as its records.
pub fn connector_positions_topic(namespace: &str, name: &str) -> String {
    format!("{}.positions", connector_group_id(namespace, name))
}

/// The transactional id of one replica of a group: stable per replica, so a restarted
/// replica fences its predecessor at once.
pub fn transactional_id(group_id: &str, replica: &str) -> String {
    format!("{group_id}-{replica}")
}

/// Parses `client.properties`: `key=value` lines (the value may hold `=`); blank lines
/// and lines starting with `#` or `!` are skipped. Returns the 1-based number of the
/// first line that is not `key=value`.
pub fn parse_properties(text: &str) -> Result<BTreeMap<String, String>, usize> {
    let mut out = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        let (key, value) = line.split_once('=').ok_or(i + 1)?;
        let key = key.trim();
        if key.is_empty() {
            return Err(i + 1);
        }
        out.insert(key.to_string(), value.trim().to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_properties_files() {
        let p = parse_properties(
            "# SASL\nsecurity.protocol=SASL_SSL\n\nsasl.password = a=b \n! also a comment\n",
        )
        .unwrap();
        assert_eq!(p["security.protocol"], "SASL_SSL");
        assert_eq!(p["sasl.password"], "a=b");
        assert_eq!(p.len(), 2);
        assert_eq!(parse_properties("a=1\nnot a property\n"), Err(2));
        assert_eq!(parse_properties("=x"), Err(1));
    }

    #[test]
    fn ids_name_the_namespace_pipeline_and_replica() {
        let group = group_id("shop", "totals");
        assert_eq!(group, "sluice-shop-totals");
        assert_eq!(
            transactional_id(&group, "totals-processor-7d9f-x2"),
            "sluice-shop-totals-totals-processor-7d9f-x2"
        );
    }
}
