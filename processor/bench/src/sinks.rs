//! `sluice-bench sinks`: the PostgreSQL sink against its ceiling, on one broker, one
//! database and one data set.
//!
//! The ceiling is a bare loop in this process: it reads the same topic with rdkafka (no
//! group, every partition from the start) and writes the same batches with
//! tokio-postgres as the sink does (one `json_populate_recordset` statement per batch,
//! one transaction each), storing no positions. Sluice is `sluice-processor run -f` of a
//! postgres sink Connector: exactly once (positions stored with the rows), at least once
//! (no positions), and upsert. Each reports records/s from its start until every record
//! is in the table (Sluice: its start includes joining the group).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka::{client, create_topic, produce};

/// Records per batch, for the sink and the ceiling alike.
const BATCH: u64 = 1000;

/// One measured run.
struct Run {
    name: &'static str,
    records_per_second: f64,
}

/// The environment's database as libpq keys.
struct Database {
    url: String,
    keys: Vec<(&'static str, String)>,
}

fn database(url: &str) -> anyhow::Result<Database> {
    let config: tokio_postgres::Config = url.parse().context("DATABASE_URL")?;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => bail!("DATABASE_URL names no TCP host"),
    };
    let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
    Ok(Database {
        url: url.to_string(),
        keys: vec![
            ("host", host),
            (
                "port",
                config.get_ports().first().unwrap_or(&5432).to_string(),
            ),
            (
                "dbname",
                config.get_dbname().unwrap_or("postgres").to_string(),
            ),
            ("user", config.get_user().unwrap_or("postgres").to_string()),
            ("password", text(config.get_password()).unwrap_or_default()),
            ("sslmode", "disable".to_string()),
        ],
    })
}

