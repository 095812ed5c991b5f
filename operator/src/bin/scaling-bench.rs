//! Replays scripted load traces through Sluice's lag autoscaler and through a model of
//! KEDA's Kafka scaler with HPA, on the same simulated topic and consumer group, and
//! prints reaction time, cost and stability side by side.
//!
//! Usage: `scaling-bench [--keda-threshold N] [--explain]` (N: KEDA lagThreshold of the
//! tuned run, KEDA's default of 10 is always run too; `--explain` prints the reason of
//! every change Sluice made).

use std::process::ExitCode;
use std::time::Duration;

use sluice_crds::pipeline::StartFrom;
use sluice_operator::autoscaler::sim::keda::{Keda, KedaSettings};
use sluice_operator::autoscaler::sim::{ClusterConfig, Scaler, SimResult, Sluice, Trace, run};
use sluice_operator::autoscaler::{Autoscaler, ScalingSettings};

const PARTITIONS: usize = 12;
const CAPACITY: f64 = 1000.0;
const LAG_TARGET_SECS: u64 = 30;
const MAX_REPLICAS: u32 = 12;

fn main() -> ExitCode {
    let options = match options() {
        Ok(o) => o,
        Err(message) => {
            eprintln!("scaling-bench: {message}");
            return ExitCode::from(2);
        }
    };
    let cluster = ClusterConfig {
        partitions: PARTITIONS,
        capacity_per_replica: CAPACITY,
        startup_secs: 10,
        rebalance_secs: 5,
        lag_target_secs: LAG_TARGET_SECS as f64,
    };
    let threshold = options.keda_threshold;
    print_setup(&cluster, threshold);

    // Per KEDA run: traces where Sluice was as fast or faster, changed as rarely or more
    // rarely, spent as little or less time over the lag target, and as few or fewer
    // replica-minutes idle.
    let mut score = [[0usize; 4]; 2];
    let traces = traces(67);
    println!(
        "\n{:<7} {:<26} {:>12} {:>11} {:>8} {:>8} {:>9} {:>11}  replicas over time (count@second)",
        "trace",
        "scaler",
        "enough after",
        "replica-min",
        "idle",
        "changes",
        "peak lag",
        "over target"
    );
    for trace in &traces {
        let min = u32::from(trace.initial_replicas != 0);
        let mut sluice = sluice(min);
        let mut tuned = Keda::new(KedaSettings::defaults(threshold, min, MAX_REPLICAS));
        let mut default = Keda::new(KedaSettings::defaults(10.0, min, MAX_REPLICAS));
        let ours = run(&cluster, trace, &mut sluice);
        let theirs = run(&cluster, trace, &mut tuned);
        let theirs_default = run(&cluster, trace, &mut default);
        row(trace.name, &sluice, &ours);
        if options.explain {
            for (t, from, to, reason) in &sluice.log {
                println!("{:<7}   t={t}s {from} -> {to}: {reason}", "");
            }
        }
        row("", &tuned, &theirs);
        row("", &default, &theirs_default);
        println!(
            "{:<7} Sluice vs {}: {}",
            "",
            tuned.name(),
            ratios(&ours, &theirs)
        );
        println!(
            "{:<7} Sluice vs {}: {}",
            "",
            default.name(),
            ratios(&ours, &theirs_default)
        );
        for (k, theirs) in [&theirs, &theirs_default].into_iter().enumerate() {
            let reach = |o: &SimResult| o.reach_secs.unwrap_or(u64::MAX);
            score[k][0] += usize::from(reach(&ours) <= reach(theirs));
            score[k][1] += usize::from(ours.changes <= theirs.changes);
            score[k][2] += usize::from(ours.over_target_secs <= theirs.over_target_secs);
            score[k][3] += usize::from(ours.idle_replica_minutes <= theirs.idle_replica_minutes);
        }
    }
    let n = traces.len();
    for (k, name) in [
        format!("lagThreshold {threshold}"),
        "lagThreshold 10".to_string(),
    ]
    .iter()
    .enumerate()
    {
        println!(
            "\nSluice vs KEDA {name}: as fast or faster to enough replicas on {}/{n} traces, as \
             few or fewer changes on {}/{n}, as little or less time over the lag target on {}/{n}, \
             as few or fewer idle replica-minutes on {}/{n}",
            score[k][0], score[k][1], score[k][2], score[k][3]
        );
    }
    sweep(&cluster, threshold, 60..90);
    println!("scaling-bench: done, {n} traces x 3 scalers, then each again at 30 event times");
    ExitCode::SUCCESS
}

