//! Behaviour of the whole autoscaler: fed observations directly, or run in the simulator.

use std::time::Duration;

use proptest::prelude::*;
use sluice_crds::pipeline::StartFrom;

use super::sim::{ClusterConfig, Sluice, Trace, run};
use super::*;

fn settings(min: u32, max: u32) -> ScalingSettings {
    ScalingSettings {
        min_replicas: min,
        max_replicas: max,
        lag_target: Duration::from_secs(30),
        scale_down_stabilization: Duration::from_secs(120),
        idle_after: Duration::from_secs(300),
        start_from: StartFrom::Earliest,
        commit_interval: Duration::from_millis(100),
    }
}

/// `(log_start, log_end, committed)` per partition.
fn obs(secs: u64, parts: &[(i64, i64, Option<i64>)], replicas: u32) -> Observation {
    Observation {
        now: Duration::from_secs(secs),
        partitions: parts
            .iter()
            .enumerate()
            .map(|(i, (log_start, log_end, committed))| PartitionOffsets {
                id: PartitionId {
                    topic: "orders".into(),
                    partition: i as i32,
                },
                log_start: *log_start,
                log_end: *log_end,
                committed: *committed,
            })
            .collect(),
        replicas,
        ready_replicas: replicas,
        rebalancing: false,
    }
}

fn cluster(partitions: usize) -> ClusterConfig {
    ClusterConfig {
        partitions,
        capacity_per_replica: 1000.0,
        startup_secs: 10,
        rebalance_secs: 5,
        lag_target_secs: 30.0,
    }
}

fn sluice(settings: ScalingSettings) -> Sluice {
    Sluice {
        autoscaler: Autoscaler::new(settings),
        every_secs: 5,
        log: Vec::new(),
    }
}

#[test]
fn new_group_on_earliest_counts_lag_from_the_low_watermark_and_wakes() {
    let mut scaler = Autoscaler::new(settings(0, 4));
    // Retention deleted offsets below 600; the group never committed.
    let d = scaler.observe(&obs(0, &[(600, 1000, None), (0, 50, None)], 0));
    assert_eq!(d.metrics.total_lag, 450);
    assert_eq!(d.metrics.max_partition_lag, 400);
    assert_eq!(d.replicas, 1, "{}", d.reason);
    assert!(d.changed);
    assert!(d.reason.contains("waking"), "{}", d.reason);
}

#[test]
fn new_group_on_latest_has_no_lag_and_wakes_when_records_arrive() {
    let mut s = settings(0, 4);
    s.start_from = StartFrom::Latest;
    let mut scaler = Autoscaler::new(s);
    let d = scaler.observe(&obs(0, &[(0, 1000, None)], 0));
    assert_eq!(d.metrics.total_lag, 0);
    assert_eq!(d.replicas, 0, "{}", d.reason);
    let d = scaler.observe(&obs(5, &[(0, 1000, None)], 0));
    assert_eq!(d.replicas, 0, "{}", d.reason);
    // A record arrives: wake, though the lag (from latest) is still zero.
    let d = scaler.observe(&obs(10, &[(0, 1001, None)], 0));
    assert_eq!(d.replicas, 1, "{}", d.reason);
}

#[test]
fn transaction_markers_do_not_keep_a_replica_up() {
    let mut scaler = Autoscaler::new(settings(0, 4));
    // Every partition one offset short of the log end: the commit marker of the last
    // transaction. Nothing arrives.
    let parts = [(0, 101, Some(100)), (0, 51, Some(50))];
    let mut last = None;
    for tick in 0..=70 {
        let d = scaler.observe(&obs(tick * 5, &parts, last.unwrap_or(1)));
        if tick > 0 {
            assert_eq!(d.metrics.total_lag, 0);
        }
        last = Some(d.replicas);
    }
    assert_eq!(
        last,
        Some(0),
        "idle for more than 5m with only markers left"
    );
}

