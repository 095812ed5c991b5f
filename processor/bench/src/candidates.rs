//! The candidates: the bare loop, Sluice topologies run by `sluice-processor run`, and
//! the Kafka Streams peer built with Maven.

use super::*;

/// What a Sluice candidate runs.
#[derive(Clone, Copy)]
pub(crate) enum Topology {
    /// No steps, `format: bytes`: Sluice's loop alone.
    Copy,
    /// Filter, then map.
    FilterMap,
    /// Filter, then the per-region sum with this emit mode.
    Aggregate(&'static str),
}

pub(crate) fn sluice_manifest(
    dir: &Path,
    name: &str,
    input: &str,
    output: &str,
    topology: Topology,
) -> anyhow::Result<PathBuf> {
    let (steps, format) = match topology {
        Topology::Copy => (serde_json::json!([]), "bytes"),
        Topology::FilterMap => (
            serde_json::json!([
                {"name": "positive", "filter": "value.total > 0.0"},
                {"name": "shape", "map": {"set": {"totalCents": "value.total * 100.0"}, "drop": ["orderId"]}}
            ]),
            "json",
        ),
        Topology::Aggregate(emit) => (
            serde_json::json!([
                {"name": "positive", "filter": "value.total > 0.0"},
                {"name": "per-region", "aggregate": {"groupBy": {"region": "value.region"},
                    "aggregations": [{"name": "total", "op": "sum", "of": "value.total"}],
                    "emit": emit}}
            ]),
            "json",
        ),
    };
    let doc = serde_json::json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "Pipeline",
        "metadata": {"name": name, "namespace": "bench"},
        "spec": {"inputs": [input], "steps": steps, "format": format,
                 "outputs": [{"topic": output}],
                 "delivery": "atLeastOnce", "commitInterval": "100ms"}
    });
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(&doc)?)?;
    Ok(path)
}

pub(crate) fn streams_jar() -> Option<PathBuf> {
    let project = package_dir().join("kafka-streams");
    let jar = project.join("target/streams-bench.jar");
    let built = |jar: &Path| std::fs::metadata(jar).and_then(|m| m.modified()).ok();
    let sources = [
        project.join("pom.xml"),
        project.join("src/main/java/dev/sluice/bench/StreamsBench.java"),
    ];
    let newest_source = sources
        .iter()
        .filter_map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .max();
    if built(&jar).is_some_and(|b| newest_source.is_none_or(|s| s <= b)) {
        return Some(jar);
    }
    eprintln!("building the Kafka Streams peer with Maven (first run downloads kafka-streams)...");
    let ok = Command::new("mvn")
        .args(["-q", "-B", "package", "-DskipTests"])
        .current_dir(&project)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok && jar.exists() {
        Some(jar)
    } else {
        eprintln!("Kafka Streams peer not built (is Maven installed?): skipping (d)");
        None
    }
}

/// The bare loop (a), writing to `{run}-{tag}-out`.
pub(crate) fn bare_candidate(
    exe: &Path,
    args: &Args,
    input: &str,
    run: &str,
    tag: &str,
) -> (Candidate, String) {
    let group = format!("{run}-{tag}");
    let output = format!("{run}-{tag}-out");
    let mut cmd = Command::new(exe);
    cmd.args(["bare", &args.bootstrap, input, &output, &group]);
    (
        Candidate {
            name: "a bare rdkafka loop",
            group,
            command: cmd,
        },
        output,
    )
}

/// A Sluice pipeline (`tag`, what it runs, and its name), run with
/// `sluice-processor run`, writing to `{run}-{tag}-out`.
pub(crate) fn sluice_candidate(
    processor: &Path,
    args: &Args,
    dir: &Path,
    input: &str,
    run: &str,
    (tag, topology, name): (&str, Topology, &'static str),
) -> anyhow::Result<(Candidate, String)> {
    let pname = format!("{run}-{tag}");
    let output = format!("{run}-{tag}-out");
    let manifest = sluice_manifest(dir, &pname, input, &output, topology)?;
    let mut cmd = Command::new(processor);
    cmd.arg("run")
        .arg("-f")
        .arg(&manifest)
        .args(["--bootstrap", &args.bootstrap])
        .env("RUST_LOG", "warn");
    if let Some(k) = &args.kafka_config {
        cmd.args(["--kafka-config", k]);
    }
    Ok((
        Candidate {
            name,
            group: format!("sluice-bench-{pname}"),
            command: cmd,
        },
        output,
    ))
}

/// Whether `--only` (candidate letters, comma-separated) selects the candidate `name`.
pub(crate) fn selected(only: &str, name: &str) -> bool {
    let letter = name.split(' ').next().unwrap_or_default();
    only.split(',').any(|o| o.trim() == letter)
}
