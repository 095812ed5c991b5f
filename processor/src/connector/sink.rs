//! Native sink Connectors: the Connector's topics, read by a consumer group, pumped into
//! the target (PostgreSQL, an S3 bucket or an HTTP endpoint) through the runtime ([`crate::runtime::pump`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sluice_crds::connector::{ConnectorState, ConnectorType};
use sluice_crds::contract;
use sluice_crds::pipeline::{DeadLetter, Delivery, StartFrom};
use sluice_crds::plugins::{HttpSink as HttpSpec, PostgresSink as PostgresSpec, S3Sink as S3Spec};

use super::ConnectorError;
use crate::health::Status;
use crate::kafka::KafkaSettings;
use crate::kafka::dead_letters::DeadLetters;
use crate::kafka::source::KafkaSource;
use crate::metrics::{PipelineMetrics, SinkMetrics};
use crate::runtime::pump::{Pump, PumpError, PumpOptions};
use crate::runtime::sink::{Sink, SinkError};
use crate::sinks::http::{HttpSink, HttpSinkConfig};
use crate::sinks::postgres::{Credentials, PostgresSink, PostgresSinkConfig};
use crate::sinks::s3::{S3Credentials, S3Sink, S3SinkConfig, parse_bytes};

/// Where the Connector's Secret is mounted, unless `SLUICE_CREDENTIALS_DIR` says.
const DEFAULT_CREDENTIALS_DIR: &str = "/etc/sluice/credentials";
/// The PostgreSQL sink's batches when the Connector does not say.
const DEFAULT_BATCH_RECORDS: usize = 1000;
const DEFAULT_BATCH_INTERVAL: Duration = Duration::from_millis(500);
/// The S3 sink's flushes when the Connector does not say.
const DEFAULT_FLUSH_RECORDS: usize = 10_000;
const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(60);
/// The HTTP sink's batches when the Connector does not say.
const DEFAULT_REQUEST_INTERVAL: Duration = Duration::from_millis(200);
/// About how many records the HTTP sink sends (in requests of `batch.records`) between
/// two commits of its offsets.
const COMMIT_RECORDS: usize = 1000;

/// Where a sink loads its records.
#[derive(Debug)]
pub enum Target {
    /// A PostgreSQL table (`spec.postgres`).
    Postgres(PostgresSpec),
    /// Objects in an S3-compatible bucket (`spec.s3`).
    S3(S3Spec),
    /// Requests to an HTTP endpoint (`spec.http`).
    Http(HttpSpec),
}

impl Target {
    /// The plugin's name, for dead letters and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Target::Postgres(_) => "postgres",
            Target::S3(_) => "s3",
            Target::Http(_) => "http",
        }
    }

    /// How the pump batches for this target.
    fn options(&self) -> PumpOptions {
        let parse = |i: Option<&str>| i.and_then(|i| humantime::parse_duration(i).ok());
        let records = |r: Option<i64>| r.and_then(|r| usize::try_from(r).ok());
        match self {
            Target::Postgres(p) => {
                let batch = p.batch.clone().unwrap_or_default();
                PumpOptions {
                    sink: self.name().to_string(),
                    batch_records: records(batch.records.map(i64::from))
                        .unwrap_or(DEFAULT_BATCH_RECORDS),
                    batch_interval: parse(batch.interval.as_deref())
                        .unwrap_or(DEFAULT_BATCH_INTERVAL),
                    batch_bytes: None,
                }
            }
            Target::Http(h) => {
                let batch = h.batch.clone().unwrap_or_default();
                let per_request = records(batch.records.map(i64::from))
                    .filter(|r| *r > 0)
                    .unwrap_or(crate::sinks::http::DEFAULT_RECORDS);
                PumpOptions {
                    sink: self.name().to_string(),
                    // Whole requests per commit, about COMMIT_RECORDS records: a commit
                    // per request would cost a broker round trip per request.
                    batch_records: per_request * (COMMIT_RECORDS / per_request).max(1),
                    batch_interval: parse(batch.interval.as_deref())
                        .unwrap_or(DEFAULT_REQUEST_INTERVAL),
                    batch_bytes: None,
                }
            }
            Target::S3(s) => {
                let flush = s.flush.as_ref();
                PumpOptions {
                    sink: self.name().to_string(),
                    batch_records: records(flush.and_then(|f| f.records))
                        .unwrap_or(DEFAULT_FLUSH_RECORDS),
                    batch_interval: parse(flush.and_then(|f| f.interval.as_deref()))
                        .unwrap_or(DEFAULT_FLUSH_INTERVAL),
                    // A flush holds about one object's worth in memory.
                    batch_bytes: Some(
                        flush
                            .and_then(|f| f.bytes.as_deref())
                            .and_then(parse_bytes)
                            .unwrap_or(crate::sinks::s3::DEFAULT_OBJECT_BYTES),
                    ),
                }
            }
        }
    }
}

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
    pub target: Target,
    /// `paused` or `stopped`: read nothing.
    pub idle: bool,
}

