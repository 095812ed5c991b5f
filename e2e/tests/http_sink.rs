//! The native HTTP sink against the environment's broker and a receiver in the test:
//! requests refused with 503 are retried (with `Retry-After`) and arrive, a record the
//! endpoint answers 400 goes to the dead-letter topic with the status and body, the
//! `Authorization` header comes from the Secret, and the rate limit holds.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use serde_json::{Value, json};
use sluice_e2e::cluster::unique;
use sluice_e2e::env::TestEnv;
use sluice_e2e::kafka;
use sluice_e2e::processor::*;
use sluice_e2e::sink::{SinkProcess, connector_manifest};

const WAIT: Duration = Duration::from_secs(120);

/// What the receiver saw and how it answers.
#[derive(Default)]
struct Seen {
    /// Requests still to refuse with 503 before taking any.
    refuse: usize,
    /// Requests answered 503.
    refused: usize,
    /// Values taken, with when their request came.
    taken: Vec<(Instant, Value)>,
    /// Authorization headers of the requests.
    authorization: Vec<String>,
}

type Shared = Arc<Mutex<Seen>>;

/// Takes a request: 503 (with `Retry-After: 1`) while told to refuse, 400 when a value
/// says `"bad": true`, else 200.
async fn take(State(seen): State<Shared>, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    let mut s = seen.lock().unwrap();
    if let Some(a) = headers.get(header::AUTHORIZATION) {
        s.authorization
            .push(a.to_str().unwrap_or_default().to_string());
    }
    if s.refuse > 0 {
        s.refuse -= 1;
        s.refused += 1;
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "busy",
        )
            .into_response();
    }
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let values = match value {
        Value::Array(values) => values,
        one => vec![one],
    };
    if values.iter().any(|v| v["bad"] == json!(true)) {
        return (StatusCode::BAD_REQUEST, "field bad is not allowed here").into_response();
    }
    let now = Instant::now();
    s.taken.extend(values.into_iter().map(|v| (now, v)));
    StatusCode::OK.into_response()
}

/// A receiver on a free port: its URL and what it saw.
async fn receiver(refuse: usize) -> (String, Shared) {
    let seen: Shared = Arc::new(Mutex::new(Seen {
        refuse,
        ..Seen::default()
    }));
    let app = Router::new()
        .route("/orders", axum::routing::post(take))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/orders"), seen)
}

/// A sink of `tag`'s topic to `url` with `http` settings, and a credentials directory
/// holding `authorization`.
fn sink(
    tag: &str,
    http: Value,
    dead_letter: Option<&str>,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut spec = json!({"type": "sink", "topics": [tag], "http": http});
    if let Some(d) = dead_letter {
        spec["deadLetter"] = json!({"topic": d});
    }
    let credentials = log_dir().join(format!("{tag}-credentials"));
    std::fs::create_dir_all(&credentials).unwrap();
    std::fs::write(credentials.join("authorization"), "Bearer e2e-token\n").unwrap();
    (connector_manifest(tag, spec), credentials)
}

