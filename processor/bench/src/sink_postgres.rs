//! The PostgreSQL sink against its ceiling: a bare loop that writes each batch with
//! tokio-postgres as the sink does (one `json_populate_recordset` statement per batch,
//! one transaction each) and stores no positions. Sluice runs exactly once (positions
//! stored with the rows), at least once (no positions), and upsert.

use anyhow::{Context as _, bail};
use rdkafka::message::Message;

use crate::sinks::{Bench, Run, Section, progress};

/// Records per batch, for the sink and the ceiling alike.
const BATCH: u64 = 1000;

/// The environment's database as libpq keys, for the sink's credentials.
fn credentials(url: &str) -> anyhow::Result<Vec<(&'static str, String)>> {
    let config: tokio_postgres::Config = url.parse().context("DATABASE_URL")?;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => bail!("DATABASE_URL names no TCP host"),
    };
    let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
    Ok(vec![
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
    ])
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

async fn rows(pg: &tokio_postgres::Client, table: &str) -> anyhow::Result<u64> {
    let n: i64 = pg
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await?
        .get(0);
    Ok(u64::try_from(n).unwrap_or(0))
}

/// The statement the sink runs for a batch of `mode`.
fn statement(table: &str, mode: &str) -> String {
    let columns = "\"orderId\", region, total, items";
    let insert = format!(
        "INSERT INTO {table} ({columns}) SELECT {columns} FROM json_populate_recordset(null::{table}, $1::text::json)"
    );
    if mode == "upsert" {
        format!(
            "{insert} ON CONFLICT (\"orderId\") DO UPDATE SET region = excluded.region, total = excluded.total, items = excluded.items"
        )
    } else {
        insert
    }
}