/// The sink job of a sink Connector manifest; `None` for other Connectors.
pub fn sink_job(text: &str, origin: &str) -> Result<Option<SinkJob>, ConnectorError> {
    let (name, namespace, spec) = super::parse(text, origin)?;
    let shape = |message: &str| ConnectorError::Shape {
        origin: origin.to_string(),
        message: message.to_string(),
    };
    let target = if let Some(postgres) = &spec.postgres {
        if postgres.mode == sluice_crds::plugins::PostgresWriteMode::Upsert
            && postgres.key.is_empty()
        {
            return Err(shape("postgres upsert needs the conflict columns in key"));
        }
        Target::Postgres(postgres.clone())
    } else if let Some(s3) = &spec.s3 {
        Target::S3(s3.clone())
    } else if let Some(http) = &spec.http {
        Target::Http(http.clone())
    } else {
        return Ok(None);
    };
    if spec.type_ != ConnectorType::Sink {
        return Err(shape(&format!(
            "{} is a sink: spec.type: sink",
            target.name()
        )));
    }
    if spec.topics.is_empty() {
        return Err(shape("a sink reads at least one topic: spec.topics"));
    }
    Ok(Some(SinkJob {
        name,
        namespace,
        topics: spec.topics.clone(),
        dead_letter: spec.dead_letter.clone(),
        exactly_once: spec.delivery != Some(Delivery::AtLeastOnce),
        target,
        idle: spec.state != ConnectorState::Running,
    }))
}

/// Runs the sink until SIGTERM: `/metrics`, `/healthz` and `/readyz` on `listen`.
pub async fn serve(
    job: SinkJob,
    settings: KafkaSettings,
    listen: SocketAddr,
) -> Result<(), ConnectorError> {
    let (namespace, name) = (job.namespace.clone(), job.name.clone());
    let plugin = job.target.name();
    super::serve_pump(listen, (&namespace, &name), move |status, metrics| {
        let (counters, sinks) = (metrics.pipeline(&job.name), metrics.sink(&job.name, plugin));
        pump(job, &settings, status, counters, sinks)
    })
    .await
}

