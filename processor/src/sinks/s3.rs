//! The S3 sink: each flush writes one object per partition (more when an object would
//! pass `flush.bytes`), named by topic, partition and the offset of its first record:
//! `<prefix><topic>/partition=<p>/<topic>+<p>+<first offset, 20 digits>.<jsonl|parquet>`.
//!
//! The pump commits the consumed offsets only after the objects are written, and every
//! flush starts each partition at its committed offset, so a replay after a crash or a
//! failed write starts the same partition at the same offset and writes under the same
//! name again: the object is replaced, never duplicated, and no two objects overlap (the
//! rule of Confluent's S3 sink). Splits by size depend only on the records from that
//! offset, so they repeat too. Objects above [`MULTIPART_THRESHOLD`] go up in parts;
//! an interrupted upload is aborted, and S3 shows nothing of it.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use serde_json::value::RawValue;
use sluice_crds::plugins::{ObjectFormat, S3Sink as S3Spec};

use super::parquet::{self, Layout};
use super::secret::SecretFiles;
use crate::runtime::sink::{Promise, Refused, Sink, SinkError, SourceRecord};

/// Objects larger than this go up as a multipart upload.
pub const MULTIPART_THRESHOLD: usize = 8 << 20;
/// The size of each part of a multipart upload (S3's minimum is 5 MiB).
const PART_SIZE: usize = 8 << 20;
/// Most bytes in an object unless `flush.bytes` says.
pub const DEFAULT_OBJECT_BYTES: usize = 64 << 20;

/// Keys to the store, from the Connector's Secret.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    /// `accessKeyId`.
    pub access_key_id: String,
    /// `secretAccessKey`.
    pub secret_access_key: String,
    /// `sessionToken`, for temporary credentials.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl S3Credentials {
    /// Reads `accessKeyId`, `secretAccessKey` and `sessionToken` from the mounted Secret
    /// at `dir`.
    pub fn read(dir: &Path) -> Result<S3Credentials, SinkError> {
        let secret = SecretFiles::new(dir);
        Ok(S3Credentials {
            access_key_id: secret.need("accessKeyId")?,
            secret_access_key: secret.need("secretAccessKey")?,
            session_token: secret.get("sessionToken"),
        })
    }
}

/// Parses a size as `flush.bytes` writes it: bytes, or `Ki`, `Mi`, `Gi`.
pub fn parse_bytes(text: &str) -> Option<usize> {
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, ""),
    };
    let n: usize = digits.parse().ok()?;
    let shift = match unit {
        "" => 0,
        "Ki" => 10,
        "Mi" => 20,
        "Gi" => 30,
        _ => return None,
    };
    n.checked_mul(1 << shift)
}

/// The name of the object holding `topic`/`partition` from `first_offset`.
pub fn object_name(
    prefix: &str,
    topic: &str,
    partition: i32,
    first_offset: i64,
    format: ObjectFormat,
) -> String {
    let ext = match format {
        ObjectFormat::Jsonl => "jsonl",
        ObjectFormat::Parquet => "parquet",
    };
    format!("{prefix}{topic}/partition={partition}/{topic}+{partition}+{first_offset:020}.{ext}")
}

/// An object being filled: its name's first offset, its records (their indices in the
/// batch) and their size as JSON lines; for `jsonl`, the lines themselves.
struct Object {
    topic: Arc<str>,
    partition: i32,
    first_offset: i64,
    records: Vec<usize>,
    size: usize,
    body: Vec<u8>,
}

