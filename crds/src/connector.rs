//! `Connector`: moves data between Kafka and an outside system.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::SecretRef;
use crate::pipeline::{DeadLetter, Delivery, ScaleDecision, Scaling};
use crate::plugins::{
    GeneratorSource, HttpIngestSource, HttpSink, PostgresCdcSource, PostgresQuerySource,
    PostgresSink, S3Sink,
};

/// Rule of Kafka Connect's free-form config: credentials only through a config provider
/// placeholder such as `${directory:...}`, never as plain values.
const NO_INLINE_SECRETS: &str = "self.all(k, !k.lowerAscii().matches('password|passwd|secret|jaas|token|credential|api.?key|access.?key|private.?key') || self[k].startsWith('${'))";
const NO_INLINE_SECRETS_MESSAGE: &str = "credentials must come from a Kafka Connect config provider placeholder (${directory:...}, ${file:...}), never inline in config";

/// A source that brings data into Kafka topics, or a sink that loads topics into another
/// system: one native plugin block, or `kafkaConnect` to run any Kafka Connect connector
/// on an existing Connect cluster.
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
#[x_kube(validation = Rule::new(EXACTLY_ONE_PLUGIN).message("set exactly one of postgresCdc, postgresQuery, httpIngest, generator (sources), postgres, s3, http (sinks) or kafkaConnect"))]
#[x_kube(validation = Rule::new(PLUGIN_MATCHES_TYPE).message("source plugins: postgresCdc, postgresQuery, httpIngest, generator; sink plugins: postgres, s3, http"))]
#[x_kube(validation = Rule::new("!has(self.generator) || size(self.topics) == 1").message("the generator writes to one topic: spec.topics: [name]"))]
#[x_kube(validation = Rule::new("!has(self.httpIngest) || size(self.topics) == 1 || has(self.httpIngest.topic)").message("httpIngest writes to the one topic in spec.topics, or to the topic its topic expression names"))]
#[x_kube(validation = Rule::new("!has(self.scaling) || (self.type == 'sink' && !has(self.kafkaConnect))").message("scaling sizes native sinks on their consumer lag; a source runs as its plugin allows, and Kafka Connect sizes its own tasks (kafkaConnect.tasksMax)"))]
#[x_kube(validation = Rule::new("!has(self.scaling) || !has(self.scaling.mode) || self.scaling.mode == 'auto'").message("a Connector has no scale subresource: scaling.mode external is for Pipelines"))]
#[x_kube(validation = Rule::new("has(self.kafkaConnect) == has(oldSelf.kafkaConnect)").message("a Connector cannot move between Kafka Connect and a native plugin: make a new Connector"))]
#[serde(rename_all = "camelCase")]
pub struct ConnectorSpec {
    /// `source` brings data into Kafka; `sink` loads Kafka topics elsewhere.
    #[serde(rename = "type")]
    pub type_: ConnectorType,
    /// Topics a source writes to, or a sink reads from.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Secret with the plugin's credentials (passwords, access keys), mounted into the
    /// connector's pods; never copied into its config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
    /// `running`, `paused` (keeps its position, moves nothing) or `stopped`.
    #[serde(default)]
    pub state: ConnectorState,
    /// Source: PostgreSQL change data capture by logical replication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_cdc: Option<PostgresCdcSource>,
    /// Source: polls a PostgreSQL query or table by a cursor column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_query: Option<PostgresQuerySource>,
    /// Source: accepts JSON over HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_ingest: Option<HttpIngestSource>,
    /// Source: generated records, for demos and load tests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generator: Option<GeneratorSource>,
    /// Sink: a PostgreSQL table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresSink>,
    /// Sink: objects in an S3-compatible store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Sink>,
    /// Sink: an HTTP endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSink>,
    /// Native sinks: where records the target refuses go (with the target's message in
    /// the `sluice.sink.error` header). Without it a refused record stops the connector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetter>,
    /// Native sinks: `exactlyOnce` (the default where the target allows it: PostgreSQL
    /// stores the consumed positions in the same transaction as the rows) or
    /// `atLeastOnce`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
    /// Native sinks: replicas sized on the consumer lag of `spec.topics`, with the
    /// Pipeline autoscaler and its settings (`mode: auto` only). Without it a sink runs
    /// one replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<Scaling>,
    /// Run this connector on an existing Kafka Connect cluster instead of natively.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka_connect: Option<KafkaConnectSpec>,
    /// Restart a failed connector and its failed tasks, with exponential backoff. Without
    /// this block nothing is restarted on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_restart: Option<AutoRestart>,
}

/// Exactly one plugin block is set.
const EXACTLY_ONE_PLUGIN: &str = "[has(self.postgresCdc), has(self.postgresQuery), has(self.httpIngest), has(self.generator), has(self.postgres), has(self.s3), has(self.http), has(self.kafkaConnect)].filter(x, x).size() == 1";
/// The plugin's direction is the connector's type.
const PLUGIN_MATCHES_TYPE: &str = "self.type == 'source' ? !(has(self.postgres) || has(self.s3) || has(self.http)) : !(has(self.postgresCdc) || has(self.postgresQuery) || has(self.httpIngest) || has(self.generator))";

impl ConnectorSpec {
    /// The name of the native plugin block that is set (`postgresCdc`, `s3`, ...), if any.
    pub fn native_plugin(&self) -> Option<&'static str> {
        [
            (self.postgres_cdc.is_some(), "postgresCdc"),
            (self.postgres_query.is_some(), "postgresQuery"),
            (self.http_ingest.is_some(), "httpIngest"),
            (self.generator.is_some(), "generator"),
            (self.postgres.is_some(), "postgres"),
            (self.s3.is_some(), "s3"),
            (self.http.is_some(), "http"),
        ]
        .into_iter()
        .find_map(|(set, name)| set.then_some(name))
    }
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
    /// Native sinks: records in `spec.topics` not yet loaded (the consumer group's lag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// Native sinks with `scaling`: the latest change of the replica count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale: Option<ScaleDecision>,
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
