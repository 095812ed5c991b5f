//! Native Connector manifests as `sluice-processor connector` and `run -f` take them:
//! the generator and PostgreSQL change data capture (sources) and the PostgreSQL, S3 and
//! HTTP sinks run here; the other native plugins are refused with a clear message until
//! they exist.

pub mod sink;
pub mod source;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sluice_crds::ConnectorSpec;
use sluice_crds::connector::{ConnectorState, ConnectorType};

use crate::generate::{GenerateError, Pace, Template, parse_rate};
use crate::health::Status;
use crate::kafka::KafkaSettings;
use crate::metrics::Metrics;

/// A Connector manifest that cannot run here.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// Not YAML or JSON, or not a Connector.
    #[error("{origin}: {message}")]
    Shape {
        /// The file.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// A plugin this release does not run natively.
    #[error(
        "{origin}: the {plugin} plugin does not run natively in this release; the generator (spec.generator), PostgreSQL change data capture (spec.postgresCdc) and the PostgreSQL, S3 and HTTP sinks (spec.postgres, spec.s3, spec.http) do, and any Kafka Connect connector runs through spec.kafkaConnect on a Connect cluster"
    )]
    NotRunnable {
        /// The file.
        origin: String,
        /// The plugin block.
        plugin: String,
    },
    /// The generator's settings do not compile.
    #[error("{origin}: spec.generator: {source}")]
    Generator {
        /// The file.
        origin: String,
        /// Why.
        #[source]
        source: GenerateError,
    },
    /// A sink stopped: it could not run as configured, or a record had nowhere to go.
    #[error("{origin}: {source}")]
    Sink {
        /// The connector.
        origin: String,
        /// Why.
        #[source]
        source: crate::runtime::pump::PumpError,
    },
}

/// What a native Connector asks for.
#[derive(Debug)]
pub enum Job {
    /// The generator writes records into a topic.
    Generator(Box<GeneratorJob>),
    /// A sink loads topics into a target.
    Sink(Box<sink::SinkJob>),
    /// A source writes a system's changes into topics through the runtime.
    Source(Box<source::SourceJob>),
}

/// Reads a `kind: Connector` manifest into the job it asks for.
pub fn job(text: &str, origin: &str) -> Result<Job, ConnectorError> {
    if let Some(job) = sink::sink_job(text, origin)? {
        return Ok(Job::Sink(Box::new(job)));
    }
    if let Some(job) = source::source_job(text, origin)? {
        return Ok(Job::Source(Box::new(job)));
    }
    generator_job(text, origin).map(|g| Job::Generator(Box::new(g)))
}

/// Runs `job` as a connector replica: `/metrics`, `/healthz` and `/readyz` on `listen`,
/// until SIGTERM.
pub async fn serve(
    job: Job,
    settings: KafkaSettings,
    listen: SocketAddr,
) -> Result<(), ConnectorError> {
    match job {
        Job::Generator(job) => serve_generator(*job, settings, listen).await,
        Job::Sink(job) => sink::serve(*job, settings, listen).await,
        Job::Source(job) => source::serve(*job, settings, listen).await,
    }
}

/// What a generator Connector asks for.
#[derive(Debug)]
pub struct GeneratorJob {
    /// The Connector's name.
    pub name: String,
    /// The topic it writes to.
    pub topic: String,
    /// The compiled template and key.
    pub template: Template,
    /// Rate and count.
    pub pace: Pace,
    /// `paused` or `stopped`: write nothing.
    pub idle: bool,
}

/// The `kind` of a manifest, if it has one.
pub fn manifest_kind(text: &str) -> Option<String> {
    let doc: serde_json::Value = serde_saphyr::from_str(text).ok()?;
    doc.get("kind")?.as_str().map(str::to_string)
}