/// Command-line options.
struct Options {
    keda_threshold: f64,
    explain: bool,
}

fn options() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let mut threshold = CAPACITY * LAG_TARGET_SECS as f64;
    let mut explain = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--explain" => explain = true,
            "--keda-threshold" => {
                let value = args.next().ok_or("--keda-threshold needs a number")?;
                threshold = value
                    .parse::<f64>()
                    .ok()
                    .filter(|t| t.is_finite() && *t > 0.0)
                    .ok_or(format!(
                        "--keda-threshold {value:?} is not a positive number"
                    ))?;
            }
            other => {
                return Err(format!(
                    "unknown argument {other:?} (options: --keda-threshold N, --explain)"
                ));
            }
        }
    }
    Ok(Options {
        keda_threshold: threshold,
        explain,
    })
}

fn print_setup(cluster: &ClusterConfig, threshold: f64) {
    println!("Sluice lag autoscaler vs KEDA Kafka scaler + HPA, simulated in 1 s steps");
    println!(
        "cluster: {} partitions, {} records/s per replica, replica startup {} s, every change \
         of members pauses all replicas {} s (rebalance); lag seen by scalers includes ~1 s of \
         records in flight",
        cluster.partitions,
        cluster.capacity_per_replica,
        cluster.startup_secs,
        cluster.rebalance_secs
    );
    println!(
        "Sluice: reads offsets every 5 s; maxReplicas {MAX_REPLICAS}, lagTarget {LAG_TARGET_SECS}s, \
         scaleDownStabilization 2m, idleAfter 5m; minReplicas 1 (0 on the wake and sparse traces, as for KEDA)"
    );
    println!(
        "KEDA:   lag per partition logEnd - committed (offsetResetPolicy latest), total capped at \
         partitions x lagThreshold; lagThreshold {threshold} (= one replica's {LAG_TARGET_SECS} s \
         of records, the setting that maps KEDA onto Sluice's lag target) and KEDA's default 10"
    );
    println!(
        "        pollingInterval 30 s for 0 <-> 1 (activationLagThreshold 0, cooldownPeriod 300 s); \
         HPA every 15 s: ceil(totalLag / lagThreshold), 10% tolerance, scale-up at most max(+4 pods, \
         x2) per 60 s, scale-down to the highest recommendation of the last 300 s (ANCHORS.md); \
         HPA reads the lag fresh at each sync"
    );
    println!(
        "enough after: seconds from when the load needs N replicas until N are ready (N per trace \
         below); replica-min: replicas asked for x minutes; idle: the part of it with nothing \
         arriving or waiting; over target: seconds in which the backlog could not drain within \
         lagTarget at the ready replicas' full speed"
    );
}

fn sluice(min: u32) -> Sluice {
    let settings = ScalingSettings {
        min_replicas: min,
        max_replicas: MAX_REPLICAS,
        lag_target: Duration::from_secs(LAG_TARGET_SECS),
        scale_down_stabilization: Duration::from_secs(120),
        idle_after: Duration::from_secs(300),
        start_from: StartFrom::Earliest,
        commit_interval: Duration::from_millis(100),
    };
    Sluice {
        autoscaler: Autoscaler::new(settings),
        every_secs: 5,
        log: Vec::new(),
    }
}

/// A deterministic noise in [-1, 1] per second (splitmix64).
fn noise(t: u64) -> f64 {
    let mut z = t.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
}