/// The objects a batch makes: per partition, in the order of its records, split where
/// an object's records as JSON lines would pass `max_bytes` (for `jsonl`, with the lines
/// in `body`). Tombstones are skipped; a value that is not JSON is refused.
fn objects(
    batch: &[SourceRecord],
    max_bytes: usize,
    format: ObjectFormat,
) -> (Vec<Object>, Vec<Refused>) {
    let mut objects: Vec<Object> = Vec::new();
    // The object of each partition being filled: its index in `objects`.
    let mut open: Vec<((Arc<str>, i32), usize)> = Vec::new();
    let mut refused = Vec::new();
    for (index, record) in batch.iter().enumerate() {
        let o = &record.origin;
        let key = (o.topic.clone(), o.partition);
        let slot = match open.iter().position(|(k, _)| *k == key) {
            Some(slot) => slot,
            None => {
                objects.push(Object::new(o));
                open.push((key, objects.len() - 1));
                open.len() - 1
            }
        };
        let Some(value) = &record.value else {
            continue;
        };
        // A value on one line goes as it is; one with line breaks is written compact.
        let line: Cow<'_, str> = match serde_json::from_slice::<&RawValue>(value) {
            Ok(raw) => parquet::one_line(raw),
            Err(e) => {
                refused.push(Refused {
                    index,
                    error: format!("the value is not JSON: {e}"),
                });
                continue;
            }
        };
        let current = open[slot].1;
        if objects[current].size > 0 && objects[current].size + line.len() + 1 > max_bytes {
            objects.push(Object::new(o));
            open[slot].1 = objects.len() - 1;
        }
        let object = &mut objects[open[slot].1];
        object.records.push(index);
        object.size += line.len() + 1;
        if format == ObjectFormat::Jsonl {
            object.body.extend_from_slice(line.as_bytes());
            object.body.push(b'\n');
        }
    }
    objects.retain(|o| !o.records.is_empty());
    (objects, refused)
}

impl Object {
    /// An empty object starting at `origin`.
    fn new(origin: &crate::runtime::ledger::Origin) -> Object {
        Object {
            topic: origin.topic.clone(),
            partition: origin.partition,
            first_offset: origin.offset,
            records: Vec::new(),
            size: 0,
            body: Vec::new(),
        }
    }
}

/// What the sink is asked to do.
#[derive(Debug, Clone)]
pub struct S3SinkConfig {
    /// The `s3` block of the Connector.
    pub spec: S3Spec,
    /// Keys to the store.
    pub credentials: S3Credentials,
}

/// An S3-compatible bucket as a [`Sink`].
pub struct S3Sink {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    max_bytes: usize,
    bucket: String,
    format: ObjectFormat,
    /// The columns of Parquet objects.
    layout: Layout,
}

