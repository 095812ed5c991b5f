//! The HTTP sink: record values as JSON to an endpoint, `batch.records` per request (a
//! JSON array; `records: 1` sends each value alone).
//!
//! A 2xx answer is done. 429, 5xx, a timeout or a connection error is retried after a
//! wait (`Retry-After` when the endpoint gives one, else the backoff, doubling up to
//! `maxBackoff`) while nothing more is read; after `retry.attempts` the request's
//! records go to the dead-letter topic. Any other 4xx sends them there at once, with the
//! status and the first bytes of the answer. At least once: a replay after a crash sends
//! a request again.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use sluice_crds::plugins::{HttpMethod, HttpSink as HttpSpec};

use super::secret::SecretFiles;
use crate::pace::Pacer;
use crate::runtime::sink::{Promise, Refused, Sink, SinkError, SourceRecord};

/// Records per request unless `batch.records` says.
pub const DEFAULT_RECORDS: usize = 100;
/// Attempts, the first included, unless `retry.attempts` says.
const DEFAULT_ATTEMPTS: u32 = 5;
const DEFAULT_BACKOFF: Duration = Duration::from_millis(200);
const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Longest a request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of a refusing answer's body goes into the dead letter's error.
const BODY_BYTES: usize = 256;

/// What the sink is asked to do.
#[derive(Debug, Clone)]
pub struct HttpSinkConfig {
    /// The `http` block of the Connector.
    pub spec: HttpSpec,
    /// The `Authorization` header, from the Secret's `authorization` key.
    pub authorization: Option<String>,
}

impl HttpSinkConfig {
    /// The config of `spec`, with the `authorization` key of the Secret mounted at `dir`
    /// when there is one.
    pub fn read(spec: HttpSpec, dir: &Path) -> HttpSinkConfig {
        HttpSinkConfig {
            spec,
            authorization: SecretFiles::new(dir).get("authorization"),
        }
    }
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// 2xx.
    Done,
    /// Worth another attempt, after `after` when the endpoint said.
    Again {
        why: String,
        after: Option<Duration>,
    },
    /// Refused for what it is: its records are dead-lettered.
    Refused(String),
}

/// What an answer with `status` means.
fn answer(status: StatusCode, retry_after: Option<&HeaderValue>, body: &[u8]) -> Answer {
    if status.is_success() {
        return Answer::Done;
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(BODY_BYTES)]);
    let why = format!("HTTP {status}: {}", text.trim());
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        let after = retry_after
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        return Answer::Again { why, after };
    }
    Answer::Refused(why)
}

/// An HTTP endpoint as a [`Sink`].
pub struct HttpSink {
    client: reqwest::Client,
    url: reqwest::Url,
    method: reqwest::Method,
    authorization: Option<HeaderValue>,
    records: usize,
    attempts: u32,
    backoff: Duration,
    max_backoff: Duration,
    pacer: Option<Pacer>,
    /// Counts the requests sent again.
    retries: Option<prometheus_client::metrics::counter::Counter>,
}

