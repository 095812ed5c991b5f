//! Native Connectors with the operator installed by `make deploy` (its Helm chart): a
//! generator Connector becomes a Deployment of the processor image running
//! `sluice-processor connector`, a pod on the environment's node, with its state in status; a
//! PostgreSQL sink Connector loads its topic with credentials from a Secret.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;
use sluice_crds::Connector;
use sluice_e2e::cluster;
use sluice_e2e::installed::*;

/// The Ready condition as (status, reason), when it describes the current spec.
async fn ready(api: &Api<Connector>, name: &str) -> Option<(String, String)> {
    let c = api.get(name).await.ok()?;
    let s = c.status?;
    if s.observed_generation != c.metadata.generation {
        return None;
    }
    let r = s.conditions.into_iter().find(|c| c.type_ == "Ready")?;
    Some((r.status, r.reason))
}

async fn wait_ready(api: &Api<Connector>, name: &str, reason: &str) {
    wait_for(
        Duration::from_secs(120),
        &format!("Connector {name} Ready ({reason})"),
        || async {
            let (status, r) = ready(api, name).await?;
            (status == "True" && r == reason).then_some(())
        },
    )
    .await;
}

async fn set_state(api: &Api<Connector>, name: &str, state: &str) {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"state": state}})),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_generator_connector_runs_as_a_deployment_pauses_stops_and_goes_with_its_resource() {
    let f = fixture("native-gen").await;
    let doc = json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "Connector",
        "metadata": {"name": "orders-gen"},
        "spec": {"type": "source", "topics": [f.topic("orders")],
                 "generator": {"template": {"orderId": "'o-' + string(i)", "n": "i"},
                               "key": "'o-' + string(i)", "rate": "50/s", "count": 30}}
    });
    cluster::apply(&f.client, &f.ns, &doc).await.unwrap();
    let connectors: Api<Connector> = Api::namespaced(f.client.clone(), &f.ns);
    // Its topic does not exist yet: it waits at zero replicas and says why.
    wait_for(
        Duration::from_secs(60),
        "Ready=False (TopicMissing)",
        || async {
            let (status, reason) = ready(&connectors, "orders-gen").await?;
            (status == "False" && reason == "TopicMissing").then_some(())
        },
    )
    .await;
    f.topics(&[("orders", 1)]).await;
    wait_ready(&connectors, "orders-gen", "Running").await;
    let c = connectors.get("orders-gen").await.unwrap();
    let status = c.status.unwrap();
    assert_eq!(status.state.as_deref(), Some("RUNNING"));
    assert_eq!(status.tasks_ready.as_deref(), Some("1/1"));
    assert_eq!(status.plugin.as_deref(), Some("generator"));
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "TopicsReady" && c.status == "True")
    );
    let deployments: Api<Deployment> = Api::namespaced(f.client.clone(), &f.ns);
    let d = deployments.get("orders-gen-connector").await.unwrap();
    let container = &d.spec.unwrap().template.spec.unwrap().containers[0];
    assert_eq!(container.args.as_ref().unwrap()[0], "connector");

    let out = f.read_until("orders", 30, Duration::from_secs(120)).await;
    assert_eq!(out.len(), 30, "the count, written once");
    assert_eq!(out[3].key.as_deref(), Some("o-3"));

    // Paused: the pod is replaced by one that writes nothing.
    set_state(&connectors, "orders-gen", "paused").await;
    wait_ready(&connectors, "orders-gen", "Paused").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(f.read("orders").len(), 30, "nothing written while paused");

    // Stopped: no replica at all.
    set_state(&connectors, "orders-gen", "stopped").await;
    wait_ready(&connectors, "orders-gen", "Stopped").await;
    let d = deployments.get("orders-gen-connector").await.unwrap();
    assert_eq!(d.spec.unwrap().replicas, Some(0));

    // The Deployment, ConfigMap and Service go with the Connector.
    connectors
        .delete("orders-gen", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(
        Duration::from_secs(120),
        "the connector Deployment garbage-collected",
        || async {
            deployments
                .get_opt("orders-gen-connector")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
    f.finish().await;
}

/// A table for the orders (`orderId`, `region`, `total`) in the environment's PostgreSQL,
/// and the Secret `analytics-db` with the keys to reach it: a connection to check it with,
/// and the table's name.
async fn orders_table(f: &Fixture, per_row: Option<&str>) -> (tokio_postgres::Client, String) {
    use k8s_openapi::api::core::v1::Secret;
    let table = format!("orders_{}", f.ns.replace('-', "_"));
    let url = f.env.var("DATABASE_URL");
    let (pg, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    // The orders' fields are orderId, region and total: columns of the same names.
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (\"orderId\" text NOT NULL, region text, total numeric)"
    ))
    .await
    .unwrap();
    if let Some(body) = per_row {
        pg.batch_execute(&format!(
            "CREATE FUNCTION {table}_row() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {body}; RETURN NEW; END $$;
             CREATE TRIGGER {table}_row BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION {table}_row();"
        ))
        .await
        .unwrap();
    }
    let keys: serde_json::Map<String, serde_json::Value> = f
        .env
        .database_keys()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.into()))
        .collect();
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "analytics-db"},
        "stringData": keys
    }))
    .unwrap();
    Api::<Secret>::namespaced(f.client.clone(), &f.ns)
        .create(&Default::default(), &secret)
        .await
        .unwrap();
    (pg, table)
}

