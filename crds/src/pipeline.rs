//! `Pipeline`: a stream-processing job from input topics, through steps, to output topics.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::SecretRef;

/// Reads input topics, runs each record through ordered steps and writes the results to
/// output topics. Records that fail go to the dead-letter topic; nothing is dropped silently.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "Pipeline",
    namespaced,
    doc = "A Sluice pipeline: input topics, steps, output topics.",
    status = "PipelineStatus",
    shortname = "spl",
    category = "sluice",
    derive = "PartialEq",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.desiredReplicas"
    ),
    printcolumn(
        name = "Available",
        type_ = "integer",
        json_path = ".status.readyReplicas"
    ),
    printcolumn(name = "Lag", type_ = "integer", json_path = ".status.lag"),
    printcolumn(
        name = "Rate",
        type_ = "number",
        json_path = ".status.recordsPerSecond",
        description = "records consumed per second"
    ),
    printcolumn(
        name = "Delivery",
        type_ = "string",
        json_path = ".spec.delivery",
        priority = "1"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.format != 'avro' || has(self.schemaRegistry)").message("format avro needs spec.schemaRegistry"))]
#[x_kube(validation = Rule::new("self.steps.all(s, self.steps.exists_one(t, t.name == s.name))").message("step names must be unique"))]
#[x_kube(validation = Rule::new("size(self.outputs) > 0 || self.steps.exists(s, has(s.route))").message("a pipeline needs at least one output, or a route step"))]
#[serde(rename_all = "camelCase")]
pub struct PipelineSpec {
    /// Topics to consume.
    #[schemars(length(min = 1, max = 64))]
    pub inputs: Vec<String>,
    /// Record format of inputs and outputs: `json` (the default), `avro` (with
    /// `schemaRegistry`), `string` or `bytes`.
    #[serde(default)]
    pub format: Format,
    /// A Confluent-compatible schema registry, for `format: avro`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_registry: Option<SchemaRegistry>,
    /// Where a new consumer group starts: `earliest` (the default) or `latest`.
    #[serde(default)]
    pub start_from: StartFrom,
    /// Steps applied to each record, in order.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub steps: Vec<Step>,
    /// Topics the records leaving the last step are written to.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub outputs: Vec<Output>,
    /// Where records that cannot be processed go, with headers saying why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetter>,
    /// `exactlyOnce` (transactions, read_committed) or `atLeastOnce` (the default).
    #[serde(default)]
    pub delivery: Delivery,
    /// How often offsets (and, for exactlyOnce, transactions) are committed.
    #[serde(default = "default_commit_interval")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub commit_interval: String,
    /// Most records each processor replica consumes per second (unset: as fast as it
    /// can). Protects what the outputs feed; the autoscaler measures the limit as a
    /// replica's capacity and adds replicas when the backlog needs more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// How the processor replicas are sized.
    #[serde(default)]
    pub scaling: Scaling,
    /// Replica count when `scaling.mode` is `external` (set by HPA or KEDA through the
    /// scale subresource). Ignored in `auto` mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,
    /// CPU and memory of each processor replica. Defaults come from the operator's settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Processor image, overriding the operator's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

fn default_commit_interval() -> String {
    "100ms".to_string()
}

/// Record format.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Format {
    /// JSON objects; expressions see the parsed value.
    #[default]
    Json,
    /// Avro with schemas from a Confluent-compatible schema registry.
    Avro,
    /// UTF-8 text; expressions see a string.
    String,
    /// Raw bytes; expressions see bytes.
    Bytes,
}

/// Where a new consumer group starts reading.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum StartFrom {
    /// From the oldest retained record.
    #[default]
    Earliest,
    /// From records written after the pipeline starts.
    Latest,
}

/// A Confluent-compatible schema registry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SchemaRegistry {
    /// Registry URL.
    pub url: String,
    /// Secret with `username` and `password` for the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
}

/// One step. Set `name` and exactly one of the step kinds.
///
/// Expressions are CEL. They see `value` (the record: a map for JSON), `key` (string),
/// `headers` (map of strings), `topic`, `partition`, `offset` and `timestamp` (ms).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("[has(self.filter), has(self.map), has(self.route), has(self.aggregate), has(self.dedupe), has(self.enrich), has(self.validate)].filter(x, x).size() == 1").message("a step sets exactly one of filter, map, route, aggregate, dedupe, enrich, validate"))]
#[serde(rename_all = "camelCase")]
pub struct Step {
    /// Name of the step, used in metrics and dead-letter headers.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Keep records for which this CEL expression is true; drop the others (counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub filter: Option<String>,
    /// Reshape the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<MapStep>,
    /// Send records to topics by predicate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteStep>,
    /// Keyed aggregate, optionally windowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<AggregateStep>,
    /// Drop records whose key was seen within a time window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedupe: Option<DedupeStep>,
    /// Join each record with a compacted topic held as a table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrich: Option<EnrichStep>,
    /// Check the record's shape; records that fail go to the dead-letter topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validate: Option<ValidateStep>,
}

