#[global_allocator]
static A: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::time::Instant;
use sluice_processor::engine::{Engine, decode, encode};
use sluice_processor::metrics::PipelineMetrics;
use sluice_processor::record::Record;
use sluice_processor::format::RecordFormat;

fn order(i: u64) -> String {
    let regions = ["eu-west", "us-east", "ap-south"];
    format!(
        r#"{{"orderId":"o-{i}","region":"{}","total":{:.1},"items":{}}}"#,
        regions[(i % 3) as usize],
        (i % 50) as f64 - 5.0,
        i % 7 + 1
    )
}

fn main() {
    cel_only();
    let spec: sluice_crds::pipeline::PipelineSpec = serde_saphyr::from_str(r#"
inputs: [orders]
steps:
- name: positive
  filter: value.total > 0.0
- name: shape
  map: {set: {totalCents: "value.total * 100.0"}, drop: [orderId]}
outputs: [{topic: out}]
delivery: atLeastOnce
"#).unwrap();
    let mut engine = Engine::new("b", &spec, PipelineMetrics::detached("b")).unwrap();
    let n = 1_000_000u64;
    let data: Vec<String> = (0..n).map(order).collect();
    let t = Instant::now();
    let mut bytes = 0usize;
    for d in &data {
        let p = decode(RecordFormat::Json, Some(d.as_bytes())).unwrap();
        bytes += encode(RecordFormat::Json, &p).unwrap().len();
    }
    let base = t.elapsed().as_secs_f64();
    println!("decode+encode: {:.0} ns/rec ({bytes})", base / n as f64 * 1e9);
    let t = Instant::now();
    let mut out = Vec::new();
    let mut outs = 0usize;
    for (i, d) in data.iter().enumerate() {
        let p = decode(RecordFormat::Json, Some(d.as_bytes())).unwrap();
        let r = Record::new("orders", 0, i as i64, 1, Some(format!("o-{i}").into_bytes()), p);
        out.clear();
        engine.process(r, &mut out).unwrap();
        for e in out.drain(..) {
            outs += encode(RecordFormat::Json, &e.record.value).unwrap().len();
        }
    }
    let full = t.elapsed().as_secs_f64();
    println!("full: {:.0} ns/rec ({outs})", full / n as f64 * 1e9);
}

#[allow(dead_code)]
fn cel_only() {
    use sluice_processor::expr::{Expr, root_context, scope};
    let root = root_context();
    let e = Expr::compile("value.total > 0.0").unwrap();
    let m = Expr::compile("value.total * 100.0").unwrap();
    let p = decode(RecordFormat::Json, Some(order(7).as_bytes())).unwrap();
    let r = Record::new("orders", 0, 1, 1, None, p);
    let n = 1_000_000;
    let t = Instant::now();
    for _ in 0..n { let s = scope(&root, &r, e.needs()).unwrap(); drop(s); }
    println!("scope: {:.0} ns", t.elapsed().as_secs_f64() / n as f64 * 1e9);
    let s = scope(&root, &r, e.needs()).unwrap();
    let t = Instant::now();
    let mut k = 0;
    for _ in 0..n { if e.eval_bool(&s).unwrap() { k += 1; } }
    println!("filter eval: {:.0} ns {k}", t.elapsed().as_secs_f64() / n as f64 * 1e9);
    let t = Instant::now();
    for _ in 0..n { m.eval(&s).unwrap(); }
    println!("map eval: {:.0} ns", t.elapsed().as_secs_f64() / n as f64 * 1e9);
}