/// Waits until `table` holds `n` rows, and checks they are `n` distinct orders.
async fn assert_rows_once(pg: &tokio_postgres::Client, table: &str, n: i64) {
    let rows = format!("SELECT count(*), count(DISTINCT \"orderId\") FROM {table}");
    let (count, distinct) = wait_for(Duration::from_secs(240), &format!("{n} rows"), || async {
        let row = pg.query_one(&rows, &[]).await.ok()?;
        let (count, distinct): (i64, i64) = (row.get(0), row.get(1));
        (count >= n).then_some((count, distinct))
    })
    .await;
    assert_eq!((count, distinct), (n, n), "each record once");
}

/// A PostgreSQL sink Connector with its credentials in a Secret: the operator runs it as a
/// processor Deployment with the Secret mounted, and every record becomes one row.
#[tokio::test]
async fn a_postgres_sink_connector_loads_its_topic_into_a_table_with_credentials_from_a_secret() {
    let f = fixture("native-pg").await;
    let (pg, table) = orders_table(&f, None).await;
    f.topics(&[("orders", 3), ("orders-dlq", 1)]).await;
    let doc = json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "Connector",
        "metadata": {"name": "orders-to-pg"},
        "spec": {"type": "sink", "topics": [f.topic("orders")],
                 "secretRef": {"name": "analytics-db"},
                 "deadLetter": {"topic": f.topic("orders-dlq")},
                 "postgres": {"table": table, "batch": {"records": 100, "interval": "200ms"}}}
    });
    cluster::apply(&f.client, &f.ns, &doc).await.unwrap();
    let connectors: Api<Connector> = Api::namespaced(f.client.clone(), &f.ns);
    wait_ready(&connectors, "orders-to-pg", "Running").await;
    let (records, _, _) = orders(0, 500);
    f.produce("orders", &records).await;
    assert_rows_once(&pg, &table, 500).await;
    let deployments: Api<Deployment> = Api::namespaced(f.client.clone(), &f.ns);
    let d = deployments.get("orders-to-pg-connector").await.unwrap();
    let pod = d.spec.unwrap().template.spec.unwrap();
    let mounted = pod
        .volumes
        .unwrap_or_default()
        .into_iter()
        .any(|v| v.secret.and_then(|s| s.secret_name).as_deref() == Some("analytics-db"));
    assert!(mounted, "the credentials Secret is mounted");
    assert!(f.read("orders-dlq").is_empty(), "nothing refused");
    let caught_up = wait_for(Duration::from_secs(60), "lag 0 in status", || async {
        let s = connectors.get("orders-to-pg").await.ok()?.status?;
        (s.lag == Some(0)).then_some(s)
    })
    .await;
    assert_eq!(caught_up.position.as_deref(), Some("caught up"));
    assert!(
        caught_up.last_scale.is_none(),
        "no scaling block, no scaling"
    );
    f.finish().await;
}

/// Orders waiting before the scaling sink starts.
const SINK_BACKLOG: usize = 15_000;

/// A sink with `scaling` is sized on its consumer lag by the Pipeline autoscaler: a backlog
/// it cannot load within its lag target scales it out to the partition count, status
/// shows how far behind it is, and every record is loaded once through the rescale.
#[tokio::test]
async fn a_postgres_sink_with_scaling_scales_out_on_its_backlog_and_loads_each_record_once() {
    let f = fixture("native-pg-scale").await;
    // Each row costs the database 5 ms (a trigger), so one replica loads at most about
    // 200 rows a second on any machine: the 15,000 orders need 75 s, far beyond the 2 s
    // lag target, and the autoscaler stops at the 3 partitions. (At 2 ms a row, two
    // replicas on a slow machine drained the backlog before the step from 2 to 3.)
    let (pg, table) = orders_table(&f, Some("PERFORM pg_sleep(0.005)")).await;
    f.topics(&[("orders", 3)]).await;
    let (records, _, _) = orders(0, SINK_BACKLOG);
    f.produce("orders", &records).await;
    let doc = json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "Connector",
        "metadata": {"name": "orders-to-pg"},
        "spec": {"type": "sink", "topics": [f.topic("orders")],
                 "secretRef": {"name": "analytics-db"},
                 "postgres": {"table": table, "batch": {"records": 200, "interval": "200ms"}},
                 "scaling": {"minReplicas": 1, "maxReplicas": 5, "lagTarget": "2s"}}
    });
    cluster::apply(&f.client, &f.ns, &doc).await.unwrap();
    let connectors: Api<Connector> = Api::namespaced(f.client.clone(), &f.ns);
    let behind = wait_for(Duration::from_secs(120), "a lag in status", || async {
        let s = connectors.get("orders-to-pg").await.ok()?.status?;
        (s.lag.unwrap_or(0) > 0).then_some(s)
    })
    .await;
    assert!(
        behind
            .position
            .as_deref()
            .is_some_and(|p| p.ends_with("records behind")),
        "{:?}",
        behind.position
    );
    let peak = wait_for(
        Duration::from_secs(180),
        "scale out to the 3 partitions",
        || async {
            let s = connectors.get("orders-to-pg").await.ok()?.status?;
            s.last_scale.clone().filter(|d| d.to == 3)
        },
    )
    .await;
    assert!(
        peak.reason.contains("lag"),
        "the reason gives the numbers: {}",
        peak.reason
    );
    let deployments: Api<Deployment> = Api::namespaced(f.client.clone(), &f.ns);
    let d = deployments.get("orders-to-pg-connector").await.unwrap();
    assert_eq!(d.spec.unwrap().replicas, Some(3));
    let reasons = sluice_e2e::topic_harness::event_reasons(&f.client, &f.ns, "orders-to-pg").await;
    assert!(
        reasons.iter().any(|r| r == "ScaledUp"),
        "a ScaledUp event: {reasons:?}"
    );
    assert_rows_once(&pg, &table, SINK_BACKLOG as i64).await;
    wait_for(Duration::from_secs(60), "caught up in status", || async {
        let s = connectors.get("orders-to-pg").await.ok()?.status?;
        (s.position.as_deref() == Some("caught up")).then_some(())
    })
    .await;
    f.finish().await;
}