impl S3Sink {
    /// The sink of `config`; refuses what this release cannot write.
    pub fn new(config: S3SinkConfig) -> Result<S3Sink, SinkError> {
        let spec = &config.spec;
        if spec.parquet.is_some() && spec.format != ObjectFormat::Parquet {
            return Err(SinkError::Fatal(
                "s3.parquet sets the columns of format: parquet, and the format is jsonl".into(),
            ));
        }
        let layout = Layout::new(spec.parquet.as_ref().map(|p| p.columns.as_slice()))
            .map_err(SinkError::Fatal)?;
        let max_bytes = match spec.flush.as_ref().and_then(|f| f.bytes.as_deref()) {
            Some(text) => parse_bytes(text).filter(|n| *n > 0).ok_or_else(|| {
                SinkError::Fatal(format!("s3.flush.bytes {text:?} is not a size like 64Mi"))
            })?,
            None => DEFAULT_OBJECT_BYTES,
        };
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&spec.bucket)
            .with_region(spec.region.as_deref().unwrap_or("us-east-1"))
            .with_access_key_id(&config.credentials.access_key_id)
            .with_secret_access_key(&config.credentials.secret_access_key)
            .with_virtual_hosted_style_request(!spec.path_style);
        if let Some(token) = &config.credentials.session_token {
            builder = builder.with_token(token);
        }
        if let Some(endpoint) = &spec.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        let store = builder
            .build()
            .map_err(|e| SinkError::Fatal(format!("the s3 settings: {e}")))?;
        Ok(S3Sink {
            store: Arc::new(store),
            prefix: spec.prefix.clone().unwrap_or_default(),
            max_bytes,
            bucket: spec.bucket.clone(),
            format: spec.format,
            layout,
        })
    }

    /// Writes one object: at once, or in parts when it is large.
    async fn put(&self, object: Object) -> Result<(), SinkError> {
        let name = object_name(
            &self.prefix,
            &object.topic,
            object.partition,
            object.first_offset,
            self.format,
        );
        let path = ObjectPath::from(name.as_str());
        let failed = |e: object_store::Error| self.error(&name, e);
        if object.body.len() <= MULTIPART_THRESHOLD {
            self.store
                .put(&path, PutPayload::from(object.body))
                .await
                .map_err(failed)?;
            return Ok(());
        }
        let upload = self.store.put_multipart(&path).await.map_err(failed)?;
        let mut parts = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        parts.put(object.body.into());
        parts.finish().await.map_err(failed)?;
        Ok(())
    }

    /// Each object's records as one Parquet file; records that do not fit the columns
    /// join `refused`, and an object left without records is not written.
    fn encode(
        &self,
        objects: Vec<Object>,
        batch: &[SourceRecord],
        refused: &mut Vec<Refused>,
    ) -> Result<Vec<Object>, SinkError> {
        let mut encoded = Vec::with_capacity(objects.len());
        for mut object in objects {
            let values = object
                .records
                .iter()
                .filter_map(|&i| batch[i].value.as_deref().map(|v| (i, v)));
            let file = parquet::encode(values, &self.layout).map_err(|e| {
                SinkError::Fatal(format!("encoding Parquet for {}: {e}", object.topic))
            })?;
            refused.extend(
                file.refused
                    .into_iter()
                    .map(|(index, error)| Refused { index, error }),
            );
            if file.rows > 0 {
                object.body = file.body;
                encoded.push(object);
            }
        }
        refused.sort_by_key(|r| r.index);
        Ok(encoded)
    }

    /// What a store error means for the pump: settings that cannot work stop the sink;
    /// anything else is retried.
    fn error(&self, name: &str, e: object_store::Error) -> SinkError {
        match e {
            object_store::Error::NotFound { .. } => SinkError::Fatal(format!(
                "writing {name}: bucket {} not found: {e}",
                self.bucket
            )),
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => SinkError::Fatal(format!(
                "writing {name} to bucket {}: access refused: {e}",
                self.bucket
            )),
            other => SinkError::Unavailable(format!("writing {name}: {other}")),
        }
    }
}

impl Sink for S3Sink {
    /// A replay writes the same objects under the same names.
    fn promise(&self) -> Promise {
        Promise::Idempotent
    }