/// Reshape a record: set fields from expressions, rename fields, drop fields (in that order).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MapStep {
    /// Field name to CEL expression; the field is set to the expression's value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Old field name to new field name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rename: BTreeMap<String, String>,
    /// Fields to remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop: Vec<String>,
}

/// Send each record to the topic of the first route whose `when` is true.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteStep {
    /// Routes, tried in order.
    #[schemars(length(min = 1, max = 64))]
    pub routes: Vec<Route>,
    /// Topic for records no route matches. Without it they continue to the next step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

/// One branch of a route step.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// CEL predicate.
    #[schemars(length(max = 4096))]
    pub when: String,
    /// Topic matching records are written to.
    pub topic: String,
}

/// Group records by key and keep running aggregates. The output record holds the
/// `groupBy` fields and one field per aggregation.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.emit != 'onWindowClose' || has(self.window)").message("emit onWindowClose needs a window"))]
#[serde(rename_all = "camelCase")]
pub struct AggregateStep {
    /// Output field name to CEL expression; together they form the group key.
    #[schemars(extend("minProperties" = 1, "maxProperties" = 8))]
    pub group_by: BTreeMap<String, String>,
    /// Aggregates kept per group.
    #[schemars(length(min = 1, max = 32))]
    pub aggregations: Vec<Aggregation>,
    /// Window; without one the aggregate runs over all time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    /// `onUpdate` (the default) emits the new aggregate after every record;
    /// `onCommit` emits the latest aggregate of each group that changed, once per
    /// `commitInterval` (far fewer records for few, busy groups);
    /// `onWindowClose` emits once per window when it closes.
    #[serde(default)]
    pub emit: Emit,
    /// `debezium`: the input is a table's change stream in Debezium's envelope, and the
    /// aggregate is the table's `GROUP BY`: a row read or inserted is added to its group,
    /// an update takes the old row (`before`) out of its group and adds the new one, a
    /// delete takes the row out, and a group left with no rows is deleted (a tombstone).
    /// Unwindowed, with sum, count and avg (min and max cannot take a value back); the
    /// source table needs `REPLICA IDENTITY FULL` so updates and deletes carry the old row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<ChangeStream>,
}

/// The envelope of a change stream.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ChangeStream {
    /// Debezium's `{before, after, op}` (`op` `r`, `c`, `u`, `d`); tombstones are skipped.
    Debezium,
}

/// One aggregate of a group.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.op == 'count' || has(self.of)").message("sum, min, max and avg need `of`"))]
#[serde(rename_all = "camelCase")]
pub struct Aggregation {
    /// Output field name.
    pub name: String,
    /// `sum`, `count`, `min`, `max` or `avg`.
    pub op: AggregateOp,
    /// CEL expression giving the number to aggregate (not needed for `count`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub of: Option<String>,
}

/// Aggregate function.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AggregateOp {
    /// Sum of the values.
    Sum,
    /// Number of records.
    Count,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Mean of the values.
    Avg,
}

/// When aggregates are emitted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Emit {
    /// After every update.
    #[default]
    OnUpdate,
    /// The latest value of each changed group, once per commit interval.
    OnCommit,
    /// Once per window, when it closes.
    OnWindowClose,
}

/// A time window, by record timestamp. Set exactly one kind.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("[has(self.tumbling), has(self.hopping), has(self.session)].filter(x, x).size() == 1").message("a window sets exactly one of tumbling, hopping, session"))]
#[serde(rename_all = "camelCase")]
pub struct Window {
    /// Fixed, non-overlapping windows of this length (`1m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub tumbling: Option<String>,
    /// Overlapping windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hopping: Option<HoppingWindow>,
    /// Windows that close after a gap with no records for the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionWindow>,
    /// How long a closed window still accepts late records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub grace: Option<String>,
}

/// Windows of `size`, starting every `advance`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HoppingWindow {
    /// Window length.
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub size: String,
    /// Distance between window starts.
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub advance: String,
}

/// Session windows.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionWindow {
    /// Inactivity gap that closes a session.
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub gap: String,
}

/// Drop a record when another with the same key passed within `within`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DedupeStep {
    /// CEL expression giving the deduplication key.
    pub key: String,
    /// How long a key is remembered.
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub within: String,
}

