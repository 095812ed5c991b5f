//! Pure rendering of a workload of the shared processor image (a Pipeline, or a native
//! Connector) into the objects that run it: its config (ConfigMap), the Deployment, its
//! metrics Service and its copy of the Kafka client settings. What differs between the
//! kinds is in [`Workload`]; the pod, its probes, security and rollout are the same.

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
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use sha2::{Digest, Sha256};
use sluice_crds::contract;

use crate::context::{Context, FIELD_MANAGER};
use crate::error::Error;

/// Pod template annotation holding the hash of the config; a change rolls out.
pub const CONFIG_HASH_ANNOTATION: &str = "sluice.dev/config-hash";
/// Pod template annotation holding the hash of the Kafka client settings; new settings
/// (rotated credentials) roll out.
pub const KAFKA_CLIENT_HASH_ANNOTATION: &str = "sluice.dev/kafka-client-hash";
/// Key of the Kafka client settings inside their Secret.
pub const KAFKA_CLIENT_KEY: &str = "client.properties";
/// Deployment annotation with the fingerprint of everything last applied for the
/// workload; equal fingerprints mean there is nothing to write.
pub const RENDERED_ANNOTATION: &str = "sluice.dev/rendered";
/// Where the optional Kafka client settings Secret is mounted.
pub const KAFKA_CLIENT_DIR: &str = "/etc/sluice/kafka";
/// Where a workload's own credentials Secret (a Connector's `secretRef`) is mounted.
pub const CREDENTIALS_DIR: &str = "/etc/sluice/credentials";
/// The processor's HTTP port (metrics and probes).
pub const HTTP_PORT: i32 = contract::HTTP_PORT as i32;

/// Settings from the operator's installation that every processor Deployment gets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessorDefaults {
    /// Processor image unless the workload names another.
    pub image: String,
    /// Images a Pipeline's `spec.image` may name besides `image`.
    pub allowed_images: Vec<String>,
    /// Resources unless the workload sets its own.
    pub resources: Option<ResourceRequirements>,
    /// Where processor pods may run (the chart's `processor.nodeSelector`).
    pub node_selector: Option<std::collections::BTreeMap<String, String>>,
    /// Taints processor pods tolerate (the chart's `processor.tolerations`).
    pub tolerations: Option<Vec<k8s_openapi::api::core::v1::Toleration>>,
    /// Kafka bootstrap servers.
    pub kafka_bootstrap: String,
    /// The operator's own Kafka client settings (`client.properties` text, for SASL/TLS):
    /// each workload gets a copy as a Secret in its namespace ([`kafka_client_secret`]).
    pub kafka_client_properties: Option<String>,
}

/// Why a workload cannot be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The resource lacks a name, namespace or uid (it was not read from the API server).
    #[error("the resource has no {0}")]
    MissingMetadata(&'static str),
    /// The config could not be serialized.
    #[error("serializing the processor config: {0}")]
    Serialize(#[from] serde_json::Error),
}

/// What runs in one Deployment of the processor image, and who owns it.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// The owner's kind (`Pipeline`, `Connector`).
    pub kind: &'static str,
    /// The owner's name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its uid.
    pub uid: String,
    /// The controller owner reference every child carries.
    pub owner: OwnerReference,
    /// The label naming the owner on every object (`sluice.dev/pipeline`, ...).
    pub label: &'static str,
    /// Suffix of the children's names and `app.kubernetes.io/component` (`processor`, ...).
    pub component: &'static str,
    /// The processor subcommand (`pipeline`, `connector`).
    pub command: &'static str,
    /// The config file's name in its ConfigMap.
    pub config_key: &'static str,
    /// Where the ConfigMap is mounted.
    pub config_dir: &'static str,
    /// The consumer group, for workloads that consume.
    pub group_id: Option<String>,
    /// The image, when the workload names one.
    pub image: Option<String>,
    /// The resources, when the workload sets them.
    pub resources: Option<ResourceRequirements>,
    /// A Secret of the owner's namespace mounted read-only at [`CREDENTIALS_DIR`] (its
    /// keys as files), so credentials never pass through the config.
    pub credentials: Option<String>,
}

impl Workload {
    /// The identity part of a workload owned by `owner` (a namespaced resource read from
    /// the API server); the caller fills in what runs.
    pub fn owned_by<K: Resource<DynamicType = ()>>(
        owner: &K,
        kind: &'static str,
        label: &'static str,
        component: &'static str,
        command: &'static str,
    ) -> Result<Self, RenderError> {
        Ok(Self {
            kind,
            name: owner.name_any(),
            namespace: owner
                .namespace()
                .ok_or(RenderError::MissingMetadata("namespace"))?,
            uid: owner.uid().ok_or(RenderError::MissingMetadata("uid"))?,
            owner: owner
                .controller_owner_ref(&())
                .ok_or(RenderError::MissingMetadata("uid"))?,
            label,
            component,
            command,
            config_key: "config.yaml",
            config_dir: "/etc/sluice/config",
            group_id: None,
            image: None,
            resources: None,
            credentials: None,
        })
    }