/// Runs the pump of `job` on this thread until shutdown.
fn pump(
    job: SinkJob,
    settings: &KafkaSettings,
    status: Arc<Status>,
    metrics: PipelineMetrics,
    sink_metrics: SinkMetrics,
) -> Result<(), PumpError> {
    let fatal = |error: String| fatal(&job.target, error);
    if job.idle {
        super::idle_until_stopped(&status, &job.name);
        return Ok(());
    }
    let dir = std::env::var_os(contract::env::CREDENTIALS_DIR)
        .map_or_else(|| PathBuf::from(DEFAULT_CREDENTIALS_DIR), PathBuf::from);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fatal(format!("cannot start the sink's runtime: {e}")))?;
    let options = job.target.options();
    let connector = format!("{}/{}", job.namespace, job.name);
    let exactly_once = job.exactly_once;
    let wiring = Wiring {
        job: &job,
        settings,
        status,
        metrics,
        sink_metrics: sink_metrics.clone(),
        options,
        runtime: &runtime,
    };
    match &job.target {
        Target::Postgres(spec) => {
            let credentials = Credentials::read(&dir).map_err(|e| fatal(e.to_string()))?;
            wiring.run(PostgresSink::new(PostgresSinkConfig {
                connector,
                spec: spec.clone(),
                exactly_once,
                credentials,
            }))
        }
        Target::Http(spec) => {
            let sink = HttpSink::new(HttpSinkConfig::read(spec.clone(), &dir))
                .map_err(|e| fatal(e.to_string()))?
                .counting_retries(sink_metrics.retries);
            wiring.run(sink)
        }
        Target::S3(spec) => {
            let credentials = S3Credentials::read(&dir).map_err(|e| fatal(e.to_string()))?;
            let sink = S3Sink::new(S3SinkConfig {
                spec: spec.clone(),
                credentials,
            })
            .map_err(|e| fatal(e.to_string()))?;
            wiring.run(sink)
        }
    }
}

/// A sink of `target` that cannot run, and why.
fn fatal(target: &Target, error: String) -> PumpError {
    PumpError::Sink {
        sink: target.name().to_string(),
        error: SinkError::Fatal(error),
    }
}

/// What every sink's pump is made of besides the sink.
struct Wiring<'a> {
    job: &'a SinkJob,
    settings: &'a KafkaSettings,
    status: Arc<Status>,
    metrics: PipelineMetrics,
    sink_metrics: SinkMetrics,
    options: PumpOptions,
    runtime: &'a tokio::runtime::Runtime,
}

impl Wiring<'_> {
    /// Reads the job's topics with its group and pumps them into `sink` until shutdown.
    fn run<K: Sink>(self, sink: K) -> Result<(), PumpError> {
        let job = self.job;
        let fatal = |error: String| fatal(&job.target, error);
        let group = contract::connector_group_id(&job.namespace, &job.name);
        let source =
            KafkaSource::subscribe(self.settings, &group, &job.topics, StartFrom::Earliest)?;
        let dead_letters = match &job.dead_letter {
            Some(d) => Some(
                DeadLetters::new(self.settings, &d.topic, d.retries)
                    .map_err(|e| fatal(format!("cannot create the dead-letter producer: {e}")))?,
            ),
            None => None,
        };
        tracing::info!(connector = %job.name, group = %group, topics = ?job.topics, sink = job.target.name(), promise = ?sink.promise(), "loading");
        Pump {
            source,
            sink,
            dead_letters,
            options: self.options,
            status: self.status,
            metrics: self.metrics,
            sink_metrics: self.sink_metrics,
        }
        .run(self.runtime)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http_sink_commits_after_whole_requests_of_about_a_thousand_records() {
        let batch = |records: &str| {
            let text = format!(
                "kind: Connector\nspec:\n  type: sink\n  topics: [a]\n  http: {{url: 'http://h/', batch: {{records: {records}}}}}\n"
            );
            sink_job(&text, "h.yaml")
                .unwrap()
                .unwrap()
                .target
                .options()
                .batch_records
        };
        assert_eq!(batch("1"), 1000);
        assert_eq!(batch("100"), 1000);
        assert_eq!(batch("300"), 900);
        assert_eq!(batch("5000"), 5000);
    }

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
        assert!(matches!(job.target, Target::Postgres(_)));
        let s3 = "kind: Connector\nmetadata: {name: lake}\nspec:\n  type: sink\n  topics: [orders]\n  s3: {bucket: lake, flush: {records: 50, bytes: 1Mi, interval: 2s}}\n";
        let job = sink_job(s3, "s.yaml").unwrap().unwrap();
        let options = job.target.options();
        assert_eq!(
            (
                options.sink.as_str(),
                options.batch_records,
                options.batch_interval,
                options.batch_bytes
            ),
            ("s3", 50, Duration::from_secs(2), Some(1 << 20))
        );
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
