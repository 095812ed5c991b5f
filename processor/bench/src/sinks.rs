//! `sluice-bench sinks`: each native sink against its ceiling, on one broker and one data
//! set (the e2e environment's broker, PostgreSQL and MinIO, and an HTTP receiver in this
//! process).
//!
//! Every ceiling is a bare loop in this process: it reads the same topic with rdkafka (no
//! group, every partition from the start) and writes what the sink writes, the same way
//! (the same statements, objects or requests, in batches of the same size), keeping no
//! positions. Sluice is `sluice-processor run -f` of a sink Connector. Each run reports
//! records/s from its start until every record is in the target (Sluice: its start
//! includes starting the process and joining the group), and records/s from the first
//! record in the target to the last (the rate once running).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::bail;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka::{client, create_topic, produce};

/// Which sinks `sluice-bench sinks` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Target {
    Postgres,
    S3,
    Http,
}

/// The environment and data set every sink run shares.
pub(crate) struct Bench {
    pub(crate) bootstrap: String,
    pub(crate) processor: PathBuf,
    pub(crate) topic: String,
    pub(crate) partitions: i32,
    pub(crate) records: u64,
    /// Scratch space: manifests and credentials.
    pub(crate) dir: PathBuf,
    /// A name unique to this run, for tables, prefixes and groups.
    pub(crate) run: String,
    /// Run the peers too (Debezium's JDBC sink).
    pub(crate) peer: bool,
    /// The round being run: part of every sink's name, so each round's consumer groups
    /// and stored positions are new.
    pub(crate) round: usize,
}

/// When one run's records arrived.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// From the start until every record was in the target.
    pub(crate) elapsed: Duration,
    /// From the start until the first record was.
    pub(crate) first: Duration,
    /// CPU seconds and peak memory (MiB) of a sink that ran in a process of its own.
    pub(crate) usage: Option<(f64, f64)>,
}

/// One measured run.
pub(crate) struct Run {
    pub(crate) name: String,
    pub(crate) timing: Timing,
    pub(crate) records: u64,
}

impl Run {
    /// Records/s over the whole run.
    pub(crate) fn rate(&self) -> f64 {
        self.records as f64 / self.timing.elapsed.as_secs_f64()
    }

    /// The run's usage, as the report prints it.
    fn usage(&self) -> String {
        match self.timing.usage {
            Some((cpu, peak)) => format!(
                "  {:>6.1} CPU s per million, peak {peak:>5.0} MiB",
                cpu * 1e6 / self.records as f64
            ),
            None => String::new(),
        }
    }

    /// Records/s from the first record in the target to the last.
    pub(crate) fn running_rate(&self) -> f64 {
        let span = self.timing.elapsed.saturating_sub(self.timing.first);
        self.records as f64 / span.as_secs_f64().max(1e-3)
    }
}

/// Runs the comparison of each target in `only`: `records` orders on `partitions`
/// partitions, `rounds` times (the peer only in the first round). The report gives each
/// run's median and each ratio's median over the rounds, with every round's ratio.
pub fn sinks(
    bootstrap: &str,
    processor: &Path,
    records: u64,
    partitions: i32,
    only: &[Target],
    peer: bool,
    rounds: usize,
) -> anyhow::Result<()> {
    let run = format!("sinkbench{}", std::process::id());
    let mut bench = Bench {
        bootstrap: bootstrap.to_string(),
        processor: processor.to_path_buf(),
        topic: format!("{run}-orders"),
        partitions,
        records,
        dir: std::env::temp_dir().join(&run),
        run,
        peer,
        round: 0,
    };
    std::fs::create_dir_all(&bench.dir)?;
    eprintln!(
        "sluice-bench sinks: {records} orders on {partitions} partitions ({}), {rounds} round(s)",
        bench.topic
    );
    create_topic(bootstrap, &bench.topic, partitions)?;
    produce(bootstrap, &bench.topic, 0, records, None, None)?;
    let all = [Target::Postgres, Target::S3, Target::Http];
    let targets = if only.is_empty() { &all[..] } else { only };
    // Per target, its section of each round.
    let mut sections: Vec<Vec<Section>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds.max(1) {
        eprintln!("round {}", round + 1);
        bench.round = round;
        for (target, done) in targets.iter().zip(&mut sections) {
            done.push(match target {
                Target::Postgres => crate::sink_postgres::bench(&bench)?,
                Target::S3 => crate::sink_s3::bench(&bench)?,
                Target::Http => crate::sink_http::bench(&bench)?,
            });
        }
        bench.peer = false;
    }
    let _ = crate::kafka::delete_run_topics(bootstrap, &bench.run);
    let _ = std::fs::remove_dir_all(&bench.dir);
    for rounds in sections {
        println!("{}", report(&rounds));
    }
    Ok(())
}