    /// Name of the Deployment, ConfigMap and (with `-metrics`) Service.
    pub fn child_name(&self) -> String {
        format!("{}-{}", self.name, self.component)
    }

    /// Name of the Secret holding the workload's copy of the Kafka client settings.
    pub fn kafka_client_secret_name(&self) -> String {
        format!("{}-kafka", self.child_name())
    }

    /// Labels that select the workload's pods.
    pub fn selector_labels(&self) -> BTreeMap<String, String> {
        selector_labels(self.label, &self.name)
    }

    fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.selector_labels();
        labels.insert(
            "app.kubernetes.io/managed-by".into(),
            "sluice-operator".into(),
        );
        labels.insert("app.kubernetes.io/component".into(), self.component.into());
        labels
    }

    fn meta(&self, name: String) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels()),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }

    /// Whether an existing object with a child's name is not this workload's: no
    /// controller owner reference to its owner (by UID and kind). The operator never takes
    /// such an object over: a force-apply would rewrite it, and the owner reference would
    /// let the garbage collector delete it with the owner.
    pub fn foreign(&self, existing: &ObjectMeta) -> bool {
        !existing
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.controller == Some(true) && o.uid == self.uid && o.kind == self.kind)
    }
}

/// Labels that select the pods of the workload named `name` whose owner label is `label`.
pub fn selector_labels(label: &str, name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "sluice-processor".to_string(),
        ),
        (label.to_string(), name.to_string()),
    ])
}

