//! Native source Connectors that write through the runtime: the PostgreSQL change stream
//! (`spec.postgresCdc`), pumped into Kafka by the transactional Kafka sink, so records
//! and the source's position commit together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sluice_crds::connector::{ConnectorState, ConnectorType};
use sluice_crds::contract;
use sluice_crds::pipeline::DeadLetter;
use sluice_crds::plugins::{PostgresCdcSource, Snapshot};

use super::ConnectorError;
use crate::health::Status;
use crate::kafka::KafkaSettings;
use crate::kafka::dead_letters::DeadLetters;
use crate::kafka::sink::{KafkaSink, KafkaSinkConfig};
use crate::kafka::topics::{InternalTopic, ensure, partition_counts};
use crate::metrics::{PipelineMetrics, SinkMetrics};
use crate::runtime::pump::{Pump, PumpError, PumpOptions};
use crate::runtime::sink::SinkError;
use crate::sinks::pg_connect::Credentials;
use crate::sources::postgres_cdc::{CdcSettings, CdcSource};

/// Where the Connector's Secret is mounted, unless `SLUICE_CREDENTIALS_DIR` says.
const DEFAULT_CREDENTIALS_DIR: &str = "/etc/sluice/credentials";
/// Records per Kafka transaction at most, and the longest a record waits for its commit.
const BATCH_RECORDS: usize = 5000;
const BATCH_INTERVAL: Duration = Duration::from_millis(100);
/// The idle slot is advanced this often unless `heartbeat` says.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);

/// What a native source Connector asks for.
#[derive(Debug)]
pub struct SourceJob {
    /// The Connector's name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// The change stream.
    pub cdc: PostgresCdcSource,
    /// Where records Kafka refuses go (too large).
    pub dead_letter: Option<DeadLetter>,
    /// `paused` or `stopped`: read nothing.
    pub idle: bool,
}

/// The source job of a `postgresCdc` Connector manifest; `None` for other Connectors.
pub fn source_job(text: &str, origin: &str) -> Result<Option<SourceJob>, ConnectorError> {
    let (name, namespace, spec) = super::parse(text, origin)?;
    let Some(cdc) = spec.postgres_cdc.clone() else {
        return Ok(None);
    };
    if spec.type_ != ConnectorType::Source {
        return Err(ConnectorError::Shape {
            origin: origin.to_string(),
            message: "postgresCdc is a source: spec.type: source".to_string(),
        });
    }
    Ok(Some(SourceJob {
        name,
        namespace,
        cdc,
        dead_letter: spec.dead_letter.clone(),
        idle: spec.state != ConnectorState::Running,
    }))
}

/// Runs the source until SIGTERM: `/metrics`, `/healthz` and `/readyz` on `listen`.
pub async fn serve(
    job: SourceJob,
    settings: KafkaSettings,
    listen: SocketAddr,
) -> Result<(), ConnectorError> {
    let (namespace, name) = (job.namespace.clone(), job.name.clone());
    let plugin = "kafka";
    super::serve_pump(listen, (&namespace, &name), move |status, metrics| {
        let counters = (metrics.pipeline(&job.name), metrics.sink(&job.name, plugin));
        let cdc = metrics.cdc(&job.name);
        pump(job, &settings, status, counters, cdc)
    })
    .await
}

fn fatal(error: String) -> PumpError {
    PumpError::Sink {
        sink: "kafka".to_string(),
        error: SinkError::Fatal(error),
    }
}

/// The settings of `job`'s change stream, with the credentials read from `dir`.
pub fn cdc_settings(job: &SourceJob, dir: PathBuf) -> Result<CdcSettings, SinkError> {
    let credentials = Credentials::read(&dir)?;
    let heartbeat = job
        .cdc
        .heartbeat
        .as_deref()
        .and_then(|h| humantime::parse_duration(h).ok())
        .unwrap_or(DEFAULT_HEARTBEAT);
    Ok(CdcSettings {
        connector: format!("{}/{}", job.namespace, job.name),
        tables: job.cdc.tables.clone(),
        slot: job.cdc.slot.clone(),
        publication: job
            .cdc
            .publication
            .clone()
            .unwrap_or_else(|| job.cdc.slot.clone()),
        topic_prefix: job.cdc.topic_prefix.clone(),
        snapshot: job.cdc.snapshot == Snapshot::Initial,
        heartbeat,
        credentials,
        credentials_dir: dir,
        metrics: crate::metrics::CdcMetrics::default(),
    })
}