/// Join with a compacted topic read in full by every replica (the GlobalKTable pattern).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnrichStep {
    /// The compacted topic holding the table, keyed by the join key.
    pub table: String,
    /// CEL expression giving the join key of each record.
    pub key: String,
    /// Field the matching table value is put into.
    pub into: String,
    /// What to do when no row matches: `keep` (the default) or `deadLetter`.
    #[serde(default)]
    pub on_missing: OnMissing,
}

/// What an enrich step does when the table has no row for the key.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OnMissing {
    /// Pass the record on without the field.
    #[default]
    Keep,
    /// Send the record to the dead-letter topic.
    DeadLetter,
}

/// Shape checks on a JSON record.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValidateStep {
    /// Fields that must be present.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required: Vec<String>,
    /// Field name to the JSON type it must have.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub types: BTreeMap<String, FieldType>,
}

/// A JSON type.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum FieldType {
    /// A string.
    String,
    /// Any number.
    Number,
    /// A whole number.
    Integer,
    /// true or false.
    Boolean,
    /// A JSON object.
    Object,
    /// A JSON array.
    Array,
}

/// An output topic.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Output {
    /// Topic to write to.
    pub topic: String,
    /// CEL expression for the record key. Without it the input key is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Dead-letter settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// Topic for records that cannot be processed.
    pub topic: String,
    /// Produce retries before a record is dead-lettered.
    #[serde(default = "default_retries")]
    #[schemars(range(min = 0, max = 100))]
    pub retries: i32,
}

fn default_retries() -> i32 {
    3
}

/// Delivery guarantee.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Delivery {
    /// Each input record affects the outputs once, even across crashes.
    ExactlyOnce,
    /// Offsets committed after outputs are acknowledged; a crash may repeat records.
    #[default]
    AtLeastOnce,
}

/// A cap on how fast one replica consumes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Records per second, per replica.
    #[schemars(range(min = 1))]
    pub records_per_second: i32,
}

/// How processor replicas are sized.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("scaling.minReplicas must not exceed scaling.maxReplicas"))]
#[serde(rename_all = "camelCase")]
pub struct Scaling {
    /// `auto` (Sluice sizes on consumer lag) or `external` (HPA or KEDA sets `spec.replicas`
    /// through the scale subresource).
    #[serde(default)]
    pub mode: ScalingMode,
    /// Fewest replicas. 0 lets an idle pipeline scale to zero.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 0))]
    pub min_replicas: i32,
    /// Most replicas (never more than the input partitions).
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// The backlog should drain within this time (`30s`, `2m`).
    #[serde(default = "default_lag_target")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub lag_target: String,
    /// Scale down only after the smaller size has been enough for this long.
    #[serde(default = "default_scale_down_stabilization")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub scale_down_stabilization: String,
    /// With `minReplicas: 0`, scale to zero after no records arrived for this long.
    #[serde(default = "default_idle_after")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub idle_after: String,
}

impl Default for Scaling {
    fn default() -> Self {
        Self {
            mode: ScalingMode::default(),
            min_replicas: default_min_replicas(),
            max_replicas: default_max_replicas(),
            lag_target: default_lag_target(),
            scale_down_stabilization: default_scale_down_stabilization(),
            idle_after: default_idle_after(),
        }
    }
}

fn default_min_replicas() -> i32 {
    1
}
fn default_max_replicas() -> i32 {
    10
}
fn default_lag_target() -> String {
    "30s".to_string()
}
fn default_scale_down_stabilization() -> String {
    "2m".to_string()
}
fn default_idle_after() -> String {
    "5m".to_string()
}

/// Who sizes the pipeline.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ScalingMode {
    /// The Sluice operator, on consumer lag.
    #[default]
    Auto,
    /// HPA, KEDA or a person, through the scale subresource (`spec.replicas`).
    External,
}

/// What the pipeline is doing.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PipelineStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, TopicsReady, Available, Progressing and Degraded, each with a reason.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Processor replicas that exist.
    #[serde(default)]
    pub replicas: i32,
    /// Processor replicas that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Processor replicas running the current spec.
    #[serde(default)]
    pub updated_replicas: i32,
    /// Replicas the autoscaler (or `spec.replicas`) asks for.
    #[serde(default)]
    pub desired_replicas: i32,
    /// Label selector of the processor pods, for the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Records waiting across all input partitions.
    #[serde(default)]
    pub lag: i64,
    /// Records waiting on the most behind partition.
    #[serde(default)]
    pub max_partition_lag: i64,
    /// Records consumed per second, averaged over the last minute.
    #[serde(default)]
    pub records_per_second: f64,
    /// The last scaling decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale: Option<ScaleDecision>,
}

/// A scaling decision and the numbers behind it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleDecision {
    /// When it was made.
    pub time: Time,
    /// Replicas before.
    pub from: i32,
    /// Replicas after.
    pub to: i32,
    /// Why, with the lag and rate it was based on.
    pub reason: String,
}
