//! Tests of the aggregate step: groups, windows, emit modes, state and its changelog.

use super::*;
use crate::expr::{root_context, scope};
use proptest::prelude::*;

const SPEC: &str = "groupBy: {region: value.region}\naggregations:\n- {name: total, op: sum, of: value.total}\n- {name: n, op: count}\n- {name: lo, op: min, of: value.total}\n- {name: hi, op: max, of: value.total}\n- {name: mean, op: avg, of: value.total}\n";

fn agg() -> Aggregate {
    Aggregate::compile("per-region", &serde_saphyr::from_str(SPEC).unwrap()).unwrap()
}

fn feed_at(
    a: &mut Aggregate,
    partition: i32,
    ts: i64,
    v: serde_json::Value,
) -> Result<Vec<Record>, StepError> {
    let root = root_context();
    let r = Record::new("in", partition, 0, ts, None, Payload::Json(v));
    let needs = a.needs();
    let s = scope(&root, &r, &needs).unwrap();
    a.update(partition, r.clone(), &s)
}

fn feed(a: &mut Aggregate, partition: i32, v: serde_json::Value) -> Result<Record, StepError> {
    let mut out = feed_at(a, partition, 0, v)?;
    assert_eq!(out.len(), 1);
    Ok(out.remove(0))
}

fn values(records: &[Record]) -> Vec<serde_json::Value> {
    records
        .iter()
        .map(|r| match &r.value {
            Payload::Json(v) => v.clone(),
            other => panic!("{other:?}"),
        })
        .collect()
}

fn windowed(extra: &str) -> Aggregate {
    let spec = format!(
        "groupBy: {{region: value.region}}\naggregations: [{{name: total, op: sum, of: value.total}}]\n{extra}"
    );
    Aggregate::compile("w", &serde_saphyr::from_str(&spec).unwrap()).unwrap()
}

#[test]
fn tumbling_windows_on_update_keep_windows_apart() {
    let mut a = windowed("window: {tumbling: 1m}\n");
    feed_at(
        &mut a,
        0,
        1_000,
        serde_json::json!({"region": "eu", "total": 1}),
    )
    .unwrap();
    let out = feed_at(
        &mut a,
        0,
        59_999,
        serde_json::json!({"region": "eu", "total": 2}),
    )
    .unwrap();
    assert_eq!(
        values(&out),
        vec![serde_json::json!({"region": "eu", "windowStart": 0, "windowEnd": 60000, "total": 3})]
    );
    let out = feed_at(
        &mut a,
        0,
        60_000,
        serde_json::json!({"region": "eu", "total": 5}),
    )
    .unwrap();
    assert_eq!(
        values(&out),
        vec![
            serde_json::json!({"region": "eu", "windowStart": 60000, "windowEnd": 120000, "total": 5})
        ]
    );
    assert_eq!(
        a.group_count(),
        1,
        "the first window closed and was forgotten"
    );
    let changes = a.take_changes();
    assert!(
        changes
            .iter()
            .any(|(_, k, v)| k == "[\"eu\",0]" && v.is_none()),
        "{changes:?}"
    );
}

#[test]
fn a_far_future_timestamp_is_refused_and_leaves_stream_time_alone() {
    let mut a = windowed("window: {tumbling: 1m}\n");
    a.clock = || 10 * 60_000;
    let rec = |t: f64| serde_json::json!({"region": "x", "total": t});
    feed_at(&mut a, 0, 60_000, rec(1.0)).unwrap();
    // Ten hours ahead of the clock: refused.
    let err = feed_at(&mut a, 0, 10 * 3_600_000, rec(2.0)).unwrap_err();
    assert!(
        err.to_string().contains("ahead of the processor's clock"),
        "{err}"
    );
    // The open window still takes records: nothing was closed.
    let out = feed_at(&mut a, 0, 90_000, rec(3.0)).unwrap();
    assert_eq!(values(&out)[0]["total"], serde_json::json!(4.0));
    // Within an hour of the clock is fine.
    assert!(feed_at(&mut a, 0, 10 * 60_000 + MAX_FUTURE_MS, rec(1.0)).is_ok());
}

