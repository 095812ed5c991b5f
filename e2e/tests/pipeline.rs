//! The Pipeline controller against the real API server and Kafka, with the operator
//! installed by `make deploy` (its Helm chart), operator and processors running as pods on
//! the environment's kubelet node.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::Api;
use serde_json::json;
use sluice_e2e::cluster;
use sluice_e2e::installed::*;
use sluice_e2e::kafka;

#[tokio::test]
async fn seed_pipeline_sums_orders_per_region_exactly_once_with_a_dlq() {
    let f = fixture("seed").await;
    f.topics(&[("orders", 6), ("totals", 3), ("dlq", 1)]).await;
    f.pipeline(
        "region-totals",
        seed_spec(&f, json!({"minReplicas": 1, "maxReplicas": 2})),
    )
    .await;

    let (mut records, expected, kept) = orders(0, 900);
    records.insert(100, ("bad-1".into(), "not json".into()));
    records.insert(500, ("bad-2".into(), "{\"orderId\": 7".into()));
    f.produce("orders", &records).await;

    let out = f.read_until("totals", kept, Duration::from_secs(180)).await;
    assert_totals(&out, &expected, kept);
    let dlq = f.read("dlq");
    assert_eq!(dlq.len(), 2, "{dlq:?}");
    for d in &dlq {
        assert_eq!(d.headers["sluice.source.topic"], f.topic("orders"));
        assert!(d.headers.contains_key("sluice.error"));
        assert!(d.headers.contains_key("sluice.source.offset"));
    }

    let p = f.pipelines().get("region-totals").await.unwrap();
    let status = p.status.unwrap();
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "True", "{ready:?}");
    assert_eq!(status.observed_generation, p.metadata.generation);
    assert!(status.ready_replicas >= 1);
    let selector = status.selector.unwrap();
    assert!(selector.contains("sluice.dev/pipeline=region-totals"));
    // The processors, and the operator that made them, are containers the kubelet runs
    // on the node, in the images the chart names.
    f.assert_on_node(&f.ns, &selector, "ghcr.io/sluice/sluice-processor:")
        .await;
    f.assert_on_node(
        "sluice-system",
        "app.kubernetes.io/name=sluice",
        "ghcr.io/sluice/sluice-operator:",
    )
    .await;
    f.finish().await;
}

