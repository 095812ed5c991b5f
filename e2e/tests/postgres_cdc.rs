//! The native PostgreSQL change stream against the environment's PostgreSQL (logical
//! replication on) and broker: the initial snapshot and the changes as Debezium's events,
//! exactly once across SIGKILLs mid-stream; a column added while it runs; the slot
//! advancing while the table is idle; a table without a primary key refused with what to
//! do.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::{Value, json};
use sluice_e2e::cluster::unique;
use sluice_e2e::env::TestEnv;
use sluice_e2e::kafka::{self, Read};
use sluice_e2e::processor::{Processor, create_topics, http_get, log_dir, write_manifest};
use sluice_e2e::sink::{SinkProcess, connector_manifest};

const WAIT: Duration = Duration::from_secs(120);

/// A captured table and what the test needs around it.
struct Captured {
    bootstrap: String,
    tag: String,
    table: String,
    topic: String,
    pg: tokio_postgres::Client,
    credentials: PathBuf,
    manifest: PathBuf,
}

impl Captured {
    /// A table `orders` (id, region, amount) with `rows` rows, and a Connector capturing it.
    async fn new(prefix: &str, rows: i64) -> Captured {
        let env = TestEnv::require();
        let bootstrap = env.var("KAFKA_BOOTSTRAP");
        let tag = unique(prefix);
        let table = tag.replace('-', "_");
        let (pg, connection) =
            tokio_postgres::connect(&env.var("DATABASE_URL"), tokio_postgres::NoTls)
                .await
                .unwrap();
        tokio::spawn(connection);
        let credentials = log_dir().join(format!("{tag}-credentials"));
        std::fs::create_dir_all(&credentials).unwrap();
        for (key, value) in env.database_keys() {
            std::fs::write(credentials.join(key), format!("{value}\n")).unwrap();
        }
        pg.batch_execute(&format!(
            "CREATE TABLE {table} (id integer PRIMARY KEY, region text NOT NULL, amount numeric, \
             created date DEFAULT DATE '2026-12-08');
             INSERT INTO {table} (id, region, amount) SELECT i, 'r' || (i % 3), i FROM generate_series(1, {rows}) i"
        ))
        .await
        .unwrap();
        let manifest = connector_manifest(
            &tag,
            json!({
                "type": "source",
                "secretRef": {"name": "db"},
                "postgresCdc": {
                    "tables": [format!("public.{table}")],
                    "slot": table,
                    "topicPrefix": tag,
                    "heartbeat": "1s",
                },
            }),
        );
        Captured {
            topic: format!("{tag}.public.{table}"),
            bootstrap,
            tag,
            table,
            pg,
            credentials,
            manifest,
        }
    }

    fn start(&self, round: &str) -> SinkProcess {
        SinkProcess::start_serving(
            &self.bootstrap,
            &self.manifest,
            &self.credentials,
            &format!("{}-{round}", self.tag),
            true,
        )
    }

    /// The topic's end offset (transaction markers count): how far the source got.
    fn end(&self) -> i64 {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .unwrap();
        consumer
            .fetch_watermarks(&self.topic, 0, Duration::from_secs(10))
            .unwrap()
            .1
    }

    fn read(&self) -> Vec<Read> {
        kafka::read_all(&self.bootstrap, &self.topic, Duration::from_secs(2), WAIT)
            .unwrap_or_default()
    }

    /// Reads the topic until it holds `count` records; fails with the source's log.
    fn read_until(&self, count: usize, source: &SinkProcess) -> Vec<Read> {
        let start = Instant::now();
        loop {
            let records = self.read();
            if records.len() >= count {
                return records;
            }
            assert!(
                start.elapsed() < WAIT,
                "{} has {} of {count} records; source log:\n{}",
                self.topic,
                records.len(),
                source.log_text()
            );
        }
    }

    /// The slot's confirmed position, as a number.
    async fn confirmed(&self) -> i64 {
        self.pg
            .query_one(
                "SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::int8 FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.table],
            )
            .await
            .unwrap()
            .get::<_, Option<i64>>(0)
            .unwrap_or_default()
    }

