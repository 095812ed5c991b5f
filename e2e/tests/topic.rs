//! The Topic controller against the real API server and Kafka: the operator binary runs as a
//! child process per test, watching only that test's namespace, with a short resync.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use sluice_e2e::cluster;
use sluice_e2e::topic_harness::*;

#[tokio::test]
async fn creates_a_topic_with_its_partitions_and_config() {
    let s = setup("topic-create").await;
    let op = Operator::start(&s.env, &s.ns, "a", &s.bootstrap).await;
    let kname = cluster::unique("create");
    create(
        &s.topics,
        "orders",
        json!({"topicName": kname, "partitions": 3, "replicationFactor": 1,
               "config": {"retention.ms": "3600000", "cleanup.policy": "delete"}}),
    )
    .await;

    let t = wait_ready(&s.topics, "orders").await;
    let st = t.status.clone().unwrap();
    assert_eq!(st.topic_name.as_deref(), Some(kname.as_str()));
    assert_eq!(st.partitions, Some(3));
    assert_eq!(st.replication_factor, Some(1));
    assert_eq!(
        st.config.get("retention.ms").map(String::as_str),
        Some("3600000")
    );
    assert_eq!(kafka_layout(&s.bootstrap, &kname).await, Some((3, 1)));
    let config = kafka_config(&s.bootstrap, &kname).await;
    assert_eq!(
        config.get("retention.ms").map(String::as_str),
        Some("3600000")
    );
    assert_eq!(
        config.get("cleanup.policy").map(String::as_str),
        Some("delete")
    );
    assert!(t.finalizers().is_empty(), "Retain must leave no finalizer");
    wait_event(&s.client, &s.ns, "orders", "Created").await;
    assert!(
        op.metric("sluice_operator_reconciles_total", "result=\"ok\"")
            .await
            > 0.0
    );
    assert!(op.stop().await.success());
    s.finish().await;
}

#[tokio::test]
async fn adopts_an_existing_topic_and_grows_its_partitions() {
    let s = setup("topic-adopt").await;
    let kname = cluster::unique("adopt");
    kafka_create(&s.bootstrap, &kname, 2, &[("cleanup.policy", "compact")]).await;
    let op = Operator::start(&s.env, &s.ns, "a", &s.bootstrap).await;
    create(
        &s.topics,
        "users",
        json!({"topicName": kname, "partitions": 2, "config": {"cleanup.policy": "compact"}}),
    )
    .await;
    let t = wait_ready(&s.topics, "users").await;
    assert_eq!(t.status.as_ref().unwrap().partitions, Some(2));
    wait_event(&s.client, &s.ns, "users", "Adopted").await;
    let reasons = event_reasons(&s.client, &s.ns, "users").await;
    assert!(!reasons.contains(&"Created".to_string()), "{reasons:?}");

    patch_spec(&s.topics, "users", json!({"partitions": 5})).await;
    let t = wait_until(&s.topics, "users", "at 5 partitions", |t| {
        ready(t).is_some_and(|(s, _, _)| s == "True")
            && t.status.as_ref().and_then(|s| s.partitions) == Some(5)
    })
    .await;
    assert_eq!(t.status.unwrap().config["cleanup.policy"], "compact");
    assert_eq!(kafka_layout(&s.bootstrap, &kname).await, Some((5, 1)));
    wait_event(&s.client, &s.ns, "users", "PartitionsIncreased").await;
    assert!(op.stop().await.success());
    s.finish().await;
}

#[tokio::test]
async fn config_changed_behind_its_back_is_corrected_within_a_resync() {
    let s = setup("topic-drift").await;
    let op = Operator::start(&s.env, &s.ns, "a", &s.bootstrap).await;
    let kname = cluster::unique("drift");
    create(
        &s.topics,
        "events",
        json!({"topicName": kname, "partitions": 1, "config": {"retention.ms": "7200000"}}),
    )
    .await;
    wait_ready(&s.topics, "events").await;

    // Someone changes the topic in Kafka: another retention and an extra override.
    kafka_set_config(
        &s.bootstrap,
        &kname,
        &[("retention.ms", "1000"), ("segment.ms", "60000")],
    )
    .await;
    let want = BTreeMap::from([("retention.ms".to_string(), "7200000".to_string())]);
    wait_kafka("config restored in Kafka", want.clone(), || {
        kafka_config(&s.bootstrap, &kname)
    })
    .await;
    wait_event(&s.client, &s.ns, "events", "ConfigChanged").await;
    let t = wait_ready(&s.topics, "events").await;
    assert_eq!(t.status.unwrap().config, want);

    // Someone deletes the topic in Kafka: it comes back as specified.
    let a = admin(&s.bootstrap);
    let r = a.delete_topics(&[kname.as_str()], &opts()).await.unwrap();
    r[0].as_ref().unwrap();
    wait_kafka("the topic recreated", Some((1, 1)), || {
        kafka_layout(&s.bootstrap, &kname)
    })
    .await;
    wait_kafka("its config recreated", want.clone(), || {
        kafka_config(&s.bootstrap, &kname)
    })
    .await;
    assert!(op.stop().await.success());
    s.finish().await;
}

