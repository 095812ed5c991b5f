//! `sluice-bench engine [records] [b|c]`: the engine's cost per record, without Kafka:
//! decode and encode alone (the baseline), then b's and c's steps, all on the same
//! in-memory orders in one process. Naming one topology runs only it (for profilers).

use std::time::Instant;

use sluice_processor::engine::{Emit, Engine, decode, encode};
use sluice_processor::format::RecordFormat;
use sluice_processor::metrics::PipelineMetrics;
use sluice_processor::record::Record;

use super::order;

fn engine(steps: &str) -> anyhow::Result<Engine> {
    let spec = serde_saphyr::from_str(&format!(
        "inputs: [orders]\nsteps:\n{steps}\noutputs: [{{topic: out}}]\ndelivery: atLeastOnce\n"
    ))?;
    Ok(Engine::new(
        "cost",
        &spec,
        PipelineMetrics::detached("cost"),
    )?)
}

/// Nanoseconds per record to decode each input, run it through `engine` (when given)
/// and encode what comes out.
fn run(data: &[(Vec<u8>, String)], mut engine: Option<Engine>) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut out: Vec<Emit> = Vec::new();
    let mut bytes = 0usize;
    for (i, (key, text)) in data.iter().enumerate() {
        let value = decode(RecordFormat::Json, Some(text.as_bytes()))
            .map_err(|f| anyhow::anyhow!("{}: {}", f.step, f.error))?;
        match engine.as_mut() {
            None => {
                bytes += encode(RecordFormat::Json, &value)
                    .map_err(|f| anyhow::anyhow!(f.error))?
                    .len()
            }
            Some(e) => {
                let record = Record::new("orders", 0, i as i64, 1, Some(key.clone()), value);
                e.process(record, &mut out)
                    .map_err(|f| anyhow::anyhow!("{}: {}", f.step, f.error))?;
                for emit in out.drain(..) {
                    bytes += encode(RecordFormat::Json, &emit.record.value)
                        .map_err(|f| anyhow::anyhow!(f.error))?
                        .len();
                }
            }
        }
    }
    std::hint::black_box(bytes);
    Ok(started.elapsed().as_secs_f64() / data.len() as f64 * 1e9)
}

const FILTER_MAP: &str = "- {name: positive, filter: 'value.total > 0.0'}\n- {name: shape, map: {set: {totalCents: 'value.total * 100.0'}, drop: [orderId]}}";
const AGGREGATE: &str = "- {name: positive, filter: 'value.total > 0.0'}\n- {name: per-region, aggregate: {groupBy: {region: value.region}, aggregations: [{name: total, op: sum, of: value.total}]}}";

/// Prints nanoseconds per record for the baseline, b and c over `n` orders; with
/// `only` (`b` or `c`), runs that topology alone.
pub fn engine_cost(n: u64, only: Option<&str>) -> anyhow::Result<()> {
    let data: Vec<(Vec<u8>, String)> = (0..n)
        .map(|i| (format!("o-{i}").into_bytes(), order(i)))
        .collect();
    if let Some(only) = only {
        let steps = match only {
            "b" => FILTER_MAP,
            "c" => AGGREGATE,
            other => anyhow::bail!("unknown topology {other:?}: expected b or c"),
        };
        let cost = run(&data, Some(engine(steps)?))?;
        println!("{n} records of ~90 bytes, {only} alone: {cost:.0} ns/record");
        return Ok(());
    }
    let base = run(&data, None)?;
    let filter_map = run(&data, Some(engine(FILTER_MAP)?))?;
    let aggregate = run(&data, Some(engine(AGGREGATE)?))?;
    println!("{n} records of ~90 bytes, in one process:");
    println!("  decode + encode only     {base:>7.0} ns/record");
    println!(
        "  filter + map (b)         {filter_map:>7.0} ns/record  ({:.2}x the baseline)",
        filter_map / base
    );
    println!(
        "  filter + aggregate (c)   {aggregate:>7.0} ns/record  ({:.2}x the baseline)",
        aggregate / base
    );
    Ok(())
}
