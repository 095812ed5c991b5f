//! Native Connectors as workloads of the processor image: a ConfigMap with the Connector
//! manifest, a Deployment running `sluice-processor connector`, and a metrics Service,
//! as a Pipeline gets them ([`crate::workload`]). Pure: the rendering, and what the
//! Deployment's status says about the connector.

use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use sluice_crds::connector::ConnectorState;
use sluice_crds::{Connector, ConnectorSpec, contract};

use super::status::TopicsCheck;
use crate::workload::{RenderError, Workload};

/// Label every object of a native connector carries, with the Connector's name.
pub const CONNECTOR_LABEL: &str = "sluice.dev/connector";
/// Key of the connector's config inside its ConfigMap.
pub const CONFIG_KEY: &str = "connector.yaml";
/// Where the connector's config is mounted.
pub const CONFIG_DIR: &str = "/etc/sluice/connector";

/// Whether this release runs the connector's plugin natively.
pub fn runs_natively(spec: &ConnectorSpec) -> bool {
    spec.generator.is_some()
        || spec.postgres_cdc.is_some()
        || spec.postgres.is_some()
        || spec.s3.is_some()
        || spec.http.is_some()
}

/// The workload a native Connector runs as.
pub fn workload(c: &Connector) -> Result<Workload, RenderError> {
    let mut w = Workload::owned_by(
        c,
        "Connector",
        CONNECTOR_LABEL,
        "connector",
        contract::CONNECTOR_COMMAND,
    )?;
    w.config_key = CONFIG_KEY;
    w.config_dir = CONFIG_DIR;
    w.credentials = c.spec.secret_ref.as_ref().map(|s| s.name.clone());
    Ok(w)
}

/// The connector's config: its manifest, the file `sluice-processor connector` (and
/// `run -f`) reads. Restarts and sizing are the operator's, so `autoRestart` and
/// `scaling` stay out (a change of them never rolls the pods).
pub fn config_text(c: &Connector) -> Result<String, RenderError> {
    let spec = ConnectorSpec {
        auto_restart: None,
        scaling: None,
        ..c.spec.clone()
    };
    let doc = serde_json::json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "Connector",
        "metadata": {"name": c.name_any(), "namespace": c.namespace()},
        "spec": spec,
    });
    Ok(serde_json::to_string_pretty(&doc)?)
}

/// Replicas the Deployment runs: none when stopped; HTTP ingest as many as it asks for;
/// other sources one (they cannot share their work).
pub fn replicas(c: &Connector) -> i32 {
    match c.spec.state {
        ConnectorState::Stopped => 0,
        ConnectorState::Running | ConnectorState::Paused => {
            c.spec.http_ingest.as_ref().map_or(1, |h| h.replicas.max(1))
        }
    }
}

/// Replicas to run before a sink's lag is weighed, given what Kafka said of the
/// connector's `topics`: [`replicas`] when they all exist, none while one is missing,
/// and while Kafka cannot be asked the size the Deployment already has (`current`, none
/// when there is no Deployment yet), so a broker outage stops no running connector; a
/// stopped connector runs none whatever Kafka says.
pub fn planned_replicas(c: &Connector, topics: &TopicsCheck, current: Option<i32>) -> i32 {
    match topics {
        TopicsCheck::Present => replicas(c),
        TopicsCheck::Missing(_) => 0,
        TopicsCheck::Unknown(_) if replicas(c) == 0 => 0,
        TopicsCheck::Unknown(_) => current.unwrap_or(0),
    }
}

/// What the connector's Deployment reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    /// Replicas asked for.
    pub desired: i32,
    /// Replicas available (ready for the minimum time).
    pub available: i32,
    /// Pods that still run an older template.
    pub outdated: i32,
}

