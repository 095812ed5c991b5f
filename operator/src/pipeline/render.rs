//! Pure rendering of a Pipeline into the objects that run it ([`crate::workload`]): the
//! processor config (ConfigMap), the processor Deployment and its metrics Service.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use sluice_crds::pipeline::{PipelineSpec, Scaling};
use sluice_crds::{Pipeline, contract};

use crate::workload;
pub use crate::workload::{
    CONFIG_HASH_ANNOTATION, Children, HTTP_PORT, KAFKA_CLIENT_DIR, KAFKA_CLIENT_HASH_ANNOTATION,
    KAFKA_CLIENT_KEY, ProcessorDefaults, RENDERED_ANNOTATION, RenderError, Workload, config_hash,
    fingerprint,
};

/// Label every object of a pipeline carries, with the pipeline's name.
pub const PIPELINE_LABEL: &str = "sluice.dev/pipeline";
/// Key of the processor config inside its ConfigMap.
pub const CONFIG_KEY: &str = "pipeline.yaml";
/// Where the processor config is mounted.
pub const CONFIG_DIR: &str = "/etc/sluice/pipeline";

impl ProcessorDefaults {
    /// Why `spec.image` cannot run, if it cannot: only the release's processor image and
    /// the listed ones run, so whoever may create a Pipeline cannot make the operator
    /// run an image of their choosing.
    pub fn image_refusal(&self, spec: &PipelineSpec) -> Option<String> {
        let image = spec.image.as_deref()?;
        if image == self.image || self.allowed_images.iter().any(|a| a == image) {
            return None;
        }
        let mut allowed = vec![self.image.as_str()];
        allowed.extend(self.allowed_images.iter().map(String::as_str));
        Some(format!(
            "spec.image {image} is not allowed here: this installation runs {} (the chart's \
             processor.allowedImages lists more)",
            allowed.join(", ")
        ))
    }
}

pub use contract::group_id;

/// The workload a Pipeline runs as.
pub fn workload(p: &Pipeline) -> Result<Workload, RenderError> {
    let mut w = Workload::owned_by(
        p,
        "Pipeline",
        PIPELINE_LABEL,
        "processor",
        contract::PIPELINE_COMMAND,
    )?;
    w.config_key = CONFIG_KEY;
    w.config_dir = CONFIG_DIR;
    w.group_id = Some(group_id(&w.namespace, &w.name));
    w.image = p.spec.image.clone();
    w.resources = p.spec.resources.clone();
    Ok(w)
}

/// Names of the objects a pipeline owns.
pub fn processor_name(pipeline: &str) -> String {
    format!("{pipeline}-processor")
}

/// Name of the Secret holding a pipeline's copy of the Kafka client settings.
pub fn kafka_client_secret_name(pipeline: &str) -> String {
    format!("{pipeline}-processor-kafka")
}

/// Labels that select the processor pods of a pipeline.
pub fn selector_labels(pipeline: &str) -> BTreeMap<String, String> {
    workload::selector_labels(PIPELINE_LABEL, pipeline)
}

/// The label selector string of a pipeline's pods, for the scale subresource.
pub fn selector_string(pipeline: &str) -> String {
    workload::label_selector(&selector_labels(pipeline))
}

/// Whether an existing object with a child's name is not `p`'s ([`Workload::foreign`]).
pub fn foreign(existing: &ObjectMeta, p: &Pipeline) -> bool {
    // A Pipeline that cannot be rendered owns nothing.
    !workload(p).is_ok_and(|w| !w.foreign(existing))
}

/// The processor config: the Pipeline as a manifest (apiVersion, kind, name, namespace,
/// spec), the same file `sluice-processor run -f` reads, holding only what the processor
/// runs ([`processor_spec`]).
pub fn config_text(p: &Pipeline) -> Result<String, RenderError> {
    let doc = serde_json::json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": p.name_any(), "namespace": p.namespace()},
        "spec": processor_spec(&p.spec),
    });
    Ok(serde_json::to_string_pretty(&doc)?)
}

/// The part of a spec the processor runs: everything but how the pipeline is sized and
/// where it runs (`scaling`, `replicas`, `resources`, `image`). Those change the
/// Deployment, not the processor, so they stay out of the config and its hash: a new
/// `maxReplicas`, or HPA writing `spec.replicas` in external mode, never rolls the pods.
pub fn processor_spec(spec: &PipelineSpec) -> PipelineSpec {
    PipelineSpec {
        scaling: Scaling::default(),
        replicas: None,
        resources: None,
        image: None,
        ..spec.clone()
    }
}

/// The children of `p` with its processors at `replicas`: a pure function of the
/// Pipeline and the installation's defaults (no API server).
pub fn children(
    p: &Pipeline,
    defaults: &ProcessorDefaults,
    replicas: i32,
) -> Result<Children, RenderError> {
    workload::children(&workload(p)?, config_text(p)?, defaults, replicas)
}