#[test]
fn on_window_close_emits_final_values_after_grace() {
    let mut a = windowed("window: {tumbling: 10s, grace: 5s}\nemit: onWindowClose\n");
    assert!(
        feed_at(
            &mut a,
            0,
            1_000,
            serde_json::json!({"region": "eu", "total": 1})
        )
        .unwrap()
        .is_empty()
    );
    assert!(
        feed_at(
            &mut a,
            0,
            2_000,
            serde_json::json!({"region": "us", "total": 4})
        )
        .unwrap()
        .is_empty()
    );
    // In the next window but within grace: the first window stays open.
    assert!(
        feed_at(
            &mut a,
            0,
            12_000,
            serde_json::json!({"region": "eu", "total": 7})
        )
        .unwrap()
        .is_empty()
    );
    // Late but within grace: still counted.
    assert!(
        feed_at(
            &mut a,
            0,
            9_000,
            serde_json::json!({"region": "eu", "total": 2})
        )
        .unwrap()
        .is_empty()
    );
    let out = feed_at(
        &mut a,
        0,
        15_000,
        serde_json::json!({"region": "eu", "total": 1}),
    )
    .unwrap();
    assert_eq!(
        values(&out),
        vec![
            serde_json::json!({"region": "eu", "windowStart": 0, "windowEnd": 10000, "total": 3}),
            serde_json::json!({"region": "us", "windowStart": 0, "windowEnd": 10000, "total": 4}),
        ]
    );
    let err = feed_at(
        &mut a,
        0,
        3_000,
        serde_json::json!({"region": "eu", "total": 1}),
    )
    .unwrap_err();
    assert!(err.to_string().contains("late record"), "{err}");
}

#[test]
fn window_close_survives_a_restart() {
    let mut a = windowed("window: {tumbling: 10s}\nemit: onWindowClose\n");
    feed_at(
        &mut a,
        0,
        1_000,
        serde_json::json!({"region": "eu", "total": 1}),
    )
    .unwrap();
    feed_at(
        &mut a,
        0,
        5_000,
        serde_json::json!({"region": "eu", "total": 2}),
    )
    .unwrap();
    let mut b = windowed("window: {tumbling: 10s}\nemit: onWindowClose\n");
    for (p, k, v) in a.take_changes() {
        b.restore(p, k.as_bytes(), v.as_deref()).unwrap();
    }
    let err = feed_at(
        &mut b,
        0,
        100,
        serde_json::json!({"region": "eu", "total": 1}),
    );
    assert!(
        err.unwrap().is_empty(),
        "stream time restored: not late, window still open"
    );
    let out = feed_at(
        &mut b,
        0,
        10_000,
        serde_json::json!({"region": "eu", "total": 1}),
    )
    .unwrap();
    assert_eq!(
        values(&out),
        vec![serde_json::json!({"region": "eu", "windowStart": 0, "windowEnd": 10000, "total": 4})]
    );
}

#[test]
fn hopping_and_session_windows_are_refused() {
    let err = Aggregate::compile(
            "h",
            &serde_saphyr::from_str("groupBy: {r: value.r}\naggregations: [{name: n, op: count}]\nwindow: {hopping: {size: 1m, advance: 10s}}\n").unwrap(),
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "step h: a hopping window is not supported yet"
    );
}

#[test]
fn totals_per_region() {
    let mut a = agg();
    feed(
        &mut a,
        0,
        serde_json::json!({"region": "eu-west", "total": 10}),
    )
    .unwrap();
    feed(
        &mut a,
        0,
        serde_json::json!({"region": "us-east", "total": 1.5}),
    )
    .unwrap();
    let out = feed(
        &mut a,
        0,
        serde_json::json!({"region": "eu-west", "total": 2.5}),
    )
    .unwrap();
    assert_eq!(
        out.value,
        Payload::Json(
            serde_json::json!({"region": "eu-west", "total": 12.5, "n": 2, "lo": 2.5, "hi": 10, "mean": 6.25})
        )
    );
    assert_eq!(out.key.as_deref(), Some(&b"eu-west"[..]));
    assert_eq!(a.group_count(), 2);
}

#[test]
fn integer_sums_stay_integers() {
    let mut a = agg();
    feed(&mut a, 0, serde_json::json!({"region": "x", "total": 2})).unwrap();
    let out = feed(&mut a, 0, serde_json::json!({"region": "x", "total": 3})).unwrap();
    let Payload::Json(v) = out.value else {
        panic!()
    };
    assert_eq!(v["total"], serde_json::json!(5));
}

#[test]
fn a_failing_record_changes_nothing() {
    let mut a = agg();
    feed(&mut a, 0, serde_json::json!({"region": "x", "total": 2})).unwrap();
    assert!(
        feed(
            &mut a,
            0,
            serde_json::json!({"region": "x", "total": "nan"})
        )
        .is_err()
    );
    assert!(feed(&mut a, 0, serde_json::json!({"total": 1})).is_err());
    let out = feed(&mut a, 0, serde_json::json!({"region": "x", "total": 1})).unwrap();
    let Payload::Json(v) = out.value else {
        panic!()
    };
    assert_eq!(v["n"], serde_json::json!(2));
}