/// The traces, with their load event (burst, start of the ramp or of the noise) at
/// second `at`; the wake trace's load starts 75 s later.
fn traces(at: u64) -> Vec<Trace> {
    let ramp_rate = move |t: u64| {
        if t < at {
            300.0
        } else if t < at + 600 {
            300.0 + 5700.0 * (t - at) as f64 / 600.0
        } else {
            6000.0
        }
    };
    // The ramp passes 5000/s (the load needing 6 replicas) at this second.
    let ramp_needs_six = (0..2000).find(|&t| ramp_rate(t) > 5000.0).unwrap_or(0);
    let wake = at + 75;
    vec![
        Trace {
            name: "spike",
            duration_secs: 600,
            rate: Box::new(|_| 500.0),
            bursts: vec![(at, 120_000.0)],
            weights: vec![],
            initial_replicas: 1,
            new_group: false,
            // Drain 120k within 30 s while 500/s keep arriving: 4500/s -> 5 replicas.
            need: (5, at),
        },
        Trace {
            name: "ramp",
            duration_secs: 900,
            rate: Box::new(ramp_rate),
            bursts: vec![],
            weights: vec![],
            initial_replicas: 1,
            new_group: false,
            need: (6, ramp_needs_six),
        },
        Trace {
            name: "steady",
            duration_secs: 900,
            rate: Box::new(|_| 900.0),
            bursts: vec![],
            weights: vec![],
            initial_replicas: 1,
            new_group: false,
            need: (1, 0),
        },
        Trace {
            name: "noisy",
            duration_secs: 900,
            rate: Box::new(move |t| {
                if t < at {
                    300.0
                } else {
                    2500.0 * (1.0 + 0.4 * noise(t))
                }
            }),
            bursts: vec![],
            weights: vec![],
            initial_replicas: 1,
            new_group: false,
            need: (3, at),
        },
        Trace {
            name: "wake",
            duration_secs: 1200,
            rate: Box::new(move |t| {
                if (wake..wake + 300).contains(&t) {
                    800.0
                } else {
                    0.0
                }
            }),
            bursts: vec![],
            weights: vec![],
            initial_replicas: 0,
            new_group: false,
            need: (1, wake),
        },
        Trace {
            name: "sparse",
            duration_secs: 1200,
            rate: Box::new(move |t| {
                if (at..at + 180).contains(&t) {
                    600.0
                } else {
                    0.0
                }
            }),
            bursts: vec![],
            // A new group, and records only ever reach half of the partitions: the other
            // half never gets a committed offset.
            weights: (0..PARTITIONS)
                .map(|i| if i < PARTITIONS / 2 { 1.0 } else { 0.0 })
                .collect(),
            initial_replicas: 0,
            new_group: true,
            need: (1, at),
        },
        Trace {
            name: "hot",
            duration_secs: 600,
            rate: Box::new(|_| 1200.0),
            bursts: vec![(at, 60_000.0)],
            // Partition 0 takes 20% of everything.
            weights: {
                let mut w = vec![0.8 / 11.0; PARTITIONS];
                w[0] = 0.2;
                w
            },
            initial_replicas: 1,
            new_group: false,
            // Partition 0 gets 12k of the burst plus 240/s: to drain in 30 s it needs
            // 640/s, each other partition 87/s + 4364/30 = 232/s. 4 replicas carry the
            // total (3200/s) but the one reading partition 0 then also reads two others
            // (1104/s > 1000/s); with 6 it reads one other (872/s).
            need: (6, at),
        },
    ]
}

/// Means over several runs of one scaler on one trace.
#[derive(Default)]
struct Sweep {
    runs: u32,
    reached: u32,
    reach_secs: u64,
    changes: u32,
    over_target_secs: u64,
    replica_minutes: f64,
    idle_replica_minutes: f64,
}

impl Sweep {
    fn add(&mut self, out: &SimResult) {
        self.runs += 1;
        if let Some(s) = out.reach_secs {
            self.reached += 1;
            self.reach_secs += s;
        }
        self.changes += out.changes;
        self.over_target_secs += out.over_target_secs;
        self.replica_minutes += out.replica_minutes;
        self.idle_replica_minutes += out.idle_replica_minutes;
    }

    fn print(&self, trace: &str, scaler: &str) {
        let runs = f64::from(self.runs.max(1));
        let reach = if self.reached == 0 {
            "never".to_string()
        } else {
            let mean = self.reach_secs as f64 / f64::from(self.reached);
            let never = self.runs - self.reached;
            if never > 0 {
                format!("{mean:.1} s ({never} never)")
            } else {
                format!("{mean:.1} s")
            }
        };
        println!(
            "{trace:<7} {scaler:<26} {reach:>18} {:>11.1} {:>8.1} {:>8.2} {:>11.1}",
            self.replica_minutes / runs,
            self.idle_replica_minutes / runs,
            f64::from(self.changes) / runs,
            self.over_target_secs as f64 / runs
        );
    }
}