/// One sink's comparison in one round.
pub(crate) struct Section {
    /// What was compared.
    pub(crate) title: String,
    /// Each run of the round.
    pub(crate) runs: Vec<Run>,
    /// (label, run a, run b): the ratios of a to b to report.
    pub(crate) ratios: Vec<(&'static str, &'static str, &'static str)>,
    /// Further lines of the round (bytes written, requests/s, ...).
    pub(crate) notes: String,
}

/// The median of `values` (the upper one of an even count); 0 for none.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// The rounds of one sink: each run with its median rate (and that run's usage), each
/// ratio's median over the rounds and every round's value, then each round's notes.
fn report(rounds: &[Section]) -> String {
    let Some(first) = rounds.first() else {
        return String::new();
    };
    let mut out = format!("{} ({} round(s); medians)\n", first.title, rounds.len());
    let mut names: Vec<&str> = Vec::new();
    for r in rounds.iter().flat_map(|s| &s.runs) {
        if !names.contains(&r.name.as_str()) {
            names.push(&r.name);
        }
    }
    for name in names {
        let mut runs: Vec<&Run> = rounds
            .iter()
            .flat_map(|s| &s.runs)
            .filter(|r| r.name == name)
            .collect();
        runs.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
        let r = runs[runs.len() / 2];
        out.push_str(&format!(
            "  {:<34} {:>9.0} records/s ({:>9.0} once running){}\n",
            r.name,
            r.rate(),
            r.running_rate(),
            r.usage()
        ));
    }
    for (label, a, b) in &first.ratios {
        let mut whole = Vec::new();
        let mut running = Vec::new();
        for section in rounds {
            let find = |n: &str| section.runs.iter().find(|r| r.name == n);
            if let (Some(a), Some(b)) = (find(a), find(b)) {
                whole.push(a.rate() / b.rate());
                running.push(a.running_rate() / b.running_rate());
            }
        }
        if whole.is_empty() {
            continue;
        }
        let each: Vec<String> = whole.iter().map(|v| format!("{v:.2}")).collect();
        out.push_str(&format!(
            "  {label:<34} {:.2} ({:.2} once running); rounds: {}\n",
            median(whole.clone()),
            median(running),
            each.join(" ")
        ));
    }
    for (i, section) in rounds.iter().enumerate() {
        if !section.notes.is_empty() {
            out.push_str(&format!("  round {}:\n{}", i + 1, section.notes));
        }
    }
    out
}

impl Bench {
    /// A consumer of every partition of the topic from the start, for a ceiling.
    pub(crate) fn reader(&self, name: &str) -> anyhow::Result<BaseConsumer> {
        let consumer: BaseConsumer = client(&self.bootstrap)
            .set("group.id", format!("{}-{name}", self.run))
            .set("enable.auto.commit", "false")
            .set("fetch.queue.backoff.ms", "20")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            tpl.add_partition_offset(&self.topic, p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        Ok(consumer)
    }

    /// Counts the records of the topic that consumer group `group` has committed: a
    /// cheap count of what a sink has loaded, for sinks that commit after the target
    /// (asking the target itself, say `count(*)` every 20 ms, would load the very server
    /// being measured). One client serves every count.
    pub(crate) fn committed(
        &self,
        group: &str,
    ) -> anyhow::Result<impl FnMut() -> anyhow::Result<u64> + use<>> {
        let consumer: BaseConsumer = client(&self.bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()?;
        let mut partitions = TopicPartitionList::new();
        for p in 0..self.partitions {
            partitions.add_partition(&self.topic, p);
        }
        Ok(move || {
            let committed =
                consumer.committed_offsets(partitions.clone(), Duration::from_secs(10))?;
            Ok(committed
                .elements()
                .iter()
                .map(|e| match e.offset() {
                    Offset::Offset(o) => u64::try_from(o).unwrap_or(0),
                    _ => 0,
                })
                .sum())
        })
    }

    /// A ceiling's loop: reads every record of the topic in batches of `batch` (a
    /// batch also ends when the topic has nothing more for now) and hands each to
    /// `write`; returns when every record was written.
    pub(crate) fn read_in_batches(
        &self,
        name: &str,
        batch: u64,
        mut write: impl FnMut(&[BorrowedMessage<'_>]) -> anyhow::Result<()>,
    ) -> anyhow::Result<Timing> {
        let start = Instant::now();
        let consumer = self.reader(name)?;
        let mut first = None;
        let mut written = 0u64;
        let mut held = Vec::with_capacity(usize::try_from(batch).unwrap_or(1000));
        while written < self.records {
            let polled = consumer.poll(Duration::from_millis(100));
            let idle = polled.is_none();
            if let Some(m) = polled {
                held.push(m?);
            }
            let n = held.len() as u64;
            if n >= batch || (n > 0 && (idle || written + n >= self.records)) {
                write(&held)?;
                first.get_or_insert_with(|| start.elapsed());
                written += n;
                held.clear();
            }
        }
        Ok(Timing {
            elapsed: start.elapsed(),
            first: first.unwrap_or_default(),
            usage: None,
        })
    }

    /// Sluice: `sluice-processor run -f` of a sink Connector with `spec` (credentials in
    /// `credentials`, when it has a Secret); `loaded` answers how many records are in
    /// the target. Returns when all are.
    pub(crate) fn sluice(
        &self,
        name: &str,
        spec: serde_json::Value,
        credentials: Option<&Path>,
        loaded: impl FnMut() -> anyhow::Result<u64>,
    ) -> anyhow::Result<Timing> {
        let manifest = self.dir.join(format!("{name}.json"));
        std::fs::write(
            &manifest,
            serde_json::json!({
                "apiVersion": "sluice.dev/v1alpha1", "kind": "Connector",
                "metadata": {"name": name, "namespace": "bench"},
                "spec": spec,
            })
            .to_string(),
        )?;
        let mut command = Command::new(&self.processor);
        command
            .args(["run", "-f"])
            .arg(&manifest)
            .args(["--bootstrap", &self.bootstrap])
            .env("RUST_LOG", "warn");
        if let Some(dir) = credentials {
            command.env("SLUICE_CREDENTIALS_DIR", dir);
        }
        self.watch(name, command, loaded)
    }

    /// Starts `command` (a sink in a process of its own) and waits until `loaded` says
    /// every record is in the target; then stops it (SIGTERM). Its CPU time and peak
    /// memory are read just before.
    pub(crate) fn watch(
        &self,
        name: &str,
        mut command: Command,
        mut loaded: impl FnMut() -> anyhow::Result<u64>,
    ) -> anyhow::Result<Timing> {
        let ticks = crate::measure::clock_ticks();
        let start = Instant::now();
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let deadline = start + Duration::from_secs(900);
        let mut first = None;
        let timing = loop {
            let n = loaded()?;
            if n > 0 {
                first.get_or_insert_with(|| start.elapsed());
            }
            if n >= self.records {
                let elapsed = start.elapsed();
                let (cpu_seconds, peak_mib) = crate::measure::usage(child.id(), ticks);
                break Timing {
                    elapsed,
                    first: first.unwrap_or_default(),
                    usage: Some((cpu_seconds, peak_mib)),
                };
            }
            if let Some(status) = child.try_wait()? {
                bail!("the {name} sink exited early: {status}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!(
                    "the {name} sink did not load {} records in 15 minutes",
                    self.records
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        child.wait()?;
        Ok(timing)
    }
}

/// Prints a run as it ends, for whoever watches.
pub(crate) fn progress(run: &Run) {
    eprintln!(
        "  {:<34} {:>9.0} records/s ({:>9.0} once running)",
        run.name,
        run.rate(),
        run.running_rate()
    );
}