#[tokio::test]
async fn refuses_what_kafka_cannot_do_and_recovers_when_the_spec_is_fixed() {
    let s = setup("topic-refuse").await;
    let op = Operator::start(&s.env, &s.ns, "a", &s.bootstrap).await;
    let kname = cluster::unique("refuse");
    create(
        &s.topics,
        "payments",
        json!({"topicName": kname, "partitions": 3, "replicationFactor": 1,
               "config": {"retention.ms": "3600000"}}),
    )
    .await;
    wait_ready(&s.topics, "payments").await;

    // Fewer partitions.
    patch_spec(&s.topics, "payments", json!({"partitions": 2})).await;
    let t = wait_reason(&s.topics, "payments", "NotSupported").await;
    let (_, _, msg) = ready(&t).unwrap();
    assert!(msg.contains("cannot remove partitions"), "{msg}");
    assert_eq!(kafka_layout(&s.bootstrap, &kname).await, Some((3, 1)));
    wait_event(&s.client, &s.ns, "payments", "NotSupported").await;

    // Another replication factor.
    patch_spec(
        &s.topics,
        "payments",
        json!({"partitions": 3, "replicationFactor": 2}),
    )
    .await;
    let t = wait_until(
        &s.topics,
        "payments",
        "refusing the replication factor",
        |t| {
            ready(t).is_some_and(|(s, r, m)| {
                s == "False" && r == "NotSupported" && m.contains("replication factor")
            })
        },
    )
    .await;
    assert_eq!(t.status.unwrap().replication_factor, Some(1));

    // An invalid config value: Kafka's own refusal, nothing changed.
    patch_spec(
        &s.topics,
        "payments",
        json!({"replicationFactor": 1, "config": {"retention.ms": "not-a-number"}}),
    )
    .await;
    let t = wait_reason(&s.topics, "payments", "InvalidConfig").await;
    let (_, _, msg) = ready(&t).unwrap();
    // Kafka's own words.
    assert!(
        msg.contains("Invalid value not-a-number for configuration retention.ms"),
        "{msg}"
    );
    wait_event(&s.client, &s.ns, "payments", "InvalidConfig").await;
    assert_eq!(
        kafka_config(&s.bootstrap, &kname)
            .await
            .get("retention.ms")
            .map(String::as_str),
        Some("3600000")
    );

    // An unknown config key.
    patch_spec(
        &s.topics,
        "payments",
        json!({"config": {"retention.ms": "3600000", "no.such.setting": "1"}}),
    )
    .await;
    let t = wait_until(&s.topics, "payments", "refusing the unknown key", |t| {
        ready(t).is_some_and(|(s, r, m)| {
            s == "False" && r == "InvalidConfig" && m.contains("no.such.setting")
        })
    })
    .await;
    drop(t);

    // Fixed: Ready again, and the fix applied.
    patch_spec(
        &s.topics,
        "payments",
        json!({"partitions": 4, "config": {"retention.ms": "5400000", "no.such.setting": null}}),
    )
    .await;
    let t = wait_ready(&s.topics, "payments").await;
    assert_eq!(t.status.as_ref().unwrap().partitions, Some(4));
    assert_eq!(kafka_layout(&s.bootstrap, &kname).await, Some((4, 1)));
    assert_eq!(
        kafka_config(&s.bootstrap, &kname)
            .await
            .get("retention.ms")
            .map(String::as_str),
        Some("5400000")
    );
    assert!(op.stop().await.success());
    s.finish().await;
}