/// The rollout of `deployment` (none yet: nothing available).
pub fn rollout(deployment: Option<&Deployment>, desired: i32) -> Rollout {
    let status = deployment.and_then(|d| d.status.as_ref());
    let current = deployment
        .and_then(|d| d.metadata.generation)
        .zip(status.and_then(|s| s.observed_generation))
        .is_some_and(|(generation, observed)| observed >= generation);
    let total = status.and_then(|s| s.replicas).unwrap_or(0);
    let updated = status.and_then(|s| s.updated_replicas).unwrap_or(0);
    Rollout {
        desired,
        available: if current {
            status.and_then(|s| s.available_replicas).unwrap_or(0)
        } else {
            0
        },
        outdated: (total - updated).max(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{ProcessorDefaults, children};
    use serde_json::json;

    fn generator(state: &str) -> Connector {
        serde_json::from_value(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "Connector",
            "metadata": {"name": "orders-gen", "namespace": "shop", "uid": "u-9"},
            "spec": {"type": "source", "topics": ["orders"], "state": state,
                     "autoRestart": {"enabled": true},
                     "generator": {"template": {"n": "i"}, "rate": "5/s"}}
        }))
        .unwrap()
    }

    #[test]
    fn a_broker_that_does_not_answer_leaves_a_running_connector_at_its_size() {
        let running = generator("running");
        let unknown = TopicsCheck::Unknown("timed out".into());
        assert_eq!(planned_replicas(&running, &unknown, Some(3)), 3);
        assert_eq!(planned_replicas(&running, &unknown, None), 0);
        assert_eq!(
            planned_replicas(&generator("stopped"), &unknown, Some(1)),
            0
        );
        assert_eq!(
            planned_replicas(&running, &TopicsCheck::Present, Some(3)),
            1
        );
        let missing = TopicsCheck::Missing(vec!["orders".into()]);
        assert_eq!(planned_replicas(&running, &missing, Some(1)), 0);
    }

    #[test]
    fn a_generator_renders_as_a_processor_deployment_running_the_connector_command() {
        let c = generator("running");
        assert!(runs_natively(&c.spec));
        let w = workload(&c).unwrap();
        let defaults = ProcessorDefaults {
            image: "ghcr.io/sluice/sluice-processor:0.1.0".into(),
            kafka_bootstrap: "kafka:9092".into(),
            ..ProcessorDefaults::default()
        };
        let config = config_text(&c).unwrap();
        assert!(!config.contains("autoRestart"), "{config}");
        let doc: serde_json::Value = serde_json::from_str(&config).unwrap();
        assert_eq!(doc["kind"], "Connector");
        assert_eq!(doc["spec"]["generator"]["rate"], "5/s");
        let ch = children(&w, config, &defaults, replicas(&c)).unwrap();
        assert_eq!(
            ch.deployment.metadata.name.as_deref(),
            Some("orders-gen-connector")
        );
        let owner = &ch.deployment.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Connector", "u-9")
        );
        let spec = ch.deployment.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(1));
        let pod = spec.template.spec.as_ref().unwrap();
        let container = &pod.containers[0];
        assert_eq!(
            container.args.as_deref().unwrap(),
            [
                "connector",
                "--config",
                "/etc/sluice/connector/connector.yaml"
            ]
        );
        let env: Vec<&str> = container
            .env
            .iter()
            .flatten()
            .map(|e| e.name.as_str())
            .collect();
        assert!(!env.contains(&contract::env::GROUP_ID), "{env:?}");
        assert_eq!(
            spec.template
                .metadata
                .as_ref()
                .unwrap()
                .labels
                .as_ref()
                .unwrap()[CONNECTOR_LABEL],
            "orders-gen"
        );
        assert_eq!(
            ch.config_map
                .data
                .as_ref()
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            [CONFIG_KEY]
        );
        assert_eq!(
            ch.service.metadata.name.as_deref(),
            Some("orders-gen-connector-metrics")
        );
        assert!(w.foreign(&Default::default()));
        assert!(!w.foreign(&ch.service.metadata));
    }

    #[test]
    fn credentials_are_mounted_from_the_secret_never_put_in_the_config() {
        let mut c = generator("running");
        c.spec.secret_ref = Some(sluice_crds::common::SecretRef {
            name: "sales-db".into(),
        });
        let w = workload(&c).unwrap();
        let d = crate::workload::deployment(&w, &ProcessorDefaults::default(), 1, "h");
        let pod = d.spec.unwrap().template.spec.unwrap();
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "credentials")
            .expect("a credentials volume");
        assert_eq!(
            volume.secret.as_ref().unwrap().secret_name.as_deref(),
            Some("sales-db")
        );
        let container = &pod.containers[0];
        let mount = container
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == "credentials")
            .unwrap();
        assert_eq!(mount.mount_path, crate::workload::CREDENTIALS_DIR);
        assert_eq!(mount.read_only, Some(true));
        assert!(
            container
                .env
                .iter()
                .flatten()
                .any(|e| e.name == contract::env::CREDENTIALS_DIR)
        );
        // The config names the Secret, and holds none of its data.
        let config = config_text(&c).unwrap();
        assert!(config.contains("sales-db"));
    }

    #[test]
    fn stopped_runs_no_replica_and_paused_keeps_one() {
        assert_eq!(replicas(&generator("stopped")), 0);
        assert_eq!(replicas(&generator("paused")), 1);
        let mut sink = generator("running");
        sink.spec.generator = None;
        assert!(!runs_natively(&sink.spec));
        sink.spec.postgres = Some(serde_json::from_value(json!({"table": "t"})).unwrap());
        assert!(
            runs_natively(&sink.spec),
            "the PostgreSQL sink runs natively"
        );
        let mut cdc = generator("running");
        cdc.spec.generator = None;
        cdc.spec.postgres_cdc = Some(
            serde_json::from_value(
                json!({"tables": ["public.orders"], "slot": "orders", "topicPrefix": "sales"}),
            )
            .unwrap(),
        );
        assert!(
            runs_natively(&cdc.spec),
            "change data capture runs natively"
        );
        assert_eq!(replicas(&cdc), 1, "one replica: a slot has one reader");
    }

    #[test]
    fn only_a_current_rollout_counts_as_available() {
        let mut d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "x", "generation": 2},
            "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 0,
                       "availableReplicas": 1}
        }))
        .unwrap();
        assert_eq!(
            rollout(Some(&d), 1),
            Rollout {
                desired: 1,
                available: 0,
                outdated: 1
            }
        );
        if let Some(s) = d.status.as_mut() {
            s.observed_generation = Some(2);
            s.updated_replicas = Some(1);
        }
        assert_eq!(rollout(Some(&d), 1).available, 1);
        assert_eq!(rollout(None, 1).available, 0);
    }

    #[test]
    fn sizing_is_not_in_the_config_so_changing_it_rolls_no_pod() {
        let mut c = generator("running");
        c.spec.generator = None;
        c.spec.type_ = sluice_crds::connector::ConnectorType::Sink;
        c.spec.postgres = Some(serde_json::from_value(json!({"table": "t"})).unwrap());
        let before = config_text(&c).unwrap();
        c.spec.scaling = Some(serde_json::from_value(json!({"maxReplicas": 4})).unwrap());
        assert_eq!(config_text(&c).unwrap(), before);
        assert!(!before.contains("scaling"), "{before}");
    }
}