    /// Waits until the slot is confirmed at `lsn` or past it.
    async fn wait_confirmed(&self, lsn: i64, source: &SinkProcess) {
        let start = Instant::now();
        while self.confirmed().await < lsn {
            assert!(
                start.elapsed() < WAIT,
                "the slot stayed at {} below {lsn}: {}",
                self.confirmed().await,
                source.log_text()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The server's WAL position now.
    async fn wal_end(&self) -> i64 {
        self.pg
            .query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8", &[])
            .await
            .unwrap()
            .get(0)
    }

    async fn drop_slot(&self) {
        let _ = self
            .pg
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
                &[&self.table],
            )
            .await;
    }
}

/// The values of change events (tombstones left out), parsed.
fn events(records: &[Read]) -> Vec<Value> {
    records
        .iter()
        .filter_map(|r| r.value.as_deref())
        .map(|v| serde_json::from_str(v).unwrap())
        .collect()
}

/// One line per event: `op id amount`, so a lost or repeated change shows.
fn changes(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            let row = if e["op"] == "d" {
                &e["before"]
            } else {
                &e["after"]
            };
            let amount = row["amount"]
                .as_f64()
                .map_or("null".to_string(), |a| a.to_string());
            format!("{} {} {amount}", e["op"].as_str().unwrap(), row["id"])
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_then_every_change_arrive_once_as_debezium_events_across_sigkills() {
    let c = Captured::new("cdc-exact", 200).await;
    let mut source = c.start("0");
    let snapshot = c.read_until(200, &source);
    let read = events(&snapshot);
    assert_eq!(read.len(), 200, "one read event per row");
    assert!(read.iter().all(|e| e["op"] == "r"), "{:?}", read[0]);
    assert_eq!(read[199]["source"]["snapshot"], "last");
    assert_eq!(read[0]["source"]["snapshot"], "true");
    let first = read.iter().find(|e| e["after"]["id"] == 3).unwrap();
    assert_eq!(
        first["after"],
        json!({"id": 3, "region": "r0", "amount": 3.0, "created": 20_795})
    );
    assert_eq!(first["source"]["table"], c.table.as_str());
    assert_eq!(
        snapshot
            .iter()
            .find(|r| r.value.as_deref().is_some_and(|v| v.contains("\"id\":3,")))
            .and_then(|r| r.key.clone()),
        Some("{\"id\":3}".to_string())
    );

    // Changes in many small transactions, each with a unique amount, while the source is
    // killed twice and started again.
    let table = c.table.clone();
    let url = TestEnv::require().var("DATABASE_URL");
    let writer = tokio::spawn(async move {
        let (pg, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let mut expected = Vec::new();
        for i in 0..300_i64 {
            let id = 1000 + i;
            let amount = 10_000 + i;
            pg.batch_execute(&format!(
                "BEGIN; INSERT INTO {table} (id, region, amount) VALUES ({id}, 'r{}', {amount}); \
                 UPDATE {table} SET amount = {} WHERE id = {}; {} COMMIT",
                i % 3,
                amount + 100_000,
                i % 200 + 1,
                if i % 10 == 0 {
                    format!("DELETE FROM {table} WHERE id = {};", 1000 + i / 2)
                } else {
                    String::new()
                }
            ))
            .await
            .unwrap();
            expected.push(format!("c {id} {}", amount as f64));
            expected.push(format!("u {} {}", i % 200 + 1, (amount + 100_000) as f64));
            if i % 10 == 0 {
                let gone = 1000 + i / 2;
                // The row deleted holds the amount of its insert, or of nothing (null) when
                // the delete's old row carries only the key.
                expected.push(format!("d {gone} null"));
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        expected
    });
    for round in 1..=2 {
        let before = c.end();
        let start = Instant::now();
        while c.end() <= before + 30 {
            assert!(start.elapsed() < WAIT, "no progress: {}", source.log_text());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            !writer.is_finished(),
            "the kill came after the changes ended"
        );
        source.signal("-KILL");
        source = c.start(&round.to_string());
    }
    let expected = writer.await.unwrap();
    let deletes = expected.iter().filter(|e| e.starts_with("d ")).count();
    let records = c.read_until(200 + expected.len() + deletes, &source);
    let streamed: Vec<String> = changes(&events(&records)[200..]);
    assert_eq!(
        streamed, expected,
        "each change exactly once, in commit order"
    );
    let tombstones = records.iter().filter(|r| r.value.is_none()).count();
    assert_eq!(tombstones, deletes, "a tombstone after each delete");
    for (i, r) in records.iter().enumerate() {
        if r.value.is_none() {
            let delete: Value =
                serde_json::from_str(records[i - 1].value.as_deref().unwrap()).unwrap();
            assert_eq!(delete["op"], "d");
            assert_eq!(
                r.key,
                records[i - 1].key,
                "the tombstone has the delete's key"
            );
        }
    }

    // Kafka holds everything, so the slot is confirmed past the last change.
    let end = c.wal_end().await;
    c.wait_confirmed(end, &source).await;
    source.signal("-TERM");
    assert!(
        source.log_text().contains("stopped cleanly"),
        "{}",
        source.log_text()
    );
    c.drop_slot().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_added_while_running_is_in_the_next_events_and_an_idle_slot_advances() {
    let c = Captured::new("cdc-alter", 3).await;
    let mut source = c.start("0");
    c.read_until(3, &source);
    c.pg.batch_execute(&format!(
        "ALTER TABLE {t} ADD COLUMN note text; INSERT INTO {t} (id, region, amount, note) VALUES (10, 'r1', 5, 'gift')",
        t = c.table
    ))
    .await
    .unwrap();
    let records = c.read_until(4, &source);
    let added = events(&records);
    assert_eq!(added[3]["op"], "c");
    assert_eq!(added[3]["after"]["note"], "gift");
    assert_eq!(added[3]["after"]["amount"], 5.0);

    // A new primary key: as Debezium, a delete of the old key with its tombstone, then a
    // create of the new one.
    c.pg.batch_execute(&format!("UPDATE {} SET id = 11 WHERE id = 10", c.table))
        .await
        .unwrap();
    let records = c.read_until(7, &source);
    let rekeyed: Vec<(Option<String>, Option<String>)> = records[4..]
        .iter()
        .map(|r| {
            let op = r.value.as_deref().map(|v| {
                let v: Value = serde_json::from_str(v).unwrap();
                v["op"].as_str().unwrap().to_string()
            });
            (r.key.clone(), op)
        })
        .collect();
    assert_eq!(
        rekeyed,
        [
            (Some("{\"id\":10}".to_string()), Some("d".to_string())),
            (Some("{\"id\":10}".to_string()), None),
            (Some("{\"id\":11}".to_string()), Some("c".to_string())),
        ]
    );

    // WAL written elsewhere: the captured table is idle, and its slot still advances.
    let other = format!("{}_other", c.table);
    c.pg.batch_execute(&format!(
        "CREATE TABLE {other} (n int); INSERT INTO {other} SELECT generate_series(1, 1000)"
    ))
    .await
    .unwrap();
    let end = c.wal_end().await;
    c.wait_confirmed(end, &source).await;
    assert_eq!(c.read().len(), 7, "nothing written for the other table");
    // The metrics show the slot's confirmed LSN and how much WAL it holds back.
    let confirmed = c.confirmed().await;
    let metric = |text: &str, name: &str| -> Option<i64> {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    let start = Instant::now();
    loop {
        let (_, text) = http_get(source.served(), "/metrics").expect("metrics");
        let lsn = metric(&text, "sluice_cdc_confirmed_lsn{");
        let lag = metric(&text, "sluice_cdc_lag_bytes{");
        if lsn.is_some_and(|l| l >= confirmed) && lag.is_some_and(|l| l >= 0) {
            break;
        }
        assert!(start.elapsed() < WAIT, "no CDC metrics: {text}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    source.signal("-TERM");
    c.drop_slot().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_without_a_primary_key_is_refused_with_what_to_do() {
    let c = Captured::new("cdc-nokey", 1).await;
    c.pg.batch_execute(&format!(
        "ALTER TABLE {} DROP CONSTRAINT {}_pkey",
        c.table, c.table
    ))
    .await
    .unwrap();
    let mut source = c.start("0");
    let code = source.wait_exit(WAIT);
    let log = source.log_text();
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("has no primary key"), "{log}");
    assert!(log.contains("REPLICA IDENTITY USING INDEX"), "{log}");
}

/// The seed's flow from database to database: `orders` --postgresCdc--> topic --Pipeline
/// (total and count per region over the change stream, exactly once)--> topic --postgres
/// sink (upsert, deletes)--> `region_order_totals`. Inserts, updates that move orders
/// between regions and deletes flow while the source, the pipeline and the sink are each
/// SIGKILLed once; the totals table ends equal to a GROUP BY over the orders table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_flow_keeps_a_totals_table_equal_to_the_orders_group_by_across_sigkills() {
    let c = Captured::new("seed-flow", 0).await;
    let orders = c.table.clone();
    let totals = format!("{orders}_totals");
    c.pg.batch_execute(&format!(
        "ALTER TABLE {orders} REPLICA IDENTITY FULL;
         INSERT INTO {orders} (id, region, amount) SELECT i, 'r' || (i % 4), i % 50 FROM generate_series(1, 200) i;
         CREATE TABLE {totals} (region text PRIMARY KEY, total numeric NOT NULL, orders bigint NOT NULL)"
    ))
    .await
    .unwrap();
    let totals_topic = format!("{}-totals", c.tag);
    create_topics(&c.bootstrap, &[(&totals_topic, 1)]).await;
    let mut source = c.start("source-0");
    c.read_until(200, &source);
    let pipeline = write_manifest(
        &format!("{}-pipeline", c.tag),
        json!({
            "inputs": [c.topic],
            "steps": [{"name": "per-region", "aggregate": {
                "groupBy": {"region": "value.region"},
                "aggregations": [{"name": "total", "op": "sum", "of": "value.amount"},
                                 {"name": "orders", "op": "count"}],
                "changes": "debezium"}}],
            "outputs": [{"topic": totals_topic}],
            "delivery": "exactlyOnce",
            "commitInterval": "200ms",
        }),
    );
    let start_pipeline = |round: &str| {
        Processor::start(
            &c.bootstrap,
            &pipeline,
            &format!("{}-pipeline-{round}", c.tag),
        )
    };
    let mut transform = start_pipeline("0");
    let sink_manifest = connector_manifest(
        &format!("{}-sink", c.tag),
        json!({
            "type": "sink",
            "topics": [totals_topic],
            "postgres": {"table": totals, "mode": "upsert", "key": ["region"], "deletes": true,
                         "batch": {"records": 50, "interval": "200ms"}},
        }),
    );
    let start_sink = |round: &str| {
        SinkProcess::start(
            &c.bootstrap,
            &sink_manifest,
            &c.credentials,
            &format!("{}-sink-{round}", c.tag),
        )
    };
    let mut sink = start_sink("0");

    // 400 transactions: inserts, updates moving orders between regions, deletes (one
    // region's orders all go at the end, so its group is deleted).
    let url = TestEnv::require().var("DATABASE_URL");
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = tokio::spawn({
        let (orders, written) = (orders.clone(), written.clone());
        async move {
            let (pg, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            for i in 0..400_i64 {
                let statement = match i % 4 {
                    0 => format!(
                        "INSERT INTO {orders} (id, region, amount) VALUES ({}, 'r{}', {})",
                        1000 + i,
                        i % 3,
                        i % 17
                    ),
                    1 => format!(
                        "UPDATE {orders} SET region = 'r{}', amount = amount + {} WHERE id = {}",
                        i % 3,
                        i % 5,
                        i % 200 + 1
                    ),
                    2 => format!("DELETE FROM {orders} WHERE id = {}", i % 200 + 1),
                    _ => format!(
                        "BEGIN; UPDATE {orders} SET amount = amount * 2 WHERE id = {}; INSERT INTO {orders} (id, region, amount) VALUES ({}, 'r1', 3); COMMIT",
                        1000 + i - 3,
                        5000 + i
                    ),
                };
                pg.batch_execute(&statement).await.unwrap();
                written.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            pg.batch_execute(&format!("DELETE FROM {orders} WHERE region = 'r3'"))
                .await
                .unwrap();
        }
    });
    let reach = |n: usize| {
        let written = written.clone();
        async move {
            while written.load(std::sync::atomic::Ordering::Relaxed) < n {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    reach(100).await;
    source.signal("-KILL");
    source = c.start("source-1");
    reach(200).await;
    transform.signal("-KILL");
    transform.wait();
    transform = start_pipeline("1");
    reach(300).await;
    sink.signal("-KILL");
    sink = start_sink("1");
    assert!(
        !writer.is_finished(),
        "the kills came after the changes ended"
    );
    writer.await.unwrap();

    let expected = format!(
        "SELECT region, sum(amount)::numeric, count(*) FROM {orders} GROUP BY region ORDER BY region"
    );
    let actual = format!("SELECT region, total, orders FROM {totals} ORDER BY region");
    let rows = |sql: String| {
        let pg = &c.pg;
        async move {
            pg.query(&sql, &[])
                .await
                .unwrap()
                .iter()
                .map(|r| {
                    let region: String = r.get(0);
                    let total: String = r.get::<_, Option<String>>(1).unwrap_or_default();
                    let n: i64 = r.get(2);
                    format!("{region} {total} {n}")
                })
                .collect::<Vec<_>>()
        }
    };
    let (expected, actual) = (
        expected.replace("sum(amount)::numeric", "sum(amount)::float8::text"),
        actual.replace("total,", "total::float8::text,"),
    );
    let want = rows(expected).await;
    assert!(
        !want.iter().any(|r| r.starts_with("r3 ")),
        "r3 emptied: {want:?}"
    );
    let start = Instant::now();
    loop {
        let got = rows(actual.clone()).await;
        if got == want {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "the totals table {got:?} is not the GROUP BY {want:?}; the logs end:\n{}\n{}\n{}",
            last_lines(&source.log_text()),
            last_lines(&transform.log_text()),
            last_lines(&sink.log_text()),
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    c.drop_slot().await;
}

/// The last lines of a log.
fn last_lines(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}