#[tokio::test]
async fn a_topic_a_stateful_pipeline_reads_does_not_grow_until_the_pipeline_goes() {
    let s = setup("topic-state").await;
    install_crd(&s.client, "pipelines.sluice.dev").await;
    let op = Operator::start(&s.env, &s.ns, "a", &s.bootstrap).await;
    let kname = cluster::unique("stateful");
    create(
        &s.topics,
        "orders",
        json!({"topicName": kname, "partitions": 2}),
    )
    .await;
    wait_ready(&s.topics, "orders").await;
    // A Pipeline summing per key reads it: its state lives per input partition.
    let pipeline = json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "Pipeline",
        "metadata": {"name": "totals"},
        "spec": {"inputs": [kname], "outputs": [{"topic": "out"}], "steps": [
            {"name": "sum", "aggregate": {"groupBy": {"r": "value.r"},
             "aggregations": [{"name": "n", "op": "count"}]}}]}
    });
    cluster::apply(&s.client, &s.ns, &pipeline).await.unwrap();

    patch_spec(&s.topics, "orders", json!({"partitions": 4})).await;
    let t = wait_reason(&s.topics, "orders", "NotSupported").await;
    let (_, _, msg) = ready(&t).unwrap();
    assert!(msg.contains("Pipeline(s) totals"), "{msg}");
    assert_eq!(kafka_layout(&s.bootstrap, &kname).await, Some((2, 1)));

    // Without the Pipeline the topic grows.
    let pipelines: Api<sluice_crds::Pipeline> = Api::namespaced(s.client.clone(), &s.ns);
    pipelines
        .delete("totals", &Default::default())
        .await
        .unwrap();
    wait_ready(&s.topics, "orders").await;
    wait_kafka("4 partitions", Some((4, 1)), || {
        kafka_layout(&s.bootstrap, &kname)
    })
    .await;
    op.stop().await;
    s.finish().await;
}

#[tokio::test]
async fn the_oldest_of_two_topics_for_one_kafka_topic_owns_it() {
    let s = setup("topic-conflict").await;
    let op = Operator::start(&s.env, &s.ns, "a", &s.bootstrap).await;
    let kname = cluster::unique("conflict");
    create(
        &s.topics,
        "first",
        json!({"topicName": kname, "partitions": 2}),
    )
    .await;
    wait_ready(&s.topics, "first").await;
    create(
        &s.topics,
        "second",
        json!({"topicName": kname, "partitions": 6}),
    )
    .await;
    let t = wait_reason(&s.topics, "second", "ResourceConflict").await;
    let (_, _, msg) = ready(&t).unwrap();
    assert!(msg.contains(&format!("{}/first", s.ns)), "{msg}");
    // The second changes nothing.
    assert_eq!(kafka_layout(&s.bootstrap, &kname).await, Some((2, 1)));
    let first = s.topics.get("first").await.unwrap();
    assert_eq!(ready(&first).unwrap().0, "True");
    wait_event(&s.client, &s.ns, "second", "ResourceConflict").await;

    // When the owner goes (Retain), the other takes over and applies its spec.
    s.topics
        .delete("first", &DeleteParams::default())
        .await
        .unwrap();
    wait_ready(&s.topics, "second").await;
    wait_event(&s.client, &s.ns, "second", "Adopted").await;
    wait_kafka("the new owner grew the topic", Some((6, 1)), || {
        kafka_layout(&s.bootstrap, &kname)
    })
    .await;
    assert!(op.stop().await.success());
    s.finish().await;
}