#[test]
fn a_result_that_is_not_finite_is_refused_and_the_state_stays_restorable() {
    let mut a = agg();
    feed(
        &mut a,
        0,
        serde_json::json!({"region": "x", "total": 1.0e308}),
    )
    .unwrap();
    // The sum and the mean would overflow to infinity.
    let err = feed(
        &mut a,
        0,
        serde_json::json!({"region": "x", "total": 1.0e308}),
    )
    .unwrap_err();
    assert!(err.to_string().contains("not be a finite number"), "{err}");
    // A new group whose first record is refused leaves nothing behind.
    let nan = "0.0 / 0.0";
    let mut b = Aggregate::compile(
        "per-region",
        &serde_saphyr::from_str(&format!(
            "groupBy: {{region: value.region}}\naggregations: [{{name: m, op: max, of: '{nan}'}}]\n"
        ))
        .unwrap(),
    )
    .unwrap();
    assert!(feed(&mut b, 0, serde_json::json!({"region": "y"})).is_err());
    assert_eq!(b.group_count(), 0);

    // Everything written to the changelog reads back.
    let mut restored = agg();
    for (p, k, v) in a.take_changes() {
        restored.restore(p, k.as_bytes(), v.as_deref()).unwrap();
    }
    assert_eq!(restored.snapshot(), a.snapshot());
    let out = feed(
        &mut restored,
        0,
        serde_json::json!({"region": "x", "total": 1.0}),
    )
    .unwrap();
    let Payload::Json(v) = out.value else {
        panic!()
    };
    assert_eq!(v["n"], serde_json::json!(2));
}

#[test]
fn sum_without_of_is_refused() {
    let err = Aggregate::compile(
        "s",
        &serde_saphyr::from_str("groupBy: {r: value.r}\naggregations: [{name: t, op: sum}]\n")
            .unwrap(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("needs `of`"), "{err}");
}

#[test]
fn corrupt_changelog_is_an_error() {
    let mut a = agg();
    assert!(a.restore(0, b"[\"x\"]", Some(b"not json")).is_err());
    assert!(
        a.restore(0, b"[\"x\"]", Some(br#"{"group":["x"],"accs":[]}"#))
            .is_err()
    );
}

proptest! {
    /// Processing the input in chunks, with a fresh step restored from the compacted
    /// changelog before each chunk (a restart), ends in the same state and the same
    /// last output per group as one uninterrupted run.
    #[test]
    fn restarts_do_not_change_totals(
        input in proptest::collection::vec((0usize..4, -1000i64..1000, any::<bool>()), 1..80),
        cuts in proptest::collection::vec(0usize..80, 0..5),
    ) {
        let regions = ["eu-west", "us-east", "ap-south", "sa-east"];
        let records: Vec<serde_json::Value> = input
            .iter()
            .map(|(r, n, float)| {
                let total = if *float { serde_json::json!(*n as f64 / 8.0) } else { serde_json::json!(n) };
                serde_json::json!({"region": regions[*r], "total": total})
            })
            .collect();

        let mut whole = agg();
        let mut expected_last = HashMap::new();
        for r in &records {
            let out = feed(&mut whole, 0, r.clone()).unwrap();
            expected_last.insert(out.key.clone(), out.value);
        }

        let mut bounds: Vec<usize> = cuts.into_iter().map(|c| c % (records.len() + 1)).collect();
        bounds.push(0);
        bounds.push(records.len());
        bounds.sort_unstable();
        let mut changelog: HashMap<String, Option<Vec<u8>>> = HashMap::new();
        let mut last = HashMap::new();
        for w in bounds.windows(2) {
            let mut step = agg();
            for (k, v) in &changelog {
                step.restore(0, k.as_bytes(), v.as_deref()).unwrap();
            }
            for r in &records[w[0]..w[1]] {
                let out = feed(&mut step, 0, r.clone()).unwrap();
                last.insert(out.key.clone(), out.value);
            }
            for (_, k, v) in step.take_changes() {
                changelog.insert(k, v);
            }
        }
        let mut restored = agg();
        for (k, v) in &changelog {
            restored.restore(0, k.as_bytes(), v.as_deref()).unwrap();
        }
        prop_assert_eq!(restored.snapshot(), whole.snapshot());
        prop_assert_eq!(last, expected_last);
    }
}
