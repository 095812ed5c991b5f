//! Tests of the engine: steps over records, failures, state, outputs.

use super::*;

const SEED: &str = r#"
inputs: [orders]
steps:
- name: valid
  filter: value.total > 0.0
- name: per-region
  aggregate:
    groupBy: {region: value.region}
    aggregations: [{name: total, op: sum, of: value.total}]
outputs: [{topic: region-totals}]
deadLetter: {topic: orders-dlq}
delivery: exactlyOnce
"#;

fn engine(yaml: &str) -> Engine {
    let spec: PipelineSpec = serde_saphyr::from_str(yaml).unwrap();
    Engine::new("p", &spec, PipelineMetrics::detached("p")).unwrap()
}

fn rec(topic: &str, partition: i32, v: serde_json::Value) -> Record {
    Record::new(
        topic,
        partition,
        0,
        0,
        Some(b"k".to_vec()),
        Payload::Json(v),
    )
}

#[test]
fn an_exactly_once_commit_interval_longer_than_a_transaction_may_be_is_refused() {
    let spec = |interval: &str, delivery: &str| -> PipelineSpec {
        serde_saphyr::from_str(&format!(
                "inputs: [in]\noutputs: [{{topic: out}}]\ncommitInterval: {interval}\ndelivery: {delivery}\n"
            ))
            .unwrap()
    };
    let m = || PipelineMetrics::detached("p");
    let err = Engine::new("p", &spec("6m", "exactlyOnce"), m()).unwrap_err();
    assert!(err.to_string().contains("longer than 5m"), "{err}");
    assert!(Engine::new("p", &spec("5m", "exactlyOnce"), m()).is_ok());
    assert!(Engine::new("p", &spec("6m", "atLeastOnce"), m()).is_ok());
    let err = Engine::new("p", &spec("soon", "atLeastOnce"), m()).unwrap_err();
    assert!(err.to_string().contains("not a duration"), "{err}");
}

#[test]
fn seed_aggregation_emits_running_totals() {
    let mut e = engine(SEED);
    let mut out = Vec::new();
    for (region, total) in [
        ("eu-west", 10.0),
        ("us-east", 5.0),
        ("eu-west", 2.5),
        ("eu-west", -1.0),
    ] {
        e.process(
            rec(
                "orders",
                0,
                serde_json::json!({"region": region, "total": total}),
            ),
            &mut out,
        )
        .unwrap();
    }
    assert_eq!(out.len(), 3, "the negative total is filtered");
    let last = &out[2];
    assert_eq!(&*last.topic, "region-totals");
    assert_eq!(
        last.record.value,
        Payload::Json(serde_json::json!({"region": "eu-west", "total": 12.5}))
    );
    assert_eq!(last.record.key.as_deref(), Some(&b"eu-west"[..]));
    assert_eq!(e.output_topics(), vec!["region-totals"]);
}

/// The seed pipeline with `emit: onCommit`.
fn on_commit_seed() -> String {
    SEED.replace(
        "aggregations: [{name: total, op: sum, of: value.total}]",
        "aggregations: [{name: total, op: sum, of: value.total}]\n    emit: onCommit",
    )
}

#[test]
fn on_commit_emits_each_changed_groups_latest_total_at_flush() {
    let mut e = engine(&on_commit_seed());
    let mut out = Vec::new();
    for (offset, (region, total)) in [("eu-west", 10.0), ("us-east", 5.0), ("eu-west", 2.5)]
        .into_iter()
        .enumerate()
    {
        let mut r = rec(
            "orders",
            0,
            serde_json::json!({"region": region, "total": total}),
        );
        r.offset = offset as i64;
        e.process(r, &mut out).unwrap();
    }
    assert!(out.is_empty(), "held back until the commit: {out:?}");
    assert!(e.flush(&mut out).is_empty());
    let got: Vec<(Option<Vec<u8>>, Payload, i64)> = out
        .iter()
        .map(|o| {
            (
                o.record.key.clone(),
                o.record.value.clone(),
                o.record.offset,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                Some(b"eu-west".to_vec()),
                Payload::Json(serde_json::json!({"region": "eu-west", "total": 12.5})),
                2
            ),
            (
                Some(b"us-east".to_vec()),
                Payload::Json(serde_json::json!({"region": "us-east", "total": 5.0})),
                1
            ),
        ],
        "one record per changed group, carrying its last input's offset"
    );
    out.clear();
    assert!(
        e.flush(&mut out).is_empty() && out.is_empty(),
        "nothing changed since"
    );
}

