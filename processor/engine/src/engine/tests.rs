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