/// The ConfigMap holding the processor config.
pub fn config_map(p: &Pipeline, config: String) -> Result<ConfigMap, RenderError> {
    Ok(workload::config_map(&workload(p)?, config))
}

/// The processor Deployment, at `replicas`.
pub fn deployment(
    p: &Pipeline,
    defaults: &ProcessorDefaults,
    replicas: i32,
    config_hash: &str,
) -> Result<Deployment, RenderError> {
    Ok(workload::deployment(
        &workload(p)?,
        defaults,
        replicas,
        config_hash,
    ))
}

/// The pipeline's copy of the operator's Kafka client settings.
pub fn kafka_client_secret(p: &Pipeline, properties: &str) -> Result<Secret, RenderError> {
    Ok(workload::kafka_client_secret(&workload(p)?, properties))
}

/// The Service in front of the processors' `/metrics`.
pub fn service(p: &Pipeline) -> Result<Service, RenderError> {
    Ok(workload::service(&workload(p)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline() -> Pipeline {
        let mut p: Pipeline = serde_json::from_value(serde_json::json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "Pipeline",
            "metadata": {"name": "totals", "namespace": "shop", "uid": "u-1"},
            "spec": {"inputs": ["orders"], "outputs": [{"topic": "out"}]}
        }))
        .unwrap();
        p.metadata.generation = Some(1);
        p
    }

    fn defaults() -> ProcessorDefaults {
        ProcessorDefaults {
            image: "ghcr.io/sluice/sluice-processor:0.1.0".into(),
            kafka_bootstrap: "kafka:9092".into(),
            ..ProcessorDefaults::default()
        }
    }

    #[test]
    fn processor_pods_get_the_installation_s_node_selector_and_tolerations() {
        let p = pipeline();
        let mut d = defaults();
        let plain = children(&p, &d, 1).unwrap();
        let pod = |c: &Children| c.deployment.spec.clone().unwrap().template.spec.unwrap();
        assert_eq!(pod(&plain).node_selector, None);
        d.node_selector = Some([("disktype".to_string(), "ssd".to_string())].into());
        d.tolerations = Some(vec![k8s_openapi::api::core::v1::Toleration {
            key: Some("dedicated".into()),
            operator: Some("Exists".into()),
            ..Default::default()
        }]);
        let placed = children(&p, &d, 1).unwrap();
        assert_eq!(pod(&placed).node_selector.unwrap()["disktype"], "ssd");
        assert_eq!(
            pod(&placed).tolerations.unwrap()[0].key.as_deref(),
            Some("dedicated")
        );
        assert_ne!(
            plain.fingerprint, placed.fingerprint,
            "a placement change is applied"
        );
    }

    #[test]
    fn children_are_rendered_whole_with_a_fingerprint_of_what_changes_them() {
        let p = pipeline();
        let mut d = defaults();
        let c = children(&p, &d, 2).unwrap();
        assert_eq!(
            c.config_map.metadata.name.as_deref(),
            Some("totals-processor")
        );
        assert_eq!(
            c.service.metadata.name.as_deref(),
            Some("totals-processor-metrics")
        );
        assert_eq!(c.deployment.spec.as_ref().unwrap().replicas, Some(2));
        assert_eq!(
            c.deployment.metadata.annotations.as_ref().unwrap()[RENDERED_ANNOTATION],
            c.fingerprint
        );
        assert!(c.kafka_client.is_none());
        for meta in [
            &c.config_map.metadata,
            &c.deployment.metadata,
            &c.service.metadata,
        ] {
            assert!(!foreign(meta, &p), "owned by the pipeline: {meta:?}");
        }
        assert_eq!(
            children(&p, &d, 2).unwrap(),
            c,
            "the same input, the same children"
        );
        assert_ne!(children(&p, &d, 3).unwrap().fingerprint, c.fingerprint);
        d.kafka_client_properties = Some("sasl.password=x\n".into());
        let with_secret = children(&p, &d, 2).unwrap();
        assert!(with_secret.kafka_client.is_some());
        assert_ne!(
            with_secret.fingerprint, c.fingerprint,
            "new settings roll out"
        );
    }

    #[test]
    fn only_the_release_image_and_the_listed_ones_run() {
        let mut d = defaults();
        d.allowed_images = vec!["registry.example/sluice-processor:0.1.0-debug".into()];
        let mut spec = pipeline().spec;
        assert_eq!(d.image_refusal(&spec), None, "no image: the release's");
        spec.image = Some(d.image.clone());
        assert_eq!(d.image_refusal(&spec), None);
        spec.image = Some("registry.example/sluice-processor:0.1.0-debug".into());
        assert_eq!(d.image_refusal(&spec), None);
        spec.image = Some("evil.example/miner:latest".into());
        let why = d.image_refusal(&spec).unwrap();
        assert!(why.contains("evil.example/miner:latest"), "{why}");
        assert!(
            why.contains("ghcr.io/sluice/sluice-processor:0.1.0"),
            "{why}"
        );
        assert!(why.contains("processor.allowedImages"), "{why}");
    }

    #[test]
    fn spec_change_changes_the_config_hash() {
        let p = pipeline();
        let before = config_hash(&config_text(&p).unwrap());
        let mut changed = p.clone();
        changed.spec.inputs.push("refunds".into());
        assert_ne!(before, config_hash(&config_text(&changed).unwrap()));
        assert_eq!(before, config_hash(&config_text(&p).unwrap()));
    }

    #[test]
    fn sizing_changes_leave_the_config_and_its_hash_alone() {
        let p = pipeline();
        let before = config_text(&p).unwrap();
        let mut resized = p.clone();
        resized.spec.scaling.max_replicas = 7;
        resized.spec.scaling.lag_target = "5s".into();
        resized.spec.replicas = Some(3);
        assert_eq!(config_text(&resized).unwrap(), before);
        // What the processor runs is all there.
        let mut limited = p.clone();
        limited.spec.rate_limit = Some(sluice_crds::pipeline::RateLimit {
            records_per_second: 10,
        });
        assert_ne!(config_text(&limited).unwrap(), before);
    }

    #[test]
    fn deployment_runs_the_processor_hardened_and_owned() {
        let p = pipeline();
        let d = deployment(&p, &defaults(), 2, "abc").unwrap();
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(2));
        let pod = spec.template.spec.unwrap();
        let c = &pod.containers[0];
        assert_eq!(
            c.image.as_deref(),
            Some("ghcr.io/sluice/sluice-processor:0.1.0")
        );
        assert_eq!(c.args.as_ref().unwrap()[0], "pipeline");
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
        let env = c.env.as_ref().unwrap();
        assert!(env.iter().any(
            |e| e.name == "SLUICE_GROUP_ID" && e.value.as_deref() == Some("sluice-shop-totals")
        ));
        assert_eq!(
            spec.template.metadata.unwrap().annotations.unwrap()[CONFIG_HASH_ANNOTATION],
            "abc"
        );
        let owner = &d.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("Pipeline", Some(true))
        );
    }

    #[test]
    fn only_objects_this_pipeline_controls_are_its_own() {
        let p = pipeline();
        let ours = config_map(&p, String::new()).unwrap().metadata;
        assert!(!foreign(&ours, &p));
        assert!(foreign(&ObjectMeta::default(), &p), "no owner: not ours");
        let mut recreated = p.clone();
        recreated.metadata.uid = Some("another-uid".into());
        assert!(foreign(&ours, &recreated), "the old Pipeline's child");
    }

    #[test]
    fn image_override_and_the_kafka_client_settings_copied_into_the_namespace() {
        let mut p = pipeline();
        p.spec.image = Some("custom:1".into());
        let mut d = defaults();
        let props = "security.protocol=SASL_PLAINTEXT\n";
        d.kafka_client_properties = Some(props.into());
        let dep = deployment(&p, &d, 1, "h").unwrap();
        let template = dep.spec.unwrap().template;
        let pod = template.spec.unwrap();
        assert_eq!(pod.containers[0].image.as_deref(), Some("custom:1"));
        let volumes = pod.volumes.unwrap();
        let mounted = volumes.iter().find(|v| v.name == "kafka-client").unwrap();
        let secret = kafka_client_secret(&p, props).unwrap();
        assert_eq!(
            mounted.secret.as_ref().unwrap().secret_name,
            secret.metadata.name,
            "the pods mount the pipeline's own copy"
        );
        assert_eq!(secret.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(
            secret.data.unwrap()[KAFKA_CLIENT_KEY].0,
            props.as_bytes(),
            "the operator's settings, as they are"
        );
        assert!(!foreign(&secret.metadata, &p), "owned by the pipeline");
        let hash = |props: &str| {
            let mut d = defaults();
            d.kafka_client_properties = Some(props.into());
            let t = deployment(&p, &d, 1, "h").unwrap().spec.unwrap().template;
            t.metadata.unwrap().annotations.unwrap()[KAFKA_CLIENT_HASH_ANNOTATION].clone()
        };
        assert_ne!(
            hash(props),
            hash("sasl.password=new\n"),
            "new settings roll the pods"
        );
        assert!(
            !template.metadata.unwrap().annotations.unwrap().is_empty()
                && deployment(&p, &defaults(), 1, "h")
                    .unwrap()
                    .spec
                    .unwrap()
                    .template
                    .spec
                    .unwrap()
                    .volumes
                    .unwrap()
                    .iter()
                    .all(|v| v.name != "kafka-client"),
            "without settings nothing is mounted"
        );
    }

    #[test]
    fn unsaved_pipeline_is_an_error_not_a_panic() {
        let mut p = pipeline();
        p.metadata.uid = None;
        assert!(matches!(
            config_map(&p, String::new()),
            Err(RenderError::MissingMetadata("uid"))
        ));
    }
}
