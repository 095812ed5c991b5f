//! Pure rendering of a Pipeline into the objects that run it: the processor config
//! (ConfigMap), the processor Deployment and its metrics Service.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, Secret, SecretVolumeSource, SecurityContext, Service,
    ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};
use sluice_crds::pipeline::{PipelineSpec, Scaling};
use sluice_crds::{Pipeline, contract};

/// Label every object of a pipeline carries, with the pipeline's name.
pub const PIPELINE_LABEL: &str = "sluice.dev/pipeline";
/// Pod template annotation holding the hash of the processor config; a change rolls out.
pub const CONFIG_HASH_ANNOTATION: &str = "sluice.dev/config-hash";
/// Pod template annotation holding the hash of the Kafka client settings; new settings
/// (rotated credentials) roll out.
pub const KAFKA_CLIENT_HASH_ANNOTATION: &str = "sluice.dev/kafka-client-hash";
/// Key of the Kafka client settings inside their Secret.
pub const KAFKA_CLIENT_KEY: &str = "client.properties";
/// Deployment annotation with the fingerprint of everything last applied for the pipeline;
/// equal fingerprints mean there is nothing to write.
pub const RENDERED_ANNOTATION: &str = "sluice.dev/rendered";
/// Key of the processor config inside its ConfigMap.
pub const CONFIG_KEY: &str = "pipeline.yaml";
/// Where the processor config is mounted.
pub const CONFIG_DIR: &str = "/etc/sluice/pipeline";
/// Where the optional Kafka client settings Secret is mounted.
pub const KAFKA_CLIENT_DIR: &str = "/etc/sluice/kafka";
/// The processor's HTTP port (metrics and probes).
pub const HTTP_PORT: i32 = contract::HTTP_PORT as i32;

/// Settings from the operator's installation that every processor Deployment gets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessorDefaults {
    /// Processor image unless the Pipeline overrides it.
    pub image: String,
    /// Images a Pipeline's `spec.image` may name besides `image`.
    pub allowed_images: Vec<String>,
    /// Resources unless the Pipeline overrides them.
    pub resources: Option<ResourceRequirements>,
    /// Kafka bootstrap servers.
    pub kafka_bootstrap: String,
    /// The operator's own Kafka client settings (`client.properties` text, for SASL/TLS):
    /// each pipeline gets a copy as a Secret in its namespace ([`kafka_client_secret`]).
    pub kafka_client_properties: Option<String>,
}

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

/// Why a Pipeline cannot be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The Pipeline lacks a name, namespace or uid (it was not read from the API server).
    #[error("pipeline has no {0}")]
    MissingMetadata(&'static str),
    /// The processor config could not be serialized.
    #[error("serializing the processor config: {0}")]
    Serialize(#[from] serde_json::Error),
}

pub use contract::group_id;

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
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "sluice-processor".to_string(),
        ),
        (PIPELINE_LABEL.to_string(), pipeline.to_string()),
    ])
}

/// The label selector string of a pipeline's pods, for the scale subresource.
pub fn selector_string(pipeline: &str) -> String {
    selector_labels(pipeline)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn labels(pipeline: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(pipeline);
    labels.insert(
        "app.kubernetes.io/managed-by".into(),
        "sluice-operator".into(),
    );
    labels.insert("app.kubernetes.io/component".into(), "processor".into());
    labels
}

fn meta(p: &Pipeline, name: String) -> Result<ObjectMeta, RenderError> {
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(
            p.namespace()
                .ok_or(RenderError::MissingMetadata("namespace"))?,
        ),
        labels: Some(labels(&p.name_any())),
        owner_references: Some(vec![owner(p)?]),
        ..ObjectMeta::default()
    })
}

/// Whether an existing object with a child's name is not `p`'s: no controller owner
/// reference to this Pipeline (by UID). The operator never takes such an object over: a
/// force-apply would rewrite it, and the owner reference would let the garbage collector
/// delete it with the Pipeline.
pub fn foreign(existing: &ObjectMeta, p: &Pipeline) -> bool {
    let uid = p.metadata.uid.as_deref();
    !existing
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && uid == Some(o.uid.as_str()) && o.kind == "Pipeline")
}