#[test]
fn on_commit_output_failures_come_back_with_their_record() {
    let yaml = on_commit_seed().replace(
        "outputs: [{topic: region-totals}]",
        "outputs: [{topic: region-totals, key: 'value.missing'}]",
    );
    let mut e = engine(&yaml);
    let mut out = Vec::new();
    e.process(
        rec(
            "orders",
            0,
            serde_json::json!({"region": "eu", "total": 1.0}),
        ),
        &mut out,
    )
    .unwrap();
    let failed = e.flush(&mut out);
    assert!(out.is_empty());
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].1.step, "output region-totals");
    assert_eq!(failed[0].0.key.as_deref(), Some(&b"eu"[..]));
}

#[test]
fn repartitioning_splits_the_pipeline_at_the_aggregate() {
    let mut e = engine(SEED);
    e.set_repartition_topic(Some("p-rep".to_string()));
    let mut out = Vec::new();
    e.process(
        rec(
            "orders",
            3,
            serde_json::json!({"region": "eu-west", "total": 10.0, "orderId": "o-1"}),
        ),
        &mut out,
    )
    .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].kind, EmitKind::Repartition);
    assert_eq!(&*out[0].topic, "p-rep");
    assert_eq!(out[0].record.key.as_deref(), Some(&br#"["eu-west"]"#[..]));
    assert_eq!(
        out[0].record.value,
        Payload::Json(serde_json::json!({"region": "eu-west", "total": 10.0})),
        "only the fields the aggregate reads are repartitioned"
    );
    let back = Record {
        topic: "p-rep".into(),
        partition: 1,
        ..out[0].record.clone()
    };
    out.clear();
    e.process(back, &mut out).unwrap();
    assert_eq!(out[0].kind, EmitKind::Output);
    assert_eq!(
        out[0].record.value,
        Payload::Json(serde_json::json!({"region": "eu-west", "total": 10.0}))
    );
    assert_eq!(e.aggregate_mut().unwrap().partitions(), vec![1]);
}

#[test]
fn failures_name_the_step() {
    let mut e = engine(SEED);
    let mut out = Vec::new();
    let err = e
        .process(
            rec("orders", 0, serde_json::json!({"region": "x"})),
            &mut out,
        )
        .unwrap_err();
    assert_eq!(err.step, "valid");
    assert!(err.error.contains("value.total"), "{}", err.error);
    let err = e
        .process(
            rec("orders", 0, serde_json::json!({"total": 3.0})),
            &mut out,
        )
        .unwrap_err();
    assert_eq!(err.step, "per-region");
    assert!(out.is_empty());
}

#[test]
fn routes_then_outputs_with_key_expressions() {
    let mut e = engine(
        r#"
inputs: [orders]
steps:
- name: split
  route:
    routes: [{when: "value.region == 'eu-west'", topic: eu}]
- name: shape
  map: {set: {big: "value.total > 100.0"}, drop: [secret]}
outputs: [{topic: rest, key: "value.region + '-' + string(value.total)"}, {topic: copy}]
"#,
    );
    let mut out = Vec::new();
    e.process(
        rec(
            "orders",
            0,
            serde_json::json!({"region": "eu-west", "total": 1.0}),
        ),
        &mut out,
    )
    .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(&*out[0].topic, "eu");
    out.clear();
    e.process(
        rec(
            "orders",
            0,
            serde_json::json!({"region": "us", "total": 200.0, "secret": 1}),
        ),
        &mut out,
    )
    .unwrap();
    assert_eq!(out.len(), 2);
    assert_eq!(&*out[0].topic, "rest");
    assert_eq!(out[0].record.key.as_deref(), Some(&b"us-200"[..]));
    assert_eq!(
        out[0].record.value,
        Payload::Json(serde_json::json!({"region": "us", "total": 200.0, "big": true}))
    );
    assert_eq!(&*out[1].topic, "copy");
    assert_eq!(out[1].record.key.as_deref(), Some(&b"k"[..]));
    assert_eq!(e.output_topics(), vec!["copy", "eu", "rest"]);
}

#[test]
fn a_closing_window_emits_every_final_group_through_the_later_steps() {
    let mut e = engine(
        r#"
inputs: [orders]
steps:
- name: per-region
  aggregate:
    groupBy: {region: value.region}
    aggregations: [{name: n, op: count}]
    window: {tumbling: 10s}
    emit: onWindowClose
- name: busy
  filter: value.n > 1
outputs: [{topic: counts}]
"#,
    );
    let mut out = Vec::new();
    for (ts, region) in [(1_000, "eu"), (2_000, "us"), (3_000, "eu"), (11_000, "eu")] {
        let r = Record::new(
            "orders",
            0,
            0,
            ts,
            None,
            Payload::Json(serde_json::json!({"region": region})),
        );
        e.process(r, &mut out).unwrap();
    }
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(
        out[0].record.value,
        Payload::Json(
            serde_json::json!({"region": "eu", "windowStart": 0, "windowEnd": 10000, "n": 2})
        )
    );
    assert_eq!(out[0].record.key.as_deref(), Some(&br#"["eu",0]"#[..]));
}

#[test]
fn dedupe_drops_repeated_keys_and_counts_them() {
    let mut e = engine(
        "inputs: [a]\nsteps: [{name: once, dedupe: {key: key, within: 1h}}]\noutputs: [{topic: b}]\n",
    );
    let mut out = Vec::new();
    for (ts, k) in [(1, "x"), (2, "y"), (3, "x")] {
        let r = Record::new(
            "a",
            0,
            0,
            ts,
            Some(k.as_bytes().to_vec()),
            Payload::Text("v".into()),
        );
        e.process(r, &mut out).unwrap();
    }
    assert_eq!(out.len(), 2);
    assert_eq!(e.step_metrics[0].filtered.get(), 1);
    assert_eq!(e.aggregate_step(), Some("once"));
}

#[test]
fn failing_output_key_emits_nothing() {
    let mut e = engine("inputs: [a]\noutputs: [{topic: b}, {topic: c, key: value.nope}]\n");
    let mut out = Vec::new();
    let err = e
        .process(rec("a", 0, serde_json::json!({"x": 1})), &mut out)
        .unwrap_err();
    assert_eq!(err.step, "output c");
    assert!(out.is_empty());
}

#[test]
fn spec_errors_are_clear() {
    let spec: PipelineSpec = serde_saphyr::from_str("inputs: [a]\n").unwrap();
    let err = Engine::new("p", &spec, PipelineMetrics::detached("p")).unwrap_err();
    assert!(err.to_string().contains("at least one output"));
    let spec: PipelineSpec =
        serde_saphyr::from_str("inputs: [a]\nformat: avro\noutputs: [{topic: b}]\n").unwrap();
    let err = Engine::new("p", &spec, PipelineMetrics::detached("p")).unwrap_err();
    assert!(
        err.to_string().contains("avro is not supported yet"),
        "{err}"
    );
    let spec: PipelineSpec = serde_saphyr::from_str(
            "inputs: [a]\noutputs: [{topic: b}]\nsteps: [{name: x, filter: 'true'}, {name: x, filter: 'false'}]\n",
        )
        .unwrap();
    let err = Engine::new("p", &spec, PipelineMetrics::detached("p")).unwrap_err();
    assert!(err.to_string().contains("unique"), "{err}");
}

#[test]
fn decode_failures_are_dead_lettered_as_decode() {
    let err = decode(RecordFormat::Json, Some(b"{bad")).unwrap_err();
    assert_eq!(err.step, "decode");
}

/// Fields pass through as they were written; JSON a full parse refuses (a number
/// out of range, in a field no step reads) is refused at decode as before.
#[test]
fn lazily_read_fields_pass_through_and_invalid_json_fails_at_decode() {
    let mut e = engine(
        r#"
inputs: [in]
steps:
- {name: positive, filter: "value.total > 0.0"}
- {name: shape, map: {set: {cents: "value.total * 100.0"}, drop: [id]}}
outputs: [{topic: out}]
"#,
    );
    let run = |e: &mut Engine, text: &str| {
        let value = decode(RecordFormat::Json, Some(text.as_bytes())).unwrap();
        let mut out = Vec::new();
        e.process(Record::new("in", 0, 0, 1, None, value), &mut out)
            .map(|()| {
                out.iter()
                    .map(|o| {
                        String::from_utf8(encode(RecordFormat::Json, &o.record.value).unwrap())
                            .unwrap()
                    })
                    .collect::<Vec<_>>()
            })
    };
    assert_eq!(
        run(
            &mut e,
            r#"{"id":"a", "total":1.5, "note":{"x": [1e300, "\u00e9"]}}"#
        )
        .unwrap(),
        vec![r#"{"total":1.5,"note":{"x": [1e300, "\u00e9"]},"cents":150.0}"#.to_string()]
    );
    assert_eq!(
        run(&mut e, r#"{"total":2.0,"big":1e300}"#).unwrap(),
        vec![r#"{"total":2.0,"big":1e300,"cents":200.0}"#.to_string()]
    );
    let err = decode(RecordFormat::Json, Some(br#"{"total":2.0,"big":1e400}"#)).unwrap_err();
    assert_eq!(err.step, "decode");
    assert!(err.error.contains("out of range"), "{}", err.error);
    assert_eq!(
        run(&mut e, r#"{"total":-1.0}"#).unwrap(),
        Vec::<String>::new()
    );
}

/// The seed's totals per region over a table's change stream.
const CHANGES: &str = r#"
inputs: [sales.public.orders]
steps:
- name: per-region
  aggregate:
    groupBy: {region: value.region}
    aggregations: [{name: total, op: sum, of: value.amount}, {name: orders, op: count}]
    changes: debezium
outputs: [{topic: region-totals}]
delivery: exactlyOnce
"#;

fn envelope(op: &str, before: Option<(&str, i64)>, after: Option<(&str, i64)>) -> Record {
    let row = |r: Option<(&str, i64)>| {
        r.map_or(
            serde_json::Value::Null,
            |(region, amount)| serde_json::json!({"id": 1, "region": region, "amount": amount}),
        )
    };
    rec(
        "sales.public.orders",
        0,
        serde_json::json!({"op": op, "before": row(before), "after": row(after), "source": {}}),
    )
}

/// Each emitted record as `key=value` (`key=-` for a tombstone).
fn emitted(out: &[Emit]) -> Vec<String> {
    out.iter()
        .map(|e| {
            let key = String::from_utf8_lossy(e.record.key.as_deref().unwrap_or_default());
            match &e.record.value {
                Payload::Absent => format!("{key}=-"),
                Payload::Json(v) => format!("{key}={v}"),
                other => format!("{key}={other:?}"),
            }
        })
        .collect()
}

#[test]
fn an_aggregate_of_changes_follows_the_tables_group_by() {
    let mut e = engine(CHANGES);
    assert!(e.reads_changes());
    let mut out = Vec::new();
    for r in [
        envelope("r", None, Some(("eu", 5))),
        envelope("c", None, Some(("us", 7))),
        // An update moves a row from eu to us with a new amount: out of one, into the other.
        envelope("u", Some(("eu", 5)), Some(("us", 10))),
        // A tombstone after a delete is skipped.
        Record::new(
            "sales.public.orders",
            0,
            9,
            0,
            Some(b"k".to_vec()),
            Payload::Absent,
        ),
        envelope("d", Some(("us", 7)), None),
        envelope("c", None, Some(("eu", 1))),
    ] {
        e.process(r, &mut out).unwrap();
    }
    assert_eq!(
        emitted(&out),
        [
            r#"eu={"orders":1,"region":"eu","total":5}"#,
            r#"us={"orders":1,"region":"us","total":7}"#,
            "eu=-",
            r#"us={"orders":2,"region":"us","total":17}"#,
            r#"us={"orders":1,"region":"us","total":10}"#,
            r#"eu={"orders":1,"region":"eu","total":1}"#,
        ],
        "the last row out of eu deletes the group; it comes back with the next insert"
    );
    let state = e.aggregate_mut().unwrap().take_changes();
    assert_eq!(state.len(), 2, "one changelog entry per group: {state:?}");
}

#[test]
fn changes_that_cannot_be_applied_fail_with_what_to_do() {
    let mut e = engine(CHANGES);
    let mut out = Vec::new();
    let update = rec(
        "sales.public.orders",
        0,
        serde_json::json!({"op": "u", "before": null, "after": {"region": "eu", "amount": 1}}),
    );
    let err = e.process(update, &mut out).unwrap_err().to_string();
    assert!(err.contains("REPLICA IDENTITY FULL"), "{err}");
    let err = e
        .process(envelope("d", Some(("ap", 3)), None), &mut out)
        .unwrap_err()
        .to_string();
    assert!(err.contains("which holds none"), "{err}");
    assert!(out.is_empty());
    let min = CHANGES.replace(
        "op: count}",
        "op: count}, {name: lo, op: min, of: value.amount}",
    );
    let spec: PipelineSpec = serde_saphyr::from_str(&min).unwrap();
    let err = Engine::new("p", &spec, PipelineMetrics::detached("p")).unwrap_err();
    assert!(err.to_string().contains("cannot take"), "{err}");
    let windowed = CHANGES.replace(
        "changes: debezium",
        "changes: debezium\n    window: {tumbling: 1m}",
    );
    let spec: PipelineSpec = serde_saphyr::from_str(&windowed).unwrap();
    let err = Engine::new("p", &spec, PipelineMetrics::detached("p")).unwrap_err();
    assert!(err.to_string().contains("no window"), "{err}");
}

#[test]
fn rows_of_a_change_cross_the_repartition_topic_keyed_by_their_group() {
    let mut e = engine(CHANGES);
    e.set_repartition_topic(Some("p-per-region-repartition".to_string()));
    let mut out = Vec::new();
    e.process(envelope("u", Some(("eu", 5)), Some(("us", 10))), &mut out)
        .unwrap();
    let crossing: Vec<(String, String)> = out
        .iter()
        .map(|o| {
            assert_eq!(&*o.topic, "p-per-region-repartition");
            let direction = o
                .record
                .headers
                .iter()
                .find(|(k, _)| k == CHANGE_HEADER)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .unwrap();
            let key = String::from_utf8_lossy(o.record.key.as_deref().unwrap()).into_owned();
            (key, direction)
        })
        .collect();
    assert_eq!(
        crossing,
        [
            ("[\"eu\"]".to_string(), "retract".to_string()),
            ("[\"us\"]".to_string(), "add".to_string())
        ]
    );
    // Back from the repartition topic, each row is applied as its header says.
    let mut applied = Vec::new();
    e.process(envelope_row(&out[1].record), &mut applied)
        .unwrap();
    assert_eq!(
        emitted(&applied),
        [r#"us={"orders":1,"region":"us","total":10}"#]
    );
    e.process(envelope_row(&out[0].record), &mut applied)
        .unwrap_err();
}

/// A record of the repartition topic as the pipeline reads it back.
fn envelope_row(crossed: &Record) -> Record {
    Record {
        topic: std::sync::Arc::from("p-per-region-repartition"),
        ..crossed.clone()
    }
}

#[test]
fn an_update_within_a_group_is_one_change_and_a_failing_change_leaves_no_trace() {
    let mut e = engine(CHANGES);
    let mut out = Vec::new();
    e.process(envelope("r", None, Some(("eu", 5))), &mut out)
        .unwrap();
    e.process(envelope("u", Some(("eu", 5)), Some(("eu", 8))), &mut out)
        .unwrap();
    assert_eq!(
        emitted(&out),
        [
            r#"eu={"orders":1,"region":"eu","total":5}"#,
            r#"eu={"orders":1,"region":"eu","total":8}"#,
        ],
        "no tombstone between the old row out and the new row in"
    );
    // The new row's amount is not a number: the whole update fails, the old row stays in.
    let bad = rec(
        "sales.public.orders",
        0,
        serde_json::json!({"op": "u", "before": {"id": 1, "region": "eu", "amount": 8},
                           "after": {"id": 1, "region": "us", "amount": "n/a"}}),
    );
    e.process(bad, &mut Vec::new()).unwrap_err();
    out.clear();
    e.process(envelope("c", None, Some(("eu", 1))), &mut out)
        .unwrap();
    assert_eq!(
        emitted(&out),
        [r#"eu={"orders":2,"region":"eu","total":9}"#]
    );
}

#[test]
fn an_aggregate_of_changes_is_the_last_step_and_its_outputs_are_keyed_by_group() {
    let later = CHANGES.replace(
        "outputs: [{topic: region-totals}]",
        "- name: big\n  filter: value.total > 10\noutputs: [{topic: region-totals}]",
    );
    let spec: PipelineSpec = serde_saphyr::from_str(&later).unwrap();
    let err = Engine::new("p", &spec, PipelineMetrics::detached("p")).unwrap_err();
    assert!(err.to_string().contains("is the last step"), "{err}");
    let keyed = CHANGES.replace(
        "outputs: [{topic: region-totals}]",
        "outputs: [{topic: region-totals, key: value.region}]",
    );
    let spec: PipelineSpec = serde_saphyr::from_str(&keyed).unwrap();
    let err = Engine::new("p", &spec, PipelineMetrics::detached("p")).unwrap_err();
    assert!(err.to_string().contains("keyed by their group"), "{err}");
}
