//! The native PostgreSQL sink against the environment's broker and PostgreSQL:
//! exactly once in insert mode across SIGKILLs, upserts with tombstone deletes, and a
//! row PostgreSQL refuses in the dead-letter topic while the rest flow.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::producer::FutureRecord;
use serde_json::json;
use sluice_e2e::cluster::unique;
use sluice_e2e::env::TestEnv;
use sluice_e2e::kafka;
use sluice_e2e::processor::*;
use sluice_e2e::sink::{SinkProcess, connector_manifest as manifest, kill_twice_then_finish};

const WAIT: Duration = Duration::from_secs(120);

/// The database restart test stops the environment's PostgreSQL: it holds this for
/// writing, every other test here for reading.
static DATABASE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());
const REGIONS: [&str; 3] = ["eu", "us", "ap"];

/// The database, and a credentials directory (one file per libpq key) for it.
async fn database(env: &TestEnv, tag: &str) -> (tokio_postgres::Client, PathBuf) {
    let url = env.var("DATABASE_URL");
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let dir = log_dir().join(format!("{tag}-credentials"));
    std::fs::create_dir_all(&dir).unwrap();
    for (key, value) in env.database_keys() {
        std::fs::write(dir.join(key), format!("{value}\n")).unwrap();
    }
    (client, dir)
}

/// A table of orders without a unique constraint (a record written twice shows as two
/// rows), its topic with 3 partitions, and credentials for it.
struct OrdersTable {
    bootstrap: String,
    tag: String,
    table: String,
    pg: tokio_postgres::Client,
    credentials: PathBuf,
}

async fn orders_table(prefix: &str) -> OrdersTable {
    let env = TestEnv::require();
    let bootstrap = env.var("KAFKA_BOOTSTRAP");
    let tag = unique(prefix);
    let table = tag.replace('-', "_");
    let (pg, credentials) = database(&env, &tag).await;
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (order_id text NOT NULL, region text, total numeric)"
    ))
    .await
    .unwrap();
    create_topics(&bootstrap, &[(&tag, 3)]).await;
    OrdersTable {
        bootstrap,
        tag,
        table,
        pg,
        credentials,
    }
}

/// `n` orders keyed by id, each with a field the table has no column for.
fn order_records(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            let id = format!("o-{i}");
            let value =
                json!({"order_id": id, "region": REGIONS[i % 3], "total": i % 50, "ignored": true});
            (id, value.to_string())
        })
        .collect()
}

/// The sink's manifest for `table` (batches of `batch` records), and `n` orders fed to
/// its topic in 120 steps `pause` apart, so failures can come while they flow.
fn feed_orders(
    bootstrap: &str,
    tag: &str,
    table: &str,
    n: usize,
    batch: usize,
    pause: Duration,
) -> (PathBuf, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let path = manifest(
        tag,
        json!({"type": "sink", "topics": [tag],
               "postgres": {"table": table, "batch": {"records": batch, "interval": "100ms"}}}),
    );
    // The binary is built (when it is not yet) before the input starts to flow.
    processor_bin();
    let feed = kafka::produce_paced(
        kafka::producer(bootstrap).unwrap(),
        tag.to_string(),
        order_records(n),
        n / 120,
        pause,
    );
    (path, feed)
}

/// `table` holds each of the `n` orders exactly once.
async fn assert_each_order_once(pg: &tokio_postgres::Client, table: &str, n: usize) {
    let rows = count(pg, &format!("SELECT count(*) FROM {table}")).await;
    assert_eq!(rows, n as i64, "no duplicate");
    let distinct = count(pg, &format!("SELECT count(DISTINCT order_id) FROM {table}")).await;
    assert_eq!(distinct, n as i64, "no gap");
}

