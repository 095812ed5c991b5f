//! `sluice-processor`: runs a pipeline (`pipeline`, `run`) or the generator (`generate`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};
use sluice_crds::contract;
use sluice_processor::app::{self, RunOptions};
use sluice_processor::config::{PipelineConfig, load_kafka_properties};
use sluice_processor::connector;
use sluice_processor::generate::{self, Pace, Template, parse_rate};
use sluice_processor::kafka::KafkaSettings;

/// mimalloc: a record's decode, steps and encode allocate and free many small objects,
/// which glibc's allocator made about a sixth of the worker thread's time.
#[global_allocator]
static ALLOCATOR: sluice_processor::allocator::Allocator = sluice_processor::allocator::Allocator;

#[derive(Parser)]
#[command(
    name = "sluice-processor",
    version,
    about = "The Sluice data plane: runs Kafka pipelines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct KafkaArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = contract::env::KAFKA_BOOTSTRAP)]
    bootstrap: String,
    /// File of extra librdkafka properties (key=value lines), e.g. SASL/TLS from a Secret.
    #[arg(long, env = contract::env::KAFKA_CONFIG_FILE)]
    kafka_config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline from the config file the operator mounts.
    Pipeline {
        /// The pipeline config: its spec (YAML or JSON) with `name` and `namespace`.
        #[arg(long, env = contract::env::PIPELINE_CONFIG)]
        config: PathBuf,
        #[command(flatten)]
        kafka: KafkaArgs,
        /// Address for /metrics, /healthz and /readyz.
        #[arg(long, env = contract::env::HTTP_ADDR, default_value_t = SocketAddr::from(([0, 0, 0, 0], contract::HTTP_PORT)))]
        listen: SocketAddr,
        /// Stable identity of this replica, part of the transactional id (default: POD_NAME, then HOSTNAME).
        #[arg(long, env = contract::env::REPLICA_ID)]
        replica_id: Option<String>,
        /// Consumer group, overriding `sluice-<namespace>-<name>`.
        #[arg(long, env = contract::env::GROUP_ID)]
        group_id: Option<String>,
    },
    /// Run a native Connector from the config file the operator mounts.
    Connector {
        /// The Connector manifest.
        #[arg(long, env = contract::env::CONNECTOR_CONFIG)]
        config: PathBuf,
        #[command(flatten)]
        kafka: KafkaArgs,
        /// Address for /metrics, /healthz and /readyz.
        #[arg(long, env = contract::env::HTTP_ADDR, default_value_t = SocketAddr::from(([0, 0, 0, 0], contract::HTTP_PORT)))]
        listen: SocketAddr,
    },
    /// Run a Pipeline manifest, or a generator Connector manifest, locally without Kubernetes.
    Run {
        /// A `kind: Pipeline` or `kind: Connector` manifest.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[command(flatten)]
        kafka: KafkaArgs,
        /// Address for /metrics, /healthz and /readyz (none by default).
        #[arg(long, env = contract::env::HTTP_ADDR)]
        listen: Option<SocketAddr>,
        /// Identity of this process, part of the transactional id.
        #[arg(long, env = contract::env::REPLICA_ID, default_value = "local-0")]
        replica_id: String,
    },
    /// Write generated records to a topic (demos and load).
    Generate {
        /// Target topic.
        #[arg(long)]
        topic: String,
        #[command(flatten)]
        kafka: KafkaArgs,
        /// Records per second (as fast as possible when not given).
        #[arg(long, value_parser = parse_rate)]
        rate: Option<f64>,
        /// Stop after this many records (runs until interrupted when not given).
        #[arg(long)]
        count: Option<u64>,
        /// JSON object of field to CEL expression over `i` (record index) and `now` (ms).
        #[arg(long)]
        template: String,
        /// CEL expression for the record key.
        #[arg(long)]
        key: Option<String>,
    },
}

fn settings(k: &KafkaArgs) -> Result<KafkaSettings, String> {
    let extra = match &k.kafka_config {
        Some(p) => load_kafka_properties(p).map_err(|e| e.to_string())?,
        None => Default::default(),
    };
    Ok(KafkaSettings {
        bootstrap: k.bootstrap.clone(),
        extra,
    })
}

fn fail(code: i32, msg: impl std::fmt::Display) -> ! {
    if std::env::var(contract::env::LOG_FORMAT).is_ok_and(|v| v.eq_ignore_ascii_case("json")) {
        tracing::error!("{msg}");
    }
    eprintln!("sluice-processor: {msg}");
    write_termination_message(&msg.to_string());
    std::process::exit(code);
}