/// A PostgreSQL change-data-capture Connector runs as a processor Deployment on the node,
/// its credentials from a Secret: the table's rows, then its changes, arrive in the
/// table's topic as Debezium's events.
#[tokio::test]
async fn a_postgres_cdc_connector_captures_its_table_from_the_node() {
    let f = fixture("native-cdc").await;
    let (pg, orders) = orders_table(&f, None).await;
    let table = format!("{orders}_cdc");
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (id integer PRIMARY KEY, region text, total numeric);
         INSERT INTO {table} VALUES (1, 'eu', 10), (2, 'us', 20), (3, 'ap', 30)"
    ))
    .await
    .unwrap();
    let prefix = f.topic("sales");
    let topic = format!("{prefix}.public.{table}");
    let doc = json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "Connector",
        "metadata": {"name": "orders-cdc"},
        "spec": {"type": "source", "secretRef": {"name": "analytics-db"},
                 "postgresCdc": {"tables": [format!("public.{table}")], "slot": table,
                                 "topicPrefix": prefix, "heartbeat": "2s"}}
    });
    cluster::apply(&f.client, &f.ns, &doc).await.unwrap();
    let connectors: Api<Connector> = Api::namespaced(f.client.clone(), &f.ns);
    wait_ready(&connectors, "orders-cdc", "Running").await;
    let bootstrap = f.env.var("KAFKA_BOOTSTRAP");
    let read = |count: usize| {
        let (bootstrap, topic) = (bootstrap.clone(), topic.clone());
        async move {
            wait_for(
                Duration::from_secs(120),
                &format!("{count} events in {topic}"),
                || {
                    let (bootstrap, topic) = (bootstrap.clone(), topic.clone());
                    async move {
                        let records = sluice_e2e::kafka::read_all(
                            &bootstrap,
                            &topic,
                            Duration::from_secs(2),
                            Duration::from_secs(30),
                        )
                        .ok()?;
                        (records.len() >= count).then_some(records)
                    }
                },
            )
            .await
        }
    };
    let snapshot = read(3).await;
    let ops: Vec<String> = snapshot
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_str(r.value.as_deref().unwrap()).unwrap();
            format!("{} {}", v["op"].as_str().unwrap(), v["after"]["id"])
        })
        .collect();
    assert_eq!(ops, ["r 1", "r 2", "r 3"]);
    pg.batch_execute(&format!(
        "INSERT INTO {table} VALUES (4, 'eu', 40); UPDATE {table} SET total = 11 WHERE id = 1; DELETE FROM {table} WHERE id = 2"
    ))
    .await
    .unwrap();
    let all = read(7).await;
    let changes: Vec<String> = all[3..]
        .iter()
        .map(|r| match r.value.as_deref() {
            None => format!("tombstone {}", r.key.as_deref().unwrap_or_default()),
            Some(v) => {
                let v: serde_json::Value = serde_json::from_str(v).unwrap();
                let row = if v["op"] == "d" {
                    &v["before"]
                } else {
                    &v["after"]
                };
                format!("{} {}", v["op"].as_str().unwrap(), row["id"])
            }
        })
        .collect();
    assert_eq!(changes, ["c 4", "u 1", "d 2", "tombstone {\"id\":2}"]);
    Api::<Connector>::namespaced(f.client.clone(), &f.ns)
        .delete("orders-cdc", &DeleteParams::default())
        .await
        .unwrap();
    // The slot is kept (slotDeletionPolicy: Retain); the test drops it once it is free.
    wait_for(Duration::from_secs(120), "the slot released", || async {
        let n = pg
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
                &[&table],
            )
            .await
            .ok()?;
        (n == 1).then_some(())
    })
    .await;
    f.finish().await;
}
