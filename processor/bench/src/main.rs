//! `sluice-bench`: the processor against its ceiling and its peer, on one broker, one data set.
//!
//! Candidates, each run as a child process on the same pre-loaded input topic:
//! (a) a bare rdkafka consume-produce loop (no parsing; key, value, headers and timestamp
//!     copied as Sluice copies them; offsets committed without waiting for
//!     acknowledgements: the ceiling),
//! (b0) Sluice with no steps and `format: bytes` (its loop alone: a topic copy),
//! (b) Sluice filter+map, (c) Sluice per-region sum emitting every update, (c2) the same
//! emitting each region's latest total once per commit (`emit: onCommit`),
//! (d) the same two topologies in Kafka Streams (`kafka-streams/` beside this crate, built with Maven),
//! the aggregate emitting every update as Sluice does, and (e) that aggregate with Kafka
//! Streams' default record cache, which emits only each region's latest total per commit.
//!
//! For each: records/s while draining the backlog, CPU seconds per million records (the
//! child's utime+stime over the drain), peak memory (the child's VmHWM), then p99
//! end-to-end latency under a steady live load (input CreateTime to the moment the output
//! record is read; outputs carry their input's timestamp). All use at-least-once delivery
//! and a 100 ms commit interval.
//!
//! Usage: `cargo run --release -p sluice-bench -- --help` (`make bench` builds the
//! processor first: the bench runs the `sluice-processor` beside its own binary). The
//! bootstrap defaults to KAFKA_BOOTSTRAP, then to e2e/.state/env.
//!
//! `--pairs N` runs (a) back to back with each Sluice candidate `--only` selects (b when
//! it is not given), N times, and prints each pair's ratio and their median: on a shared
//! machine whose speed drifts between minutes, back-to-back pairs give a steadier ratio
//! than one run of each.
//!
//! `sluice-bench engine [records] [b|c]` measures the engine alone, without Kafka (see
//! [`engine_cost`]).

mod candidates;
mod engine_cost;
mod kafka;
mod measure;
mod report;
mod sink_http;
mod sink_peer;
mod sink_postgres;
mod sink_s3;
mod sinks;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use candidates::*;
use kafka::*;
use measure::*;
use report::*;

// The processor's allocator, so the engine measurement matches the processor.
#[global_allocator]
static ALLOCATOR: sluice_processor::allocator::Allocator = sluice_processor::allocator::Allocator;

/// The processor against its ceiling (a bare rdkafka loop) and its peer (Kafka Streams).
#[derive(Parser)]
#[command(name = "sluice-bench")]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Option<Mode>,
    #[command(flatten)]
    args: Args,
}

/// What to run besides the comparison.
#[derive(Subcommand)]
enum Mode {
    /// Candidate (a): the bare consume-produce loop (the comparison starts it).
    Bare {
        bootstrap: String,
        input: String,
        output: String,
        group: String,
    },
    /// The native sinks against their ceilings: PostgreSQL against a bare tokio-postgres
    /// loop, S3 against bare object_store puts into MinIO, HTTP against bare reqwest
    /// posts to a receiver in this process (the e2e environment's broker and servers).
    Sinks {
        /// Orders in the input topic.
        #[arg(long, default_value_t = 200_000)]
        records: u64,
        /// Partitions of the input topic.
        #[arg(long, default_value_t = 2)]
        partitions: i32,
        /// Only these sinks (comma separated; default: all).
        #[arg(long, value_enum, value_delimiter = ',')]
        only: Vec<sinks::Target>,
        /// Leave out the peer (Debezium's JDBC sink in a Connect worker).
        #[arg(long)]
        skip_peer: bool,
        /// Rounds of every comparison (the peer runs in the first only); the report gives
        /// medians, and each round's ratios.
        #[arg(long, default_value_t = 1)]
        rounds: usize,
    },
    /// The engine's cost per record, without Kafka.
    Engine {
        /// Orders to run.
        #[arg(default_value_t = 1_000_000)]
        records: u64,
        /// Only this topology (`b` or `c`), for profilers.
        topology: Option<String>,
    },
}