#[test]
fn scales_to_zero_after_idle_and_wakes_on_the_next_record() {
    let mut scaler = Autoscaler::new(settings(0, 4));
    let quiet = [(0, 500, Some(500))];
    let mut replicas = 1;
    let mut zero_at = None;
    for tick in 0..=70 {
        let d = scaler.observe(&obs(tick * 5, &quiet, replicas));
        if d.replicas == 0 && zero_at.is_none() {
            zero_at = Some(tick * 5);
            assert!(d.reason.contains("scaling to zero"), "{}", d.reason);
        }
        replicas = d.replicas;
    }
    // Idle counts from the first reading; zero once 5 minutes have passed.
    assert_eq!(zero_at, Some(300));
    let d = scaler.observe(&obs(355, &[(0, 501, Some(500))], 0));
    assert_eq!((d.replicas, d.changed), (1, true), "{}", d.reason);
}

#[test]
fn waking_with_a_known_capacity_sizes_for_the_load() {
    // A backlog at the start teaches the scaler what a replica does; then it idles to
    // zero; at 900 s records arrive at 1800/s, more than one replica can take.
    let trace = Trace {
        name: "learn, idle, wake",
        duration_secs: 1000,
        rate: Box::new(|t| if t >= 900 { 1800.0 } else { 0.0 }),
        bursts: vec![(0, 30_000.0)],
        weights: vec![],
        initial_replicas: 1,
        new_group: false,
        need: (2, 900),
    };
    let mut scaler = sluice(settings(0, 12));
    run(&cluster(12), &trace, &mut scaler);
    // Woken at the first reading with records; sized up once the rate is known and the
    // rebalance of the first replica's join is over (915), without waiting for that
    // replica to have consumed for a whole interval (920).
    let after: Vec<_> = scaler.log.iter().filter(|(t, ..)| *t >= 900).collect();
    assert_eq!(
        after.first().map(|c| (c.0, c.1, c.2)),
        Some((900, 0, 1)),
        "{after:?}"
    );
    let up = after.iter().find(|c| c.2 >= 2);
    assert!(up.is_some_and(|c| c.0 <= 915), "{after:?}");
    let slept = scaler.log.iter().any(|(t, _, to, _)| *t < 900 && *to == 0);
    assert!(slept, "{:?}", scaler.log);
}

#[test]
fn min_replicas_above_zero_never_scales_to_zero() {
    let mut scaler = Autoscaler::new(settings(1, 4));
    for tick in 0..=200 {
        let d = scaler.observe(&obs(tick * 5, &[(0, 500, Some(500))], 1));
        assert_eq!(d.replicas, 1);
    }
}

#[test]
fn holds_while_the_group_rebalances() {
    let mut scaler = Autoscaler::new(settings(1, 8));
    let mut o = obs(0, &[(0, 1_000_000, Some(0)); 8], 1);
    o.rebalancing = true;
    let d = scaler.observe(&o);
    assert_eq!((d.replicas, d.changed), (1, false));
    assert!(d.reason.contains("rebalancing"), "{}", d.reason);
}

#[test]
fn without_a_capacity_estimate_it_doubles_instead_of_jumping_to_max() {
    let mut scaler = Autoscaler::new(settings(1, 12));
    // A big backlog that nothing consumes: capacity cannot be measured.
    let stuck = [(0, 1_000_000, Some(0)); 12];
    let mut replicas = 1;
    let mut seen = vec![];
    for tick in 0..=30 {
        let d = scaler.observe(&obs(tick * 5, &stuck, replicas));
        if d.changed {
            seen.push(d.replicas);
        }
        replicas = d.replicas;
    }
    assert_eq!(seen.first(), Some(&2), "{seen:?}");
    assert!(seen.windows(2).all(|w| w[1] <= w[0] * 2), "{seen:?}");
}

