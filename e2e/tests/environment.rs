//! The e2e environment `e2e/up` starts is real and usable: each test talks to one part of
//! it the way Sluice will. Names are unique per test so tests run in parallel.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Message};
use serde_json::json;
use sluice_e2e::cluster;
use sluice_e2e::env::TestEnv;

/// Long enough for a slow shared machine; the tests wait for events, never for time.
const WAIT: Duration = Duration::from_secs(120);

async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// One plain HTTP/1.1 request (the e2e servers are on loopback without TLS).
async fn http(method: &str, url: &url::Url, body: Vec<u8>) -> (u16, Vec<u8>) {
    let host = url.host_str().unwrap().to_string();
    let port = url.port_or_known_default().unwrap();
    let stream = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .unwrap_or_else(|e| panic!("connect {host}:{port}: {e}"));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", format!("{host}:{port}"))
        .header("content-length", body.len())
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, bytes.to_vec())
}

#[tokio::test]
async fn api_server_serves_and_reports_its_version() {
    let env = TestEnv::require();
    let client = cluster::client(&env).await.unwrap();
    let info = client.apiserver_version().await.unwrap();
    assert_eq!(info.major, "1");
    assert!(
        info.git_version.starts_with("v1.34."),
        "unexpected version {}",
        info.git_version
    );
    let namespaces: Api<Namespace> = Api::all(client);
    let names: Vec<String> = namespaces
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    for expected in ["default", "kube-system"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} not in {names:?}"
        );
    }
}

#[tokio::test]
async fn a_crd_becomes_established_and_serves_its_kind() {
    let env = TestEnv::require();
    let client = cluster::client(&env).await.unwrap();
    let plural = cluster::unique("widgets").replace('-', "");
    let group = "e2e.sluice.dev";
    let name = format!("{plural}.{group}");
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": name },
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": { "plural": plural, "singular": plural, "kind": format!("W{plural}") },
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": { "openAPIV3Schema": { "type": "object", "properties": {
                    "spec": { "type": "object", "properties": { "size": { "type": "integer" } } }
                } } }
            }]
        }
    }))
    .unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &crd).await.unwrap();
    within(
        "the CRD to become Established",
        await_condition(crds.clone(), &name, conditions::is_crd_established()),
    )
    .await
    .unwrap();

    // The new kind is served: a custom object can be created and read back.
    let resource = kube::core::ApiResource {
        group: group.to_string(),
        version: "v1".to_string(),
        api_version: format!("{group}/v1"),
        kind: format!("W{plural}"),
        plural: plural.clone(),
    };
    let objects: Api<kube::core::DynamicObject> =
        Api::namespaced_with(client.clone(), "default", &resource);
    let mut obj = kube::core::DynamicObject::new("one", &resource);
    obj.data = json!({ "spec": { "size": 3 } });
    // Discovery of a fresh CRD can lag Established by a moment: retry until it is served.
    let created = within("the custom object to be created", async {
        loop {
            match objects.create(&PostParams::default(), &obj).await {
                Ok(o) => break o,
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(e) => panic!("creating the custom object: {e}"),
            }
        }
    })
    .await;
    assert_eq!(created.data["spec"]["size"], 3);
    crds.delete(&name, &DeleteParams::default()).await.unwrap();
}