#[tokio::test]
async fn deletion_follows_the_deletion_policy() {
    let s = setup("topic-delete").await;
    let op = Operator::start(&s.env, &s.ns, "a", &s.bootstrap).await;
    let keep = cluster::unique("keep");
    let gone = cluster::unique("gone");
    create(&s.topics, "keep", json!({"topicName": keep})).await;
    create(
        &s.topics,
        "gone",
        json!({"topicName": gone, "deletionPolicy": "Delete"}),
    )
    .await;
    let k = wait_ready(&s.topics, "keep").await;
    let g = wait_ready(&s.topics, "gone").await;
    assert!(k.finalizers().is_empty());
    assert_eq!(g.finalizers(), ["sluice.dev/delete-kafka-topic"]);

    // The finalizer follows the policy both ways.
    patch_spec(&s.topics, "keep", json!({"deletionPolicy": "Delete"})).await;
    wait_until(&s.topics, "keep", "given the finalizer", |t| {
        !t.finalizers().is_empty()
    })
    .await;
    patch_spec(&s.topics, "keep", json!({"deletionPolicy": "Retain"})).await;
    wait_until(&s.topics, "keep", "rid of the finalizer", |t| {
        t.finalizers().is_empty()
    })
    .await;

    s.topics
        .delete("keep", &DeleteParams::default())
        .await
        .unwrap();
    s.topics
        .delete("gone", &DeleteParams::default())
        .await
        .unwrap();
    for name in ["keep", "gone"] {
        let deadline = tokio::time::Instant::now() + WAIT;
        while s.topics.get_opt(name).await.unwrap().is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} was not deleted"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    wait_kafka("Delete removed the Kafka topic", None, || {
        kafka_layout(&s.bootstrap, &gone)
    })
    .await;
    assert_eq!(kafka_layout(&s.bootstrap, &keep).await, Some((1, 1)));
    assert!(op.stop().await.success());
    s.finish().await;
}

/// Forwards connections from a local port to Kafka's bootstrap address, while running.
async fn forward(listener: tokio::net::TcpListener, target: String) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            return;
        };
        let target = target.clone();
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

#[tokio::test]
async fn kafka_unreachable_is_reported_and_recovered_from() {
    let s = setup("topic-unreachable").await;
    // Nothing listens on this port yet: Kafka is unreachable for the operator.
    let port = free_port();
    let op = Operator::start(&s.env, &s.ns, "a", &format!("127.0.0.1:{port}")).await;
    let kname = cluster::unique("unreach");
    create(
        &s.topics,
        "late",
        json!({"topicName": kname, "partitions": 2}),
    )
    .await;
    let t = wait_reason(&s.topics, "late", "KafkaUnavailable").await;
    let (_, _, msg) = ready(&t).unwrap();
    assert!(!msg.is_empty());
    wait_event(&s.client, &s.ns, "late", "KafkaUnavailable").await;
    assert!(
        op.metric("sluice_operator_kafka_admin_errors_total", "describe")
            .await
            > 0.0
    );

    // Kafka comes back (bootstrap through a forwarder on that port): the operator recovers.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let fwd = tokio::spawn(forward(listener, s.bootstrap.clone()));
    wait_ready(&s.topics, "late").await;
    assert_eq!(kafka_layout(&s.bootstrap, &kname).await, Some((2, 1)));
    fwd.abort();
    assert!(op.stop().await.success());
    s.finish().await;
}

#[tokio::test]
async fn a_restart_midway_loses_and_duplicates_nothing() {
    let s = setup("topic-restart").await;
    let op = Operator::start(&s.env, &s.ns, "a", &s.bootstrap).await;
    let names: Vec<String> = (0..4)
        .map(|i| cluster::unique(&format!("restart{i}")))
        .collect();
    for (i, k) in names.iter().enumerate() {
        create(
            &s.topics,
            &format!("t{i}"),
            json!({"topicName": k, "partitions": 2}),
        )
        .await;
    }
    // Crash while it is working through them.
    wait_until(&s.topics, "t0", "seen", |t| t.status.is_some()).await;
    op.kill().await;
    // Changes while no operator runs.
    patch_spec(&s.topics, "t1", json!({"partitions": 3})).await;
    create(
        &s.topics,
        "t4",
        json!({"topicName": cluster::unique("restart4"), "partitions": 1}),
    )
    .await;

    let op = Operator::start(&s.env, &s.ns, "b", &s.bootstrap).await;
    for i in 0..5 {
        wait_ready(&s.topics, &format!("t{i}")).await;
    }
    for (i, k) in names.iter().enumerate() {
        let want = if i == 1 { 3 } else { 2 };
        assert_eq!(kafka_layout(&s.bootstrap, k).await, Some((want, 1)), "t{i}");
        let reasons = event_reasons(&s.client, &s.ns, &format!("t{i}")).await;
        let created = reasons.iter().filter(|r| *r == "Created").count();
        assert!(created <= 1, "t{i} created {created} times: {reasons:?}");
    }
    assert!(op.stop().await.success());
    s.finish().await;
}