/// Creates the tables' topics that do not exist (one partition: a table's changes stay
/// in order).
fn ensure_topics(settings: &KafkaSettings, cdc: &CdcSettings) -> Result<(), PumpError> {
    let existing = partition_counts(settings, Duration::from_secs(10))
        .map_err(|e| fatal(format!("cannot list the topics: {e}")))?;
    let missing: Vec<InternalTopic> = cdc
        .tables
        .iter()
        .map(|t| cdc.topic(t))
        .filter(|t| !existing.contains_key(t))
        .map(|name| InternalTopic {
            name,
            partitions: 1,
            config: Vec::new(),
        })
        .collect();
    ensure(settings, &existing, &missing)
        .map_err(|e| fatal(format!("cannot create the tables' topics: {e}")))
}

/// Runs the pump of `job` on this thread until shutdown.
fn pump(
    job: SourceJob,
    settings: &KafkaSettings,
    status: Arc<Status>,
    (metrics, sink_metrics): (PipelineMetrics, SinkMetrics),
    cdc_metrics: crate::metrics::CdcMetrics,
) -> Result<(), PumpError> {
    if job.idle {
        super::idle_until_stopped(&status, &job.name);
        return Ok(());
    }
    let dir = std::env::var_os(contract::env::CREDENTIALS_DIR)
        .map_or_else(|| PathBuf::from(DEFAULT_CREDENTIALS_DIR), PathBuf::from);
    let mut cdc = cdc_settings(&job, dir).map_err(|e| fatal(e.to_string()))?;
    cdc.metrics = cdc_metrics;
    ensure_topics(settings, &cdc)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fatal(format!("cannot start the source's runtime: {e}")))?;
    let group = contract::connector_group_id(&job.namespace, &job.name);
    let sink = KafkaSink::new(KafkaSinkConfig {
        settings: settings.clone(),
        transactional_id: group.clone(),
        positions_topic: contract::connector_positions_topic(&job.namespace, &job.name),
        topic: None,
    });
    let dead_letters = match &job.dead_letter {
        Some(d) => Some(
            DeadLetters::new(settings, &d.topic, d.retries)
                .map_err(|e| fatal(format!("cannot create the dead-letter producer: {e}")))?,
        ),
        None => None,
    };
    tracing::info!(connector = %job.name, slot = %cdc.slot, tables = ?cdc.tables, "capturing changes");
    Pump {
        source: CdcSource::new(cdc),
        sink,
        dead_letters,
        options: PumpOptions {
            sink: "kafka".to_string(),
            batch_records: BATCH_RECORDS,
            batch_interval: BATCH_INTERVAL,
            batch_bytes: None,
        },
        status,
        metrics,
        sink_metrics,
    }
    .run(&runtime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cdc_manifest_becomes_a_job_with_debeziums_topic_names() {
        let text = "kind: Connector\nmetadata: {name: orders-cdc, namespace: shop}\nspec:\n  type: source\n  secretRef: {name: sales-db}\n  postgresCdc: {tables: [public.orders, items], slot: sluice_orders, topicPrefix: sales, heartbeat: 2s}\n";
        let job = source_job(text, "c.yaml").unwrap().unwrap();
        assert_eq!(
            (job.name.as_str(), job.namespace.as_str()),
            ("orders-cdc", "shop")
        );
        let dir = std::env::temp_dir().join(format!("sluice-cdc-job-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (k, v) in [("host", "db"), ("dbname", "sales"), ("user", "cdc")] {
            std::fs::write(dir.join(k), v).unwrap();
        }
        let cdc = cdc_settings(&job, dir).unwrap();
        assert_eq!(cdc.topic("public.orders"), "sales.public.orders");
        assert_eq!(cdc.topic("items"), "sales.public.items");
        assert_eq!(
            cdc.publication, "sluice_orders",
            "the slot's name when not set"
        );
        assert_eq!(cdc.heartbeat, Duration::from_secs(2));
        assert!(cdc.snapshot, "initial by default");
        let sink = "kind: Connector\nspec: {type: sink, topics: [a], http: {url: 'http://h/'}}\n";
        assert!(source_job(sink, "s.yaml").unwrap().is_none());
    }
}