fn owner(p: &Pipeline) -> Result<OwnerReference, RenderError> {
    p.controller_owner_ref(&())
        .ok_or(RenderError::MissingMetadata("uid"))
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

/// Hash of the processor config, put in the pod template so a spec change rolls out.
pub fn config_hash(config: &str) -> String {
    let digest = Sha256::digest(config.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Fingerprint of the objects a reconcile would apply.
pub fn fingerprint(
    cm: &ConfigMap,
    deployment: &Deployment,
    service: &Service,
) -> Result<String, RenderError> {
    let text = format!(
        "{}\n{}\n{}",
        serde_json::to_string(cm)?,
        serde_json::to_string(deployment)?,
        serde_json::to_string(service)?
    );
    Ok(config_hash(&text))
}

/// Everything a Pipeline's processors need, as reconcile applies it.
#[derive(Debug, Clone, PartialEq)]
pub struct Children {
    /// The processor config.
    pub config_map: ConfigMap,
    /// The processors, carrying [`RENDERED_ANNOTATION`] with `fingerprint`.
    pub deployment: Deployment,
    /// The Service in front of their `/metrics`.
    pub service: Service,
    /// The copy of the Kafka client settings, when the installation has some.
    pub kafka_client: Option<Secret>,
    /// The fingerprint of what is rendered: equal fingerprints, nothing to write.
    pub fingerprint: String,
}

/// The children of `p` with its processors at `replicas`: a pure function of the
/// Pipeline and the installation's defaults (no API server).
pub fn children(
    p: &Pipeline,
    defaults: &ProcessorDefaults,
    replicas: i32,
) -> Result<Children, RenderError> {
    let config = config_text(p)?;
    let hash = config_hash(&config);
    let config_map = config_map(p, config)?;
    let mut deployment = deployment(p, defaults, replicas, &hash)?;
    let service = service(p)?;
    let kafka_client = defaults
        .kafka_client_properties
        .as_deref()
        .map(|props| kafka_client_secret(p, props))
        .transpose()?;
    let fingerprint = fingerprint(&config_map, &deployment, &service)?;
    deployment
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(RENDERED_ANNOTATION.to_string(), fingerprint.clone());
    Ok(Children {
        config_map,
        deployment,
        service,
        kafka_client,
        fingerprint,
    })
}

/// The ConfigMap holding the processor config.
pub fn config_map(p: &Pipeline, config: String) -> Result<ConfigMap, RenderError> {
    Ok(ConfigMap {
        metadata: meta(p, processor_name(&p.name_any()))?,
        data: Some(BTreeMap::from([(CONFIG_KEY.to_string(), config)])),
        ..ConfigMap::default()
    })
}

/// The processor Deployment, at `replicas`.
pub fn deployment(
    p: &Pipeline,
    defaults: &ProcessorDefaults,
    replicas: i32,
    config_hash: &str,
) -> Result<Deployment, RenderError> {
    let name = p.name_any();
    let namespace = p
        .namespace()
        .ok_or(RenderError::MissingMetadata("namespace"))?;
    let mut env = vec![
        env_value(contract::env::KAFKA_BOOTSTRAP, &defaults.kafka_bootstrap),
        env_value(contract::env::HTTP_ADDR, &format!("0.0.0.0:{HTTP_PORT}")),
        env_value(contract::env::GROUP_ID, &group_id(&namespace, &name)),
        env_value(contract::env::LOG_FORMAT, "json"),
        EnvVar {
            // Each replica's identity: its transactional id and its name in the group.
            name: contract::env::REPLICA_ID.into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
    ];
    let mut volumes = vec![Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: processor_name(&name),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: "config".into(),
        mount_path: CONFIG_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }];
    let mut annotations = BTreeMap::from([
        (CONFIG_HASH_ANNOTATION.to_string(), config_hash.to_string()),
        ("prometheus.io/scrape".to_string(), "true".to_string()),
        ("prometheus.io/port".to_string(), HTTP_PORT.to_string()),
    ]);
    if let Some(properties) = &defaults.kafka_client_properties {
        annotations.insert(
            KAFKA_CLIENT_HASH_ANNOTATION.to_string(),
            self::config_hash(properties),
        );
        env.push(env_value(
            contract::env::KAFKA_CONFIG_FILE,
            &format!("{KAFKA_CLIENT_DIR}/{KAFKA_CLIENT_KEY}"),
        ));
        volumes.push(Volume {
            name: "kafka-client".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(kafka_client_secret_name(&name)),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: "kafka-client".into(),
            mount_path: KAFKA_CLIENT_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    };
    let container = Container {
        name: "processor".into(),
        image: Some(
            p.spec
                .image
                .clone()
                .unwrap_or_else(|| defaults.image.clone()),
        ),
        args: Some(vec![
            contract::PIPELINE_COMMAND.into(),
            contract::CONFIG_FLAG.into(),
            format!("{CONFIG_DIR}/{CONFIG_KEY}"),
        ]),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: HTTP_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(probe(contract::READY_PATH, 5, 3)),
        liveness_probe: Some(probe(contract::HEALTH_PATH, 10, 6)),
        resources: p
            .spec
            .resources
            .clone()
            .or_else(|| defaults.resources.clone()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    let pod_labels = selector_labels(&name);
    Ok(Deployment {
        metadata: meta(p, processor_name(&name))?,
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(pod_labels.clone()),
                ..LabelSelector::default()
            },
            // One replica at a time, the old one first: no more consumers than partitions
            // during a rollout, and exactly-once producers are fenced cleanly.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(0)),
                    max_unavailable: Some(IntOrString::Int(1)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(volumes),
                    automount_service_account_token: Some(false),
                    termination_grace_period_seconds: Some(60),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(65532),
                        run_as_group: Some(65532),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    })
}

/// The pipeline's copy of the operator's Kafka client settings, in its namespace, for its
/// processors to mount (a pod can mount only a Secret of its own namespace).
pub fn kafka_client_secret(p: &Pipeline, properties: &str) -> Result<Secret, RenderError> {
    Ok(Secret {
        metadata: meta(p, kafka_client_secret_name(&p.name_any()))?,
        data: Some(BTreeMap::from([(
            KAFKA_CLIENT_KEY.to_string(),
            ByteString(properties.as_bytes().to_vec()),
        )])),
        type_: Some("Opaque".into()),
        ..Secret::default()
    })
}

/// The Service in front of the processors' `/metrics`.
pub fn service(p: &Pipeline) -> Result<Service, RenderError> {
    let name = p.name_any();
    Ok(Service {
        metadata: meta(p, format!("{}-metrics", processor_name(&name)))?,
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(&name)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: HTTP_PORT,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

fn env_value(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
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
