//! The native connector plugins' settings: one typed block per plugin, so `kubectl
//! explain` documents every setting and the schema refuses a bad one at apply.

use std::collections::BTreeMap;

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::DURATION_PATTERN;

/// Pattern of a rate such as `500/s` or `2.5/s`.
pub const RATE_PATTERN: &str = r"^[0-9]+(\.[0-9]+)?/s$";

/// PostgreSQL change data capture through logical replication (pgoutput). Credentials
/// from `secretRef` (keys `host`, `port`, `dbname`, `user`, `password`; optional `sslmode`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PostgresCdcSource {
    /// Tables to capture, schema-qualified (`public.orders`); the publication is created
    /// for them when missing.
    #[schemars(length(min = 1))]
    pub tables: Vec<String>,
    /// The replication slot; created when missing.
    #[schemars(regex(pattern = r"^[a-z0-9_]{1,63}$"))]
    pub slot: String,
    /// The publication; `<slot>` when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publication: Option<String>,
    /// Records go to `<topicPrefix>.<schema>.<table>`, as Debezium names them.
    pub topic_prefix: String,
    /// `initial` reads the tables once before streaming; `never` streams only.
    #[serde(default)]
    pub snapshot: Snapshot,
    /// How often the slot is advanced on idle tables, so WAL does not pile up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub heartbeat: Option<String>,
    /// `Retain` keeps the slot when the Connector goes; `Delete` drops it.
    #[serde(default)]
    pub slot_deletion_policy: SlotDeletionPolicy,
}

/// Whether a CDC source reads the tables before streaming.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Snapshot {
    /// Read every row first, consistent with the slot's start.
    #[default]
    Initial,
    /// Stream changes only.
    Never,
}

/// What happens to a replication slot when its Connector is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SlotDeletionPolicy {
    /// Keep it (the safe default: a new Connector can continue from it).
    #[default]
    Retain,
    /// Drop it.
    Delete,
}

/// Polls a query or table by a cursor column.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.query) != has(self.table)").message("postgresQuery needs exactly one of query and table"))]
pub struct PostgresQuerySource {
    /// A SELECT whose rows become records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// A table whose rows become records (schema-qualified allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// The column that says which rows are new.
    pub cursor: QueryCursor,
    /// How often to poll.
    #[serde(default = "default_interval")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub interval: String,
}

fn default_interval() -> String {
    "5s".to_string()
}

/// The cursor of a polled query.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueryCursor {
    /// The column.
    pub column: String,
    /// `incrementing` (an id) or `timestamp`.
    pub kind: CursorKind,
}

/// How a cursor column grows.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum CursorKind {
    /// Strictly increasing values, such as a serial id.
    Incrementing,
    /// A modification time.
    Timestamp,
}

/// Accepts JSON over HTTP (`POST /`) and writes it to Kafka. An optional bearer token from
/// `secretRef` (key `token`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpIngestSource {
    /// CEL expression over the record (`value`) for its key; no key when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// CEL expression over the request `headers` naming the topic; the one topic of
    /// `spec.topics` when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Replicas of the ingest Deployment.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: i32,
}

fn one() -> i32 {
    1
}

/// Writes generated records (demos and load tests).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GeneratorSource {
    /// Field name to CEL expression over `i` (the record index) and `now` (milliseconds
    /// since the epoch); write a literal as a CEL literal (`"1"`, `"'eu'"`).
    #[schemars(extend("minProperties" = 1, "maxProperties" = 64))]
    pub template: BTreeMap<String, String>,
    /// CEL expression for the record key; no key when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Records per second, such as `50/s`; as fast as possible when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = RATE_PATTERN))]
    pub rate: Option<String>,
    /// Stop after this many records; runs until stopped when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub count: Option<i64>,
}

/// Loads records into a PostgreSQL table. Credentials from `secretRef` (keys `host`,
/// `port`, `dbname`, `user`, `password`; optional `sslmode`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.mode) || self.mode != 'upsert' || (has(self.key) && size(self.key) > 0)").message("postgres upsert needs the conflict columns in key"))]
#[x_kube(validation = Rule::new("!has(self.deletes) || !self.deletes || (has(self.mode) && self.mode == 'upsert')").message("postgres deletes (a tombstone deletes the row by key) need mode: upsert"))]
pub struct PostgresSink {
    /// The table (schema-qualified allowed); top-level JSON fields map to its columns.
    pub table: String,
    /// `insert` or `upsert`.
    #[serde(default)]
    pub mode: PostgresWriteMode,
    /// Conflict columns for `upsert`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key: Vec<String>,
    /// A tombstone (null value) deletes the row by key (upsert only).
    #[serde(default)]
    pub deletes: bool,
    /// How many records go in one transaction, and how long to wait for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<Batch>,
}

