//! The native S3 sink against the environment's broker and MinIO: objects named by topic,
//! partition and first offset, exact and without overlap after SIGKILLs of the sink, as
//! JSON lines and as Parquet; a value that is not JSON in the dead-letter topic while the
//! rest are written; an object above the multipart threshold uploaded in parts; Parquet
//! columns typed from the records or configured, a record that does not fit them
//! dead-lettered.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use serde_json::{Value, json};
use sluice_e2e::cluster::unique;
use sluice_e2e::env::TestEnv;
use sluice_e2e::kafka;
use sluice_e2e::processor::*;
use sluice_e2e::sink::{SinkProcess, connector_manifest, kill_twice_then_finish};

const WAIT: Duration = Duration::from_secs(120);

/// The environment's bucket, and a credentials directory with the sink's keys for it.
struct Lake {
    store: AmazonS3,
    bootstrap: String,
    tag: String,
    credentials: PathBuf,
    /// The `s3` block of a sink writing under `<tag>/`.
    s3: serde_json::Value,
}

fn lake(prefix: &str) -> Lake {
    let env = TestEnv::require();
    let tag = unique(prefix);
    let store = AmazonS3Builder::new()
        .with_bucket_name(env.var("S3_BUCKET"))
        .with_region(env.var("S3_REGION"))
        .with_endpoint(env.var("S3_ENDPOINT"))
        .with_allow_http(true)
        .with_access_key_id(env.var("S3_ACCESS_KEY"))
        .with_secret_access_key(env.var("S3_SECRET_KEY"))
        .build()
        .unwrap();
    let credentials = log_dir().join(format!("{tag}-credentials"));
    std::fs::create_dir_all(&credentials).unwrap();
    std::fs::write(credentials.join("accessKeyId"), env.var("S3_ACCESS_KEY")).unwrap();
    std::fs::write(
        credentials.join("secretAccessKey"),
        env.var("S3_SECRET_KEY"),
    )
    .unwrap();
    let s3 = json!({"bucket": env.var("S3_BUCKET"), "prefix": format!("{tag}/"),
                    "endpoint": env.var("S3_ENDPOINT"), "pathStyle": true,
                    "region": env.var("S3_REGION")});
    Lake {
        store,
        bootstrap: env.var("KAFKA_BOOTSTRAP"),
        tag,
        credentials,
        s3,
    }
}

/// One object the sink wrote.
#[derive(Debug)]
struct Written {
    topic: String,
    partition: i32,
    first_offset: i64,
    /// Its records as JSON lines (a Parquet row as an object of its columns).
    lines: Vec<String>,
    /// A Parquet object's columns and their types (`INT64`, `String`, ...).
    columns: Vec<(String, String)>,
}

impl Lake {
    fn sink(&self, flush: serde_json::Value, extra: serde_json::Value) -> PathBuf {
        let mut s3 = self.s3.clone();
        s3["flush"] = flush;
        let mut spec = json!({"type": "sink", "topics": [self.tag], "s3": s3});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        connector_manifest(&self.tag, spec)
    }

    /// Every object under the test's prefix, parsed from its name; a name out of the
    /// pattern fails the test.
    async fn objects(&self) -> Vec<Written> {
        let prefix = ObjectPath::from(format!("{}/", self.tag));
        let listed: Vec<_> = self.store.list(Some(&prefix)).try_collect().await.unwrap();
        let mut out = Vec::new();
        for meta in listed {
            let name = meta.location.to_string();
            let (topic, partition, first_offset, ext) = parse_name(&self.tag, &name)
                .unwrap_or_else(|| panic!("an object name out of the pattern: {name}"));
            let body = self
                .store
                .get(&meta.location)
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            let (lines, columns) = match ext.as_str() {
                "parquet" => parquet_rows(body),
                _ => (
                    String::from_utf8(body.to_vec())
                        .unwrap()
                        .lines()
                        .map(str::to_string)
                        .collect(),
                    Vec::new(),
                ),
            };
            out.push(Written {
                topic,
                partition,
                first_offset,
                lines,
                columns,
            });
        }
        out.sort_by_key(|w| (w.partition, w.first_offset));
        out
    }

    async fn lines(&self) -> usize {
        self.objects().await.iter().map(|w| w.lines.len()).sum()
    }
}

/// A Parquet object's rows as JSON objects of their columns, and its columns' types.
fn parquet_rows(body: bytes::Bytes) -> (Vec<String>, Vec<(String, String)>) {
    let reader = SerializedFileReader::new(body).unwrap();
    let columns = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .map(|c| {
            let t = match c.logical_type_ref() {
                Some(l) => format!("{l:?}"),
                None => c.physical_type().to_string(),
            };
            (c.name().to_string(), t)
        })
        .collect();
    let rows = reader
        .get_row_iter(None)
        .unwrap()
        .map(|row| {
            let row = row.unwrap();
            let mut object = serde_json::Map::new();
            for (name, field) in row.get_column_iter() {
                let value = match field {
                    Field::Null => Value::Null,
                    Field::Bool(b) => json!(b),
                    Field::Long(n) => json!(n),
                    Field::Double(x) => json!(x),
                    Field::Str(s) => json!(s),
                    other => panic!("a column type the sink does not write: {other:?}"),
                };
                object.insert(name.clone(), value);
            }
            Value::Object(object).to_string()
        })
        .collect();
    (rows, columns)
}