async fn count(pg: &tokio_postgres::Client, sql: &str) -> i64 {
    pg.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn insert_mode_writes_each_record_exactly_once_across_sigkills() {
    let _database = DATABASE.read().await;
    let OrdersTable {
        bootstrap,
        tag,
        table,
        pg,
        credentials,
    } = orders_table("pgsink-eo").await;
    let n = 3000;
    let (path, feed) = feed_orders(&bootstrap, &tag, &table, n, 200, Duration::from_millis(300));
    let rows = format!("SELECT count(*) FROM {table}");
    kill_twice_then_finish(&bootstrap, &path, &credentials, &tag, feed, n, || async {
        usize::try_from(count(&pg, &rows).await).unwrap_or(0)
    })
    .await;
    assert_each_order_once(&pg, &table, n).await;
    let stored = count(
        &pg,
        &format!(
            "SELECT sum(next_offset)::bigint FROM sluice_offsets WHERE connector = 'e2e/{tag}'"
        ),
    )
    .await;
    assert_eq!(
        stored, n as i64,
        "the positions stored with the rows are the ends of the partitions"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upserts_delete_on_tombstones_and_a_refused_row_goes_to_the_dead_letter_topic() {
    let _database = DATABASE.read().await;
    let env = TestEnv::require();
    let bootstrap = env.var("KAFKA_BOOTSTRAP");
    let tag = unique("pgsink-up");
    let table = tag.replace('-', "_");
    let dlq = format!("{tag}-dlq");
    let (pg, credentials) = database(&env, &tag).await;
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (region text PRIMARY KEY, total numeric NOT NULL, seen integer)"
    ))
    .await
    .unwrap();
    create_topics(&bootstrap, &[(&tag, 1), (&dlq, 1)]).await;
    let producer = kafka::producer(&bootstrap).unwrap();
    let send = |key: &'static str, value: Option<serde_json::Value>| {
        let producer = producer.clone();
        let topic = tag.clone();
        async move {
            let text = value.map(|v| v.to_string());
            let mut record = FutureRecord::to(&topic).key(key);
            if let Some(t) = &text {
                record = record.payload(t);
            }
            producer
                .send(record, Duration::from_secs(10))
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    };
    // Sent before the sink starts, so they come as one batch: the upsert of eu and the
    // delete of us are written first, then the run of ap and sa fails on ap. The sink
    // rolls back and writes the batch again run by run: eu and us as before, the failed
    // run record by record (ap refused, sa written).
    send("eu", Some(json!({"region": "eu", "total": 1, "seen": 1}))).await;
    send("us", Some(json!({"region": "us", "total": 2}))).await;
    send(
        "eu",
        Some(json!({"region": "eu", "total": 5.5, "seen": 2, "extra": "x"})),
    )
    .await;
    send("us", None).await;
    send("ap", Some(json!({"region": "ap", "total": "not a number"}))).await;
    send("sa", Some(json!({"region": "sa", "total": 7}))).await;
    let path = manifest(
        &tag,
        json!({"type": "sink", "topics": [tag], "deadLetter": {"topic": dlq},
               "postgres": {"table": table, "mode": "upsert", "key": ["region"], "deletes": true,
                            "batch": {"records": 100, "interval": "200ms"}}}),
    );
    let mut sink = SinkProcess::start(&bootstrap, &path, &credentials, &tag);
    let dead = read_until_or(&bootstrap, &dlq, 1, || sink.log_text());
    let start = Instant::now();
    let rows = format!("SELECT region, total::text, seen FROM {table} ORDER BY region");
    let got = loop {
        let got: Vec<(String, String, Option<i32>)> = pg
            .query(&rows, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        if got.len() == 2 || start.elapsed() > WAIT {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    sink.signal("-TERM");
    assert_eq!(
        got,
        vec![
            ("eu".to_string(), "5.5".to_string(), Some(2)),
            ("sa".to_string(), "7".to_string(), None),
        ],
        "eu updated, us deleted by its tombstone, ap refused; log: {}",
        sink.log_text()
    );
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d.key.as_deref(), Some("ap"));
    assert!(d.value.as_deref().unwrap().contains("not a number"));
    let why = &d.headers["sluice.sink.error"];
    assert!(why.contains("invalid input syntax"), "{why}");
    assert_eq!(d.headers["sluice.step"], "postgres");
    assert_eq!(d.headers["sluice.source.offset"], "4");
    // The two runs before ap's were written, rolled back, and written again.
    let log = sink.log_text();
    assert!(
        log.contains("written again run by run") && log.contains("runs_written=2"),
        "{log}"
    );
}

/// Stops the environment's PostgreSQL (a fast shutdown: clients are cut off) and starts
/// it again with `e2e/up`, which starts what is not running.
fn restart_database() {
    let pids = TestEnv::state_dir().join("pids").join("postgres");
    let pid = std::fs::read_to_string(&pids).unwrap();
    // e2e/up starts it in a session of its own: the group is the server.
    let ok = Command::new("kill")
        .args(["-INT", "--", &format!("-{}", pid.trim())])
        .status()
        .unwrap()
        .success();
    assert!(ok, "stop PostgreSQL");
    let start = Instant::now();
    while Command::new("kill")
        .args(["-0", pid.trim()])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
    {
        assert!(start.elapsed() < WAIT, "PostgreSQL did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Down for a while: the sink's retries meet a refused connection.
    std::thread::sleep(Duration::from_secs(3));
    let up = Command::new(sluice_e2e::env::repo_root().join("e2e/up"))
        .output()
        .unwrap();
    assert!(
        up.status.success(),
        "e2e/up: {}",
        String::from_utf8_lossy(&up.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn lost_connections_and_a_restarted_database_lose_and_repeat_nothing() {
    let _database = DATABASE.write().await;
    let env = TestEnv::require();
    let OrdersTable {
        bootstrap,
        tag,
        table,
        pg,
        credentials,
    } = orders_table("pgsink-restart").await;
    let n = 2400;
    let (path, feed) = feed_orders(&bootstrap, &tag, &table, n, 100, Duration::from_millis(250));
    let mut sink = SinkProcess::start(&bootstrap, &path, &credentials, &tag);
    let rows = format!("SELECT count(*) FROM {table}");
    let wait_for_more = |pg: tokio_postgres::Client, before: i64| {
        let rows = rows.clone();
        async move {
            let start = Instant::now();
            while count(&pg, &rows).await <= before {
                assert!(start.elapsed() < WAIT, "no new rows after {before}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            pg
        }
    };
    // Twice, the sink's connection is cut from the server side while rows arrive.
    let mut pg = pg;
    for _ in 0..2 {
        let before = count(&pg, &rows).await;
        pg = wait_for_more(pg, before).await;
        // The sink names its sessions `sluice <namespace>/<name>`.
        let cut: i64 = pg
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE application_name = $1 AND datname = current_database()",
                &[&format!("sluice e2e/{tag}")],
            )
            .await
            .unwrap()
            .get(0);
        assert!(cut >= 1, "the sink's connection was there to cut");
    }
    // Then the database itself goes down and comes back.
    let before = count(&pg, &rows).await;
    let pg = wait_for_more(pg, before).await;
    drop(pg);
    tokio::task::spawn_blocking(restart_database).await.unwrap();
    let (pg, _) = database(&env, &tag).await;
    assert!(
        !feed.is_finished(),
        "the failures came after the input ended"
    );
    feed.await.unwrap().unwrap();
    let start = Instant::now();
    while count(&pg, &rows).await < n as i64 {
        assert!(start.elapsed() < WAIT, "rows missing: {}", sink.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    sink.signal("-TERM");
    let log = sink.log_text();
    assert!(log.contains("stopped cleanly"), "{log}");
    assert_each_order_once(&pg, &table, n).await;
}

/// With `sslmode: verify-full` and the environment's CA in `sslrootcert` the sink connects
/// over TLS (PostgreSQL's `pg_stat_ssl` says so) and loads its rows; with a CA that did
/// not sign the server's certificate it stops and says why.
#[tokio::test(flavor = "multi_thread")]
async fn verify_full_connects_over_tls_and_a_foreign_ca_is_refused() {
    let _database = DATABASE.read().await;
    let OrdersTable {
        bootstrap,
        tag,
        table,
        pg,
        credentials,
    } = orders_table("pgsink-tls").await;
    let env = TestEnv::require();
    let ca = std::fs::read_to_string(env.var("PG_CA_FILE")).unwrap();
    std::fs::write(credentials.join("sslmode"), "verify-full\n").unwrap();
    std::fs::write(credentials.join("sslrootcert"), &ca).unwrap();
    let (path, feed) = feed_orders(&bootstrap, &tag, &table, 120, 50, Duration::ZERO);
    feed.await.unwrap().unwrap();
    let mut sink = SinkProcess::start(&bootstrap, &path, &credentials, &tag);
    let start = Instant::now();
    while count(&pg, &format!("SELECT count(*) FROM {table}")).await < 120 {
        assert!(start.elapsed() < WAIT, "rows missing: {}", sink.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let over_tls: bool = pg
        .query_one(
            "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = $1",
            &[&format!("sluice e2e/{tag}")],
        )
        .await
        .unwrap()
        .get(0);
    assert!(over_tls, "the sink's connection is not encrypted");
    sink.signal("-TERM");
    assert_each_order_once(&pg, &table, 120).await;

    // The Kubernetes CA of the environment did not sign PostgreSQL's certificate.
    let foreign = std::fs::read_to_string(TestEnv::state_dir().join("pki/ca.crt")).unwrap();
    std::fs::write(credentials.join("sslrootcert"), foreign).unwrap();
    let mut refused =
        SinkProcess::start(&bootstrap, &path, &credentials, &format!("{tag}-foreign"));
    let start = Instant::now();
    while !refused.log_text().contains("cannot connect") {
        assert!(start.elapsed() < WAIT, "{}", refused.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let exited = refused.wait_exit(WAIT);
    assert_eq!(
        exited,
        Some(1),
        "a refused certificate stops the sink: {}",
        refused.log_text()
    );
    assert!(
        refused.log_text().to_lowercase().contains("certificate"),
        "{}",
        refused.log_text()
    );
}