#[tokio::test]
async fn the_kafka_client_secret_reaches_each_pipeline_namespace_and_processors_connect_with_sasl()
{
    // `make deploy` installs Sluice against the broker's SASL/SCRAM listener, with its
    // client settings in a Secret of the release namespace only. Processors run in the
    // Pipeline's namespace and can mount only Secrets of their own namespace: the
    // operator gives each Pipeline a copy, owned by it.
    let f = fixture("sasl").await;
    f.topics(&[("orders", 2), ("totals", 1), ("dlq", 1)]).await;
    f.pipeline(
        "sasl-totals",
        seed_spec(&f, json!({"minReplicas": 1, "maxReplicas": 1})),
    )
    .await;
    let (records, expected, kept) = orders(0, 90);
    f.produce("orders", &records).await;
    let out = f.read_until("totals", kept, Duration::from_secs(180)).await;
    assert_totals(&out, &expected, kept);

    let deployments: Api<Deployment> = Api::namespaced(f.client.clone(), &f.ns);
    let pod = deployments
        .get("sasl-totals-processor")
        .await
        .unwrap()
        .spec
        .unwrap()
        .template
        .spec
        .unwrap();
    let env = pod.containers[0].env.clone().unwrap_or_default();
    let bootstrap = env
        .iter()
        .find(|e| e.name == "SLUICE_KAFKA_BOOTSTRAP")
        .and_then(|e| e.value.clone());
    assert_eq!(
        bootstrap.as_deref(),
        Some(f.env.var("KAFKA_SASL_BOOTSTRAP").as_str()),
        "the processors read and wrote through the SASL listener"
    );
    let mounted = pod
        .volumes
        .unwrap_or_default()
        .into_iter()
        .find_map(|v| v.secret.and_then(|s| s.secret_name));
    assert_eq!(mounted.as_deref(), Some("sasl-totals-processor-kafka"));

    let secrets: Api<Secret> = Api::namespaced(f.client.clone(), &f.ns);
    let secret = secrets.get("sasl-totals-processor-kafka").await.unwrap();
    let properties =
        String::from_utf8(secret.data.unwrap()["client.properties"].0.clone()).unwrap();
    assert!(
        properties.contains("sasl.mechanism=SCRAM-SHA-512"),
        "{properties}"
    );
    let owner = &secret.metadata.owner_references.unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Pipeline", "sasl-totals")
    );

    // The copy goes with its Pipeline.
    f.pipelines()
        .delete("sasl-totals", &Default::default())
        .await
        .unwrap();
    wait_for(
        Duration::from_secs(120),
        "the Secret's garbage collection",
        || async {
            secrets
                .get_opt("sasl-totals-processor-kafka")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
    f.finish().await;
}

#[tokio::test]
async fn bad_expression_is_refused_with_a_readable_status_and_nothing_deployed() {
    let f = fixture("badexpr").await;
    f.topics(&[("orders", 1), ("totals", 1)]).await;
    let spec = json!({
        "inputs": [f.topic("orders")],
        "steps": [{"name": "broken", "filter": "value.total >"}],
        "outputs": [{"topic": f.topic("totals")}],
    });
    f.pipeline("broken", spec).await;
    let ready = f.ready_with_reason("broken", "InvalidSpec").await;
    assert_eq!(ready.status, "False");
    assert!(
        ready.message.contains("step broken filter"),
        "{}",
        ready.message
    );
    let deployments: Api<Deployment> = Api::namespaced(f.client.clone(), &f.ns);
    assert!(
        deployments
            .get_opt("broken-processor")
            .await
            .unwrap()
            .is_none(),
        "nothing half-deployed"
    );

    // Fixing the expression deploys it.
    let fixed = json!({
        "inputs": [f.topic("orders")],
        "steps": [{"name": "broken", "filter": "value.total > 0.0"}],
        "outputs": [{"topic": f.topic("totals")}],
    });
    f.pipeline("broken", fixed).await;
    wait_for(Duration::from_secs(60), "processor Deployment", || async {
        deployments.get_opt("broken-processor").await.ok()?
    })
    .await;
    f.finish().await;
}

#[tokio::test]
async fn an_image_the_installation_does_not_list_is_refused_and_nothing_deployed() {
    let f = fixture("image").await;
    f.topics(&[("orders", 1), ("totals", 1)]).await;
    let mut spec = json!({
        "inputs": [f.topic("orders")],
        "outputs": [{"topic": f.topic("totals")}],
        "image": "evil.example/miner:latest",
    });
    f.pipeline("imaged", spec.clone()).await;
    let ready = f.ready_with_reason("imaged", "InvalidSpec").await;
    assert!(
        ready.message.contains("evil.example/miner:latest")
            && ready.message.contains("processor.allowedImages"),
        "{}",
        ready.message
    );
    let deployments: Api<Deployment> = Api::namespaced(f.client.clone(), &f.ns);
    assert!(
        deployments
            .get_opt("imaged-processor")
            .await
            .unwrap()
            .is_none()
    );
    // Without the image, the release's processor runs it.
    spec.as_object_mut().unwrap().remove("image");
    f.pipeline("imaged", spec).await;
    wait_for(Duration::from_secs(60), "processor Deployment", || async {
        deployments.get_opt("imaged-processor").await.ok()?
    })
    .await;
    f.finish().await;
}

#[tokio::test]
async fn children_edited_or_deleted_by_hand_are_repaired_within_a_resync() {
    let f = fixture("repair").await;
    f.topics(&[("orders", 1), ("totals", 1), ("dlq", 1)]).await;
    f.pipeline(
        "mended",
        seed_spec(&f, json!({"minReplicas": 1, "maxReplicas": 1})),
    )
    .await;
    let deployments: Api<Deployment> = Api::namespaced(f.client.clone(), &f.ns);
    let configmaps: Api<ConfigMap> = Api::namespaced(f.client.clone(), &f.ns);
    let services: Api<Service> = Api::namespaced(f.client.clone(), &f.ns);
    let image_of = |d: Deployment| d.spec?.template.spec?.containers.first()?.image.clone();
    let image = wait_for(Duration::from_secs(60), "processor Deployment", || async {
        image_of(deployments.get_opt("mended-processor").await.ok()??)
    })
    .await;

    configmaps
        .delete("mended-processor", &Default::default())
        .await
        .unwrap();
    services
        .delete("mended-processor-metrics", &Default::default())
        .await
        .unwrap();
    let edit = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "processor", "image": "example.invalid/other:1"}
    ]}}}});
    deployments
        .patch(
            "mended-processor",
            &kube::api::PatchParams::apply("e2e-hand-edit").force(),
            &kube::api::Patch::Apply(json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "mended-processor"},
                "spec": edit["spec"],
            })),
        )
        .await
        .unwrap();

    // The operator resyncs every 10 s under `make deploy`.
    wait_for(
        Duration::from_secs(60),
        "the ConfigMap, Service and image back",
        || async {
            let cm = configmaps.get_opt("mended-processor").await.ok()??;
            services.get_opt("mended-processor-metrics").await.ok()??;
            let now = image_of(deployments.get_opt("mended-processor").await.ok()??)?;
            (now == image && cm.data.is_some()).then_some(())
        },
    )
    .await;
    f.finish().await;
}