impl HttpSink {
    /// The sink of `config`; refuses settings that cannot work.
    pub fn new(config: HttpSinkConfig) -> Result<HttpSink, SinkError> {
        let spec = &config.spec;
        let bad = |what: String| SinkError::Fatal(format!("http.{what}"));
        let url =
            reqwest::Url::parse(&spec.url).map_err(|e| bad(format!("url {:?}: {e}", spec.url)))?;
        let duration = |field: &str, value: Option<&String>, default: Duration| {
            value.map_or(Ok(default), |v| {
                humantime::parse_duration(v).map_err(|e| bad(format!("{field} {v:?}: {e}")))
            })
        };
        let retry = spec.retry.clone().unwrap_or_default();
        let rate = spec
            .rate_limit
            .as_deref()
            .map(crate::generate::parse_rate)
            .transpose()
            .map_err(|e| bad(format!("rateLimit: {e}")))?;
        let authorization = config
            .authorization
            .as_deref()
            .map(HeaderValue::from_str)
            .transpose()
            .map_err(|_| SinkError::Fatal("the authorization key is not a header value".into()))?
            .map(|mut v| {
                v.set_sensitive(true);
                v
            });
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| SinkError::Fatal(format!("cannot make the HTTP client: {e}")))?;
        Ok(HttpSink {
            client,
            url,
            method: match spec.method {
                HttpMethod::Post => reqwest::Method::POST,
                HttpMethod::Put => reqwest::Method::PUT,
                HttpMethod::Patch => reqwest::Method::PATCH,
            },
            authorization,
            records: spec
                .batch
                .as_ref()
                .and_then(|b| b.records)
                .and_then(|r| usize::try_from(r).ok())
                .filter(|r| *r > 0)
                .unwrap_or(DEFAULT_RECORDS),
            attempts: retry
                .attempts
                .and_then(|a| u32::try_from(a).ok())
                .filter(|a| *a > 0)
                .unwrap_or(DEFAULT_ATTEMPTS),
            backoff: duration("retry.backoff", retry.backoff.as_ref(), DEFAULT_BACKOFF)?,
            max_backoff: duration(
                "retry.maxBackoff",
                retry.max_backoff.as_ref(),
                DEFAULT_MAX_BACKOFF,
            )?,
            // Rates below one request a second are rounded up to one.
            pacer: rate.map(|r| Pacer::new(r.round().clamp(1.0, f64::from(u32::MAX)) as u32)),
            retries: None,
        })
    }

    /// Counts every request sent again in `retries`.
    pub fn counting_retries(
        mut self,
        retries: prometheus_client::metrics::counter::Counter,
    ) -> HttpSink {
        self.retries = Some(retries);
        self
    }

    /// Sends one request's body once.
    async fn send_once(&self, body: Vec<u8>) -> Answer {
        let mut request = self
            .client
            .request(self.method.clone(), self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(a) = &self.authorization {
            request = request.header(AUTHORIZATION, a.clone());
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status();
                let retry_after = response.headers().get(RETRY_AFTER).cloned();
                let body = response.bytes().await.unwrap_or_default();
                answer(status, retry_after.as_ref(), &body)
            }
            Err(e) => Answer::Again {
                why: format!("{}: {e}", self.url),
                after: None,
            },
        }
    }

    /// Sends one request, retrying as the settings say: `None` when it is done, or why
    /// its records are dead-lettered.
    async fn send(&mut self, body: Vec<u8>) -> Option<String> {
        let mut wait = self.backoff;
        let mut attempt = 1;
        loop {
            if let Some(p) = self.pacer.as_mut() {
                let pause = p.wait(Instant::now());
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
                p.took(Instant::now());
            }
            match self.send_once(body.clone()).await {
                Answer::Done => return None,
                Answer::Refused(why) => return Some(why),
                Answer::Again { why, .. } if attempt >= self.attempts => {
                    return Some(format!("{why} (after {attempt} attempts)"));
                }
                Answer::Again { why, after } => {
                    let pause = after.unwrap_or(wait).min(self.max_backoff);
                    tracing::warn!(error = %why, attempt, wait_ms = pause.as_millis() as u64, "request not taken: retrying");
                    tokio::time::sleep(pause).await;
                    if let Some(r) = &self.retries {
                        r.inc();
                    }
                    wait = (wait * 2).min(self.max_backoff);
                    attempt += 1;
                }
            }
        }
    }
}

/// One request: the indexes of its records in the batch, and its body.
type Request = (Vec<usize>, Vec<u8>);

/// The requests of a batch: per request the indexes of its records and its body (a
/// JSON array, or the value alone when `per_request` is 1). Tombstones are skipped; a
/// value that is not JSON is refused.
fn requests(batch: &[SourceRecord], per_request: usize) -> (Vec<Request>, Vec<Refused>) {
    let mut refused = Vec::new();
    let mut values: Vec<(usize, Box<serde_json::value::RawValue>)> = Vec::new();
    for (index, record) in batch.iter().enumerate() {
        let Some(value) = &record.value else {
            continue;
        };
        match serde_json::from_slice::<Box<serde_json::value::RawValue>>(value) {
            Ok(v) => values.push((index, v)),
            Err(e) => refused.push(Refused {
                index,
                error: format!("the value is not JSON: {e}"),
            }),
        }
    }
    let requests = values
        .chunks(per_request.max(1))
        .map(|chunk| {
            let indexes = chunk.iter().map(|(i, _)| *i).collect();
            let body = if per_request == 1 {
                chunk[0].1.get().as_bytes().to_vec()
            } else {
                let raws: Vec<&serde_json::value::RawValue> =
                    chunk.iter().map(|(_, v)| v.as_ref()).collect();
                serde_json::to_vec(&raws).unwrap_or_default()
            };
            (indexes, body)
        })
        .collect();
    (requests, refused)
}

impl Sink for HttpSink {
    /// A replay after a crash sends a request again.
    fn promise(&self) -> Promise {
        Promise::AtLeastOnce
    }