/// `labels` as a label selector (`k=v,k=v`), for listing pods or the scale subresource.
pub fn label_selector(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Hash of a config, put in the pod template so a change rolls out.
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

/// Everything a workload's processors need, as reconcile applies it.
#[derive(Debug, Clone, PartialEq)]
pub struct Children {
    /// The config.
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

/// The children of `w` running `config` at `replicas`: a pure function (no API server).
pub fn children(
    w: &Workload,
    config: String,
    defaults: &ProcessorDefaults,
    replicas: i32,
) -> Result<Children, RenderError> {
    let hash = config_hash(&config);
    let config_map = config_map(w, config);
    let mut deployment = deployment(w, defaults, replicas, &hash);
    let service = service(w);
    let kafka_client = defaults
        .kafka_client_properties
        .as_deref()
        .map(|props| kafka_client_secret(w, props));
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

/// The ConfigMap holding the config.
pub fn config_map(w: &Workload, config: String) -> ConfigMap {
    ConfigMap {
        metadata: w.meta(w.child_name()),
        data: Some(BTreeMap::from([(w.config_key.to_string(), config)])),
        ..ConfigMap::default()
    }
}

/// The Deployment, at `replicas`.
pub fn deployment(
    w: &Workload,
    defaults: &ProcessorDefaults,
    replicas: i32,
    config_hash: &str,
) -> Deployment {
    let mut env = vec![
        env_value(contract::env::KAFKA_BOOTSTRAP, &defaults.kafka_bootstrap),
        env_value(contract::env::HTTP_ADDR, &format!("0.0.0.0:{HTTP_PORT}")),
    ];
    if let Some(group) = &w.group_id {
        env.push(env_value(contract::env::GROUP_ID, group));
    }
    env.extend([
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
    ]);
    let mut volumes = vec![Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: w.child_name(),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: "config".into(),
        mount_path: w.config_dir.into(),
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
        let (volume, mount) = secret_volume(
            "kafka-client",
            &w.kafka_client_secret_name(),
            KAFKA_CLIENT_DIR,
        );
        volumes.push(volume);
        mounts.push(mount);
    }
    if let Some(secret) = &w.credentials {
        env.push(env_value(contract::env::CREDENTIALS_DIR, CREDENTIALS_DIR));
        let (volume, mount) = secret_volume("credentials", secret, CREDENTIALS_DIR);
        volumes.push(volume);
        mounts.push(mount);
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
        image: Some(w.image.clone().unwrap_or_else(|| defaults.image.clone())),
        args: Some(vec![
            w.command.into(),
            contract::CONFIG_FLAG.into(),
            format!("{}/{}", w.config_dir, w.config_key),
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
        resources: w.resources.clone().or_else(|| defaults.resources.clone()),
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
        // Why the processor stopped (it writes it there), or else its last log lines.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    };
    let pod_labels = w.selector_labels();
    Deployment {
        metadata: w.meta(w.child_name()),
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
                    node_selector: defaults.node_selector.clone(),
                    tolerations: defaults.tolerations.clone(),
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
    }
}

/// The workload's copy of the operator's Kafka client settings, in its namespace, for its
/// pods to mount (a pod can mount only a Secret of its own namespace).
pub fn kafka_client_secret(w: &Workload, properties: &str) -> Secret {
    Secret {
        metadata: w.meta(w.kafka_client_secret_name()),
        data: Some(BTreeMap::from([(
            KAFKA_CLIENT_KEY.to_string(),
            ByteString(properties.as_bytes().to_vec()),
        )])),
        type_: Some("Opaque".into()),
        ..Secret::default()
    }
}

/// The Service in front of the workload's `/metrics`.
pub fn service(w: &Workload) -> Service {
    Service {
        metadata: w.meta(format!("{}-metrics", w.child_name())),
        spec: Some(ServiceSpec {
            selector: Some(w.selector_labels()),
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
    }
}

/// A Secret mounted read-only at `dir` as volume `name`.
fn secret_volume(name: &str, secret: &str, dir: &str) -> (Volume, VolumeMount) {
    (
        Volume {
            name: name.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.into()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        VolumeMount {
            name: name.into(),
            mount_path: dir.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    )
}

fn env_value(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// The children were already as rendered.
    Unchanged,
    /// The children were written: what is rendered changed.
    Written,
    /// What is rendered did not change, and the children were applied again at a resync
    /// (repairing any that was edited or deleted).
    Reapplied,
    /// An object with a child's name exists and is not this workload's: nothing was
    /// written, and this says which.
    Conflict(String),
}

/// Applies `children` of `w` when what is rendered changed or `resync_due` (between
/// resyncs, the Deployment's fingerprint of what was applied saves the writes), and never
/// over an object with a child's name that `w`'s owner does not own.
pub async fn apply(
    ctx: &Context,
    w: &Workload,
    children: &Children,
    existing: Option<&Deployment>,
    resync_due: bool,
) -> Result<Applied, Error> {
    let ns = &w.namespace;
    let name = w.child_name();
    let applied = existing
        .and_then(|d| d.metadata.annotations.as_ref())
        .and_then(|a| a.get(RENDERED_ANNOTATION));
    // Between resyncs nothing is written when the Deployment says it holds what would be
    // applied; at each resync every child is applied again, so one that was edited or
    // deleted is repaired.
    let unchanged = applied == Some(&children.fingerprint);
    if unchanged && !resync_due {
        return Ok(Applied::Unchanged);
    }
    let svc_name = children.service.metadata.name.clone().unwrap_or_default();
    let configmaps = Api::<ConfigMap>::namespaced(ctx.client.clone(), ns);
    let services = Api::<Service>::namespaced(ctx.client.clone(), ns);
    let secrets = Api::<Secret>::namespaced(ctx.client.clone(), ns);
    let secret_name = w.kafka_client_secret_name();
    let mut taken = Vec::new();
    if existing.is_some_and(|d| w.foreign(&d.metadata)) {
        taken.push(format!("Deployment {name}"));
    }
    if foreign_child(w, &configmaps, &name, "read the ConfigMap").await? {
        taken.push(format!("ConfigMap {name}"));
    }
    if children.kafka_client.is_some()
        && foreign_child(w, &secrets, &secret_name, "read the Kafka client Secret").await?
    {
        taken.push(format!("Secret {secret_name}"));
    }
    if foreign_child(w, &services, &svc_name, "read the metrics Service").await? {
        taken.push(format!("Service {svc_name}"));
    }
    if !taken.is_empty() {
        return Ok(Applied::Conflict(format!(
            "{} already exist(s) and belong(s) to something else, so nothing was deployed: \
             rename the {kind} or remove them (if the {kind} was just recreated, they go \
             with the old one in a moment)",
            taken.join(", "),
            kind = w.kind
        )));
    }
    let params = PatchParams::apply(FIELD_MANAGER).force();
    configmaps
        .patch(&name, &params, &Patch::Apply(&children.config_map))
        .await
        .map_err(Error::kube(format!("apply the {} ConfigMap", w.component)))?;
    services
        .patch(&svc_name, &params, &Patch::Apply(&children.service))
        .await
        .map_err(Error::kube(format!(
            "apply the {} metrics Service",
            w.component
        )))?;
    if let Some(secret) = &children.kafka_client {
        secrets
            .patch(&secret_name, &params, &Patch::Apply(secret))
            .await
            .map_err(Error::kube("apply the Kafka client Secret"))?;
    }
    Api::<Deployment>::namespaced(ctx.client.clone(), ns)
        .patch(&name, &params, &Patch::Apply(&children.deployment))
        .await
        .map_err(Error::kube(format!("apply the {} Deployment", w.component)))?;
    ctx.metrics.kube_write(w.kind, "children");
    Ok(if unchanged {
        Applied::Reapplied
    } else {
        Applied::Written
    })
}

/// Whether an object named `name` exists in `api` and is not `w`'s.
async fn foreign_child<K>(
    w: &Workload,
    api: &Api<K>,
    name: &str,
    action: &'static str,
) -> Result<bool, Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let meta = api
        .get_metadata_opt(name)
        .await
        .map_err(Error::kube(action))?;
    Ok(meta.is_some_and(|m| w.foreign(&m.metadata)))
}