#[test]
fn backlog_sizes_replicas_to_drain_within_the_lag_target() {
    let mut scaler = Autoscaler::new(settings(1, 12));
    // 12 partitions, one replica consuming 1000/s (all partitions behind), nothing new
    // arriving: 120k records -> 4000/s to drain in 30s -> 5 replicas at 90%.
    let a: Vec<_> = (0..12).map(|_| (0, 20_000, Some(10_000))).collect();
    let b: Vec<_> = a
        .iter()
        .map(|&(s, e, c)| (s, e, c.map(|c| c + 417)))
        .collect();
    scaler.observe(&obs(0, &a, 1));
    let d = scaler.observe(&obs(5, &b, 1));
    assert_eq!(d.replicas, 5, "{}", d.reason);
    let capacity = d.metrics.capacity_per_replica.unwrap();
    assert!((capacity - 1000.8).abs() < 1.0, "{capacity}");
    assert!(
        d.reason.contains("draining 1001/s per replica"),
        "{}",
        d.reason
    );
}

#[test]
fn a_new_groups_backlog_is_sized_in_the_first_whole_interval_after_its_replica_is_ready() {
    // The e2e backlog test as the operator reads it: 60,000 records on 4 partitions
    // before the pipeline exists, a 2 s lag target, one replica held to 1,000/s.
    let mut s = settings(1, 8);
    s.lag_target = Duration::from_secs(2);
    let mut scaler = Autoscaler::new(s);
    let waiting = |committed: Option<i64>| vec![(0, 15_000, committed); 4];
    let d = scaler.observe(&obs(0, &waiting(None), 0));
    assert_eq!(
        (d.replicas, d.metrics.total_lag),
        (1, 60_000),
        "{}",
        d.reason
    );
    // The replica starts, then joins the group before its first commit.
    let mut starting = obs(5, &waiting(None), 1);
    starting.ready_replicas = 0;
    let d = scaler.observe(&starting);
    assert_eq!(d.replicas, 1, "{}", d.reason);
    let d = scaler.observe(&obs(10, &waiting(None), 1));
    assert_eq!(d.replicas, 1, "{}", d.reason);
    // The first whole interval with the replica consuming: 250/s per partition.
    let d = scaler.observe(&obs(15, &waiting(Some(1_250)), 1));
    assert_eq!(d.replicas, 4, "{}", d.reason);
    assert_eq!(d.metrics.capacity_per_replica, Some(1000.0));
    // Four replicas are the most that help, and the reason does not pretend they meet
    // the target: 55,000 records at 4,000/s take about 14 s.
    assert!(
        d.reason
            .contains("4 replicas drain it in about 14s at best"),
        "{}",
        d.reason
    );
    // Four replicas at work, still behind the target: they hold, and say how long.
    let d = scaler.observe(&obs(20, &waiting(Some(2_500)), 4));
    assert_eq!(d.replicas, 4, "{}", d.reason);
    let d = scaler.observe(&obs(25, &waiting(Some(7_500)), 4));
    assert_eq!(d.replicas, 4, "{}", d.reason);
    assert!(
        d.reason.contains("4 replicas drain it in about 8s at best"),
        "{}",
        d.reason
    );
}

#[test]
fn a_backlog_appearing_between_readings_scales_up_without_waiting_to_measure() {
    let mut scaler = Autoscaler::new(settings(1, 12));
    // 12 partitions at 500/s for a minute, caught up (so the median arrival rate is
    // 500/s); then 120k records land at once. One replica consumed 5004 records in the
    // 5 s: at least 1000/s. Draining 120k within 30 s while 500/s arrive needs 4500/s,
    // plus what arrives while new replicas start: 6 replicas at 90% of 1000/s.
    for tick in 0..=12 {
        let end = 1_000 + 208 * tick;
        let caught_up: Vec<_> = (0..12).map(|_| (0, end, Some(end))).collect();
        let d = scaler.observe(&obs(tick as u64 * 5, &caught_up, 1));
        assert!(!d.changed, "{}", d.reason);
    }
    let end = 1_000 + 208 * 12;
    let burst: Vec<_> = (0..12)
        .map(|_| (0, end + 208 + 10_000, Some(end + 417)))
        .collect();
    let d = scaler.observe(&obs(65, &burst, 1));
    assert_eq!(d.replicas, 6, "{}", d.reason);
    assert!(d.reason.contains("floor"), "{}", d.reason);
    // Not a measurement: the capacity is still unknown.
    assert_eq!(d.metrics.capacity_per_replica, None);
}

