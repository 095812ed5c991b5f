//! The PostgreSQL sink's peer: Debezium's JDBC sink connector, run by a standalone Kafka
//! Connect worker of its own (so its CPU time and memory are its own), writing the same
//! orders into a table of the same shape.
//!
//! The JDBC sink needs records with a schema: its topic holds the same orders in
//! Kafka Connect's JSON envelope (`{"schema": ..., "payload": ...}`, JsonConverter with
//! schemas on), where Sluice reads them as plain JSON.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::producer::{Producer, ThreadedProducer};

use crate::kafka::{client, create_topic, order, send};
use crate::sinks::{Bench, Timing};

/// How often the worker is asked whether the connector's task failed.
const STATUS_EVERY: Duration = Duration::from_secs(2);

/// The JDBC sink of the 3.6 line that Maven Central serves (the environment's Debezium
/// is 3.6.1.Final; its JDBC sink stops at 3.6.0.Final there).
const VERSION: &str = "3.6.0.Final";

/// The connector's jars with what they need (not Kafka's own), resolved with Maven into
/// the cache once per version (e2e/toolchain/pom.xml, profile `debezium-jdbc`).
pub(crate) fn plugin() -> anyhow::Result<PathBuf> {
    let cache = std::env::var_os("SLUICE_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/sluice")))
        .context("no HOME for the cache")?;
    let dir = cache.join(format!("debezium-jdbc-{VERSION}"));
    let plugin = dir.join("plugins/debezium-jdbc");
    if dir.join(".complete").exists() {
        return Ok(dir.join("plugins"));
    }
    eprintln!(
        "resolving Debezium's JDBC sink {VERSION} with Maven into {}",
        dir.display()
    );
    let pom = crate::package_dir().join("../../e2e/toolchain/pom.xml");
    let ok = Command::new("mvn")
        .args(["-q", "-B", "-f"])
        .arg(&pom)
        .arg(format!("-Ddebezium.jdbc.version={VERSION}"))
        .args(["-Pdebezium-jdbc", "dependency:copy-dependencies"])
        .arg(format!("-DoutputDirectory={}", plugin.display()))
        // Kafka's, slf4j's and Jackson's classes come from the worker, as in Debezium's
        // plugin archive: a second Jackson in the plugin fails the worker's Jackson
        // modules ("BlackbirdModule not a subtype") and kills the task.
        .args([
            "-DincludeScope=runtime",
            "-DexcludeGroupIds=org.apache.kafka,org.slf4j,com.fasterxml.jackson.core",
        ])
        .status()?
        .success();
    if !ok {
        bail!("Maven could not resolve Debezium's JDBC sink {VERSION}");
    }
    std::fs::write(dir.join(".complete"), "")?;
    Ok(dir.join("plugins"))
}

/// Order `i` in Kafka Connect's JSON envelope.
fn enveloped(i: u64) -> String {
    format!(
        r#"{{"schema":{{"type":"struct","optional":false,"fields":[{{"field":"orderId","type":"string","optional":false}},{{"field":"region","type":"string","optional":true}},{{"field":"total","type":"double","optional":true}},{{"field":"items","type":"int32","optional":true}}]}},"payload":{}}}"#,
        order(i)
    )
}

/// The bench's orders again, enveloped, into `topic`.
pub(crate) fn produce_enveloped(bench: &Bench, topic: &str) -> anyhow::Result<()> {
    create_topic(&bench.bootstrap, topic, bench.partitions)?;
    let producer: ThreadedProducer<_> = client(&bench.bootstrap)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .create()?;
    for i in 0..bench.records {
        send(&producer, topic, &format!("o-{i}"), &enveloped(i))?;
    }
    producer.flush(Duration::from_secs(120))?;
    Ok(())
}

