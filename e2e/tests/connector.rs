//! The Connector controller against the real API server, the env's Kafka Connect worker
//! with Debezium's PostgreSQL connector, PostgreSQL and Kafka. The operator binary runs as
//! a child process per test, watching only that test's namespace. Each test has its own
//! database role (whose password only the Connect worker reads, from a Secret-like
//! directory), table, replication slot and publication, so tests run side by side.

use std::path::PathBuf;
use std::time::Duration;

use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use sluice_crds::Connector;
use sluice_e2e::cluster;
use sluice_e2e::env::TestEnv;
use sluice_e2e::kafka::read_all;
use sluice_e2e::topic_harness::{INSTANCE, Operator, events, http_get, wait_event, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const EXAMPLE: &str = "manifests/examples/debezium-via-kafka-connect.yaml";
/// Longest wait for a change event or a state.
const CHANGE_WAIT: Duration = Duration::from_secs(90);

/// One test's world: namespace, operator, database role and table, and the connector's
/// unique names.
struct Cdc {
    env: TestEnv,
    client: Client,
    ns: String,
    op: Operator,
    connectors: Api<Connector>,
    connect_url: String,
    pg: tokio_postgres::Client,
    /// Suffix of every name this test makes in PostgreSQL.
    id: String,
    role: String,
    password: String,
    table: String,
    prefix: String,
    secret_dir: PathBuf,
}

impl Cdc {
    async fn setup(prefix: &str) -> Self {
        let env = TestEnv::require();
        let client = cluster::client(&env).await.unwrap();
        cluster::install_crds(&client).await.unwrap();
        let ns = cluster::namespace(&client, prefix).await.unwrap();
        let op = Operator::start(&env, &ns, "a", &env.var("KAFKA_BOOTSTRAP")).await;
        let (pg, connection) =
            tokio_postgres::connect(&env.var("DATABASE_URL"), tokio_postgres::NoTls)
                .await
                .unwrap();
        tokio::spawn(connection);
        let id = cluster::unique("t").replace('-', "_");
        let role = format!("cdc_{id}");
        let password = format!("pw-{}", cluster::unique("secret"));
        let table = format!("orders_{id}");
        pg.batch_execute(&format!(
            "CREATE ROLE {role} LOGIN REPLICATION PASSWORD '{password}';
             CREATE TABLE public.{table} (id int PRIMARY KEY, region text NOT NULL, amount int NOT NULL);
             ALTER TABLE public.{table} OWNER TO {role};
             CREATE PUBLICATION pub_{id} FOR TABLE public.{table};"
        ))
        .await
        .unwrap();
        // The Secret as a Connect pod would mount it: a directory with one file per key.
        let secret_dir = PathBuf::from(env.var("CONNECT_SECRETS_DIR")).join(format!("{ns}-db"));
        std::fs::create_dir_all(&secret_dir).unwrap();
        std::fs::write(secret_dir.join("password"), &password).unwrap();
        let connectors = Api::namespaced(client.clone(), &ns);
        Self {
            connect_url: env.var("CONNECT_URL"),
            prefix: format!("cdc_{id}"),
            env,
            client,
            ns,
            op,
            connectors,
            pg,
            id,
            role,
            password,
            table,
            secret_dir,
        }
    }

    /// The example manifest pointed at this test's database, table and names, with
    /// `overrides` merged into its spec.
    fn connector(&self, name: &str, overrides: Value) -> Value {
        let mut doc = cluster::manifest(EXAMPLE).unwrap().remove(0);
        doc["metadata"] = json!({"name": name, "labels": {"sluice.dev/instance": INSTANCE}});
        let port = url_port(&self.env.var("DATABASE_URL"));
        let config = &mut doc["spec"]["kafkaConnect"]["config"];
        config["database.hostname"] = json!("127.0.0.1");
        config["database.port"] = json!(port);
        config["database.user"] = json!(self.role);
        config["database.password"] = json!(format!(
            "${{directory:{}:password}}",
            self.secret_dir.display()
        ));
        config["database.dbname"] = json!("sluice");
        config["topic.prefix"] = json!(self.prefix);
        config["table.include.list"] = json!(format!("public.{}", self.table));
        config["slot.name"] = json!(format!("slot_{}", self.id));
        config["publication.name"] = json!(format!("pub_{}", self.id));
        // The test made the publication: granting CREATE on the database to each test's
        // role, as `filtered` needs, races between tests ("tuple concurrently updated").
        config["publication.autocreate.mode"] = json!("disabled");
        doc["spec"]["kafkaConnect"]["url"] = json!(self.connect_url);
        doc["spec"]["topics"] = json!([self.topic()]);
        merge(&mut doc["spec"], overrides);
        doc
    }

    fn topic(&self) -> String {
        format!("{}.public.{}", self.prefix, self.table)
    }

    fn connect_name(&self, name: &str) -> String {
        format!("{}.{name}", self.ns)
    }

    async fn apply(&self, doc: &Value) {
        cluster::apply(&self.client, &self.ns, doc).await.unwrap();
    }

    async fn patch_spec(&self, name: &str, spec: Value) {
        self.connectors
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": spec})),
            )
            .await
            .unwrap();
    }

    async fn annotate(&self, name: &str, key: &str, value: &str) {
        let patch = json!({"metadata": {"annotations": {key: value}}});
        self.connectors
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .unwrap();
    }

    async fn wait(&self, name: &str, what: &str, check: impl Fn(&Connector) -> bool) -> Connector {
        wait_until_long(&self.connectors, name, what, check).await
    }

    async fn wait_ready(&self, name: &str, status: &str, reason: &str) -> Connector {
        self.wait(name, &format!("Ready={status} ({reason})"), |c| {
            ready(c).is_some_and(|(s, r, _)| s == status && r == reason)
        })
        .await
    }

    /// Deletes Connector `name` and waits until it is gone (its finalizer done).
    async fn delete(&self, name: &str) {
        self.connectors
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + CHANGE_WAIT;
        while self.connectors.get_opt(name).await.unwrap().is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "Connector {name} was not deleted"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    async fn sql(&self, statements: &str) {
        self.pg.batch_execute(statements).await.unwrap();
    }

    /// Cuts the connector off the database: its role may no longer log in and its
    /// sessions (the replication stream among them) are ended.
    async fn cut_off(&self) {
        self.sql(&format!("ALTER ROLE {} NOLOGIN", self.role)).await;
        self.sql(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{}'",
            self.role
        ))
        .await;
    }

    async fn reconnect(&self) {
        self.sql(&format!("ALTER ROLE {} LOGIN", self.role)).await;
    }

    /// The change events for this test's table, read until `done` holds for them.
    async fn change_events(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let bootstrap = self.env.var("KAFKA_BOOTSTRAP");
        let topic = self.topic();
        let deadline = tokio::time::Instant::now() + CHANGE_WAIT;
        loop {
            let (b, t) = (bootstrap.clone(), topic.clone());
            let read = tokio::task::spawn_blocking(move || {
                read_all(&b, &t, Duration::from_secs(1), Duration::from_secs(10))
            })
            .await
            .unwrap();
            let values: Vec<Value> = read
                .unwrap_or_default()
                .iter()
                .filter_map(|r| serde_json::from_str(r.value.as_deref()?).ok())
                .collect();
            if done(&values) {
                return values;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within {CHANGE_WAIT:?}; change events: {values:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Connect's REST answer to GET `path`: (status code, body).
    /// Asked again while Connect answers that its workers are rebalancing.
    async fn connect_get(&self, path: &str) -> (u16, String) {
        let deadline = tokio::time::Instant::now() + CHANGE_WAIT;
        loop {
            let (code, body) = connect_call(&self.connect_url, "GET", path, None).await;
            let rebalancing = code == 409 || (code == 500 && body.contains("rebalance"));
            if !rebalancing || tokio::time::Instant::now() > deadline {
                return (code, body);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Waits until Connect answers GET `path` with 404.
    async fn wait_connect_404(&self, path: &str) {
        let deadline = tokio::time::Instant::now() + CHANGE_WAIT;
        loop {
            let (code, body) = self.connect_get(path).await;
            if code == 404 {
                return;
            }
            assert_eq!(code, 200, "GET {path}: {body}");
            assert!(
                tokio::time::Instant::now() < deadline,
                "GET {path} still answers {code}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Removes what this test made in PostgreSQL and its namespace. Connectors still there
    /// are deleted while the operator runs: their finalizer would otherwise hold the
    /// namespace in Terminating (no operator of this instance is left to remove it).
    async fn finish(self) {
        let left = self
            .connectors
            .list(&Default::default())
            .await
            .unwrap()
            .items;
        for c in left {
            self.delete(&c.name_any()).await;
        }
        self.reconnect().await;
        // The slot stays after Debezium stops (slot.drop.on.stop is false): drop it once
        // its stream has ended.
        for _ in 0..30 {
            let dropped = self
                .pg
                .batch_execute(&format!(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                     WHERE slot_name = 'slot_{}' AND NOT active",
                    self.id
                ))
                .await;
            let left = self
                .pg
                .query_one(
                    "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
                    &[&format!("slot_{}", self.id)],
                )
                .await
                .map(|r| r.get::<_, i64>(0))
                .unwrap_or(1);
            if dropped.is_ok() && left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        self.sql(&format!(
            "DROP PUBLICATION IF EXISTS pub_{id};
             DROP TABLE IF EXISTS public.{table};
             DROP ROLE IF EXISTS {role};",
            id = self.id,
            table = self.table,
            role = self.role
        ))
        .await;
        let _ = std::fs::remove_dir_all(&self.secret_dir);
        cluster::delete_namespace(&self.client, &self.ns)
            .await
            .unwrap();
    }
}

/// [`wait_until`] with the longer wait a Debezium connector needs to start and settle.
async fn wait_until_long(
    api: &Api<Connector>,
    name: &str,
    what: &str,
    check: impl Fn(&Connector) -> bool,
) -> Connector {
    let deadline = tokio::time::Instant::now() + CHANGE_WAIT;
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        if remaining < sluice_e2e::topic_harness::WAIT {
            return wait_until(api, name, what, &check).await;
        }
        if let Some(c) = api.get_opt(name).await.unwrap()
            && check(&c)
        {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The Ready condition as (status, reason, message), when it describes the current spec.
fn ready(c: &Connector) -> Option<(String, String, String)> {
    let s = c.status.as_ref()?;
    if s.observed_generation != c.metadata.generation {
        return None;
    }
    let r = s.conditions.iter().find(|c| c.type_ == "Ready")?;
    Some((r.status.clone(), r.reason.clone(), r.message.clone()))
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

fn url_port(url: &str) -> String {
    url.rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .unwrap_or("5432")
        .to_string()
}

/// One plain HTTP/1.0 call to the Connect REST API: (status code, body).
async fn connect_call(url: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    let authority = url.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = tokio::net::TcpStream::connect(authority).await.unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let code = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// The Debezium operation (`c`, `u`, `d`, `r`) and row id of each change event.
fn ops(values: &[Value]) -> Vec<(String, i64)> {
    values
        .iter()
        .filter_map(|v| {
            let op = v["op"].as_str()?.to_string();
            let row = if op == "d" { &v["before"] } else { &v["after"] };
            Some((op, row["id"].as_i64()?))
        })
        .collect()
}

fn has(values: &[Value], op: &str, id: i64) -> bool {
    ops(values).contains(&(op.to_string(), id))
}

#[tokio::test]
async fn debezium_streams_row_changes_pauses_resumes_and_goes_with_its_resource() {
    let t = Cdc::setup("connector-cdc").await;
    let name = "orders-cdc";
    t.apply(&t.connector(name, json!({}))).await;
    let c = t.wait_ready(name, "True", "Running").await;
    let status = c.status.clone().unwrap();
    assert_eq!(status.state.as_deref(), Some("RUNNING"));
    assert_eq!(status.tasks_ready.as_deref(), Some("1/1"));
    assert_eq!(status.plugin.as_deref(), Some("PostgresConnector"));
    assert_eq!(status.connect_name, Some(t.connect_name(name)));
    assert!(
        c.finalizers()
            .iter()
            .any(|f| f == "sluice.dev/delete-connect-connector")
    );
    wait_event(&t.client, &t.ns, name, "Created").await;

    // Rows inserted, updated and deleted become change events.
    t.sql(&format!(
        "INSERT INTO public.{0} VALUES (1, 'eu', 10);
         UPDATE public.{0} SET amount = 20 WHERE id = 1;
         DELETE FROM public.{0} WHERE id = 1;",
        t.table
    ))
    .await;
    let values = t
        .change_events("insert, update and delete of row 1", |v| {
            has(v, "c", 1) && has(v, "u", 1) && has(v, "d", 1)
        })
        .await;
    let update = values.iter().find(|v| v["op"] == "u").unwrap();
    assert_eq!(update["after"]["amount"], 20);
    assert_eq!(update["source"]["table"], json!(t.table));
    let topic = t.topic();
    t.wait(name, "reporting its topic", |c| {
        c.status.as_ref().is_some_and(|s| s.topics.contains(&topic))
    })
    .await;

    // Paused: nothing flows. Resumed: the change made meanwhile arrives.
    t.patch_spec(name, json!({"state": "paused"})).await;
    let c = t.wait_ready(name, "True", "Paused").await;
    assert_eq!(c.status.unwrap().state.as_deref(), Some("PAUSED"));
    t.sql(&format!(
        "INSERT INTO public.{} VALUES (2, 'us', 5)",
        t.table
    ))
    .await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let while_paused = t.change_events("the events so far", |_| true).await;
    assert!(
        !has(&while_paused, "c", 2),
        "row 2 flowed while paused: {while_paused:?}"
    );
    t.patch_spec(name, json!({"state": "running"})).await;
    t.wait_ready(name, "True", "Running").await;
    t.change_events("row 2 after resume", |v| has(v, "c", 2))
        .await;

    // The password, read by the Connect worker alone, is nowhere the operator speaks.
    let (code, stored) = t
        .connect_get(&format!("/connectors/{}/config", t.connect_name(name)))
        .await;
    assert_eq!(code, 200, "{stored}");
    assert!(stored.contains("${directory:"), "{stored}");
    let object = serde_json::to_string(&t.connectors.get(name).await.unwrap()).unwrap();
    let notes: Vec<String> = events(&t.client, &t.ns, name)
        .await
        .into_iter()
        .map(|(reason, note, _)| format!("{reason}: {note}"))
        .collect();
    // The config was written once: what Connect holds is compared, not written again at
    // every look (which would restart the connector each time).
    assert!(
        !notes.iter().any(|n| n.starts_with("Updated:")),
        "the config was written again: {notes:?}"
    );
    let log = std::fs::read_to_string(&t.op.log).unwrap();
    let mut answers = String::new();
    for path in ["/metrics", "/healthz", "/readyz"] {
        answers.push_str(&http_get(t.op.port, path).await.unwrap_or_default());
    }
    assert!(!log.is_empty() && !answers.is_empty() && !notes.is_empty());
    for (place, text) in [
        ("the Connector", object.as_str()),
        ("its events", &notes.join("\n")),
        ("the operator's log", log.as_str()),
        ("the operator's HTTP answers", answers.as_str()),
        ("Connect's stored config", stored.as_str()),
    ] {
        assert!(!text.contains(&t.password), "the password shows in {place}");
    }

    // Deleting the resource deletes the connector on the Connect cluster.
    t.delete(name).await;
    t.wait_connect_404(&format!("/connectors/{}", t.connect_name(name)))
        .await;
    t.finish().await;
}

#[tokio::test]
async fn refusals_are_reported_and_connectors_no_resource_owns_are_left_alone() {
    let t = Cdc::setup("connector-refused").await;

    // Debezium refuses a database that does not exist, in its own words; nothing is created.
    let bad = "bad-dbname";
    t.apply(&t.connector(
        bad,
        json!({"kafkaConnect": {"config": {"database.dbname": "no_such_db"}}}),
    ))
    .await;
    let c = t.wait_ready(bad, "False", "InvalidConfig").await;
    let (_, _, message) = ready(&c).unwrap();
    assert!(message.contains("no_such_db"), "{message}");
    assert!(c.status.unwrap().last_error.unwrap().contains("no_such_db"));
    wait_event(&t.client, &t.ns, bad, "InvalidConfig").await;
    t.wait_connect_404(&format!("/connectors/{}", t.connect_name(bad)))
        .await;

    // A Connect cluster that does not answer.
    let mut gone = t.connector("unreachable", json!({}));
    gone["spec"]["kafkaConnect"]["url"] = json!("http://127.0.0.1:1");
    t.apply(&gone).await;
    let c = t
        .wait_ready("unreachable", "False", "ConnectUnavailable")
        .await;
    assert!(ready(&c).unwrap().2.contains("127.0.0.1:1"));

    // A connector made by hand under the name a resource would use is never touched.
    let foreign = t.connect_name("foreign");
    let config = json!({
        "connector.class": "org.apache.kafka.connect.file.FileStreamSourceConnector",
        "file": "/nonexistent", "topic": format!("{}-foreign", t.prefix), "tasks.max": "1"
    });
    let (code, body) = connect_call(
        &t.connect_url,
        "PUT",
        &format!("/connectors/{foreign}/config"),
        Some(&config),
    )
    .await;
    assert!(code == 200 || code == 201, "{code}: {body}");
    t.apply(&t.connector("foreign", json!({}))).await;
    t.wait_ready("foreign", "False", "NameTaken").await;
    t.delete("foreign").await;
    let (code, stored) = t
        .connect_get(&format!("/connectors/{foreign}/config"))
        .await;
    assert_eq!(code, 200, "the hand-made connector was deleted");
    assert!(
        stored.contains("/nonexistent") && !stored.contains("sluice.dev/owner"),
        "{stored}"
    );
    connect_call(
        &t.connect_url,
        "DELETE",
        &format!("/connectors/{foreign}"),
        None,
    )
    .await;

    // Deleting the unreachable one waits for its cluster to answer; removing the
    // finalizer by hand lets it go, as the README says.
    t.connectors
        .delete("unreachable", &DeleteParams::default())
        .await
        .unwrap();
    t.wait("unreachable", "held by its finalizer", |c| {
        c.metadata.deletion_timestamp.is_some()
            && ready(c).is_some_and(|(_, _, m)| m.contains("cannot delete the connector yet"))
    })
    .await;
    t.connectors
        .patch(
            "unreachable",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    t.finish().await;
}

#[tokio::test]
async fn a_failed_task_is_reported_restarted_stopped_and_reset() {
    let t = Cdc::setup("connector-restart").await;
    let name = "orders-cdc";
    t.apply(&t.connector(
        name,
        json!({"autoRestart": {"enabled": true, "maxRestarts": 50}}),
    ))
    .await;
    t.wait_ready(name, "True", "Running").await;
    t.sql(&format!(
        "INSERT INTO public.{} VALUES (1, 'eu', 10)",
        t.table
    ))
    .await;
    t.change_events("row 1", |v| has(v, "c", 1)).await;

    // The database goes away for the connector: the task fails, Ready says which and why,
    // and restarts go on with backoff until it comes back.
    t.cut_off().await;
    let c = t
        .wait(name, "reporting its failed task", |c| {
            ready(c).is_some_and(|(s, r, _)| s == "False" && r == "TaskFailed")
        })
        .await;
    let (_, _, message) = ready(&c).unwrap();
    assert!(message.starts_with("task 0 failed"), "{message}");
    assert!(
        !message.contains("\tat "),
        "a whole trace in the message: {message}"
    );
    assert!(c.status.unwrap().last_error.is_some());
    wait_event(&t.client, &t.ns, name, "Restarted").await;
    t.reconnect().await;
    let c = t.wait_ready(name, "True", "Running").await;
    let restarts = c.status.unwrap().restarts.expect("restarts in status");
    assert!(restarts.count >= 1, "{restarts:?}");
    t.sql(&format!(
        "INSERT INTO public.{} VALUES (2, 'eu', 10)",
        t.table
    ))
    .await;
    t.change_events("row 2 after the restart", |v| has(v, "c", 2))
        .await;

    // Without autoRestart a failed task stays failed, and `stopped` stops it all the same.
    t.patch_spec(name, json!({"autoRestart": {"enabled": false}}))
        .await;
    t.wait_ready(name, "True", "Running").await;
    t.cut_off().await;
    t.wait_ready(name, "False", "TaskFailed").await;
    t.patch_spec(name, json!({"state": "stopped"})).await;
    let c = t.wait_ready(name, "True", "Stopped").await;
    let status = c.status.unwrap();
    assert_eq!(status.state.as_deref(), Some("STOPPED"));
    assert!(status.tasks.is_empty());
    assert!(
        !status.offsets.is_empty(),
        "a CDC connector reports its LSN offsets"
    );

    // Offsets reset on a stopped connector, once.
    t.annotate(name, "sluice.dev/reset-offsets", "true").await;
    wait_event(&t.client, &t.ns, name, "OffsetsReset").await;
    t.wait(name, "without the reset annotation", |c| {
        !c.annotations().contains_key("sluice.dev/reset-offsets")
    })
    .await;
    let connect_name = t.connect_name(name);
    let deadline = tokio::time::Instant::now() + CHANGE_WAIT;
    loop {
        let (_, body) = t
            .connect_get(&format!("/connectors/{connect_name}/offsets"))
            .await;
        let offsets: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let left = offsets["offsets"]
            .as_array()
            .map_or(0, |o| o.iter().filter(|o| !o["offset"].is_null()).count());
        if left == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "offsets not reset: {body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Running again, and a restart asked by annotation.
    t.reconnect().await;
    t.patch_spec(name, json!({"state": "running"})).await;
    t.wait_ready(name, "True", "Running").await;
    t.annotate(name, "sluice.dev/restart", "true").await;
    wait_event(&t.client, &t.ns, name, "Restarted").await;
    t.wait(name, "without the restart annotation", |c| {
        !c.annotations().contains_key("sluice.dev/restart")
    })
    .await;
    t.wait_ready(name, "True", "Running").await;
    t.delete(name).await;
    t.finish().await;
}