    async fn write(&mut self, batch: &[SourceRecord]) -> Result<Vec<Refused>, SinkError> {
        let (requests, mut refused) = requests(batch, self.records);
        for (indexes, body) in requests {
            if let Some(why) = self.send(body).await {
                refused.extend(indexes.into_iter().map(|index| Refused {
                    index,
                    error: why.clone(),
                }));
            }
        }
        refused.sort_by_key(|r| r.index);
        Ok(refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::sink::test_record;

    fn record(offset: i64, value: Option<&str>) -> SourceRecord {
        test_record("orders", 0, offset, value)
    }

    #[test]
    fn answers_are_done_retried_or_refused_by_status() {
        assert_eq!(answer(StatusCode::OK, None, b""), Answer::Done);
        assert_eq!(answer(StatusCode::NO_CONTENT, None, b""), Answer::Done);
        let later = HeaderValue::from_static("3");
        assert_eq!(
            answer(StatusCode::TOO_MANY_REQUESTS, Some(&later), b"slow down"),
            Answer::Again {
                why: "HTTP 429 Too Many Requests: slow down".into(),
                after: Some(Duration::from_secs(3))
            }
        );
        assert!(matches!(
            answer(StatusCode::SERVICE_UNAVAILABLE, None, b""),
            Answer::Again { after: None, .. }
        ));
        let long = "x".repeat(1000);
        let Answer::Refused(why) = answer(StatusCode::BAD_REQUEST, None, long.as_bytes()) else {
            panic!("a 400 is refused");
        };
        assert!(why.starts_with("HTTP 400 Bad Request: xxx"), "{why}");
        assert!(why.len() < 300, "the body is cut: {}", why.len());
    }

    #[test]
    fn a_batch_becomes_json_arrays_of_at_most_so_many_values() {
        let batch = vec![
            record(0, Some(r#"{"a": 1}"#)),
            record(1, None),
            record(2, Some("oops")),
            record(3, Some("[2, 3]")),
            record(4, Some("7")),
        ];
        let (reqs, refused) = requests(&batch, 2);
        let shown: Vec<(Vec<usize>, String)> = reqs
            .into_iter()
            .map(|(i, b)| (i, String::from_utf8(b).unwrap()))
            .collect();
        assert_eq!(
            shown,
            vec![
                (vec![0, 3], r#"[{"a": 1},[2, 3]]"#.to_string()),
                (vec![4], "[7]".to_string()),
            ]
        );
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].index, 2);
        let (single, _) = requests(&batch, 1);
        assert_eq!(
            single[0].1,
            br#"{"a": 1}"#.to_vec(),
            "records: 1 sends the value alone"
        );
    }

    #[test]
    fn settings_that_cannot_work_are_refused_by_name() {
        let spec = |v: serde_json::Value| -> HttpSpec { serde_json::from_value(v).unwrap() };
        let sink = |s| {
            HttpSink::new(HttpSinkConfig {
                spec: s,
                authorization: None,
            })
        };
        let err = sink(spec(
            serde_json::json!({"url": "http://x", "rateLimit": "fast"}),
        ))
        .err()
        .unwrap();
        assert!(err.to_string().contains("rateLimit"), "{err}");
        let err = sink(spec(
            serde_json::json!({"url": "http://x", "retry": {"backoff": "soon"}}),
        ))
        .err()
        .unwrap();
        assert!(err.to_string().contains("retry.backoff"), "{err}");
        let ok = sink(spec(
            serde_json::json!({"url": "http://127.0.0.1:1/in", "batch": {"records": 1}, "retry": {"attempts": 2}}),
        ))
        .unwrap();
        assert_eq!((ok.records, ok.attempts), (1, 2));
    }

    #[tokio::test]
    async fn an_endpoint_that_does_not_answer_is_retried_then_dead_lettered() {
        let spec: HttpSpec = serde_json::from_value(serde_json::json!({
            "url": "http://127.0.0.1:1/in", "retry": {"attempts": 3, "backoff": "1ms"}
        }))
        .unwrap();
        let mut sink = HttpSink::new(HttpSinkConfig {
            spec,
            authorization: None,
        })
        .unwrap();
        let refused = sink.write(&[record(0, Some("{}"))]).await.unwrap();
        assert_eq!(refused.len(), 1);
        assert!(
            refused[0].error.contains("after 3 attempts"),
            "{}",
            refused[0].error
        );
    }
}