/// A standalone worker running the JDBC sink from `topic` into `table` (`mode`: insert or
/// upsert by orderId), one task, batches of `batch`; returns when every record is in.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    bench: &Bench,
    plugins: &Path,
    topic: &str,
    table: &str,
    mode: &str,
    batch: u64,
    database: &[(&'static str, String)],
    loaded: impl FnMut() -> anyhow::Result<u64>,
) -> anyhow::Result<Timing> {
    let dir = bench.dir.join(format!("connect-{table}"));
    std::fs::create_dir_all(&dir)?;
    let key = |k: &str| {
        database
            .iter()
            .find(|(name, _)| *name == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    };
    let (host, port, password) = (key("host"), key("port"), key("password"));
    let rest = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    std::fs::write(
        dir.join("worker.properties"),
        format!(
            "bootstrap.servers={bootstrap}\n\
             key.converter=org.apache.kafka.connect.storage.StringConverter\n\
             value.converter=org.apache.kafka.connect.json.JsonConverter\n\
             value.converter.schemas.enable=true\n\
             offset.storage.file.filename={offsets}\n\
             offset.flush.interval.ms=1000\n\
             listeners=http://127.0.0.1:{rest}\n\
             plugin.path={plugins}\n\
             plugin.discovery=hybrid_warn\n\
             consumer.max.poll.records={batch}\n\
             consumer.auto.offset.reset=earliest\n",
            bootstrap = bench.bootstrap,
            offsets = dir.join("offsets").display(),
            plugins = plugins.display(),
        ),
    )?;
    let keys = if mode == "upsert" {
        "primary.key.mode=record_value\nprimary.key.fields=orderId\n"
    } else {
        "primary.key.mode=none\n"
    };
    std::fs::write(
        dir.join("connector.properties"),
        format!(
            "name={table}\n\
             connector.class=io.debezium.connector.jdbc.JdbcSinkConnector\n\
             tasks.max=1\n\
             topics={topic}\n\
             connection.url=jdbc:postgresql://{host}:{port}/{db}\n\
             connection.username={user}\n\
             connection.password={password}\n\
             insert.mode={mode}\n\
             {keys}\
             delete.enabled=false\n\
             schema.evolution=none\n\
             quote.identifiers=true\n\
             collection.name.format={table}\n\
             batch.size={batch}\n",
            db = key("dbname"),
            user = key("user"),
        ),
    )?;
    std::fs::write(
        dir.join("log4j2.properties"),
        "status = warn\nappender.out.type = Console\nappender.out.name = out\n\
         appender.out.target = SYSTEM_ERR\nappender.out.layout.type = PatternLayout\n\
         appender.out.layout.pattern = [%d] %p %m (%c)%n\n\
         rootLogger.level = warn\nrootLogger.appenderRef.out.ref = out\n",
    )?;
    let jars = crate::e2e_var("KAFKA_JARS")?;
    let mut command = Command::new("java");
    command
        .arg("-Xmx1g")
        .arg(format!(
            "-Dlog4j2.configurationFile={}",
            dir.join("log4j2.properties").display()
        ))
        .arg("-cp")
        .arg(format!("{jars}/connect/*"))
        .arg("org.apache.kafka.connect.cli.ConnectStandalone")
        .arg(dir.join("worker.properties"))
        .arg(dir.join("connector.properties"));
    // A task that fails stays failed in a running worker: stop at once with its trace.
    let status = format!("http://127.0.0.1:{rest}/connectors/{table}/status");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = reqwest::Client::new();
    let mut asked = Instant::now();
    let mut loaded = loaded;
    bench.watch(&format!("debezium jdbc {mode}"), command, move || {
        if asked.elapsed() >= STATUS_EVERY {
            asked = Instant::now();
            let answer = runtime.block_on(async { client.get(&status).send().await?.text().await });
            if let Ok(body) = answer
                && body.contains("\"FAILED\"")
            {
                bail!("Debezium's JDBC sink failed: {body}");
            }
        }
        loaded()
    })
}