#[tokio::test]
async fn missing_input_topic_is_reported() {
    let f = fixture("missing").await;
    f.topics(&[("totals", 1)]).await;
    let spec = json!({"inputs": [f.topic("nowhere")], "outputs": [{"topic": f.topic("totals")}]});
    f.pipeline("orphan", spec).await;
    let api = f.pipelines();
    let topics = wait_for(Duration::from_secs(60), "TopicsReady=False", || async {
        let p = api.get("orphan").await.ok()?;
        p.status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "TopicsReady" && c.status == "False")
    })
    .await;
    assert_eq!(topics.reason, "InputTopicMissing");
    assert!(topics.message.contains(&f.topic("nowhere")));
    f.finish().await;
}

#[tokio::test]
async fn missing_output_and_table_topics_are_named_until_they_exist() {
    let f = fixture("missingout").await;
    f.topics(&[("orders", 1)]).await;
    let spec = json!({
        "inputs": [f.topic("orders")],
        "steps": [{"name": "who", "enrich": {"table": f.topic("customers"), "key": "value.c", "into": "customer"}}],
        "outputs": [{"topic": f.topic("totals")}],
    });
    f.pipeline("half", spec).await;
    let api = f.pipelines();
    let missing = wait_for(Duration::from_secs(60), "TopicMissing", || async {
        let p = api.get("half").await.ok()?;
        p.status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "TopicsReady" && c.reason == "TopicMissing")
    })
    .await;
    assert_eq!(missing.status, "False");
    for base in ["customers", "totals"] {
        assert!(
            missing.message.contains(&f.topic(base)),
            "{base}: {}",
            missing.message
        );
    }
    // Once they exist the condition clears and the processor runs.
    f.topics(&[("customers", 1), ("totals", 1)]).await;
    wait_for(Duration::from_secs(120), "Ready=True", || async {
        let p = api.get("half").await.ok()?;
        p.status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready" && c.status == "True")
    })
    .await;
    f.finish().await;
}

#[tokio::test]
async fn a_pipeline_never_takes_over_objects_it_did_not_create() {
    let f = fixture("takeover").await;
    f.topics(&[("orders", 1), ("totals", 1)]).await;
    // Somebody's ConfigMap already has the name the processor's config would get.
    let theirs = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "taken-processor"},
        "data": {"owner": "someone else"}
    });
    cluster::apply(&f.client, &f.ns, &theirs).await.unwrap();
    let spec = json!({"inputs": [f.topic("orders")], "outputs": [{"topic": f.topic("totals")}]});
    f.pipeline("taken", spec).await;
    let api = f.pipelines();
    let ready = wait_for(Duration::from_secs(60), "ResourceConflict", || async {
        let p = api.get("taken").await.ok()?;
        p.status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready" && c.reason == "ResourceConflict")
    })
    .await;
    assert_eq!(ready.status, "False");
    assert!(
        ready.message.contains("ConfigMap taken-processor"),
        "{}",
        ready.message
    );
    let deployments: Api<Deployment> = Api::namespaced(f.client.clone(), &f.ns);
    assert!(
        deployments
            .get_opt("taken-processor")
            .await
            .unwrap()
            .is_none(),
        "nothing deployed"
    );
    // Theirs is untouched and carries no owner reference, so deleting the Pipeline
    // cannot take it along.
    let configmaps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(f.client.clone(), &f.ns);
    let cm = configmaps.get("taken-processor").await.unwrap();
    assert_eq!(
        cm.data.unwrap_or_default().get("owner").map(String::as_str),
        Some("someone else")
    );
    assert!(cm.metadata.owner_references.unwrap_or_default().is_empty());
    f.finish().await;
}

