//! The fixture of the tests that use the operator `make deploy` installed: a namespace
//! per test, its Topics and Pipelines, and Kafka readers and writers for them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::cluster;
use crate::env::TestEnv;
use crate::kafka;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};
use serde_json::{Value, json};
use sluice_crds::{Pipeline, Topic};

pub struct Fixture {
    pub env: TestEnv,
    pub client: Client,
    pub ns: String,
    pub suffix: String,
}

pub async fn fixture(prefix: &str) -> Fixture {
    let env = TestEnv::require();
    let client = cluster::client(&env).await.unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "sluice-system");
    let operator = deployments.get_opt("sluice-operator").await.unwrap();
    let available = operator
        .and_then(|d| d.status)
        .and_then(|s| s.available_replicas)
        .unwrap_or(0);
    assert!(
        available >= 1,
        "the Sluice operator is not installed: run `make deploy` (after `e2e/up`)"
    );
    let ns = cluster::namespace(&client, prefix).await.unwrap();
    let suffix = ns.clone();
    Fixture {
        env,
        client,
        ns,
        suffix,
    }
}

impl Fixture {
    /// Asserts that the pods of `selector` in `namespace` are Running on the
    /// environment's kubelet node, as containerd containers of an image named `image...`.
    pub async fn assert_on_node(&self, namespace: &str, selector: &str, image: &str) {
        let node = self.env.var("NODE_NAME");
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let list = pods
            .list(&ListParams::default().labels(selector))
            .await
            .unwrap();
        let running: Vec<&Pod> = list
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .collect();
        assert!(
            !running.is_empty(),
            "no Running pod of {selector} in {namespace}"
        );
        for pod in running {
            let name = pod.metadata.name.as_deref().unwrap_or_default();
            let spec = pod.spec.as_ref().unwrap();
            assert_eq!(spec.node_name.as_deref(), Some(node.as_str()), "pod {name}");
            assert!(
                spec.containers
                    .iter()
                    .all(|c| c.image.as_deref().is_some_and(|i| i.starts_with(image))),
                "pod {name} runs {:?}",
                spec.containers.iter().map(|c| &c.image).collect::<Vec<_>>()
            );
            let statuses = pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .unwrap();
            for c in statuses {
                let id = c.container_id.as_deref().unwrap_or_default();
                assert!(
                    id.starts_with("containerd://"),
                    "pod {name}: container id {id:?}"
                );
            }
        }
    }

    /// The test passed: its namespace and processors go.
    pub async fn finish(self) {
        cluster::delete_namespace(&self.client, &self.ns)
            .await
            .unwrap();
    }

    pub fn topic(&self, base: &str) -> String {
        format!("{base}-{}", self.suffix)
    }

    pub async fn topics(&self, topics: &[(&str, i32)]) {
        for (base, partitions) in topics {
            let doc = json!({
                "apiVersion": "sluice.dev/v1alpha1", "kind": "Topic",
                "metadata": {"name": base},
                "spec": {"topicName": self.topic(base), "partitions": partitions, "deletionPolicy": "Delete"}
            });
            cluster::apply(&self.client, &self.ns, &doc).await.unwrap();
        }
        let api: Api<Topic> = Api::namespaced(self.client.clone(), &self.ns);
        for (base, _) in topics {
            wait_for(
                Duration::from_secs(60),
                &format!("Topic {base} Ready"),
                || async {
                    let t = api.get(base).await.ok()?;
                    let ready = t
                        .status
                        .as_ref()?
                        .conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True");
                    ready.then_some(())
                },
            )
            .await;
        }
    }

    pub async fn pipeline(&self, name: &str, spec: Value) {
        let doc = json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "Pipeline",
            "metadata": {"name": name}, "spec": spec
        });
        cluster::apply(&self.client, &self.ns, &doc).await.unwrap();
    }

    pub fn pipelines(&self) -> Api<Pipeline> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Waits for Pipeline `name`'s Ready condition to carry `reason`, and returns it.
    pub async fn ready_with_reason(
        &self,
        name: &str,
        reason: &str,
    ) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        let api = self.pipelines();
        wait_for(
            Duration::from_secs(60),
            &format!("Ready with reason {reason}"),
            || async {
                let c = api
                    .get(name)
                    .await
                    .ok()?
                    .status?
                    .conditions
                    .into_iter()
                    .find(|c| c.type_ == "Ready")?;
                (c.reason == reason).then_some(c)
            },
        )
        .await
    }

    pub async fn produce(&self, base: &str, records: &[(String, String)]) {
        let producer = kafka::producer(&self.env.var("KAFKA_BOOTSTRAP")).unwrap();
        kafka::produce(&producer, &self.topic(base), records)
            .await
            .unwrap();
    }

    pub fn read(&self, base: &str) -> Vec<kafka::Read> {
        kafka::read_all(
            &self.env.var("KAFKA_BOOTSTRAP"),
            &self.topic(base),
            Duration::from_secs(3),
            // It ends once nothing new arrives for 3 s; the cap only has to outlast reading
            // the largest output here on a loaded machine.
            Duration::from_secs(300),
        )
        .unwrap()
    }

    /// Polls the output until it holds `count` records (or the deadline passes).
    pub async fn read_until(
        &self,
        base: &str,
        count: usize,
        deadline: Duration,
    ) -> Vec<kafka::Read> {
        let start = Instant::now();
        loop {
            let records = self.read(base);
            if records.len() >= count || start.elapsed() > deadline {
                return records;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
}

pub async fn wait_for<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Orders like the seed's: region i % 3, total (i % 50) - 5 (so some are filtered out).
pub fn orders(from: usize, to: usize) -> (Vec<(String, String)>, BTreeMap<String, f64>, usize) {
    let regions = ["eu-west", "us-east", "ap-south"];
    let mut totals = BTreeMap::new();
    let mut kept = 0;
    let records = (from..to)
        .map(|i| {
            let region = regions[i % 3];
            let total = (i % 50) as f64 - 5.0 + 0.5;
            if total > 0.0 {
                *totals.entry(region.to_string()).or_insert(0.0) += total;
                kept += 1;
            }
            (
                format!("o-{i}"),
                json!({"orderId": format!("o-{i}"), "region": region, "total": total}).to_string(),
            )
        })
        .collect();
    (records, totals, kept)
}

pub fn seed_spec(f: &Fixture, scaling: Value) -> Value {
    json!({
        "inputs": [f.topic("orders")],
        "steps": [
            {"name": "positive-orders", "filter": "value.total > 0.0"},
            {"name": "totals-per-region", "aggregate": {
                "groupBy": {"region": "value.region"},
                "aggregations": [{"name": "total", "op": "sum", "of": "value.total"}]
            }}
        ],
        "outputs": [{"topic": f.topic("totals"), "key": "value.region"}],
        "deadLetter": {"topic": f.topic("dlq")},
        "delivery": "exactlyOnce",
        "scaling": scaling,
    })
}

pub fn assert_totals(records: &[kafka::Read], expected: &BTreeMap<String, f64>, kept: usize) {
    assert_eq!(
        records.len(),
        kept,
        "one output per kept order: no record lost, none duplicated"
    );
    let latest = kafka::latest_by_key(records);
    assert_eq!(latest.len(), expected.len(), "{latest:?}");
    for (region, total) in expected {
        let got = &latest[region];
        assert_eq!(got["region"], region.as_str());
        let value = got["total"].as_f64().unwrap();
        assert!((value - total).abs() < 1e-6, "{region}: {value} != {total}");
    }
}
