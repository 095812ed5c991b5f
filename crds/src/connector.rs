//! `Connector`: moves data between Kafka and an outside system.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::SecretRef;

/// Rule shared by every free-form config map: credentials only through `secretRef` or a
/// config provider placeholder such as `${secrets:...}`, never as plain values.
const NO_INLINE_SECRETS: &str = "self.all(k, !k.lowerAscii().matches('password|passwd|secret|jaas|token|credential|api.?key|access.?key|private.?key') || self[k].startsWith('${'))";
const NO_INLINE_SECRETS_MESSAGE: &str = "credentials must come from spec.secretRef (or a ${provider:...} placeholder), never inline in config";

/// A source that brings data into Kafka topics, or a sink that loads topics into another
/// system. Native plugins run in the Sluice processor image; with `kafkaConnect` the
/// connector runs on an existing Kafka Connect cluster instead.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "Connector",
    namespaced,
    doc = "A Sluice connector: a source into Kafka or a sink out of it.",
    status = "ConnectorStatus",
    shortname = "sconn",
    category = "sluice",
    derive = "PartialEq",
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.type"),
    printcolumn(name = "Plugin", type_ = "string", json_path = ".status.plugin"),
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(name = "Tasks", type_ = "string", json_path = ".status.tasksReady"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.type != 'sink' || size(self.topics) > 0").message("a sink needs at least one topic in spec.topics"))]
#[x_kube(validation = Rule::new("!(has(self.kafkaConnect) && has(self.plugin))").message("set either spec.plugin or spec.kafkaConnect, not both"))]
#[x_kube(validation = Rule::new("has(self.kafkaConnect) == has(oldSelf.kafkaConnect)").message("a Connector cannot move between Kafka Connect and a native plugin: make a new Connector"))]
#[x_kube(validation = Rule::new("has(self.kafkaConnect) || has(self.plugin)").message("set spec.plugin for a native connector, or spec.kafkaConnect for a Kafka Connect one"))]
#[x_kube(validation = Rule::new("!has(self.plugin) || (self.type == 'source' ? self.plugin in ['postgres-cdc', 'postgres-query', 'http', 'generator'] : self.plugin in ['postgres', 's3', 'http'])").message("source plugins: postgres-cdc, postgres-query, http, generator; sink plugins: postgres, s3, http"))]
#[serde(rename_all = "camelCase")]
pub struct ConnectorSpec {
    /// `source` brings data into Kafka; `sink` loads Kafka topics elsewhere.
    #[serde(rename = "type")]
    pub type_: ConnectorType,
    /// Native plugin: sources `postgres-cdc`, `postgres-query`, `http`, `generator`;
    /// sinks `postgres`, `s3`, `http`. Leave unset when `kafkaConnect` is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// Topics a source writes to, or a sink reads from.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Plugin settings (table, bucket, flush sizes, ...). No credentials here: use `secretRef`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    #[x_kube(validation = Rule::new(NO_INLINE_SECRETS).message(NO_INLINE_SECRETS_MESSAGE))]
    pub config: BTreeMap<String, String>,
    /// Secret whose keys are passed to the plugin as settings (passwords, access keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
    /// `running`, `paused` (keeps its position, moves nothing) or `stopped`.
    #[serde(default)]
    pub state: ConnectorState,
    /// Run this connector on an existing Kafka Connect cluster instead of natively.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka_connect: Option<KafkaConnectSpec>,
    /// Restart a failed connector and its failed tasks, with exponential backoff. Without
    /// this block nothing is restarted on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_restart: Option<AutoRestart>,
}

/// Automatic restarts of a failed connector or task.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoRestart {
    /// Restart failed connectors and tasks.
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// Stop restarting after this many attempts in a row (Ready=False, reason
    /// RestartLimitReached). Unset: no limit. The count starts again after the connector
    /// has run as asked for a minute, or when the spec changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_restarts: Option<i32>,
}

fn enabled() -> bool {
    true
}

/// Direction of a connector.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ConnectorType {
    /// Brings data into Kafka.
    Source,
    /// Loads Kafka topics into another system.
    Sink,
}

/// Desired run state of a connector.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ConnectorState {
    /// Moving data.
    #[default]
    Running,
    /// Keeps its tasks and position, moves nothing.
    Paused,
    /// Stops its tasks.
    Stopped,
}

/// A connector hosted by a Kafka Connect cluster, managed through its REST API.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KafkaConnectSpec {
    /// REST URL of the Kafka Connect cluster, for example `http://connect:8083`. It cannot
    /// change: the connector would be left behind on the old cluster.
    #[schemars(regex(pattern = r"^https?://"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.kafkaConnect.url cannot change (the connector would be left on the old cluster): make a new Connector"))]
    pub url: String,
    /// The connector class, for example `io.debezium.connector.postgresql.PostgresConnector`.
    pub class: String,
    /// Most tasks the connector may run.
    #[serde(default = "default_tasks_max")]
    #[schemars(range(min = 1))]
    pub tasks_max: i32,
    /// Connector settings passed to Kafka Connect. Credentials through config providers
    /// (`${secrets:...}`, `${file:...}`), never inline.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    #[x_kube(validation = Rule::new(NO_INLINE_SECRETS).message(NO_INLINE_SECRETS_MESSAGE))]
    pub config: BTreeMap<String, String>,
}

fn default_tasks_max() -> i32 {
    1
}

/// What the connector is doing.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectorStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` says whether the connector runs as asked, and why not.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Current state: RUNNING, PAUSED, STOPPED, FAILED or UNASSIGNED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Tasks and their states.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<ConnectorTask>,
    /// How far the connector got: an LSN, offset or object name, as the plugin reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<String>,
    /// The last error the connector or one of its tasks reported (its first line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The plugin, or for Kafka Connect the connector class without its package.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// The connector's name on its Kafka Connect cluster: `<namespace>.<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_name: Option<String>,
    /// Tasks running of tasks reported, for example `1/1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks_ready: Option<String>,
    /// The topics the connector has used, as Kafka Connect reports them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<String>,
    /// The source offsets or sink positions the connector reports (at most 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offsets: Vec<ConnectorOffset>,
    /// Automatic restarts: how many in a row, the last and the next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<RestartStatus>,
}

/// One offset a connector reports: the partition it belongs to and the position in it,
/// each as compact JSON as Kafka Connect gives them.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectorOffset {
    /// The source partition (for example `{"server":"sales"}`) or Kafka topic partition.
    pub partition: String,
    /// The position (for example `{"lsn":23456}`), or `null` once reset.
    pub offset: String,
}

/// Automatic restarts so far.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestartStatus {
    /// Restarts in a row without a minute of running as asked in between.
    pub count: i32,
    /// When the last restart was asked for (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_restart_time: Option<String>,
    /// The earliest time of the next restart, while one is due (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_restart_time: Option<String>,
}

/// One task of a connector.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectorTask {
    /// Task number.
    pub id: i32,
    /// RUNNING, PAUSED, FAILED or UNASSIGNED.
    pub state: String,
    /// Where it runs (worker or pod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
}
