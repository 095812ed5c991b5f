//! Running a pipeline: plan topics, start the worker thread, serve HTTP, stop on SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sluice_crds::pipeline::Delivery;

use crate::config::PipelineConfig;
use crate::engine::Engine;
use crate::kafka::KafkaSettings;
use crate::kafka::topics::{self, InternalTopic, TopicError};
use crate::kafka::worker::{self, Status, WorkerOptions};
use crate::metrics::Metrics;
use crate::steps::ConfigError;

/// Why a pipeline could not run.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The spec cannot be run.
    #[error("pipeline {name}: {source}")]
    Config {
        /// Pipeline name.
        name: String,
        /// What is wrong.
        source: ConfigError,
    },
    /// A duration field does not parse.
    #[error("pipeline {name}: {field} {value:?} is not a duration (like 100ms, 1s)")]
    Duration {
        /// Pipeline name.
        name: String,
        /// Field.
        field: &'static str,
        /// Value.
        value: String,
    },
    /// Topics are missing or cannot be created.
    #[error("pipeline {name}: {source}")]
    Topics {
        /// Pipeline name.
        name: String,
        /// What is wrong.
        source: Box<TopicError>,
    },
    /// The worker stopped with an error.
    #[error("pipeline {name} stopped: {source}")]
    Worker {
        /// Pipeline name.
        name: String,
        /// Why.
        source: Box<worker::WorkerError>,
    },
    /// The HTTP server could not start.
    #[error("cannot serve HTTP on {addr}: {source}")]
    Http {
        /// Address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// An enrich table could not be loaded.
    #[error("pipeline {name}: {source}")]
    Table {
        /// Pipeline name.
        name: String,
        /// Why.
        source: crate::kafka::table::TableError,
    },
    /// The worker thread died.
    #[error("the worker thread panicked")]
    Panicked,
}

impl AppError {
    /// Process exit code: 2 for configuration problems, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            AppError::Config { .. } | AppError::Duration { .. } => 2,
            AppError::Topics { source, .. } if matches!(**source, TopicError::Missing(_)) => 2,
            _ => 1,
        }
    }
}

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Brokers.
    pub settings: KafkaSettings,
    /// HTTP address, if any.
    pub listen: Option<SocketAddr>,
    /// Stable replica identity, for the transactional id.
    pub replica_id: String,
    /// Local mode: fail at once when topics are missing (instead of waiting for them).
    pub fail_on_missing_topics: bool,
}

/// What the pipeline reads, writes and keeps, derived from the spec and the cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicPlan {
    /// Topics that must exist (inputs, outputs, routes, dead letter).
    pub required: Vec<String>,
    /// Internal topics to create when missing.
    pub internal: Vec<InternalTopic>,
    /// Repartition topic, when the aggregate needs one.
    pub repartition: Option<String>,
    /// (state topic, changelog topic) when the pipeline has an aggregate.
    pub state: Option<(String, String)>,
}

impl PartialEq for InternalTopic {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.partitions == other.partitions
            && self.config == other.config
    }
}

/// Works out the topics. `partitions` gives the partition count of existing topics.
pub fn plan(
    cfg: &PipelineConfig,
    engine: &Engine,
    partitions: &std::collections::BTreeMap<String, usize>,
) -> TopicPlan {
    let mut required: Vec<String> = cfg.spec.inputs.clone();
    required.extend(engine.output_topics());
    if let Some(d) = &cfg.spec.dead_letter {
        required.push(d.topic.clone());
    }
    required.extend(engine.table_topics());
    required.sort();
    required.dedup();
    let mut internal = Vec::new();
    let mut repartition = None;
    let mut state = None;
    if let Some(step) = engine.aggregate_step() {
        let group = cfg.group_id();
        let counts: Vec<usize> = cfg
            .spec
            .inputs
            .iter()
            .map(|t| partitions.get(t).copied().unwrap_or(1))
            .collect();
        let max = counts.iter().copied().max().unwrap_or(1).max(1);
        let state_topic = if cfg.spec.inputs.len() == 1 && max == 1 {
            cfg.spec.inputs[0].clone()
        } else {
            let t = format!("{group}-{step}-repartition");
            internal.push(InternalTopic {
                name: t.clone(),
                partitions: max,
                config: vec![("cleanup.policy", "delete")],
            });
            repartition = Some(t.clone());
            t
        };
        let changelog = format!("{group}-{step}-changelog");
        internal.push(InternalTopic {
            name: changelog.clone(),
            partitions: max,
            config: vec![("cleanup.policy", "compact")],
        });
        state = Some((state_topic, changelog));
    }
    TopicPlan {
        required,
        internal,
        repartition,
        state,
    }
}