async fn wait_taken(seen: &Shared, n: usize, sink: &SinkProcess) {
    sink.wait_until("records missing", n, || async {
        seen.lock().unwrap().taken.len()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_requests_are_retried_and_a_bad_record_is_dead_lettered_with_the_answer() {
    let env = TestEnv::require();
    let bootstrap = env.var("KAFKA_BOOTSTRAP");
    let tag = unique("httpsink");
    let dlq = format!("{tag}-dlq");
    create_topics(&bootstrap, &[(&tag, 1), (&dlq, 1)]).await;
    // The endpoint is busy for its first 2 requests.
    let (url, seen) = receiver(2).await;
    let (manifest, credentials) = sink(
        &tag,
        json!({"url": url, "batch": {"records": 1, "interval": "100ms"},
               "retry": {"attempts": 5, "backoff": "100ms", "maxBackoff": "2s"}}),
        Some(&dlq),
    );
    let (mut records, _, _) = orders(0, 40);
    records.insert(
        20,
        (
            "bad".into(),
            json!({"orderId": "bad", "bad": true}).to_string(),
        ),
    );
    produce(&bootstrap, &tag, &records).await;
    let mut sink = SinkProcess::start_serving(&bootstrap, &manifest, &credentials, &tag, true);
    wait_taken(&seen, 40, &sink).await;
    let dead = kafka::read_all(&bootstrap, &dlq, Duration::from_secs(3), WAIT).unwrap();
    let metrics = reqwest::get(format!("http://{}/metrics", sink.served()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    sink.signal("-TERM");
    // The two requests sent again are counted.
    let retries: f64 = metrics
        .lines()
        .find(|l| l.starts_with("sluice_sink_retries_total{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no sluice_sink_retries_total in {metrics}"));
    assert!(retries >= 2.0, "retries counted: {retries}\n{metrics}");

    let s = seen.lock().unwrap();
    assert_eq!(s.refused, 2, "the endpoint refused two requests");
    let ids: Vec<&str> = s
        .taken
        .iter()
        .map(|(_, v)| v["orderId"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..40).map(|i| format!("o-{i}")).collect();
    assert_eq!(
        ids, expected,
        "every order once, in order, after the retries"
    );
    assert!(
        s.authorization.iter().all(|a| a == "Bearer e2e-token"),
        "{:?}",
        s.authorization
    );
    assert!(sink.log_text().contains("retrying"), "{}", sink.log_text());
    assert_eq!(dead.len(), 1, "only the bad record");
    let d = &dead[0];
    assert_eq!(d.key.as_deref(), Some("bad"));
    assert_eq!(d.headers["sluice.step"], "http");
    let why = &d.headers["sluice.sink.error"];
    assert!(
        why.contains("HTTP 400") && why.contains("field bad is not allowed here"),
        "{why}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rate_limit_holds_and_batches_arrive_as_arrays() {
    let env = TestEnv::require();
    let bootstrap = env.var("KAFKA_BOOTSTRAP");
    let tag = unique("httpsink-rate");
    create_topics(&bootstrap, &[(&tag, 2)]).await;
    let (url, seen) = receiver(0).await;
    // 5 records a request, at most 10 requests a second: 300 records are 60 requests.
    let (manifest, credentials) = sink(
        &tag,
        json!({"url": url, "batch": {"records": 5, "interval": "50ms"}, "rateLimit": "10/s"}),
        None,
    );
    let (records, _, _) = orders(0, 300);
    produce(&bootstrap, &tag, &records).await;
    let mut sink = SinkProcess::start(&bootstrap, &manifest, &credentials, &tag);
    wait_taken(&seen, 300, &sink).await;
    sink.signal("-TERM");

    let s = seen.lock().unwrap();
    let mut ids: Vec<&str> = s
        .taken
        .iter()
        .map(|(_, v)| v["orderId"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 300, "every order, none twice");
    // Requests are the distinct arrival times; no second holds more than the limit
    // (and the burst a quiet sender may save up: one more).
    let mut sizes: Vec<(Instant, usize)> = Vec::new();
    for (at, _) in &s.taken {
        match sizes.last_mut() {
            Some((last, n)) if last == at => *n += 1,
            _ => sizes.push((*at, 1)),
        }
    }
    assert!(
        sizes.iter().all(|(_, n)| *n <= 5),
        "at most 5 records a request"
    );
    assert!(
        sizes.iter().any(|(_, n)| *n == 5),
        "batches arrive as arrays"
    );
    let arrivals: Vec<Instant> = sizes.iter().map(|(at, _)| *at).collect();
    let most = arrivals
        .iter()
        .map(|start| {
            arrivals
                .iter()
                .filter(|t| **t >= *start && t.duration_since(*start) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap();
    assert!(
        most <= 11,
        "{most} requests within one second, over the limit of 10/s"
    );
}