/// The comparison, as a report section.
pub(crate) fn bench(bench: &Bench) -> anyhow::Result<Section> {
    let url = crate::e2e_var("DATABASE_URL")?;
    let dir = bench.dir.join("postgres-credentials");
    std::fs::create_dir_all(&dir)?;
    let database = credentials(&url)?;
    for (k, v) in &database {
        std::fs::write(dir.join(k), v)?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let pg = runtime.block_on(connect(&url))?;
    // The peer reads the same orders in Kafka Connect's JSON envelope.
    let peer = if bench.peer {
        let plugins = crate::sink_peer::plugin()?;
        let topic = format!("{}-enveloped", bench.topic);
        crate::sink_peer::produce_enveloped(bench, &topic)?;
        Some((plugins, topic))
    } else {
        None
    };
    let mut runs = Vec::new();
    for (name, mode, who) in [
        ("ceiling insert", "insert", Who::Ceiling),
        (
            "sluice insert exactlyOnce",
            "insert",
            Who::Sluice("exactlyOnce"),
        ),
        (
            "sluice insert atLeastOnce",
            "insert",
            Who::Sluice("atLeastOnce"),
        ),
        ("debezium jdbc insert", "insert", Who::Peer),
        ("ceiling upsert", "upsert", Who::Ceiling),
        (
            "sluice upsert exactlyOnce",
            "upsert",
            Who::Sluice("exactlyOnce"),
        ),
        (
            "sluice upsert atLeastOnce",
            "upsert",
            Who::Sluice("atLeastOnce"),
        ),
        ("debezium jdbc upsert", "upsert", Who::Peer),
    ] {
        if who == Who::Peer && peer.is_none() {
            continue;
        }
        let table = format!("{}_r{}_{}", bench.run, bench.round, runs.len());
        runtime.block_on(pg.batch_execute(&format!(
            "CREATE TABLE {table} (\"orderId\" text PRIMARY KEY, region text, total numeric, items integer)"
        )))?;
        let timing = match who {
            Who::Ceiling => {
                let writer = runtime.block_on(connect(&url))?;
                let sql = statement(&table, mode);
                let mut json = String::new();
                bench.read_in_batches(&table, BATCH, |batch| {
                    json.clear();
                    json.push('[');
                    for (i, m) in batch.iter().enumerate() {
                        if i > 0 {
                            json.push(',');
                        }
                        json.push_str(std::str::from_utf8(m.payload().unwrap_or(b"null"))?);
                    }
                    json.push(']');
                    runtime.block_on(async {
                        writer.batch_execute("BEGIN").await?;
                        writer.execute(&sql, &[&json]).await?;
                        writer.batch_execute("COMMIT").await
                    })?;
                    Ok(())
                })?
            }
            Who::Peer => {
                let Some((plugins, topic)) = &peer else {
                    continue;
                };
                crate::sink_peer::run(
                    bench,
                    plugins,
                    topic,
                    &table,
                    mode,
                    BATCH,
                    &database,
                    || runtime.block_on(rows(&pg, &table)),
                )?
            }
            Who::Sluice(delivery) => {
                let mut postgres = serde_json::json!({"table": table, "mode": mode,
                                                      "batch": {"records": BATCH, "interval": "100ms"}});
                if mode == "upsert" {
                    postgres["key"] = serde_json::json!(["orderId"]);
                }
                // Loaded as far as the group committed (after the database); the rows
                // are counted once at the end.
                let group = sluice_crds::contract::connector_group_id("bench", &table);
                let timing = bench.sluice(
                    &table,
                    serde_json::json!({"type": "sink", "topics": [bench.topic], "delivery": delivery,
                                       "postgres": postgres}),
                    Some(&dir),
                    bench.committed(&group)?,
                )?;
                let loaded = runtime.block_on(rows(&pg, &table))?;
                if loaded != bench.records {
                    bail!("{name}: {loaded} rows for {} records", bench.records);
                }
                timing
            }
        };
        let run = Run {
            name: name.to_string(),
            timing,
            records: bench.records,
        };
        progress(&run);
        runs.push(run);
        runtime.block_on(pg.batch_execute(&format!("DROP TABLE {table}")))?;
    }
    let notes = per_cpu_second(&runs);
    Ok(Section {
        title: format!(
            "PostgreSQL sink, {} records, batches of {BATCH}:",
            bench.records
        ),
        runs,
        ratios: vec![
            (
                "insert exactlyOnce / ceiling",
                "sluice insert exactlyOnce",
                "ceiling insert",
            ),
            (
                "upsert exactlyOnce / ceiling",
                "sluice upsert exactlyOnce",
                "ceiling upsert",
            ),
            (
                "exactlyOnce / atLeastOnce",
                "sluice insert exactlyOnce",
                "sluice insert atLeastOnce",
            ),
            (
                "insert: sluice / debezium jdbc",
                "sluice insert exactlyOnce",
                "debezium jdbc insert",
            ),
            (
                "upsert: sluice / debezium jdbc",
                "sluice upsert atLeastOnce",
                "debezium jdbc upsert",
            ),
        ],
        notes,
    })
}

/// Who writes the table in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    /// The bare loop in this process.
    Ceiling,
    /// The sink, with this delivery.
    Sluice(&'static str),
    /// Debezium's JDBC sink in a Connect worker.
    Peer,
}

/// Records per CPU second of Sluice against the peer, in each mode.
fn per_cpu_second(runs: &[Run]) -> String {
    let per_cpu = |name: &str| {
        runs.iter()
            .find(|r| r.name == name)
            .and_then(|r| r.timing.usage.map(|(cpu, _)| r.records as f64 / cpu))
    };
    let mut out = String::new();
    for (label, a, b) in [
        (
            "insert, records per CPU second",
            "sluice insert exactlyOnce",
            "debezium jdbc insert",
        ),
        (
            "upsert, records per CPU second",
            "sluice upsert atLeastOnce",
            "debezium jdbc upsert",
        ),
    ] {
        if let (Some(a), Some(b)) = (per_cpu(a), per_cpu(b)) {
            out.push_str(&format!("  {label:<34} {a:.0} / {b:.0} = {:.2}\n", a / b));
        }
    }
    out
}