#[tokio::test]
async fn controller_manager_runs_deployments_and_collects_a_deleted_namespace() {
    let env = TestEnv::require();
    let client = cluster::client(&env).await.unwrap();
    let ns_name = cluster::unique("gc");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({ "metadata": { "name": ns_name } })).unwrap();
    let ns = namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();

    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns_name);
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": "settings" }, "data": { "k": "v" }
    }))
    .unwrap();
    config_maps
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();

    // The deployment and replicaset controllers (and the serviceaccount controller, whose
    // `default` account pod admission needs) turn a Deployment into a ReplicaSet and a Pod.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns_name);
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": { "name": "web" },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": { "containers": [{ "name": "web", "image": "example.invalid/web:1" }] }
            }
        }
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns_name);
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns_name);
    within("the Deployment's ReplicaSet and Pod", async {
        loop {
            let rs = replica_sets.list(&ListParams::default()).await.unwrap();
            let pod_list = pods.list(&ListParams::default()).await.unwrap();
            let owned_by_rs = pod_list.items.iter().any(|p| {
                p.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.kind == "ReplicaSet")
            });
            if !rs.items.is_empty() && owned_by_rs {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;

    // Deleting the namespace: the namespace controller empties it, then it disappears.
    namespaces
        .delete(&ns_name, &DeleteParams::default())
        .await
        .unwrap();
    let uid = ns.metadata.uid.clone().unwrap();
    within(
        "the namespace to be deleted",
        await_condition(namespaces.clone(), &ns_name, conditions::is_deleted(&uid)),
    )
    .await
    .unwrap();
    assert!(namespaces.get_opt(&ns_name).await.unwrap().is_none());
}

#[tokio::test]
async fn kafka_round_trips_a_transactional_record() {
    let env = TestEnv::require();
    let bootstrap = env.var("KAFKA_BOOTSTRAP");
    let topic = cluster::unique("e2e-env");

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let results = admin
        .create_topics(
            &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    for r in results {
        r.unwrap();
    }

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("transactional.id", format!("{topic}-tx"))
        .create()
        .unwrap();
    producer.init_transactions(WAIT).unwrap();
    // An aborted record first: a read_committed consumer must never see it.
    producer.begin_transaction().unwrap();
    producer
        .send(FutureRecord::to(&topic).key("k").payload("aborted"), WAIT)
        .await
        .unwrap();
    producer.abort_transaction(WAIT).unwrap();
    producer.begin_transaction().unwrap();
    producer
        .send(FutureRecord::to(&topic).key("k").payload("committed"), WAIT)
        .await
        .unwrap();
    producer.commit_transaction(WAIT).unwrap();

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", format!("{topic}-group"))
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let msg = within("the committed record", consumer.recv())
        .await
        .unwrap();
    assert_eq!(msg.payload(), Some(&b"committed"[..]));
    assert_eq!(msg.key(), Some(&b"k"[..]));
}

#[tokio::test]
async fn postgres_decodes_an_insert_through_a_logical_replication_slot() {
    let env = TestEnv::require();
    let url = env.var("DATABASE_URL");
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    tokio::spawn(conn);
    let name = cluster::unique("env").replace('-', "_");
    let table = format!("t_{name}");
    let slot = format!("s_{name}");

    db.batch_execute(&format!(
        "create table {table} (id int primary key, v text)"
    ))
    .await
    .unwrap();
    db.query(
        "select pg_create_logical_replication_slot($1, 'test_decoding')",
        &[&slot],
    )
    .await
    .unwrap();
    db.execute(
        &format!("insert into {table} (id, v) values (1, 'hello')"),
        &[],
    )
    .await
    .unwrap();
    // Decoding sees a commit once its WAL is flushed: poll the slot until the insert shows.
    let wanted = format!("public.{table}: INSERT");
    let mut changes: Vec<String> = Vec::new();
    within("the insert to be decoded", async {
        while !changes.iter().any(|c| c.contains(&wanted)) {
            let rows = db
                .query(
                    "select data from pg_logical_slot_get_changes($1, NULL, NULL)",
                    &[&slot],
                )
                .await
                .unwrap();
            changes.extend(rows.iter().map(|r| r.get::<_, String>(0)));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    db.query("select pg_drop_replication_slot($1)", &[&slot])
        .await
        .unwrap();
    db.batch_execute(&format!("drop table {table}"))
        .await
        .unwrap();
    assert!(
        changes
            .iter()
            .any(|c| c.contains(&format!("public.{table}: INSERT")) && c.contains("'hello'")),
        "insert not decoded: {changes:?}"
    );
}

#[tokio::test]
async fn s3_stores_and_returns_an_object() {
    let env = TestEnv::require();
    let endpoint: url::Url = env.var("S3_ENDPOINT").parse().unwrap();
    let bucket = rusty_s3::Bucket::new(
        endpoint,
        rusty_s3::UrlStyle::Path,
        env.var("S3_BUCKET"),
        env.var("S3_REGION"),
    )
    .unwrap();
    let creds = rusty_s3::Credentials::new(env.var("S3_ACCESS_KEY"), env.var("S3_SECRET_KEY"));
    let key = format!("{}/object.txt", cluster::unique("env"));
    let ttl = Duration::from_secs(600);
    use rusty_s3::S3Action;

    let put = bucket.put_object(Some(&creds), &key).sign(ttl);
    let (status, body) = http("PUT", &put, b"stored in s3".to_vec()).await;
    assert_eq!(status, 200, "PUT: {}", String::from_utf8_lossy(&body));

    let get = bucket.get_object(Some(&creds), &key).sign(ttl);
    let (status, body) = http("GET", &get, Vec::new()).await;
    assert_eq!(status, 200);
    assert_eq!(body, b"stored in s3");

    // Unsigned requests are refused: this is a real S3 server with credentials.
    let unsigned = bucket.get_object(None, &key).sign(ttl);
    let (status, _) = http("GET", &unsigned, Vec::new()).await;
    assert_eq!(status, 403);

    let delete = bucket.delete_object(Some(&creds), &key).sign(ttl);
    let (status, _) = http("DELETE", &delete, Vec::new()).await;
    assert_eq!(status, 204);
    let (status, _) = http("GET", &get, Vec::new()).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn connect_lists_the_file_source_plugin() {
    let env = TestEnv::require();
    let url: url::Url = format!("{}/connector-plugins", env.var("CONNECT_URL"))
        .parse()
        .unwrap();
    let (status, body) = http("GET", &url, Vec::new()).await;
    assert_eq!(status, 200);
    let plugins: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
    let classes: Vec<&str> = plugins.iter().filter_map(|p| p["class"].as_str()).collect();
    for class in [
        "org.apache.kafka.connect.file.FileStreamSourceConnector",
        "io.debezium.connector.postgresql.PostgresConnector",
    ] {
        assert!(
            classes.contains(&class),
            "{class} missing; plugins: {classes:?}"
        );
    }
}
