//! The Sluice operator as a library: controllers, Kafka admin, metrics and the HTTP server.
// Unsafe code is denied everywhere but the modules that call librdkafka functions rdkafka
// does not wrap (kafka::incremental, pipeline::offsets).
#![deny(unsafe_code)]

pub mod autoscaler;
pub mod backoff;
pub mod cli;
pub mod connector;
pub mod context;
pub mod controller;
pub mod error;
pub mod finalizer;
pub mod http;
pub mod kafka;
pub mod leader;
pub mod metrics;
pub mod pipeline;
pub mod pods;
pub mod startup;
pub mod topic;
pub mod workload;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::watch;

pub use cli::Args;
pub use error::{Error, Result};

use context::{Context, ReconcileSettings};
use kafka::KafkaAdmin;
use leader::Leadership;
use metrics::Metrics;

/// How long controllers get to finish their reconciles at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Runs the operator until SIGTERM/SIGINT (Ok) or until it loses the lease (Err).
pub async fn run(args: Args) -> Result<()> {
    let identity = args.identity();
    let client = kube::Client::try_default()
        .await
        .map_err(Error::kube("connect to the Kubernetes API"))?;
    startup::check_crds(&client, args.namespace.as_deref()).await?;

    let metrics = Arc::new(Metrics::default());
    let kafka = KafkaAdmin::new(
        &kafka_properties(&args)?,
        args.kafka_timeout,
        metrics.clone(),
    )
    .map_err(|e| Error::KafkaConfig(e.to_string()))?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let ready = Arc::new(AtomicBool::new(false));
    let listener = http::bind(args.listen).await?;
    let http = tokio::spawn(http::serve(
        listener,
        http::HttpState {
            metrics: metrics.clone(),
            ready: ready.clone(),
        },
        stopped(stop_rx.clone()),
    ));

    let ctx = Arc::new(Context::new(
        client.clone(),
        kafka,
        metrics.clone(),
        ReconcileSettings {
            resync: args.resync,
            namespace: args.namespace.clone(),
            instance: args.instance.clone(),
        },
        &identity,
    ));

    let mut leadership = Leadership::join(
        client,
        &args.lease_name,
        &args.lease_namespace,
        &identity,
        args.lease_duration,
    )
    .await?;
    ready.store(true, Ordering::Release);
    tracing::info!(%identity, lease = %args.lease_name, "waiting to lead");

    let mut signals = Box::pin(shutdown_signal());
    tokio::select! {
        _ = &mut signals => {
            tracing::info!("shutting down before leading");
            let _ = stop_tx.send(true);
            leadership.release(Duration::from_secs(5)).await;
            let _ = http.await;
            return Ok(());
        }
        acquired = leadership.acquired() => acquired?,
    }
    tracing::info!(%identity, "leading: starting controllers");
    metrics.set_leader(true);

    let pipelines = pipeline::PipelineSettings::from_args(&args)?;
    let mut controllers = tokio::spawn(futures::future::join_all(controllers(
        &ctx, pipelines, &stop_rx,
    )));
    let lost = tokio::select! {
        _ = &mut signals => false,
        _ = leadership.lost() => true,
        _ = &mut controllers => false,
    };
    let _ = stop_tx.send(true);
    metrics.set_leader(false);
    // Controllers finish their current reconcile and stop; do not wait forever for one that hangs.
    if !controllers.is_finished()
        && tokio::time::timeout(SHUTDOWN_GRACE, &mut controllers)
            .await
            .is_err()
    {
        tracing::warn!("controllers did not stop within {SHUTDOWN_GRACE:?}; exiting anyway");
        controllers.abort();
    }
    let _ = http.await;
    if lost {
        return Err(Error::LeadershipLost);
    }
    leadership.release(Duration::from_secs(5)).await;
    tracing::info!("stopped");
    Ok(())
}

/// Every controller this operator runs; each stops when `stop` turns true.
fn controllers(
    ctx: &Arc<Context>,
    pipelines: pipeline::PipelineSettings,
    stop: &watch::Receiver<bool>,
) -> Vec<BoxFuture<'static, ()>> {
    let defaults = pipelines.defaults.clone();
    let tick = pipelines.tick;
    vec![
        topic::run(ctx.clone(), stopped(stop.clone())).boxed(),
        pipeline::run(ctx.clone(), pipelines, stopped(stop.clone())).boxed(),
        connector::run(ctx.clone(), defaults, tick, stopped(stop.clone())).boxed(),
    ]
}

/// Resolves when `stop` turns true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The librdkafka properties: the file's, then the flags.
/// The text of the Kafka client settings file (`--kafka-config-file`), if one is set.
pub(crate) fn kafka_properties_text(args: &Args) -> Result<Option<String>> {
    args.kafka_config_file
        .as_ref()
        .map(|path| {
            std::fs::read_to_string(path)
                .map_err(|e| Error::KafkaConfig(format!("cannot read {}: {e}", path.display())))
        })
        .transpose()
}

fn kafka_properties(args: &Args) -> Result<std::collections::BTreeMap<String, String>> {
    let file = match (&args.kafka_config_file, kafka_properties_text(args)?) {
        (Some(path), Some(text)) => {
            sluice_crds::contract::parse_properties(&text).map_err(|line| {
                Error::KafkaConfig(format!(
                    "{} line {line} is not a key=value property",
                    path.display()
                ))
            })?
        }
        _ => Default::default(),
    };
    Ok(kafka::config::client_properties(
        &args.kafka_bootstrap,
        file,
    ))
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