#[test]
fn a_small_backlog_appearing_under_steady_load_does_not_scale() {
    let mut scaler = Autoscaler::new(settings(1, 12));
    // 900/s over 12 partitions, caught up; then 3 s of traffic is waiting and the
    // replica consumed only 360/s (a slow commit, a pause): the backlog alone drains
    // well within the lag target, so it waits for the next reading to measure.
    let a: Vec<_> = (0..12).map(|_| (0, 1_000, Some(1_000))).collect();
    let b: Vec<_> = (0..12).map(|_| (0, 1_375, Some(1_150))).collect();
    scaler.observe(&obs(0, &a, 1));
    let d = scaler.observe(&obs(5, &b, 1));
    assert!(!d.changed, "{}", d.reason);
}

#[test]
fn a_partial_measurement_never_lowers_the_capacity() {
    let mut scaler = Autoscaler::new(settings(1, 12));
    // Four partitions, all behind, one replica consuming 250/s from each: 1000/s.
    let a = [
        (0, 20_000, Some(10_000)),
        (0, 10_600, Some(10_000)),
        (0, 10_600, Some(10_000)),
        (0, 10_600, Some(10_000)),
    ];
    let b = [
        (0, 20_000, Some(11_250)),
        (0, 11_850, Some(11_250)),
        (0, 11_850, Some(11_250)),
        (0, 11_850, Some(11_250)),
    ];
    scaler.observe(&obs(0, &a, 1));
    scaler.observe(&obs(5, &b, 1));
    assert_eq!(scaler.capacity_per_replica(), Some(1000.0));
    // Three partitions catch up (850 records each), the fourth gets 1500: 810/s in all,
    // with only one partition behind at both ends. A floor, below what is known.
    let c = [
        (0, 20_000, Some(12_750)),
        (0, 12_100, Some(12_100)),
        (0, 12_100, Some(12_100)),
        (0, 12_100, Some(12_100)),
    ];
    scaler.observe(&obs(10, &c, 1));
    assert_eq!(scaler.capacity_per_replica(), Some(1000.0));
}

#[test]
fn never_above_the_partition_count() {
    let mut scaler = Autoscaler::new(settings(1, 50));
    let a = [(0, 10_000_000, Some(0)); 3];
    let b = [(0, 10_000_000, Some(5_000)); 3];
    scaler.observe(&obs(0, &a, 1));
    let d = scaler.observe(&obs(5, &b, 1));
    // Each partition counts for one replica at most, however far behind it is.
    assert_eq!(d.replicas, 3, "{}", d.reason);
}

#[test]
fn steady_load_after_learning_capacity_settles_and_stays() {
    // A burst teaches the scaler what a replica does; then 900/s (90% of one replica)
    // for half an hour must not move it once the burst has drained.
    let trace = Trace {
        name: "burst then steady",
        duration_secs: 2400,
        rate: Box::new(|_| 900.0),
        bursts: vec![(30, 60_000.0)],
        weights: vec![],
        initial_replicas: 1,
        new_group: false,
        need: (1, 0),
    };
    let mut scaler = sluice(settings(1, 12));
    let out = run(&cluster(12), &trace, &mut scaler);
    assert!(scaler.autoscaler.capacity_per_replica().is_some());
    let late: Vec<_> = out.timeline.iter().filter(|(t, _)| *t > 600).collect();
    assert!(late.is_empty(), "{:?} / {:?}", out.timeline, scaler.log);
    assert!(out.changes <= 2, "{:?}", scaler.log);
}

/// A deterministic noise in [-1, 1] per second (splitmix64).
fn noise(t: u64) -> f64 {
    let mut z = t.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
}