/// Runs every trace with its event at each second of `ats`, and prints the means.
fn sweep(cluster: &ClusterConfig, threshold: f64, ats: std::ops::Range<u64>) {
    println!(
        "\nThe same, averaged over {} event times (second {} to {}), so no scaler gains from \
         where its polls fall:",
        ats.end - ats.start,
        ats.start,
        ats.end - 1
    );
    println!(
        "{:<7} {:<26} {:>18} {:>11} {:>8} {:>8} {:>11}",
        "trace", "scaler", "enough after", "replica-min", "idle", "changes", "over target"
    );
    let names = traces(ats.start);
    for (i, name) in names.iter().map(|t| t.name).enumerate() {
        let mut sums: [Sweep; 3] = Default::default();
        let mut labels = [String::new(), String::new(), String::new()];
        // Per KEDA run: event times at which Sluice reached enough replicas as soon or
        // sooner, and at which it made as few changes or fewer.
        let mut wins = [[0u32; 2]; 2];
        for at in ats.clone() {
            let trace = &traces(at)[i];
            let min = u32::from(trace.initial_replicas != 0);
            let mut scalers: [Box<dyn Scaler>; 3] = [
                Box::new(sluice(min)),
                Box::new(Keda::new(KedaSettings::defaults(
                    threshold,
                    min,
                    MAX_REPLICAS,
                ))),
                Box::new(Keda::new(KedaSettings::defaults(10.0, min, MAX_REPLICAS))),
            ];
            let mut outcomes = Vec::with_capacity(scalers.len());
            for (k, scaler) in scalers.iter_mut().enumerate() {
                let outcome = run(cluster, trace, scaler.as_mut());
                sums[k].add(&outcome);
                labels[k] = scaler.name();
                outcomes.push(outcome);
            }
            let reach = |o: &SimResult| o.reach_secs.unwrap_or(u64::MAX);
            for (k, theirs) in outcomes[1..].iter().enumerate() {
                wins[k][0] += u32::from(reach(&outcomes[0]) <= reach(theirs));
                wins[k][1] += u32::from(outcomes[0].changes <= theirs.changes);
            }
        }
        for (k, sum) in sums.iter().enumerate() {
            sum.print(if k == 0 { name } else { "" }, &labels[k]);
        }
        let runs = ats.end - ats.start;
        for (k, [reach, changes]) in wins.iter().enumerate() {
            println!(
                "{:<7} Sluice vs {}: as fast or faster at {reach}/{runs} event times, as few \
                 changes or fewer at {changes}/{runs}",
                "",
                labels[k + 1]
            );
        }
    }
}

fn row(trace: &str, scaler: &dyn Scaler, out: &SimResult) {
    let reach = out
        .reach_secs
        .map_or("never".to_string(), |s| format!("{s} s"));
    let mut timeline: Vec<String> = out
        .timeline
        .iter()
        .take(10)
        .map(|(t, n)| format!("{n}@{t}"))
        .collect();
    if out.timeline.len() > 10 {
        timeline.push(format!("... {} more", out.timeline.len() - 10));
    }
    println!(
        "{:<7} {:<26} {:>12} {:>11.1} {:>8.1} {:>8} {:>9.0} {:>11}  {}",
        trace,
        scaler.name(),
        reach,
        out.replica_minutes,
        out.idle_replica_minutes,
        out.changes,
        out.peak_lag,
        format!("{} s", out.over_target_secs),
        timeline.join(" ")
    );
}

fn ratios(ours: &SimResult, theirs: &SimResult) -> String {
    let ratio = |a: f64, b: f64| {
        if b == 0.0 {
            if a == 0.0 {
                "equal (0 vs 0)".to_string()
            } else {
                format!("{a:.0} vs 0")
            }
        } else {
            format!("{:.2}x", a / b)
        }
    };
    let reach = match (ours.reach_secs, theirs.reach_secs) {
        (Some(a), Some(b)) => ratio(a as f64, b as f64),
        (Some(a), None) => format!("{a} s vs never"),
        (None, Some(b)) => format!("never vs {b} s"),
        (None, None) => "never vs never".to_string(),
    };
    format!(
        "enough after {reach}, replica-min {}, changes {}, peak lag {}, over target {}",
        ratio(ours.replica_minutes, theirs.replica_minutes),
        ratio(f64::from(ours.changes), f64::from(theirs.changes)),
        ratio(ours.peak_lag, theirs.peak_lag),
        ratio(ours.over_target_secs as f64, theirs.over_target_secs as f64)
    )
}