/// The comparison's settings.
#[derive(clap::Args, Clone)]
pub(crate) struct Args {
    /// Kafka bootstrap servers (default: KAFKA_BOOTSTRAP, then e2e/.state/env).
    #[arg(long, default_value = "")]
    pub(crate) bootstrap: String,
    /// Orders in the input topic.
    #[arg(long, default_value_t = 3_000_000)]
    pub(crate) records: u64,
    /// Partitions of the input and output topics.
    #[arg(long, default_value_t = 2)]
    pub(crate) partitions: i32,
    /// Records per second of the live load for the latency measurement.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) rate: u64,
    /// Records of the live load.
    #[arg(long, default_value_t = 50_000)]
    pub(crate) latency_records: u64,
    /// Leave out the Kafka Streams peer.
    #[arg(long)]
    pub(crate) skip_streams: bool,
    /// Only these candidates (letters, comma separated: `a,b,c2`).
    #[arg(long)]
    pub(crate) only: Option<String>,
    /// librdkafka properties file for the Sluice candidates.
    #[arg(long)]
    pub(crate) kafka_config: Option<String>,
    /// Run (a) and each selected Sluice candidate back to back this many times, and
    /// print each pair's ratio and their median.
    #[arg(long, default_value_t = 0)]
    pub(crate) pairs: usize,
}

/// The bench package in the checkout being run: Cargo says it at run time (a target
/// directory shared by several checkouts can hold a binary compiled in another one).
pub(crate) fn package_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

pub(crate) fn bootstrap_from_e2e() -> anyhow::Result<String> {
    e2e_var("KAFKA_BOOTSTRAP")
}