#[test]
fn noisy_load_does_not_flap() {
    // 2500/s +-40% every second for an hour.
    let trace = Trace {
        name: "noisy",
        duration_secs: 3600,
        rate: Box::new(|t| 2500.0 * (1.0 + 0.4 * noise(t))),
        bursts: vec![],
        weights: vec![],
        initial_replicas: 1,
        new_group: false,
        need: (3, 0),
    };
    let mut scaler = sluice(settings(1, 12));
    let out = run(&cluster(12), &trace, &mut scaler);
    assert!(out.changes <= 4, "{:?}", scaler.log);
    // No reversal: once it went down it never came back up, or the other way round.
    let steps: Vec<i64> = out
        .timeline
        .iter()
        .scan(1i64, |prev, (_, n)| {
            let step = (i64::from(*n) - *prev).signum();
            *prev = i64::from(*n);
            Some(step)
        })
        .collect();
    let reversals = steps.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(reversals <= 1, "{:?}", scaler.log);
}

#[test]
fn stabilization_delays_scale_down() {
    let trace = || Trace {
        name: "spike",
        duration_secs: 1200,
        rate: Box::new(|_| 500.0),
        bursts: vec![(30, 100_000.0)],
        weights: vec![],
        initial_replicas: 1,
        new_group: false,
        need: (1, 0),
    };
    let first_down = |window: u64| {
        let mut s = settings(1, 12);
        s.scale_down_stabilization = Duration::from_secs(window);
        let mut scaler = sluice(s);
        let out = run(&cluster(12), &trace(), &mut scaler);
        let up = out.timeline.first().copied().unwrap();
        let down = out
            .timeline
            .iter()
            .find(|(_, n)| *n < up.1)
            .copied()
            .unwrap();
        (up, down)
    };
    let (up, short) = first_down(30);
    let (_, long) = first_down(300);
    assert!(up.1 > 1);
    assert!(long.0 >= up.0 + 300, "{up:?} {long:?}");
    assert!(long.0 > short.0, "{short:?} {long:?}");
}

#[test]
fn extreme_offsets_and_times_do_not_overflow() {
    let mut scaler = Autoscaler::new(settings(0, 4));
    let huge = [
        (0, i64::MAX, Some(0)),
        (0, i64::MAX, None),
        (0, i64::MAX, Some(-5)),
    ];
    let d = scaler.observe(&obs(0, &huge, 1));
    assert_eq!(d.metrics.total_lag, u64::MAX);
    let mut far = obs(0, &huge, u32::MAX);
    far.now = Duration::MAX;
    let d = scaler.observe(&far);
    assert_eq!(d.replicas, 3, "{}", d.reason);
}

#[test]
fn duplicate_partitions_count_once() {
    let mut scaler = Autoscaler::new(settings(1, 8));
    let a = [(0, 1_000_000, Some(0)); 1];
    let mut o = obs(0, &a, 1);
    o.partitions.push(o.partitions[0].clone());
    scaler.observe(&o);
    o.now = Duration::from_secs(5);
    for p in &mut o.partitions {
        p.committed = Some(5_000);
    }
    let d = scaler.observe(&o);
    assert_eq!(d.replicas, 1, "{}", d.reason);
}

#[test]
fn a_clock_that_goes_backwards_starts_over_without_panicking() {
    let mut scaler = Autoscaler::new(settings(1, 4));
    scaler.observe(&obs(100, &[(0, 100, Some(0))], 1));
    let d = scaler.observe(&obs(50, &[(0, 100, Some(0))], 1));
    assert_eq!(d.replicas, 1);
}

#[test]
fn reason_names_the_numbers() {
    let mut scaler = Autoscaler::new(settings(1, 12));
    let a: Vec<_> = (0..12).map(|_| (0, 20_000, Some(10_000))).collect();
    let b: Vec<_> = a
        .iter()
        .map(|&(s, e, c)| (s, e, c.map(|c| c + 417)))
        .collect();
    scaler.observe(&obs(0, &a, 1));
    let d = scaler.observe(&obs(5, &b, 1));
    assert!(
        d.reason
            .starts_with("lag 114996 records, draining 1001/s per replica, arrival 0/s: 5 replicas drain it within 30s"),
        "{}",
        d.reason
    );
}