    /// The batch's objects are written at once (in parallel); the batch is done when
    /// every one is. Each write runs to its end even when another fails, so no upload is
    /// cut off half-way (a failed multipart upload aborts itself).
    async fn write(&mut self, batch: &[SourceRecord]) -> Result<Vec<Refused>, SinkError> {
        let (mut objects, mut refused) = objects(batch, self.max_bytes, self.format);
        if self.format == ObjectFormat::Parquet {
            objects = self.encode(objects, batch, &mut refused)?;
        }
        let written = futures::future::join_all(objects.into_iter().map(|o| self.put(o))).await;
        written
            .into_iter()
            .collect::<Result<Vec<()>, SinkError>>()?;
        Ok(refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::sink::test_record;

    fn record(partition: i32, offset: i64, value: Option<&str>) -> SourceRecord {
        test_record("orders", partition, offset, value)
    }

    #[test]
    fn names_sort_by_offset_within_a_partition() {
        assert_eq!(
            object_name("lake/", "orders", 2, 1234, ObjectFormat::Jsonl),
            "lake/orders/partition=2/orders+2+00000000000000001234.jsonl"
        );
        assert_eq!(
            object_name("", "orders", 0, 7, ObjectFormat::Parquet),
            "orders/partition=0/orders+0+00000000000000000007.parquet"
        );
        let name = |offset| object_name("", "t", 0, offset, ObjectFormat::Jsonl);
        assert!(name(99) < name(100));
    }

    #[test]
    fn sizes_parse_as_flush_bytes_writes_them() {
        assert_eq!(parse_bytes("64Mi"), Some(64 << 20));
        assert_eq!(parse_bytes("512Ki"), Some(512 << 10));
        assert_eq!(parse_bytes("1000"), Some(1000));
        assert_eq!(parse_bytes("1Gi"), Some(1 << 30));
        assert_eq!(parse_bytes("10MB"), None);
        assert_eq!(parse_bytes("Mi"), None);
    }

    #[test]
    fn a_batch_makes_one_object_per_partition_named_by_its_first_record() {
        let batch = vec![
            record(0, 10, Some(r#"{"id": 1,  "region": "eu"}"#)),
            record(1, 5, None),
            record(1, 6, Some(r#"{"id": 2}"#)),
            record(0, 11, Some("not json")),
            record(0, 12, Some("{\n \"id\": 3\n}")),
        ];
        let (objects, refused) = objects(&batch, DEFAULT_OBJECT_BYTES, ObjectFormat::Jsonl);
        let seen: Vec<(i32, i64, String)> = objects
            .iter()
            .map(|o| {
                (
                    o.partition,
                    o.first_offset,
                    String::from_utf8(o.body.clone()).unwrap(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                (
                    0,
                    10,
                    // A one-line value as it was; one with line breaks made compact.
                    "{\"id\": 1,  \"region\": \"eu\"}\n{\"id\":3}\n".to_string()
                ),
                // The tombstone at 5 names the object: a replay from 5 writes the same.
                (1, 5, "{\"id\": 2}\n".to_string()),
            ]
        );
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].index, 3);
        assert!(
            refused[0].error.contains("not JSON"),
            "{}",
            refused[0].error
        );
    }

    #[test]
    fn objects_split_at_the_size_limit_where_a_replay_splits_them_too() {
        let batch: Vec<SourceRecord> = (0..10)
            .map(|i| record(0, 100 + i, Some(r#"{"n":12345}"#)))
            .collect();
        // Each line is 12 bytes: 3 lines fit in 40.
        let (first, _) = objects(&batch, 40, ObjectFormat::Jsonl);
        let starts: Vec<i64> = first.iter().map(|o| o.first_offset).collect();
        assert_eq!(starts, vec![100, 103, 106, 109]);
        assert!(first.iter().all(|o| o.body.len() <= 40));
        // Parquet objects split where the same records as JSON lines would.
        let (parquet, _) = objects(&batch, 40, ObjectFormat::Parquet);
        let records: Vec<Vec<usize>> = parquet.iter().map(|o| o.records.clone()).collect();
        assert_eq!(
            records,
            vec![vec![0, 1, 2], vec![3, 4, 5], vec![6, 7, 8], vec![9]]
        );
        assert!(parquet.iter().all(|o| o.body.is_empty()));
        // A replay from the same offset with fewer records (the flush came earlier)
        // makes the same objects up to where it stops.
        let (replay, _) = objects(&batch[..7], 40, ObjectFormat::Jsonl);
        let starts: Vec<i64> = replay.iter().map(|o| o.first_offset).collect();
        assert_eq!(starts, vec![100, 103, 106]);
        assert_eq!(replay[0].body, first[0].body);
    }

    /// A store that fails every put to a partition-1 object at once and completes the
    /// others only after a while, in memory.
    #[derive(Debug)]
    struct OnePartitionFails(object_store::memory::InMemory);

    impl std::fmt::Display for OnePartitionFails {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "OnePartitionFails")
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for OnePartitionFails {
        async fn put_opts(
            &self,
            location: &ObjectPath,
            payload: PutPayload,
            opts: object_store::PutOptions,
        ) -> object_store::Result<object_store::PutResult> {
            if location.as_ref().contains("partition=1/") {
                return Err(object_store::Error::Generic {
                    store: "test",
                    source: "connection reset".into(),
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            self.0.put_opts(location, payload, opts).await
        }
        async fn put_multipart_opts(
            &self,
            location: &ObjectPath,
            opts: object_store::PutMultipartOptions,
        ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
            self.0.put_multipart_opts(location, opts).await
        }
        async fn get_opts(
            &self,
            location: &ObjectPath,
            options: object_store::GetOptions,
        ) -> object_store::Result<object_store::GetResult> {
            self.0.get_opts(location, options).await
        }
        fn delete_stream(
            &self,
            locations: futures::stream::BoxStream<'static, object_store::Result<ObjectPath>>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<ObjectPath>> {
            self.0.delete_stream(locations)
        }
        fn list(
            &self,
            prefix: Option<&ObjectPath>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
        {
            self.0.list(prefix)
        }
        async fn list_with_delimiter(
            &self,
            prefix: Option<&ObjectPath>,
        ) -> object_store::Result<object_store::ListResult> {
            self.0.list_with_delimiter(prefix).await
        }
        async fn copy_opts(
            &self,
            from: &ObjectPath,
            to: &ObjectPath,
            options: object_store::CopyOptions,
        ) -> object_store::Result<()> {
            self.0.copy_opts(from, to, options).await
        }
    }

    #[tokio::test]
    async fn a_failed_put_leaves_the_flushs_other_puts_to_finish() {
        let store = Arc::new(OnePartitionFails(object_store::memory::InMemory::new()));
        let mut sink = S3Sink {
            store: store.clone(),
            prefix: String::new(),
            max_bytes: DEFAULT_OBJECT_BYTES,
            bucket: "lake".into(),
            format: ObjectFormat::Jsonl,
            layout: Layout::Inferred,
        };
        let batch = vec![
            record(0, 0, Some(r#"{"id": 1}"#)),
            record(1, 0, Some(r#"{"id": 2}"#)),
            record(2, 0, Some(r#"{"id": 3}"#)),
        ];
        let err = sink.write(&batch).await.unwrap_err();
        assert!(
            matches!(&err, SinkError::Unavailable(m) if m.contains("partition=1")),
            "{err:?}"
        );
        // The puts of partitions 0 and 2 ran to their end although 1 failed first.
        for p in [0, 2] {
            let name = object_name("", "orders", p, 0, ObjectFormat::Jsonl);
            let body = store
                .0
                .get(&ObjectPath::from(name.as_str()))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            assert_eq!(body.as_ref(), format!("{{\"id\": {}}}\n", p + 1).as_bytes());
        }
    }

    #[test]
    fn parquet_columns_without_parquet_and_a_bad_size_are_refused_by_name() {
        let spec = |extra: serde_json::Value| -> S3Spec {
            let mut v = serde_json::json!({"bucket": "lake"});
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            serde_json::from_value(v).unwrap()
        };
        let credentials = S3Credentials {
            access_key_id: "a".into(),
            secret_access_key: "s3cr3t-value".into(),
            session_token: None,
        };
        let sink = |s| {
            S3Sink::new(S3SinkConfig {
                spec: s,
                credentials: credentials.clone(),
            })
        };
        let columns = serde_json::json!({"columns": [{"name": "id", "type": "int64"}]});
        let err = sink(spec(serde_json::json!({"parquet": columns})))
            .err()
            .unwrap();
        assert!(err.to_string().contains("s3.parquet"), "{err}");
        assert!(
            sink(spec(
                serde_json::json!({"format": "parquet", "parquet": columns})
            ))
            .is_ok()
        );
        let twice = serde_json::json!({"columns": [{"name": "id", "type": "int64"},
                                                   {"name": "id", "type": "string"}]});
        let err = sink(spec(
            serde_json::json!({"format": "parquet", "parquet": twice}),
        ))
        .err()
        .unwrap();
        assert!(err.to_string().contains("twice"), "{err}");
        let err = sink(spec(serde_json::json!({"flush": {"bytes": "lots"}})))
            .err()
            .unwrap();
        assert!(err.to_string().contains("flush.bytes"), "{err}");
        assert!(
            sink(spec(
                serde_json::json!({"endpoint": "http://127.0.0.1:9000", "pathStyle": true})
            ))
            .is_ok()
        );
        assert!(
            !format!("{credentials:?}").contains("s3cr3t"),
            "no secret in Debug"
        );
    }
}
