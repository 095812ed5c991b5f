//! Per-record cost of the engine alone (decode, steps, encode), no Kafka:
//! `cargo run --release -p sluice-processor --example engine_cost`.

use std::time::Instant;

use sluice_crds::pipeline::PipelineSpec;
use sluice_processor::engine::{Engine, decode, encode};
use sluice_processor::format::RecordFormat;
use sluice_processor::metrics::PipelineMetrics;
use sluice_processor::record::Record;

fn main() {
    let specs = [
        (
            "filter+map",
            "inputs: [in]\nsteps:\n- {name: positive, filter: value.total > 0.0}\n- {name: shape, map: {set: {totalCents: value.total * 100.0}, drop: [orderId]}}\noutputs: [{topic: out}]\n",
        ),
        (
            "aggregate",
            "inputs: [in]\nsteps:\n- {name: positive, filter: value.total > 0.0}\n- {name: agg, aggregate: {groupBy: {region: value.region}, aggregations: [{name: total, op: sum, of: value.total}]}}\noutputs: [{topic: out}]\n",
        ),
        ("passthrough", "inputs: [in]\noutputs: [{topic: out}]\n"),
    ];
    let n = 1_000_000u64;
    let payloads: Vec<String> = (0..1000u64)
        .map(|i| {
            format!(
                r#"{{"orderId":"o-{i}","region":"{}","total":{:.1},"items":{}}}"#,
                ["eu-west", "us-east", "ap-south"][(i % 3) as usize],
                (i % 50) as f64 - 5.0,
                i % 7 + 1
            )
        })
        .collect();
    for (name, yaml) in specs {
        let spec: PipelineSpec = serde_saphyr::from_str(yaml).unwrap();
        let mut engine = Engine::new("bench", &spec, PipelineMetrics::detached("bench")).unwrap();
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let t = Instant::now();
        for i in 0..n {
            let p = payloads[(i % 1000) as usize].as_bytes();
            let value = decode(RecordFormat::Json, Some(p)).unwrap();
            let r = Record {
                topic: "in".to_string(),
                partition: 0,
                offset: i as i64,
                timestamp: 1,
                key: Some(b"o-1".to_vec()),
                headers: Vec::new(),
                value,
            };
            engine.process(r, &mut out).unwrap();
            for e in out.drain(..) {
                bytes += encode(RecordFormat::Json, &e.record.value).unwrap().len();
            }
        }
        let per = t.elapsed().as_secs_f64() / n as f64 * 1e6;
        println!("{name:<12} {per:.2} us/record ({bytes} bytes out)");
    }
    // Pieces.
    let t = Instant::now();
    for i in 0..n {
        let p = payloads[(i % 1000) as usize].as_bytes();
        std::hint::black_box(decode(RecordFormat::Json, Some(p)).unwrap());
    }
    println!(
        "decode only  {:.2} us/record",
        t.elapsed().as_secs_f64() / n as f64 * 1e6
    );
}
