//! Native sink Connectors: the Connector's topics, read by a consumer group, pumped into
//! the target through the runtime ([`crate::runtime::pump`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sluice_crds::connector::{ConnectorState, ConnectorType};
use sluice_crds::contract;
use sluice_crds::pipeline::{DeadLetter, Delivery, StartFrom};
use sluice_crds::plugins::PostgresSink as PostgresSpec;

use super::ConnectorError;
use crate::health::Status;
use crate::kafka::KafkaSettings;
use crate::kafka::dead_letters::DeadLetters;
use crate::kafka::source::KafkaSource;
use crate::metrics::PipelineMetrics;
use crate::runtime::pump::{Pump, PumpError, PumpOptions};
use crate::runtime::sink::SinkError;
use crate::sinks::postgres::{Credentials, PostgresSink, PostgresSinkConfig};

/// Where the Connector's Secret is mounted, unless `SLUICE_CREDENTIALS_DIR` says.
const DEFAULT_CREDENTIALS_DIR: &str = "/etc/sluice/credentials";
/// Batching when the Connector does not say.
const DEFAULT_BATCH_RECORDS: usize = 1000;
const DEFAULT_BATCH_INTERVAL: Duration = Duration::from_millis(500);

/// What a sink Connector asks for.
#[derive(Debug)]
pub struct SinkJob {
    /// The Connector's name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// The topics it reads.
    pub topics: Vec<String>,
    /// Where refused records go.
    pub dead_letter: Option<DeadLetter>,
    /// Exactly once (positions stored with the data) unless `atLeastOnce`.
    pub exactly_once: bool,
    /// The target.
    pub postgres: PostgresSpec,
    /// `paused` or `stopped`: read nothing.
    pub idle: bool,
}

/// The sink job of a sink Connector manifest; `None` for other Connectors.
pub fn sink_job(text: &str, origin: &str) -> Result<Option<SinkJob>, ConnectorError> {
    let (name, namespace, spec) = super::parse(text, origin)?;
    let Some(postgres) = spec.postgres.clone() else {
        return Ok(None);
    };
    let shape = |message: &str| ConnectorError::Shape {
        origin: origin.to_string(),
        message: message.to_string(),
    };
    if spec.type_ != ConnectorType::Sink {
        return Err(shape("postgres is a sink: spec.type: sink"));
    }
    if spec.topics.is_empty() {
        return Err(shape("a sink reads at least one topic: spec.topics"));
    }
    if postgres.mode == sluice_crds::plugins::PostgresWriteMode::Upsert && postgres.key.is_empty() {
        return Err(shape("postgres upsert needs the conflict columns in key"));
    }
    Ok(Some(SinkJob {
        name,
        namespace,
        topics: spec.topics.clone(),
        dead_letter: spec.dead_letter.clone(),
        exactly_once: spec.delivery != Some(Delivery::AtLeastOnce),
        postgres,
        idle: spec.state != ConnectorState::Running,
    }))
}

/// Runs the sink until SIGTERM: `/metrics`, `/healthz` and `/readyz` on `listen`.
pub async fn serve(
    job: SinkJob,
    settings: KafkaSettings,
    listen: SocketAddr,
) -> Result<(), ConnectorError> {
    let (status, metrics, server) = super::start_replica(listen);
    let origin = format!("connector {}/{}", job.namespace, job.name);
    let counters = metrics.pipeline(&job.name);
    let pumped = tokio::task::spawn_blocking({
        let status = status.clone();
        move || pump(job, &settings, status, counters)
    })
    .await;
    server.abort();
    match pumped {
        Ok(Ok(())) => {
            tracing::info!(connector = %origin, "sink stopped");
            Ok(())
        }
        Ok(Err(source)) => Err(ConnectorError::Sink { origin, source }),
        Err(join) => Err(ConnectorError::Shape {
            origin,
            message: format!("the sink thread ended abnormally: {join}"),
        }),
    }
}

/// Runs the pump of `job` on this thread until shutdown.
fn pump(
    job: SinkJob,
    settings: &KafkaSettings,
    status: Arc<Status>,
    metrics: PipelineMetrics,
) -> Result<(), PumpError> {
    let fatal = |error: String| PumpError::Sink {
        sink: "postgres".to_string(),
        error: SinkError::Fatal(error),
    };
    if job.idle {
        tracing::info!(connector = %job.name, "paused: reading nothing");
        status.ready.store(true, Ordering::Relaxed);
        while !status.shutdown.load(Ordering::Relaxed) {
            status.beat();
            std::thread::sleep(Duration::from_millis(200));
        }
        return Ok(());
    }
    let dir = std::env::var_os(contract::env::CREDENTIALS_DIR)
        .map_or_else(|| PathBuf::from(DEFAULT_CREDENTIALS_DIR), PathBuf::from);
    let credentials = Credentials::read(&dir).map_err(|e| fatal(e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fatal(format!("cannot start the sink's runtime: {e}")))?;
    let batch = job.postgres.batch.clone().unwrap_or_default();
    let options = PumpOptions {
        sink: "postgres".to_string(),
        batch_records: batch
            .records
            .and_then(|r| usize::try_from(r).ok())
            .unwrap_or(DEFAULT_BATCH_RECORDS),
        batch_interval: batch
            .interval
            .as_deref()
            .and_then(|i| humantime::parse_duration(i).ok())
            .unwrap_or(DEFAULT_BATCH_INTERVAL),
    };
    let group = contract::connector_group_id(&job.namespace, &job.name);
    let source = KafkaSource::subscribe(settings, &group, &job.topics, StartFrom::Earliest)?;
    let dead_letters = match &job.dead_letter {
        Some(d) => Some(
            DeadLetters::new(settings, &d.topic, d.retries)
                .map_err(|e| fatal(format!("cannot create the dead-letter producer: {e}")))?,
        ),
        None => None,
    };
    let sink = PostgresSink::new(PostgresSinkConfig {
        connector: format!("{}/{}", job.namespace, job.name),
        spec: job.postgres,
        exactly_once: job.exactly_once,
        credentials,
    });
    tracing::info!(connector = %job.name, group = %group, topics = ?job.topics, exactly_once = job.exactly_once, "loading into PostgreSQL");
    Pump {
        source,
        sink,
        dead_letters,
        options,
        status,
        metrics,
    }
    .run(&runtime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_postgres_sink_manifest_becomes_a_job_and_others_are_not_sinks() {
        let text = "kind: Connector\nmetadata: {name: totals, namespace: demo}\nspec:\n  type: sink\n  topics: [region-order-totals]\n  deadLetter: {topic: totals-dlq}\n  postgres: {table: region_order_totals, mode: upsert, key: [region], deletes: true}\n";
        let job = sink_job(text, "t.yaml").unwrap().unwrap();
        assert_eq!(
            (job.name.as_str(), job.namespace.as_str()),
            ("totals", "demo")
        );
        assert!(
            job.exactly_once,
            "exactly once unless atLeastOnce is asked for"
        );
        assert_eq!(job.dead_letter.unwrap().topic, "totals-dlq");
        let generator =
            "kind: Connector\nspec: {type: source, topics: [a], generator: {template: {a: '1'}}}\n";
        assert!(sink_job(generator, "g.yaml").unwrap().is_none());
        let no_key = "kind: Connector\nspec: {type: sink, topics: [a], postgres: {table: t, mode: upsert}}\n";
        assert!(
            sink_job(no_key, "k.yaml")
                .unwrap_err()
                .to_string()
                .contains("conflict columns")
        );
    }
}