/// `name` from the environment, else from the e2e environment's env file.
pub(crate) fn e2e_var(name: &str) -> anyhow::Result<String> {
    if let Ok(v) = std::env::var(name) {
        return Ok(v);
    }
    let path = std::env::var_os("SLUICE_E2E_STATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| package_dir().join("../../e2e/.state"))
        .join("env");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("no {name} and no {}: start e2e/up", path.display()))?;
    let prefix = format!("{name}=");
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&prefix))
        .map(|v| v.trim_matches('"').to_string())
        .with_context(|| format!("{name} missing from {}", path.display()))
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Mode::Bare {
            bootstrap,
            input,
            output,
            group,
        }) => return bare_loop(&bootstrap, &input, &output, &group),
        Some(Mode::Engine { records, topology }) => {
            return engine_cost::engine_cost(records, topology.as_deref());
        }
        Some(Mode::Sinks {
            records,
            partitions,
            only,
            skip_peer,
            rounds,
        }) => {
            let processor = std::env::current_exe()?.with_file_name("sluice-processor");
            return sinks::sinks(
                &e2e_var("KAFKA_BOOTSTRAP")?,
                &processor,
                records,
                partitions,
                &only,
                !skip_peer,
                rounds,
            );
        }
        None => {}
    }
    let mut args = cli.args;
    if args.bootstrap.is_empty() {
        args.bootstrap = std::env::var("KAFKA_BOOTSTRAP").or_else(|_| bootstrap_from_e2e())?;
    }
    let ticks = clock_ticks();
    let exe = std::env::current_exe()?;
    let processor = exe.with_file_name("sluice-processor");
    if !processor.exists() {
        bail!(
            "{} not found: build it (cargo build --release -p sluice-processor)",
            processor.display()
        );
    }
    let run = format!("bench-{}-{}", std::process::id(), now_ms() % 100_000);
    let input = format!("{run}-orders");
    let dir = std::env::temp_dir().join(&run);
    std::fs::create_dir_all(&dir)?;
    eprintln!(
        "sluice-bench: broker {}, {} records of ~90 bytes on {} partitions ({input})",
        args.bootstrap, args.records, args.partitions
    );
    create_topic(&args.bootstrap, &input, args.partitions)?;
    produce(&args.bootstrap, &input, 0, args.records, None, None)?;

    let mut cands = Vec::new();
    let out = |c: &str| format!("{run}-{c}-out");
    let sluices = [
        ("copy", Topology::Copy, "b0 sluice copy, no steps"),
        ("filtermap", Topology::FilterMap, "b sluice filter+map"),
        (
            "aggregate",
            Topology::Aggregate("onUpdate"),
            "c sluice aggregate",
        ),
        (
            "aggregate-oncommit",
            Topology::Aggregate("onCommit"),
            "c2 sluice aggregate, onCommit",
        ),
    ];
    if args.pairs > 0 {
        // a against each selected Sluice candidate (b unless --only says otherwise).
        let only = args.only.clone().unwrap_or_else(|| "b".to_string());
        for i in 0..args.pairs {
            for (tag, topology, name) in sluices.iter().filter(|s| selected(&only, s.2)) {
                cands.push(bare_candidate(
                    &exe,
                    &args,
                    &input,
                    &run,
                    &format!("bare-{tag}-{i}"),
                ));
                cands.push(sluice_candidate(
                    &processor,
                    &args,
                    &dir,
                    &input,
                    &run,
                    (&format!("{tag}-{i}"), *topology, name),
                )?);
            }
        }
    } else {
        cands.push(bare_candidate(&exe, &args, &input, &run, "bare"));
        for sluice in sluices {
            cands.push(sluice_candidate(
                &processor, &args, &dir, &input, &run, sluice,
            )?);
        }
    }
    if args.pairs == 0
        && !args.skip_streams
        && let Some(jar) = streams_jar()
    {
        for (tag, name) in [
            ("filtermap", "d kafka-streams filter+map"),
            ("aggregate", "d kafka-streams aggregate"),
            ("aggregate-cached", "e kafka-streams aggregate, cached"),
        ] {
            let app = format!("{run}-ks-{tag}");
            let o = out(&format!("ks-{tag}"));
            let mut cmd = Command::new("java");
            cmd.arg("-jar")
                .arg(&jar)
                .args([&args.bootstrap, tag, &input, &o, &app]);
            cands.push((
                Candidate {
                    name,
                    group: app,
                    command: cmd,
                },
                o,
            ));
        }
    }
    let results = run_all(&args, &input, cands, ticks);
    match delete_run_topics(&args.bootstrap, &run) {
        Ok(n) => eprintln!("sluice-bench: deleted this run's {n} topics"),
        Err(e) => eprintln!("sluice-bench: could not delete this run's topics ({run}*): {e}"),
    }
    let results = results?;

    println!();
    println!(
        "{:<34} {:>12} {:>16} {:>10} {:>10}",
        "candidate", "records/s", "CPU s/M records", "p99 ms", "peak MiB"
    );
    for r in &results {
        println!(
            "{:<34} {:>12.0} {:>16.2} {:>10} {:>10.0}",
            r.name,
            r.records_per_s,
            r.cpu_s_per_million,
            r.p99_ms.map_or("-".to_string(), |p| format!("{p:.1}")),
            r.peak_mib
        );
    }
    if args.pairs > 0 {
        return print_pairs(&results);
    }
    let find = |prefix: &str| results.iter().find(|r| r.name.starts_with(prefix));
    let ratio = |a: &Measured, b: &Measured| {
        let p99 = match (a.p99_ms, b.p99_ms) {
            (Some(x), Some(y)) => format!("{:.2}x", x / y),
            _ => "-".to_string(),
        };
        println!(
            "{} / {}: throughput {:.2}x, records per CPU second {:.2}x, peak memory {:.2}x, p99 {p99}",
            a.name,
            b.name,
            a.records_per_s / b.records_per_s,
            b.cpu_s_per_million / a.cpu_s_per_million,
            a.peak_mib / b.peak_mib,
        );
    };
    println!();
    if let (Some(b), Some(a)) = (find("b "), find("a ")) {
        ratio(b, a);
    }
    if let (Some(b), Some(d)) = (find("b "), find("d kafka-streams filter")) {
        ratio(b, d);
    }
    if let (Some(c), Some(d)) = (find("c "), find("d kafka-streams agg")) {
        ratio(c, d);
    }
    if let (Some(c), Some(e)) = (find("c2 "), find("e kafka-streams agg")) {
        ratio(c, e);
    }
    println!(
        "sluice-bench: done ({} candidates, {} records each); child logs in {}",
        results.len(),
        args.records,
        std::env::temp_dir().display()
    );
    Ok(())
}