/// One tick of a random pipeline: offsets move at random, sometimes backwards or out of
/// range, replicas and readiness change, rebalances come and go.
#[derive(Clone, Debug)]
struct Tick {
    advance_secs: u64,
    produced: Vec<i64>,
    consumed: Vec<i64>,
    retention: i64,
    rebalancing: bool,
    unready: u32,
    external: Option<u32>,
}

fn tick(partitions: usize) -> impl Strategy<Value = Tick> {
    (
        1u64..30,
        prop::collection::vec(-10i64..50_000, partitions),
        prop::collection::vec(-10i64..50_000, partitions),
        0i64..1000,
        prop::bool::weighted(0.2),
        0u32..3,
        prop::option::weighted(0.1, 0u32..40),
    )
        .prop_map(
            |(advance_secs, produced, consumed, retention, rebalancing, unready, external)| Tick {
                advance_secs,
                produced,
                consumed,
                retention,
                rebalancing,
                unready,
                external,
            },
        )
}

fn scenario() -> impl Strategy<Value = (usize, u32, u32, bool, Vec<Tick>)> {
    (1usize..16, 0u32..6, 1u32..20, any::<bool>()).prop_flat_map(
        |(partitions, min, extra, latest)| {
            (
                Just(partitions),
                Just(min),
                Just(min + extra),
                Just(latest),
                prop::collection::vec(tick(partitions), 1..80),
            )
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn decisions_stay_within_bounds_and_hold_during_rebalances(
        (partitions, min, max, latest, ticks) in scenario()
    ) {
        let mut s = settings(min, max);
        if latest {
            s.start_from = StartFrom::Latest;
        }
        let mut scaler = Autoscaler::new(s);
        let mut now = 0;
        let mut log_end = vec![0i64; partitions];
        let mut committed: Vec<Option<i64>> = vec![None; partitions];
        let mut replicas = min;
        let upper = max.min(partitions as u32);
        let lower = min.min(upper);
        for t in ticks {
            now += t.advance_secs;
            for p in 0..partitions {
                log_end[p] += t.produced[p];
                if t.consumed[p] != 0 || committed[p].is_some() {
                    committed[p] = Some(committed[p].unwrap_or(0) + t.consumed[p]);
                }
            }
            if let Some(n) = t.external {
                replicas = n;
            }
            let parts: Vec<_> = (0..partitions)
                .map(|p| (t.retention.min(log_end[p]), log_end[p], committed[p]))
                .collect();
            let mut o = obs(now, &parts, replicas);
            o.ready_replicas = replicas.saturating_sub(t.unready);
            o.rebalancing = t.rebalancing;
            let d = scaler.observe(&o);
            prop_assert_eq!(d.previous, replicas);
            prop_assert_eq!(d.changed, d.replicas != replicas);
            if t.rebalancing {
                prop_assert_eq!(d.replicas, replicas, "changed during a rebalance: {}", d.reason);
            } else {
                prop_assert!(d.replicas <= upper, "{} > {upper}: {}", d.replicas, d.reason);
                prop_assert!(d.replicas >= lower, "{} < {lower}: {}", d.replicas, d.reason);
            }
            prop_assert!(!d.reason.is_empty());
            prop_assert!(d.metrics.max_partition_lag <= d.metrics.total_lag);
            replicas = d.replicas;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn steady_load_below_one_replicas_capacity_never_changes_replicas(
        partitions in 1usize..16,
        share in 0.02f64..0.95,
        minutes in 5u64..40,
    ) {
        let trace = Trace {
            name: "steady",
            duration_secs: minutes * 60,
            rate: Box::new(move |_| 1000.0 * share),
            bursts: vec![],
            weights: vec![],
            initial_replicas: 1,
            new_group: false,
            need: (1, 0),
        };
        let mut scaler = sluice(settings(1, 12));
        let out = run(&cluster(partitions), &trace, &mut scaler);
        prop_assert_eq!(out.changes, 0, "{:?}", scaler.log);
    }
}
