//! The S3 sink against its ceiling: a bare loop that puts the same objects with
//! object_store into the environment's MinIO (per batch, one JSON-lines object per
//! partition, named as the sink names them, put in parallel). The sink runs twice: JSON
//! lines (against the ceiling) and Parquet (against JSON lines).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use rdkafka::message::Message;

use crate::e2e_var;
use crate::sinks::{Bench, Run, Section, progress};

/// Records per flush, for the sink and the ceiling alike.
const FLUSH: u64 = 10_000;

fn store() -> anyhow::Result<AmazonS3> {
    Ok(AmazonS3Builder::new()
        .with_bucket_name(e2e_var("S3_BUCKET")?)
        .with_region(e2e_var("S3_REGION")?)
        .with_endpoint(e2e_var("S3_ENDPOINT")?)
        .with_allow_http(true)
        .with_access_key_id(e2e_var("S3_ACCESS_KEY")?)
        .with_secret_access_key(e2e_var("S3_SECRET_KEY")?)
        .build()?)
}

/// Objects and bytes under `prefix`.
async fn listed(store: &AmazonS3, prefix: &str) -> anyhow::Result<(u64, u64)> {
    let prefix = ObjectPath::from(prefix);
    let objects: Vec<_> = store.list(Some(&prefix)).try_collect().await?;
    Ok((objects.len() as u64, objects.iter().map(|o| o.size).sum()))
}

/// The comparison, as a report section.
pub(crate) fn bench(bench: &Bench) -> anyhow::Result<Section> {
    let store = Arc::new(store()?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let credentials = bench.dir.join("s3-credentials");
    std::fs::create_dir_all(&credentials)?;
    std::fs::write(credentials.join("accessKeyId"), e2e_var("S3_ACCESS_KEY")?)?;
    std::fs::write(
        credentials.join("secretAccessKey"),
        e2e_var("S3_SECRET_KEY")?,
    )?;
    let mut runs = Vec::new();

    // The ceiling; it also learns how many bytes the objects hold.
    let prefix = format!("{}/ceiling/", bench.run);
    let mut bytes = 0u64;
    let timing = bench.read_in_batches("s3-ceiling", FLUSH, |batch| {
        let mut bodies: BTreeMap<i32, (i64, Vec<u8>)> = BTreeMap::new();
        for m in batch {
            let (_, body) = bodies
                .entry(m.partition())
                .or_insert_with(|| (m.offset(), Vec::new()));
            body.extend_from_slice(m.payload().unwrap_or_default());
            body.push(b'\n');
        }
        let puts = bodies.into_iter().map(|(partition, (first, body))| {
            bytes += body.len() as u64;
            let path = ObjectPath::from(format!(
                "{prefix}{topic}/partition={partition}/{topic}+{partition}+{first:020}.jsonl",
                topic = bench.topic
            ));
            let store = store.clone();
            async move { store.put(&path, PutPayload::from(body)).await }
        });
        runtime.block_on(futures::future::try_join_all(puts))?;
        Ok(())
    })?;
    let ceiling = Run {
        name: "ceiling (object_store put)".to_string(),
        timing,
        records: bench.records,
    };
    progress(&ceiling);
    runs.push(ceiling);

    let prefix = format!("{}/sluice/", bench.run);
    let spec = serde_json::json!({"type": "sink", "topics": [bench.topic], "s3": {
        "bucket": e2e_var("S3_BUCKET")?, "prefix": prefix, "endpoint": e2e_var("S3_ENDPOINT")?,
        "pathStyle": true, "region": e2e_var("S3_REGION")?,
        "flush": {"records": FLUSH, "interval": "1s"}}});
    let timing = bench.sluice(
        &format!("s3-r{}", bench.round),
        spec,
        Some(&credentials),
        || {
            // Records in by bytes: every record of this data set is one line.
            let (_, in_store) = runtime.block_on(listed(&store, &prefix))?;
            Ok(if in_store >= bytes {
                bench.records
            } else {
                u64::from(in_store > 0)
            })
        },
    )?;
    let sluice = Run {
        name: "sluice s3 sink".to_string(),
        timing,
        records: bench.records,
    };
    progress(&sluice);
    runs.push(sluice);
    let (objects, in_store) =
        runtime.block_on(listed(&store, &format!("{}/sluice/", bench.run)))?;

    // The same sink writing Parquet (columns typed from the records): loaded as far as
    // its group committed, which it does after the objects are in the store.
    let name = &format!("s3-parquet-r{}", bench.round);
    let spec = serde_json::json!({"type": "sink", "topics": [bench.topic], "s3": {
        "bucket": e2e_var("S3_BUCKET")?, "prefix": format!("{}/parquet/", bench.run),
        "endpoint": e2e_var("S3_ENDPOINT")?, "pathStyle": true, "region": e2e_var("S3_REGION")?,
        "format": "parquet", "flush": {"records": FLUSH, "interval": "1s"}}});
    let group = sluice_crds::contract::connector_group_id("bench", name);
    let timing = bench.sluice(name, spec, Some(&credentials), bench.committed(&group)?)?;
    let parquet = Run {
        name: "sluice s3 sink, parquet".to_string(),
        timing,
        records: bench.records,
    };
    progress(&parquet);
    runs.push(parquet);
    let (_, parquet_bytes) =
        runtime.block_on(listed(&store, &format!("{}/parquet/", bench.run)))?;
    let seconds = runs[1].timing.elapsed.as_secs_f64();
    let notes = format!(
        "  sluice wrote {objects} objects, {in_store} bytes ({:.1} MB/s); the ceiling {bytes} bytes; parquet {parquet_bytes} bytes\n",
        in_store as f64 / seconds / 1e6
    );
    let section = Section {
        title: format!(
            "S3 sink (MinIO), {} records, flushes of {FLUSH}:",
            bench.records
        ),
        runs,
        ratios: vec![
            (
                "sluice / ceiling",
                "sluice s3 sink",
                "ceiling (object_store put)",
            ),
            (
                "parquet / jsonl",
                "sluice s3 sink, parquet",
                "sluice s3 sink",
            ),
        ],
        notes,
    };
    // The bench's objects go: a run writes tens of megabytes.
    runtime.block_on(async {
        let prefix = ObjectPath::from(bench.run.as_str());
        let all: Vec<_> = store.list(Some(&prefix)).try_collect().await?;
        for o in all {
            store.delete(&o.location).await?;
        }
        anyhow::Ok(())
    })?;
    Ok(section)
}
