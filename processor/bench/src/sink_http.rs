//! The HTTP sink against a receiver in this process that counts the records it is sent
//! (a JSON array per request, or one object when a request carries one record), with
//! batches of 1 and of 100, and against a bare loop that posts the same bodies with
//! reqwest, one request at a time as the sink sends them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use rdkafka::message::Message;
use serde_json::value::RawValue;

use crate::sinks::{Bench, Run, Section, progress};

/// What the receiver has been sent.
#[derive(Default)]
struct Received {
    records: AtomicU64,
    requests: AtomicU64,
}

async fn receive(State(received): State<Arc<Received>>, body: Bytes) -> StatusCode {
    let records = match serde_json::from_slice::<Vec<&RawValue>>(&body) {
        Ok(array) => array.len() as u64,
        Err(_) => 1,
    };
    received.records.fetch_add(records, Ordering::Relaxed);
    received.requests.fetch_add(1, Ordering::Relaxed);
    StatusCode::NO_CONTENT
}

/// Starts the receiver on a thread of its own; answers its URL.
fn receiver(received: Arc<Received>) -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let url = format!("http://{}/", listener.local_addr()?);
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the receiver");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("the listener");
            let app = Router::new().route("/", post(receive)).with_state(received);
            let _ = axum::serve(listener, app).await;
        });
    });
    Ok(url)
}

/// The comparison, as a report section.
pub(crate) fn bench(bench: &Bench) -> anyhow::Result<Section> {
    let received = Arc::new(Received::default());
    let url = receiver(received.clone())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = reqwest::Client::new();
    let mut runs = Vec::new();
    let mut requests = Vec::new();
    for per_request in [1u64, 100] {
        // The ceiling: the same bodies, posted one after another.
        let before = received.requests.load(Ordering::Relaxed);
        let timing =
            bench.read_in_batches(&format!("http-ceiling-{per_request}"), 1000, |batch| {
                for chunk in batch.chunks(usize::try_from(per_request).unwrap_or(1)) {
                    let mut body = Vec::new();
                    if per_request > 1 {
                        body.push(b'[');
                    }
                    for (i, m) in chunk.iter().enumerate() {
                        if i > 0 {
                            body.push(b',');
                        }
                        body.extend_from_slice(m.payload().unwrap_or(b"null"));
                    }
                    if per_request > 1 {
                        body.push(b']');
                    }
                    let answer = runtime.block_on(client.post(&url).body(body).send())?;
                    anyhow::ensure!(
                        answer.status().is_success(),
                        "the receiver answered {}",
                        answer.status()
                    );
                }
                Ok(())
            })?;
        requests.push(received.requests.load(Ordering::Relaxed) - before);
        let ceiling = Run {
            name: format!("ceiling, {per_request} per request"),
            timing,
            records: bench.records,
        };
        progress(&ceiling);
        runs.push(ceiling);

        received.records.store(0, Ordering::Relaxed);
        let before = received.requests.load(Ordering::Relaxed);
        let spec = serde_json::json!({"type": "sink", "topics": [bench.topic], "http": {
            "url": url, "batch": {"records": per_request, "interval": "100ms"}}});
        let name = format!("http{per_request}-r{}", bench.round);
        let timing = bench.sluice(&name, spec, None, || {
            Ok(received.records.load(Ordering::Relaxed))
        })?;
        requests.push(received.requests.load(Ordering::Relaxed) - before);
        let sluice = Run {
            name: format!("sluice, {per_request} per request"),
            timing,
            records: bench.records,
        };
        progress(&sluice);
        runs.push(sluice);
        received.records.store(0, Ordering::Relaxed);
    }
    let mut notes = String::new();
    for (run, requests) in runs.iter().zip(requests) {
        notes.push_str(&format!(
            "  {:<34} {:>9.0} requests/s\n",
            run.name,
            requests as f64 / run.timing.elapsed.as_secs_f64()
        ));
    }
    Ok(Section {
        title: format!(
            "HTTP sink (a receiver in this process that counts), {} records:",
            bench.records
        ),
        runs,
        ratios: vec![
            (
                "1 per request: sluice / ceiling",
                "sluice, 1 per request",
                "ceiling, 1 per request",
            ),
            (
                "100 per request: sluice / ceiling",
                "sluice, 100 per request",
                "ceiling, 100 per request",
            ),
        ],
        notes,
    })
}