/// `<tag>/<topic>/partition=<p>/<topic>+<p>+<20 digits>.<jsonl|parquet>` as (topic, p,
/// offset, extension).
fn parse_name(tag: &str, name: &str) -> Option<(String, i32, i64, String)> {
    let rest = name.strip_prefix(&format!("{tag}/"))?;
    let (topic, rest) = rest.split_once("/partition=")?;
    let (partition, file) = rest.split_once('/')?;
    let (stem, ext) = file.rsplit_once('.')?;
    ["jsonl", "parquet"].contains(&ext).then_some(())?;
    let expected = format!("{topic}+{partition}+");
    let digits = stem.strip_prefix(&expected)?;
    (digits.len() == 20).then_some(())?;
    Some((
        topic.to_string(),
        partition.parse().ok()?,
        digits.parse().ok()?,
        ext.to_string(),
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn objects_are_exact_and_never_overlap_across_sigkills() {
    exact_across_sigkills("s3sink-eo", json!({})).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn parquet_objects_are_exact_and_never_overlap_across_sigkills() {
    let objects = exact_across_sigkills("s3sink-pq", json!({"format": "parquet"})).await;
    // Columns typed from the orders: totals like -5.0 are doubles.
    assert_eq!(
        objects[0].columns,
        vec![
            ("orderId".to_string(), "String".to_string()),
            ("region".to_string(), "String".to_string()),
            ("total".to_string(), "DOUBLE".to_string()),
        ]
    );
}

/// Writes 3,000 orders from 3 partitions with the `s3` settings of `extra`, SIGKILLing
/// the sink twice; checks each order is in exactly one object and that the objects tile
/// each partition's log. Answers the objects.
async fn exact_across_sigkills(prefix: &str, extra: serde_json::Value) -> Vec<Written> {
    let mut lake = lake(prefix);
    if let (Some(s3), Some(e)) = (lake.s3.as_object_mut(), extra.as_object()) {
        s3.extend(e.clone());
    }
    create_topics(&lake.bootstrap, &[(&lake.tag, 3)]).await;
    // The binary is built (when it is not yet) before the input starts to flow.
    processor_bin();
    let n = 3000;
    let manifest = lake.sink(json!({"records": 150, "interval": "1s"}), json!({}));
    let (records, _, _) = orders(0, n);
    let feed = kafka::produce_paced(
        kafka::producer(&lake.bootstrap).unwrap(),
        lake.tag.clone(),
        records,
        n / 120,
        Duration::from_millis(300),
    );
    kill_twice_then_finish(
        &lake.bootstrap,
        &manifest,
        &lake.credentials,
        &lake.tag,
        feed,
        n,
        || lake.lines(),
    )
    .await;

    let objects = lake.objects().await;
    let ids: Vec<String> = objects
        .iter()
        .flat_map(|w| &w.lines)
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["orderId"].as_str().unwrap().to_string()
        })
        .collect();
    let distinct: BTreeSet<&String> = ids.iter().collect();
    assert_eq!((ids.len(), distinct.len()), (n, n), "each record once");
    // Per partition the objects tile the log: each starts where the one before ended.
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    for w in &objects {
        assert_eq!(w.topic, lake.tag);
        let expected = next.entry(w.partition).or_insert(0);
        assert_eq!(
            w.first_offset, *expected,
            "partition {}: an object starts at {} where {} was next (gap or overlap)",
            w.partition, w.first_offset, expected
        );
        assert!(w.lines.len() <= 150, "at most flush.records per object");
        *expected += w.lines.len() as i64;
    }
    assert_eq!(next.values().sum::<i64>(), n as i64);
    // Each order as it was produced (a Parquet row compared as JSON).
    let (produced, _, _) = orders(0, n);
    let produced: BTreeMap<String, Value> = produced
        .into_iter()
        .map(|(k, v)| (k, serde_json::from_str(&v).unwrap()))
        .collect();
    for line in objects.iter().flat_map(|w| &w.lines) {
        let v: Value = serde_json::from_str(line).unwrap();
        let id = v["orderId"].as_str().unwrap();
        assert_eq!(&v, &produced[id], "order {id} as it was produced");
    }
    objects
}

#[tokio::test(flavor = "multi_thread")]
async fn a_value_that_is_not_json_is_dead_lettered_and_a_large_object_goes_up_in_parts() {
    let lake = lake("s3sink-dlq");
    let dlq = format!("{}-dlq", lake.tag);
    create_topics(&lake.bootstrap, &[(&lake.tag, 1), (&dlq, 1)]).await;
    let manifest = lake.sink(
        json!({"records": 100, "bytes": "64Mi", "interval": "1s"}),
        json!({"deadLetter": {"topic": dlq}}),
    );
    // 99 orders of about 100 KiB each around one value that is not JSON: one object of
    // about 10 MiB, above the 8 MiB multipart threshold.
    let pad = "x".repeat(100 * 1024);
    let mut records: Vec<(String, String)> = (0..99)
        .map(|i| {
            let v = json!({"orderId": format!("o-{i}"), "pad": pad});
            (format!("o-{i}"), v.to_string())
        })
        .collect();
    records.insert(50, ("bad".to_string(), "not json {".to_string()));
    produce(&lake.bootstrap, &lake.tag, &records).await;
    let mut sink = SinkProcess::start(&lake.bootstrap, &manifest, &lake.credentials, &lake.tag);
    sink.wait_until("records missing", 99, || lake.lines())
        .await;
    sink.signal("-TERM");
    let objects = lake.objects().await;
    assert_eq!(objects.len(), 1, "one object for the flush");
    let object = &objects[0];
    assert_eq!((object.partition, object.first_offset), (0, 0));
    assert_eq!(object.lines.len(), 99);
    let size: usize = object.lines.iter().map(|l| l.len() + 1).sum();
    assert!(size > 8 << 20, "above the multipart threshold: {size}");
    let dead = kafka::read_all(&lake.bootstrap, &dlq, Duration::from_secs(3), WAIT).unwrap();
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d.value.as_deref(), Some("not json {"));
    assert_eq!(d.headers["sluice.step"], "s3");
    assert_eq!(d.headers["sluice.source.offset"], "50");
    assert!(
        d.headers["sluice.sink.error"].contains("not JSON"),
        "{:?}",
        d.headers
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn parquet_columns_are_as_configured_and_a_record_that_does_not_fit_is_dead_lettered() {
    let mut lake = lake("s3sink-pqcols");
    let dlq = format!("{}-dlq", lake.tag);
    create_topics(&lake.bootstrap, &[(&lake.tag, 1), (&dlq, 1)]).await;
    lake.s3["format"] = json!("parquet");
    lake.s3["parquet"] = json!({"columns": [
        {"name": "orderId", "type": "string"}, {"name": "qty", "type": "int64"},
        {"name": "total", "type": "double"}, {"name": "items", "type": "json"}]});
    let manifest = lake.sink(
        json!({"records": 100, "interval": "1s"}),
        json!({"deadLetter": {"topic": dlq}}),
    );
    let order = |i: usize| {
        json!({"orderId": format!("o-{i}"), "qty": i, "total": i as f64 / 2.0,
               "items": [{"sku": "a"}], "note": "not a column"})
    };
    let mut records: Vec<(String, String)> = (0..20)
        .map(|i| (format!("o-{i}"), order(i).to_string()))
        .collect();
    let misfit = json!({"orderId": "bad", "qty": "seven"}).to_string();
    records.insert(7, ("bad".to_string(), misfit.clone()));
    produce(&lake.bootstrap, &lake.tag, &records).await;
    let mut sink = SinkProcess::start(&lake.bootstrap, &manifest, &lake.credentials, &lake.tag);
    sink.wait_until("rows missing", 20, || lake.lines()).await;
    sink.signal("-TERM");
    let objects = lake.objects().await;
    assert_eq!(objects.len(), 1, "one object for the flush");
    let column = |n: &str, t: &str| (n.to_string(), t.to_string());
    assert_eq!(
        objects[0].columns,
        vec![
            column("orderId", "String"),
            column("qty", "INT64"),
            column("total", "DOUBLE"),
            column("items", "Json"),
        ]
    );
    let rows: Vec<Value> = objects[0]
        .lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let expected: Vec<Value> = (0..20)
        .map(|i| {
            json!({"orderId": format!("o-{i}"), "qty": i, "total": i as f64 / 2.0,
                   "items": "[{\"sku\":\"a\"}]"})
        })
        .collect();
    assert_eq!(rows, expected);
    let dead = kafka::read_all(&lake.bootstrap, &dlq, Duration::from_secs(3), WAIT).unwrap();
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d.value.as_deref(), Some(misfit.as_str()));
    assert_eq!(d.headers["sluice.source.offset"], "7");
    let error = &d.headers["sluice.sink.error"];
    assert!(
        error.contains("\"qty\"") && error.contains("type int64"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bucket_that_does_not_exist_stops_the_sink_with_the_stores_message() {
    let mut lake = lake("s3sink-nobucket");
    create_topics(&lake.bootstrap, &[(&lake.tag, 1)]).await;
    lake.s3["bucket"] = json!(format!("{}-missing", lake.tag));
    let manifest = lake.sink(json!({"records": 10, "interval": "100ms"}), json!({}));
    let (records, _, _) = orders(0, 10);
    produce(&lake.bootstrap, &lake.tag, &records).await;
    let mut sink = SinkProcess::start(&lake.bootstrap, &manifest, &lake.credentials, &lake.tag);
    let exited = sink.wait_exit(WAIT);
    assert_eq!(
        exited,
        Some(1),
        "a missing bucket stops the sink: {}",
        sink.log_text()
    );
    assert!(
        sink.log_text().contains("not found"),
        "the store's message: {}",
        sink.log_text()
    );
}