#[tokio::test]
async fn with_two_replicas_only_the_leader_writes() {
    let s = setup("topic-leader").await;
    let a = Operator::start(&s.env, &s.ns, "replica-a", &s.bootstrap).await;
    // Let `a` take the lease first, so that the test knows which one leads.
    let leases: Api<Lease> = Api::namespaced(s.client.clone(), &s.ns);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let holder = leases
            .get_opt("sluice-operator")
            .await
            .unwrap()
            .and_then(|l| l.spec?.holder_identity);
        if holder.as_deref() == Some("replica-a") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replica-a never led"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let b = Operator::start(&s.env, &s.ns, "replica-b", &s.bootstrap).await;

    let k1 = cluster::unique("leader1");
    create(&s.topics, "one", json!({"topicName": k1})).await;
    wait_ready(&s.topics, "one").await;
    // b is up (serves metrics) but has not reconciled anything.
    let deadline = tokio::time::Instant::now() + WAIT;
    while b.metrics().await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "replica-b metrics never came up"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(a.metric("sluice_operator_leader", "").await, 1.0);
    assert_eq!(b.metric("sluice_operator_leader", "").await, 0.0);
    assert_eq!(b.metric("sluice_operator_reconciles_total", "").await, 0.0);
    assert_eq!(b.metric("sluice_operator_kube_writes_total", "").await, 0.0);
    for (reason, _, instance) in events(&s.client, &s.ns, "one").await {
        assert_eq!(instance, "replica-a", "{reason} written by {instance}");
    }

    // The leader stops (SIGTERM releases the lease): b takes over.
    let a_log = a.log.clone();
    assert!(a.stop().await.success(), "see {}", a_log.display());
    let k2 = cluster::unique("leader2");
    create(&s.topics, "two", json!({"topicName": k2})).await;
    wait_ready(&s.topics, "two").await;
    assert_eq!(b.metric("sluice_operator_leader", "").await, 1.0);
    let created: Vec<_> = events(&s.client, &s.ns, "two").await;
    assert!(
        created
            .iter()
            .any(|(r, _, i)| r == "Created" && i == "replica-b"),
        "{created:?}"
    );
    assert_eq!(b.identity, "replica-b");
    assert!(b.stop().await.success());
    s.finish().await;
}

#[tokio::test]
async fn an_idle_operator_writes_nothing() {
    let s = setup("topic-idle").await;
    let op = Operator::start(&s.env, &s.ns, "a", &s.bootstrap).await;
    let k1 = cluster::unique("idle1");
    let k2 = cluster::unique("idle2");
    create(&s.topics, "plain", json!({"topicName": k1})).await;
    create(
        &s.topics,
        "configured",
        json!({"topicName": k2, "partitions": 2, "deletionPolicy": "Delete",
               "config": {"retention.ms": "3600000"}}),
    )
    .await;
    wait_ready(&s.topics, "plain").await;
    wait_ready(&s.topics, "configured").await;
    // Let the first resync after Ready pass, then take a snapshot.
    tokio::time::sleep(RESYNC).await;

    let snapshot = || async {
        let topics: Vec<(String, String)> = s
            .topics
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|t| (t.name_any(), t.resource_version().unwrap_or_default()))
            .collect();
        let evs: Api<Event> = Api::namespaced(s.client.clone(), &s.ns);
        let events: Vec<(String, String)> = evs
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|e| (e.name_any(), e.resource_version().unwrap_or_default()))
            .collect();
        (topics, events)
    };
    let before = snapshot().await;
    let writes_before = op.metric("sluice_operator_kube_writes_total", "").await;
    let reconciles_before = op.metric("sluice_operator_reconciles_total", "").await;
    // Three resyncs: every Topic is reconciled (and Kafka read) at least twice.
    tokio::time::sleep(3 * RESYNC).await;
    let after = snapshot().await;
    let reconciles_after = op.metric("sluice_operator_reconciles_total", "").await;
    assert!(
        reconciles_after >= reconciles_before + 4.0,
        "the operator did not resync: {reconciles_before} -> {reconciles_after}"
    );
    assert_eq!(before.0, after.0, "Topics were written while idle");
    assert_eq!(before.1, after.1, "events were written while idle");
    assert_eq!(
        writes_before,
        op.metric("sluice_operator_kube_writes_total", "").await,
        "the operator counted writes while idle"
    );
    s.topics
        .delete("configured", &DeleteParams::default())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while s.topics.get_opt("configured").await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "configured was not deleted"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(op.stop().await.success());
    s.finish().await;
}