fn duration(name: &str, field: &'static str, value: &str) -> Result<Duration, AppError> {
    humantime::parse_duration(value).map_err(|_| AppError::Duration {
        name: name.to_string(),
        field,
        value: value.to_string(),
    })
}

/// Compiles the pipeline (no Kafka): the configuration errors a user can fix.
pub fn compile(cfg: &PipelineConfig, metrics: &Metrics) -> Result<Engine, AppError> {
    duration(&cfg.name, "commitInterval", &cfg.spec.commit_interval)?;
    Engine::new(&cfg.name, &cfg.spec, metrics.pipeline(&cfg.name)).map_err(|source| {
        AppError::Config {
            name: cfg.name.clone(),
            source,
        }
    })
}

/// Runs a pipeline until SIGTERM/SIGINT (clean exit) or a fatal error.
pub async fn run(cfg: PipelineConfig, opts: RunOptions) -> Result<(), AppError> {
    let metrics = Arc::new(Metrics::new());
    let status = Arc::new(Status::default());
    let mut engine = compile(&cfg, &metrics)?;
    let commit_interval = duration(&cfg.name, "commitInterval", &cfg.spec.commit_interval)?;
    let name = cfg.name.clone();

    if let Some(addr) = opts.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| AppError::Http { addr, source })?;
        // The bound address: with port 0 the system chose one.
        let addr = listener.local_addr().unwrap_or(addr);
        let router = crate::http::router(metrics.clone(), status.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!(error = %e, "HTTP server stopped");
            }
        });
        tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    }
    spawn_signal_handler(status.clone());

    let topics_err = |source| AppError::Topics {
        name: name.clone(),
        source: Box::new(source),
    };
    // Topics: all required ones must exist; internal ones are created.
    let plan = loop {
        let settings = opts.settings.clone();
        let partitions = tokio::task::spawn_blocking(move || {
            topics::partition_counts(&settings, Duration::from_secs(30))
        })
        .await
        .map_err(|_| AppError::Panicked)?
        .map_err(topics_err)?;
        let plan = plan(&cfg, &engine, &partitions);
        let missing = topics::missing(&partitions, plan.required.iter().map(String::as_str));
        if missing.is_empty() {
            let settings = opts.settings.clone();
            let internal = plan.internal.clone();
            tokio::task::spawn_blocking(move || topics::ensure(&settings, &partitions, &internal))
                .await
                .map_err(|_| AppError::Panicked)?
                .map_err(topics_err)?;
            break plan;
        }
        if opts.fail_on_missing_topics {
            return Err(topics_err(TopicError::Missing(missing)));
        }
        tracing::warn!(missing = ?missing, "waiting for topics to exist");
        for _ in 0..20 {
            if status.shutdown.load(Ordering::Relaxed) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    engine.set_repartition_topic(plan.repartition.clone());
    // A pipeline without state runs its steps on a second thread, the transform lane,
    // with its own copy of the engine (see `kafka::lane`).
    let mut lane_engine = if engine.aggregate_step().is_none() {
        Some(compile(&cfg, &metrics)?)
    } else {
        None
    };
    for topic in engine.table_topics() {
        let (settings, group, t, format) = (
            opts.settings.clone(),
            cfg.group_id(),
            topic.clone(),
            engine.format(),
        );
        let table = tokio::task::spawn_blocking(move || {
            crate::kafka::table::load(&settings, &group, &t, format, Duration::from_secs(600))
        })
        .await
        .map_err(|_| AppError::Panicked)?
        .map_err(|e| AppError::Table {
            name: name.clone(),
            source: e,
        })?;
        engine.attach_table(&topic, &table);
        if let Some(e) = lane_engine.as_mut() {
            e.attach_table(&topic, &table);
        }
    }
    let mut consumed = cfg.spec.inputs.clone();
    consumed.extend(plan.repartition.clone());
    let group_id = cfg.group_id();
    let wopts = WorkerOptions {
        settings: opts.settings.clone(),
        transactional_id: sluice_crds::contract::transactional_id(&group_id, &opts.replica_id),
        group_id,
        exactly_once: cfg.spec.delivery == Delivery::ExactlyOnce,
        commit_interval,
        rate_limit: cfg
            .spec
            .rate_limit
            .as_ref()
            .map(|r| u32::try_from(r.records_per_second).unwrap_or(1).max(1)),
        dead_letter: cfg.spec.dead_letter.as_ref().map(|d| d.topic.clone()),
        produce_retries: cfg.spec.dead_letter.as_ref().map(|d| d.retries),
        start_from: cfg.spec.start_from,
        topics: consumed,
        state: plan.state.clone(),
        restore_timeout: Duration::from_secs(600),
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let worker_status = status.clone();
    std::thread::Builder::new()
        .name("sluice-worker".to_string())
        .spawn(move || {
            let r = worker::run(wopts, engine, lane_engine, worker_status);
            let _ = tx.send(r);
        })
        .map_err(|_| AppError::Panicked)?;
    match rx.await {
        Ok(Ok(())) => {
            tracing::info!(pipeline = %name, "stopped: committed and left the group");
            Ok(())
        }
        Ok(Err(source)) => Err(AppError::Worker {
            name,
            source: Box::new(source),
        }),
        Err(_) => Err(AppError::Panicked),
    }
}

pub(crate) fn spawn_signal_handler(status: Arc<Status>) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining, committing and leaving the group"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: draining, committing and leaving the group"),
        }
        status.shutdown.store(true, Ordering::Relaxed);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn cfg(yaml: &str) -> PipelineConfig {
        PipelineConfig::parse(yaml, "t").unwrap()
    }

    const AGG: &str = "name: totals\nnamespace: shop\ninputs: [orders]\nsteps:\n- name: per-region\n  aggregate: {groupBy: {region: value.region}, aggregations: [{name: total, op: sum, of: value.total}]}\noutputs: [{topic: out}]\ndeadLetter: {topic: dlq}\n";

    #[test]
    fn single_partition_input_keeps_state_by_input_partition() {
        let c = cfg(AGG);
        let e = compile(&c, &Metrics::new()).unwrap();
        let p = plan(&c, &e, &BTreeMap::from([("orders".to_string(), 1)]));
        assert_eq!(p.required, vec!["dlq", "orders", "out"]);
        assert_eq!(p.repartition, None);
        assert_eq!(
            p.state,
            Some((
                "orders".to_string(),
                "sluice-shop-totals-per-region-changelog".to_string()
            ))
        );
        assert_eq!(p.internal.len(), 1);
        assert_eq!(p.internal[0].config, vec![("cleanup.policy", "compact")]);
    }

    #[test]
    fn multi_partition_input_is_repartitioned_by_group() {
        let c = cfg(AGG);
        let e = compile(&c, &Metrics::new()).unwrap();
        let p = plan(&c, &e, &BTreeMap::from([("orders".to_string(), 3)]));
        let rep = "sluice-shop-totals-per-region-repartition".to_string();
        assert_eq!(p.repartition.as_ref(), Some(&rep));
        assert_eq!(p.state.as_ref().map(|s| &s.0), Some(&rep));
        assert!(p.internal.iter().all(|t| t.partitions == 3));
    }

    #[test]
    fn stateless_pipelines_need_no_internal_topics() {
        let c = cfg(
            "name: p\ninputs: [a]\nsteps: [{name: r, route: {routes: [{when: 'true', topic: b}], default: c}}]\n",
        );
        let e = compile(&c, &Metrics::new()).unwrap();
        let p = plan(&c, &e, &BTreeMap::new());
        assert_eq!(p.required, vec!["a", "b", "c"]);
        assert!(p.internal.is_empty() && p.state.is_none());
    }

    #[test]
    fn bad_commit_interval_is_a_config_error() {
        let c = cfg("name: p\ninputs: [a]\noutputs: [{topic: b}]\ncommitInterval: soon\n");
        let err = compile(&c, &Metrics::new()).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("commitInterval"));
    }
}