/// Leaves `msg` where the kubelet reads a container's termination message, when it runs
/// in a pod (the file exists only there).
fn write_termination_message(msg: &str) {
    let path = std::path::Path::new(contract::TERMINATION_LOG);
    if path.exists()
        && let Err(e) = std::fs::write(path, msg)
    {
        eprintln!("sluice-processor: cannot write {}: {e}", path.display());
    }
}

fn main() {
    let cli = Cli::parse();
    sluice_processor::logging::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => fail(1, format!("cannot start the runtime: {e}")),
    };
    match cli.command {
        Command::Pipeline {
            config,
            kafka,
            listen,
            replica_id,
            group_id,
        } => {
            let mut cfg = PipelineConfig::load(&config).unwrap_or_else(|e| fail(2, e));
            cfg.group_override = group_id;
            let settings = settings(&kafka).unwrap_or_else(|e| fail(2, e));
            let replica_id = replica_id
                .or_else(|| std::env::var("POD_NAME").ok())
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| "0".to_string());
            let opts = RunOptions {
                settings,
                listen: Some(listen),
                replica_id,
                fail_on_missing_topics: false,
            };
            finish(runtime.block_on(app::run(cfg, opts)));
        }
        Command::Connector {
            config,
            kafka,
            listen,
        } => {
            let text = std::fs::read_to_string(&config)
                .unwrap_or_else(|e| fail(2, format!("cannot read {}: {e}", config.display())));
            let job =
                connector::job(&text, &config.display().to_string()).unwrap_or_else(|e| fail(2, e));
            let settings = settings(&kafka).unwrap_or_else(|e| fail(2, e));
            match runtime.block_on(connector::serve(job, settings, listen)) {
                Ok(()) => eprintln!("sluice-processor: stopped cleanly"),
                Err(e) => fail(1, e),
            }
        }
        Command::Run {
            file,
            kafka,
            listen,
            replica_id,
        } => {
            let text = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| fail(2, format!("cannot read {}: {e}", file.display())));
            if connector::manifest_kind(&text).as_deref() == Some("Connector") {
                let origin = file.display().to_string();
                let settings = settings(&kafka).unwrap_or_else(|e| fail(2, e));
                let job = match connector::job(&text, &origin).unwrap_or_else(|e| fail(2, e)) {
                    connector::Job::Generator(job) => *job,
                    other => {
                        let listen = listen.unwrap_or_else(|| ([127, 0, 0, 1], 0).into());
                        eprintln!(
                            "sluice-processor: running connector {origin} with {}; Ctrl-C stops it",
                            settings.bootstrap
                        );
                        match runtime.block_on(connector::serve(other, settings, listen)) {
                            Ok(()) => eprintln!("sluice-processor: stopped cleanly"),
                            Err(e) => fail(1, e),
                        }
                        return;
                    }
                };
                eprintln!(
                    "sluice-processor: running connector {} (generator) into {} at {}; Ctrl-C stops it",
                    job.name, job.topic, settings.bootstrap
                );
                generate_until_stopped(&runtime, &settings, &job.topic, &job.template, job.pace);
                return;
            }
            let cfg = PipelineConfig::parse(&text, &file.display().to_string())
                .unwrap_or_else(|e| fail(2, e));
            let settings = settings(&kafka).unwrap_or_else(|e| fail(2, e));
            let opts = RunOptions {
                settings,
                listen,
                replica_id,
                fail_on_missing_topics: true,
            };
            eprintln!(
                "sluice-processor: running pipeline {} (group {}) against {}; Ctrl-C stops it",
                cfg.name,
                cfg.group_id(),
                opts.settings.bootstrap
            );
            finish(runtime.block_on(app::run(cfg, opts)));
        }
        Command::Generate {
            topic,
            kafka,
            rate,
            count,
            template,
            key,
        } => {
            let settings = settings(&kafka).unwrap_or_else(|e| fail(2, e));
            let template =
                Template::compile(&template, key.as_deref()).unwrap_or_else(|e| fail(2, e));
            generate_until_stopped(&runtime, &settings, &topic, &template, Pace { rate, count });
        }
    }
}

/// Runs the generator until its count is written or Ctrl-C.
fn generate_until_stopped(
    runtime: &tokio::runtime::Runtime,
    settings: &KafkaSettings,
    topic: &str,
    template: &Template,
    pace: Pace,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    runtime.spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            flag.store(true, Ordering::Relaxed);
        }
    });
    match generate::run(settings, topic, template, pace, &stop) {
        Ok(n) => eprintln!("generate: done, {n} records written to {topic}"),
        Err(e) => fail(1, e),
    }
}

fn finish(result: Result<(), app::AppError>) {
    match result {
        Ok(()) => eprintln!("sluice-processor: stopped cleanly"),
        Err(e) => {
            let code = e.exit_code();
            fail(code, e)
        }
    }
}