/// Runs the comparison: `records` orders on `partitions` partitions.
pub fn sinks(
    bootstrap: &str,
    database_url: &str,
    processor: &Path,
    records: u64,
    partitions: i32,
) -> anyhow::Result<()> {
    let db = database(database_url)?;
    let run = format!("sinkbench{}", std::process::id());
    let topic = format!("{run}-orders");
    let dir = std::env::temp_dir().join(&run);
    let credentials = dir.join("credentials");
    std::fs::create_dir_all(&credentials)?;
    for (k, v) in &db.keys {
        std::fs::write(credentials.join(k), v)?;
    }
    eprintln!("sluice-bench sinks: {records} orders on {partitions} partitions ({topic})");
    create_topic(bootstrap, &topic, partitions)?;
    produce(bootstrap, &topic, 0, records, None, None)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let pg = runtime.block_on(connect(&db.url))?;
    let mut runs = Vec::new();
    for (name, mode, delivery) in [
        ("ceiling insert", "insert", None),
        ("sluice insert exactlyOnce", "insert", Some("exactlyOnce")),
        ("sluice insert atLeastOnce", "insert", Some("atLeastOnce")),
        ("ceiling upsert", "upsert", None),
        ("sluice upsert exactlyOnce", "upsert", Some("exactlyOnce")),
    ] {
        let table = format!("{run}_{}", runs.len());
        runtime.block_on(pg.batch_execute(&format!(
            "CREATE TABLE {table} (\"orderId\" text PRIMARY KEY, region text, total numeric, items integer)"
        )))?;
        let elapsed = match delivery {
            None => runtime.block_on(ceiling(
                bootstrap, &topic, partitions, &db.url, &table, mode, records,
            ))?,
            Some(delivery) => sluice(
                processor,
                bootstrap,
                &dir,
                &credentials,
                &topic,
                &table,
                mode,
                delivery,
                || runtime.block_on(rows(&pg, &table)),
                records,
            )?,
        };
        let rps = records as f64 / elapsed.as_secs_f64();
        eprintln!("  {name:<28} {rps:>10.0} records/s");
        runs.push(Run {
            name,
            records_per_second: rps,
        });
        runtime.block_on(pg.batch_execute(&format!("DROP TABLE {table}")))?;
    }
    let rate = |n: &str| {
        runs.iter()
            .find(|r| r.name == n)
            .map_or(f64::NAN, |r| r.records_per_second)
    };
    println!("PostgreSQL sink, {records} records, batches of {BATCH}:");
    for r in &runs {
        println!("  {:<28} {:>10.0} records/s", r.name, r.records_per_second);
    }
    println!(
        "  insert exactlyOnce / ceiling  {:.2}",
        rate("sluice insert exactlyOnce") / rate("ceiling insert")
    );
    println!(
        "  upsert exactlyOnce / ceiling  {:.2}",
        rate("sluice upsert exactlyOnce") / rate("ceiling upsert")
    );
    println!(
        "  exactlyOnce / atLeastOnce     {:.2}",
        rate("sluice insert exactlyOnce") / rate("sluice insert atLeastOnce")
    );
    Ok(())
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

async fn rows(pg: &tokio_postgres::Client, table: &str) -> anyhow::Result<i64> {
    Ok(pg
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await?
        .get(0))
}

/// The statement the sink runs for a batch of `mode`.
fn statement(table: &str, mode: &str) -> String {
    let insert = format!(
        "INSERT INTO {table} SELECT * FROM json_populate_recordset(null::{table}, $1::text::json)"
    );
    if mode == "upsert" {
        format!(
            "{insert} ON CONFLICT (\"orderId\") DO UPDATE SET region = excluded.region, total = excluded.total, items = excluded.items"
        )
    } else {
        insert
    }
}

/// The ceiling: reads every partition from the start and writes each batch in a
/// transaction; returns the time until `records` rows are in.
async fn ceiling(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    url: &str,
    table: &str,
    mode: &str,
    records: u64,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut pg = connect(url).await?;
    let consumer: BaseConsumer = client(bootstrap)
        .set("group.id", format!("{table}-ceiling"))
        .set("enable.auto.commit", "false")
        .set("fetch.queue.backoff.ms", "20")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let sql = statement(table, mode);
    let mut written = 0u64;
    let mut batch = String::from("[");
    let mut in_batch = 0;
    while written < records {
        let polled = consumer.poll(Duration::from_millis(100));
        let idle = polled.is_none();
        if let Some(m) = polled {
            let m = m?;
            if in_batch > 0 {
                batch.push(',');
            }
            batch.push_str(std::str::from_utf8(m.payload().unwrap_or(b"null"))?);
            in_batch += 1;
        }
        let last = written + in_batch >= records;
        if in_batch >= BATCH || (in_batch > 0 && (last || idle)) {
            batch.push(']');
            let tx = pg.transaction().await?;
            tx.execute(&sql, &[&batch]).await?;
            tx.commit().await?;
            written += in_batch;
            in_batch = 0;
            batch.clear();
            batch.push('[');
        }
    }
    Ok(start.elapsed())
}

/// Sluice: `sluice-processor run -f` of a postgres sink; returns the time until `done`
/// rows are in.
#[allow(clippy::too_many_arguments)]
fn sluice(
    processor: &Path,
    bootstrap: &str,
    dir: &Path,
    credentials: &Path,
    topic: &str,
    table: &str,
    mode: &str,
    delivery: &str,
    rows: impl Fn() -> anyhow::Result<i64>,
    done: u64,
) -> anyhow::Result<Duration> {
    let mut postgres = serde_json::json!({"table": table, "mode": mode,
                                          "batch": {"records": BATCH, "interval": "100ms"}});
    if mode == "upsert" {
        postgres["key"] = serde_json::json!(["orderId"]);
    }
    let manifest: PathBuf = dir.join(format!("{table}.json"));
    std::fs::write(
        &manifest,
        serde_json::json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "Connector",
            "metadata": {"name": table, "namespace": "bench"},
            "spec": {"type": "sink", "topics": [topic], "delivery": delivery, "postgres": postgres}
        })
        .to_string(),
    )?;
    let start = Instant::now();
    let mut child = Command::new(processor)
        .args(["run", "-f"])
        .arg(&manifest)
        .args(["--bootstrap", bootstrap])
        .env("SLUICE_CREDENTIALS_DIR", credentials)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let deadline = start + Duration::from_secs(600);
    let elapsed = loop {
        if u64::try_from(rows()?).is_ok_and(|n| n >= done) {
            break start.elapsed();
        }
        if let Some(status) = child.try_wait()? {
            bail!("the sink exited early: {status}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the sink did not load {done} rows in 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait()?;
    Ok(elapsed)
}