/// The parsed manifest: its name, namespace and spec.
pub(crate) fn parse(
    text: &str,
    origin: &str,
) -> Result<(String, String, ConnectorSpec), ConnectorError> {
    let shape = |message: String| ConnectorError::Shape {
        origin: origin.to_string(),
        message,
    };
    let doc: serde_json::Value = serde_saphyr::from_str(text).map_err(|e| shape(e.to_string()))?;
    if doc.get("kind").and_then(|k| k.as_str()) != Some("Connector") {
        return Err(shape("expected kind: Connector".to_string()));
    }
    let field = |pointer: &str, default: &str| {
        doc.pointer(pointer)
            .and_then(|n| n.as_str())
            .unwrap_or(default)
            .to_string()
    };
    let spec: ConnectorSpec = serde_json::from_value(doc.get("spec").cloned().unwrap_or_default())
        .map_err(|e| shape(format!("spec: {e}")))?;
    Ok((
        field("/metadata/name", "connector"),
        field("/metadata/namespace", "default"),
        spec,
    ))
}

/// Reads a `kind: Connector` manifest into the generator job it asks for.
pub fn generator_job(text: &str, origin: &str) -> Result<GeneratorJob, ConnectorError> {
    let shape = |message: String| ConnectorError::Shape {
        origin: origin.to_string(),
        message,
    };
    let (name, _, spec) = parse(text, origin)?;
    let Some(generator) = &spec.generator else {
        let plugin = if spec.kafka_connect.is_some() {
            "kafkaConnect".to_string()
        } else {
            spec.native_plugin().unwrap_or("(none)").to_string()
        };
        return Err(ConnectorError::NotRunnable {
            origin: origin.to_string(),
            plugin,
        });
    };
    if spec.type_ != ConnectorType::Source {
        return Err(shape(
            "the generator is a source: spec.type: source".to_string(),
        ));
    }
    let [topic] = spec.topics.as_slice() else {
        return Err(shape(
            "the generator writes to one topic: spec.topics: [name]".to_string(),
        ));
    };
    let generator_error = |source| ConnectorError::Generator {
        origin: origin.to_string(),
        source,
    };
    let template_json = serde_json::to_string(&generator.template)
        .map_err(|e| generator_error(GenerateError::Template(e.to_string())))?;
    let template =
        Template::compile(&template_json, generator.key.as_deref()).map_err(generator_error)?;
    let rate = generator
        .rate
        .as_deref()
        .map(parse_rate)
        .transpose()
        .map_err(|e| generator_error(GenerateError::Template(e)))?;
    let count = generator.count.map(|c| u64::try_from(c).unwrap_or(0));
    Ok(GeneratorJob {
        name,
        topic: topic.clone(),
        template,
        pace: Pace { rate, count },
        idle: spec.state != ConnectorState::Running,
    })
}

/// What every connector replica has: its status (stopped by SIGTERM), its metrics, and
/// the server of `/metrics`, `/healthz` and `/readyz` on `listen`.
pub(crate) fn start_replica(
    listen: SocketAddr,
) -> (
    Arc<Status>,
    Arc<Metrics>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let status = Arc::new(Status::default());
    let metrics = Arc::new(Metrics::new());
    crate::app::spawn_signal_handler(status.clone());
    let server = tokio::spawn(crate::http::serve(listen, metrics.clone(), status.clone()));
    (status, metrics, server)
}

/// Runs a connector's pump (`pump`, on a blocking thread, with the replica's status and
/// metrics) until SIGTERM or a fatal error, serving `/metrics` and the probes on
/// `listen`.
pub(crate) async fn serve_pump(
    listen: SocketAddr,
    connector: (&str, &str),
    pump: impl FnOnce(Arc<Status>, Arc<Metrics>) -> Result<(), crate::runtime::pump::PumpError>
    + Send
    + 'static,
) -> Result<(), ConnectorError> {
    let (namespace, name) = connector;
    let (status, metrics, server) = start_replica(listen);
    let origin = format!("connector {namespace}/{name}");
    let pumped = tokio::task::spawn_blocking(move || pump(status, metrics)).await;
    server.abort();
    match pumped {
        Ok(Ok(())) => {
            tracing::info!(connector = %origin, "connector stopped");
            Ok(())
        }
        Ok(Err(source)) => Err(ConnectorError::Sink { origin, source }),
        Err(join) => Err(ConnectorError::Shape {
            origin,
            message: format!("the connector's thread ended abnormally: {join}"),
        }),
    }
}