#[tokio::test]
async fn a_scaling_change_resizes_without_rolling_the_processors() {
    let f = fixture("resize").await;
    f.topics(&[("orders", 2), ("totals", 1)]).await;
    let spec = |max: i32| {
        json!({
            "inputs": [f.topic("orders")],
            "outputs": [{"topic": f.topic("totals")}],
            "scaling": {"minReplicas": 1, "maxReplicas": max, "lagTarget": "20s"},
        })
    };
    f.pipeline("sized", spec(1)).await;
    let api = f.pipelines();
    wait_for(Duration::from_secs(120), "Ready=True", || async {
        let p = api.get("sized").await.ok()?;
        p.status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready" && c.status == "True")
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(f.client.clone(), &f.ns);
    let template = |d: Deployment| d.spec.map(|s| s.template);
    let before = template(deployments.get("sized-processor").await.unwrap());
    f.pipeline("sized", spec(2)).await;
    let generation = api.get("sized").await.unwrap().metadata.generation;
    wait_for(Duration::from_secs(60), "the new spec observed", || async {
        let s = api.get("sized").await.ok()?.status?;
        (s.observed_generation == generation).then_some(())
    })
    .await;
    let after = template(deployments.get("sized-processor").await.unwrap());
    assert_eq!(
        after, before,
        "the pod template, and so the pods, are unchanged"
    );
    f.finish().await;
}

#[tokio::test]
async fn spec_change_rolls_out_without_losing_or_duplicating_records() {
    let f = fixture("rollout").await;
    f.topics(&[("orders", 3), ("totals", 3), ("dlq", 1)]).await;
    f.pipeline(
        "rolling",
        seed_spec(&f, json!({"minReplicas": 1, "maxReplicas": 1})),
    )
    .await;
    let (first, _, _) = orders(0, 1500);
    f.produce("orders", &first).await;
    // Change the spec mid-stream: a new commit interval changes the config hash.
    let mut changed = seed_spec(&f, json!({"minReplicas": 1, "maxReplicas": 1}));
    changed["commitInterval"] = json!("250ms");
    f.pipeline("rolling", changed).await;
    let deployments: Api<Deployment> = Api::namespaced(f.client.clone(), &f.ns);
    let (second, _, _) = orders(1500, 3000);
    f.produce("orders", &second).await;
    let (_, expected, kept) = orders(0, 3000);
    let out = f.read_until("totals", kept, Duration::from_secs(240)).await;
    assert_totals(&out, &expected, kept);
    let d = deployments.get("rolling-processor").await.unwrap();
    assert!(
        d.metadata.generation.unwrap_or(0) >= 2,
        "the Deployment rolled out the change"
    );
    f.finish().await;
}

#[tokio::test]
async fn min_zero_scales_to_zero_when_idle_and_wakes_on_new_data() {
    let f = fixture("zero").await;
    f.topics(&[("orders", 2), ("totals", 2), ("dlq", 1)]).await;
    let scaling = json!({"minReplicas": 0, "maxReplicas": 2, "idleAfter": "10s", "scaleDownStabilization": "10s"});
    f.pipeline("sleepy", seed_spec(&f, scaling)).await;
    let (first, _, kept_first) = orders(0, 100);
    f.produce("orders", &first).await;
    f.read_until("totals", kept_first, Duration::from_secs(120))
        .await;
    let deployments: Api<Deployment> = Api::namespaced(f.client.clone(), &f.ns);
    wait_for(Duration::from_secs(120), "scale to zero", || async {
        let d = deployments.get_opt("sleepy-processor").await.ok()??;
        (d.spec?.replicas == Some(0)).then_some(())
    })
    .await;
    let (second, _, _) = orders(100, 200);
    f.produce("orders", &second).await;
    let (_, expected, kept) = orders(0, 200);
    let out = f.read_until("totals", kept, Duration::from_secs(120)).await;
    assert_totals(&out, &expected, kept);
    let p = f.pipelines().get("sleepy").await.unwrap();
    let last = p.status.unwrap().last_scale.unwrap();
    assert_eq!(
        (last.from, last.to),
        (0, 1),
        "woke from zero: {}",
        last.reason
    );
    f.finish().await;
}

/// Orders waiting before the backlog test's pipeline starts.
const BACKLOG: usize = 60_000;

#[tokio::test]
async fn backlog_scales_up_to_the_partition_count_and_back_down_after_draining() {
    let f = fixture("backlog").await;
    f.topics(&[("orders", 4), ("totals", 4), ("dlq", 1)]).await;
    // The backlog exists before the pipeline: a new group counts it from the log start.
    // Each replica is held to 1,000 records a second (spec.rateLimit), so on any machine
    // one replica needs a minute for the 60,000 orders, far beyond the 2 s lag target: the
    // size the autoscaler computes is above the partition count, so it stops there. (With
    // no limit, a fast machine drains the backlog with one replica before the autoscaler
    // has measured it, and not scaling is then the right answer.)
    let (records, expected, kept) = orders(0, BACKLOG);
    f.produce("orders", &records).await;
    let scaling = json!({"minReplicas": 1, "maxReplicas": 8, "lagTarget": "2s", "scaleDownStabilization": "15s"});
    let mut spec = seed_spec(&f, scaling);
    spec["rateLimit"] = json!({"recordsPerSecond": 1000});
    f.pipeline("busy", spec).await;
    let api = f.pipelines();
    let peak = wait_for(
        Duration::from_secs(240),
        "scale up to the 4 input partitions",
        || async {
            let s = api.get("busy").await.ok()?.status?;
            (s.desired_replicas == 4).then_some(s)
        },
    )
    .await;
    let last = peak.last_scale.expect("a scaling decision in status");
    assert_eq!(last.to, 4, "{}", last.reason);
    // The figures are the autoscaler's sampler's, written apart from reconcile.
    let busy = api.get("busy").await.expect("the pipeline");
    let figures_manager = busy
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .find(|m| {
            m.subresource.as_deref() == Some("status")
                && m.fields_v1
                    .as_ref()
                    .is_some_and(|f| f.0.to_string().contains("f:lastScale"))
        })
        .and_then(|m| m.manager);
    assert_eq!(figures_manager.as_deref(), Some("sluice-autoscaler"));
    assert!(
        last.reason.contains("lag"),
        "the reason gives the numbers: {}",
        last.reason
    );
    let drained = wait_for(
        Duration::from_secs(300),
        "drain and scale back down",
        || async {
            let s = api.get("busy").await.ok()?.status?;
            (s.desired_replicas < 4 && s.lag == 0).then_some(s)
        },
    )
    .await;
    assert!(drained.desired_replicas >= 1);
    // Every kept order was summed once, through every rescale: one update each, and the
    // totals are exact. Input lag 0 does not mean every update is committed: records
    // forwarded to the repartition topic may still wait there (the operator's lag does
    // not count them yet), so the output is read until every update is in.
    let totals = f.read_until("totals", kept, Duration::from_secs(120)).await;
    assert_eq!(totals.len(), kept, "one committed update per kept order");
    let latest = kafka::latest_by_key(&totals);
    for (region, total) in &expected {
        let value = latest[region]["total"].as_f64().unwrap();
        assert!((value - total).abs() < 1e-3, "{region}: {value} != {total}");
    }
    f.finish().await;
}

/// How long the steady-load test holds its load: `SLUICE_STEADY_LOAD_SECONDS`, 90 s unless
/// set (`make soak` holds it for five minutes). 90 s is 18 readings at the default 5 s interval.
fn steady_load_duration() -> Duration {
    let seconds = std::env::var("SLUICE_STEADY_LOAD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(90);
    Duration::from_secs(seconds)
}

#[tokio::test]
async fn steady_load_under_one_replicas_capacity_causes_no_scaling() {
    let f = fixture("steady").await;
    f.topics(&[("orders", 4), ("totals", 4), ("dlq", 1)]).await;
    let scaling = json!({"minReplicas": 1, "maxReplicas": 4, "lagTarget": "10s"});
    f.pipeline("steady", seed_spec(&f, scaling)).await;
    let api = f.pipelines();
    let deployments: Api<Deployment> = Api::namespaced(f.client.clone(), &f.ns);
    wait_for(Duration::from_secs(60), "the first replica", || async {
        let s = api.get("steady").await.ok()?.status?;
        (s.ready_replicas == 1).then_some(())
    })
    .await;
    let first = api.get("steady").await.unwrap().status.unwrap().last_scale;

    // 200 orders a second, far below what one replica consumes, for `steady_load_duration`.
    let producer = kafka::producer(&f.env.var("KAFKA_BOOTSTRAP")).unwrap();
    let topic = f.topic("orders");
    let start = Instant::now();
    let mut sent = 0;
    let mut replicas_seen = std::collections::BTreeSet::new();
    while start.elapsed() < steady_load_duration() {
        let (records, _, _) = orders(sent, sent + 100);
        kafka::produce(&producer, &topic, &records).await.unwrap();
        sent += 100;
        let d = deployments.get("steady-processor").await.unwrap();
        replicas_seen.insert(d.spec.unwrap().replicas.unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        replicas_seen.into_iter().collect::<Vec<_>>(),
        vec![1],
        "no scaling under a steady load"
    );
    let status = api.get("steady").await.unwrap().status.unwrap();
    // The autoscaler's first decision (from no Deployment to minReplicas) may reach the
    // status after the first replica is ready; any other is a scaling under the load.
    if status.last_scale != first {
        let last = status.last_scale.as_ref().unwrap();
        assert!(
            first.is_none() && last.from == 0 && last.to == 1,
            "no new scaling decision: {last:?} after {first:?}"
        );
    }
    assert!(
        status.records_per_second > 0.0,
        "the rate is measured: {status:?}"
    );
    f.finish().await;
}
