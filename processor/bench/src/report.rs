//! Printing `--pairs` results.

use super::*;

/// `--pairs`: each back-to-back pair's ratios (the Sluice candidate against a), and
/// their median per candidate.
pub(crate) fn print_pairs(results: &[Measured]) -> anyhow::Result<()> {
    // (candidate letter, throughput ratio, CPU-per-record ratio), in run order.
    let ratios: Vec<(&str, f64, f64)> = results
        .chunks_exact(2)
        .map(|p| {
            (
                p[1].name.split(' ').next().unwrap_or_default(),
                p[1].records_per_s / p[0].records_per_s,
                p[1].cpu_s_per_million / p[0].cpu_s_per_million,
            )
        })
        .collect();
    if ratios.is_empty() {
        bail!("no complete pair");
    }
    println!();
    for (i, (x, throughput, cpu)) in ratios.iter().enumerate() {
        println!(
            "pair {}: {x}/a throughput {throughput:.2}, {x}'s CPU per record {cpu:.2}x a's",
            i + 1
        );
    }
    let mut letters: Vec<&str> = ratios.iter().map(|r| r.0).collect();
    letters.sort_unstable();
    letters.dedup();
    for x in letters {
        let mut t: Vec<f64> = ratios.iter().filter(|r| r.0 == x).map(|r| r.1).collect();
        let mut c: Vec<f64> = ratios.iter().filter(|r| r.0 == x).map(|r| r.2).collect();
        println!(
            "median of {} pairs: {x}/a throughput {:.2}, {x}'s CPU per record {:.2}x a's",
            t.len(),
            median(&mut t),
            median(&mut c)
        );
    }
    Ok(())
}

/// The median (of a non-empty list).
pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