/// How rows are written.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PostgresWriteMode {
    /// Each record is a new row.
    #[default]
    Insert,
    /// Insert, or update the row with the same key.
    Upsert,
}

/// A batch: at most `records`, waiting at most `interval` for them.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Batch {
    /// Most records in a batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub records: Option<i32>,
    /// Longest wait for a batch to fill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub interval: Option<String>,
}

/// Writes objects to an S3-compatible store. Credentials from `secretRef` (keys
/// `accessKeyId`, `secretAccessKey`, optional `sessionToken`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.parquet) || (has(self.format) && self.format == 'parquet')").message("s3.parquet sets the columns of format: parquet"))]
pub struct S3Sink {
    /// The bucket.
    pub bucket: String,
    /// Objects are named `<prefix><topic>/partition=<p>/<topic>+<p>+<first offset>.<ext>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The store's URL, for stores other than AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"))]
    pub endpoint: Option<String>,
    /// Path-style requests (`<endpoint>/<bucket>/<key>`), as most non-AWS stores want.
    #[serde(default)]
    pub path_style: bool,
    /// The region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// `jsonl` or `parquet`.
    #[serde(default)]
    pub format: ObjectFormat,
    /// The columns of `format: parquet`; without it, each object's columns are its
    /// records' fields, typed from their values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parquet: Option<ParquetLayout>,
    /// When an object is written: at most so many records or bytes, or so long after its
    /// first record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flush: Option<Flush>,
}

/// The format of written objects.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ObjectFormat {
    /// One JSON value per line.
    #[default]
    Jsonl,
    /// Apache Parquet.
    Parquet,
}

/// The columns of Parquet objects.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.columns.all(c, self.columns.exists_one(d, d.name == c.name))").message("s3.parquet.columns names each column once"))]
pub struct ParquetLayout {
    /// The columns, in order: each is the record's top-level field of the same name,
    /// null when the field is missing or null. A value that does not fit its column's
    /// type goes to the dead-letter topic; fields not named are not written.
    #[schemars(length(min = 1, max = 256))]
    pub columns: Vec<ParquetColumn>,
}

/// One column of a Parquet object.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParquetColumn {
    /// The record's field, and the column's name.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// `string`, `int64`, `double`, `boolean`, or `json` (any value, as JSON text).
    #[serde(rename = "type")]
    pub kind: ColumnType,
}

/// The type of a Parquet column, and the JSON values it takes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ColumnType {
    /// A JSON string (UTF-8, logical type STRING).
    String,
    /// A JSON integer within 64 bits.
    Int64,
    /// Any JSON number, as a 64-bit float.
    Double,
    /// `true` or `false`.
    Boolean,
    /// Any JSON value, as its compact JSON text (logical type JSON).
    Json,
}

/// When a sink writes an object.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Flush {
    /// Most records in an object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub records: Option<i64>,
    /// Most bytes in an object, as a Kubernetes quantity (`64Mi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(Ki|Mi|Gi)?$"))]
    pub bytes: Option<String>,
    /// Longest time between an object's first record and its write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub interval: Option<String>,
}

/// Sends records to an HTTP endpoint. An optional `Authorization` header from
/// `secretRef` (key `authorization`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpSink {
    /// The endpoint.
    #[schemars(regex(pattern = r"^https?://"))]
    pub url: String,
    /// `POST`, `PUT` or `PATCH`.
    #[serde(default)]
    pub method: HttpMethod,
    /// Records per request (a JSON array; `records: 1` sends single objects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<Batch>,
    /// Retries of 429, 5xx and connection errors before a record is dead-lettered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Most requests per second, such as `500/s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = RATE_PATTERN))]
    pub rate_limit: Option<String>,
}

/// The method of an HTTP sink's requests.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    /// POST.
    #[default]
    Post,
    /// PUT.
    Put,
    /// PATCH.
    Patch,
}

/// Retries with exponential backoff.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Retry {
    /// Attempts in all, the first included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub attempts: Option<i32>,
    /// The first wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub backoff: Option<String>,
    /// The longest wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub max_backoff: Option<String>,
}