/// Ready and idle until SIGTERM: a paused or stopped connector.
pub(crate) fn idle_until_stopped(status: &Status, name: &str) {
    tracing::info!(connector = %name, "paused: moving nothing");
    status.ready.store(true, Ordering::Relaxed);
    while !status.shutdown.load(Ordering::Relaxed) {
        status.beat();
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs the generator until SIGTERM (idle when paused, and after its count).
async fn serve_generator(
    job: GeneratorJob,
    settings: KafkaSettings,
    listen: SocketAddr,
) -> Result<(), ConnectorError> {
    let (status, _, server) = start_replica(listen);
    let origin = format!("connector {} (topic {})", job.name, job.topic);
    let worker_status = status.clone();
    let generated = tokio::task::spawn_blocking(move || {
        let status = worker_status;
        let written = if job.idle {
            tracing::info!(connector = %job.name, "paused: writing nothing");
            0
        } else {
            crate::generate::run_with_status(
                &settings,
                &job.topic,
                &job.template,
                job.pace,
                &status.shutdown,
                Some(&status),
            )?
        };
        // Idle until told to stop, so a finished count is not started again.
        status.ready.store(true, Ordering::Relaxed);
        while !status.shutdown.load(Ordering::Relaxed) {
            status.beat();
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok::<u64, GenerateError>(written)
    })
    .await;
    server.abort();
    match generated {
        Ok(Ok(written)) => {
            tracing::info!(written, topic = %origin, "generator stopped");
            Ok(())
        }
        Ok(Err(source)) => Err(ConnectorError::Generator {
            origin: origin.clone(),
            source,
        }),
        Err(join) => Err(ConnectorError::Shape {
            origin,
            message: format!("the generator thread ended abnormally: {join}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> String {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../manifests/examples/orders-generator.yaml"
        );
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn the_generator_example_becomes_a_job() {
        let text = example();
        assert_eq!(manifest_kind(&text).as_deref(), Some("Connector"));
        let job = generator_job(&text, "orders-generator.yaml").unwrap();
        assert_eq!(job.name, "orders-generator");
        assert_eq!(job.topic, "orders");
        assert_eq!(job.pace.rate, Some(20.0));
        assert_eq!(job.pace.count, None);
        let (key, value) = job.template.record(4, 1_000).unwrap();
        assert_eq!(key.as_deref(), Some("o-4"));
        assert_eq!(
            value,
            serde_json::json!({"orderId": "o-4", "region": "us-east", "total": 0.5, "createdAt": 1000})
        );
    }

    #[test]
    fn other_plugins_and_bad_settings_are_refused_clearly() {
        let sink = "kind: Connector\nmetadata: {name: s}\nspec: {type: sink, topics: [t], s3: {bucket: b}}\n";
        let err = generator_job(sink, "s.yaml").unwrap_err();
        assert!(matches!(err, ConnectorError::NotRunnable { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("the s3 plugin does not run natively"),
            "{err}"
        );
        let two_topics = "kind: Connector\nspec: {type: source, topics: [a, b], generator: {template: {a: '1'}}}\n";
        assert!(
            generator_job(two_topics, "g.yaml")
                .unwrap_err()
                .to_string()
                .contains("one topic")
        );
        let bad_expr = "kind: Connector\nspec: {type: source, topics: [a], generator: {template: {a: 'i +'}}}\n";
        assert!(matches!(
            generator_job(bad_expr, "g.yaml").unwrap_err(),
            ConnectorError::Generator { .. }
        ));
        assert!(matches!(
            generator_job("kind: Pipeline\n", "p.yaml").unwrap_err(),
            ConnectorError::Shape { .. }
        ));
    }
}
