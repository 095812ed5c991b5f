//! The generator source: writes records built from a template of CEL expressions over
//! `i` (the record index) and `now` (milliseconds since the epoch).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cel::{Context, Value};
use rdkafka::ClientContext;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};

use crate::expr::{Expr, cel_to_json};
use crate::kafka::KafkaSettings;

/// A generator that cannot start or run.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The template is not a JSON object of expressions.
    #[error("invalid template: {0}")]
    Template(String),
    /// An expression does not compile.
    #[error(transparent)]
    Compile(#[from] crate::expr::CompileError),
    /// An expression fails for a record.
    #[error("record {index}: {message}")]
    Eval {
        /// Record index.
        index: u64,
        /// Why.
        message: String,
    },
    /// Kafka failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The broker did not take some records.
    #[error("{count} record(s) were not delivered to Kafka; the first error: {first}")]
    Undelivered {
        /// How many.
        count: u64,
        /// The first delivery error.
        first: String,
    },
}

/// Counts the records the broker did not take, so none is lost without a word.
#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((err, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut first) = self.first_error.lock() {
                first.get_or_insert_with(|| err.to_string());
            }
        }
    }
}

impl Deliveries {
    /// `Err` once any record failed.
    fn check(&self) -> Result<(), GenerateError> {
        match self.failed.load(Ordering::Relaxed) {
            0 => Ok(()),
            count => Err(GenerateError::Undelivered {
                count,
                first: self
                    .first_error
                    .lock()
                    .ok()
                    .and_then(|f| f.clone())
                    .unwrap_or_default(),
            }),
        }
    }
}

/// A compiled template: field name to expression (non-string template values are literal).
pub struct Template {
    fields: Vec<(String, Field)>,
    key: Option<Expr>,
    root: Context<'static, 'static>,
}

impl std::fmt::Debug for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Template")
            .field("fields", &self.fields)
            .field("key", &self.key)
            .finish()
    }
}

#[derive(Debug)]
enum Field {
    Expr(Box<Expr>),
    Literal(serde_json::Value),
}

impl Template {
    /// Compiles `template` (a JSON object) and the optional key expression.
    pub fn compile(template: &str, key: Option<&str>) -> Result<Self, GenerateError> {
        let doc: serde_json::Value =
            serde_json::from_str(template).map_err(|e| GenerateError::Template(e.to_string()))?;
        let serde_json::Value::Object(obj) = doc else {
            return Err(GenerateError::Template(
                "expected a JSON object of field: expression".to_string(),
            ));
        };
        let fields = obj
            .into_iter()
            .map(|(k, v)| {
                Ok((
                    k,
                    match v {
                        serde_json::Value::String(src) => {
                            Field::Expr(Box::new(Expr::compile(&src)?))
                        }
                        other => Field::Literal(other),
                    },
                ))
            })
            .collect::<Result<_, GenerateError>>()?;
        Ok(Self {
            fields,
            key: key.map(Expr::compile).transpose()?,
            root: Context::default(),
        })
    }

    /// Builds record `i`: (key, JSON value).
    pub fn record(
        &self,
        i: u64,
        now_ms: i64,
    ) -> Result<(Option<String>, serde_json::Value), GenerateError> {
        let mut scope = self.root.new_inner_scope();
        scope.add_variable_from_value("i", Value::Int(i64::try_from(i).unwrap_or(i64::MAX)));
        scope.add_variable_from_value("now", Value::Int(now_ms));
        let scope = crate::expr::Scope::with_context(&self.root, scope);
        let err = |message: String| GenerateError::Eval { index: i, message };
        let mut obj = serde_json::Map::with_capacity(self.fields.len());
        for (name, field) in &self.fields {
            let v = match field {
                Field::Literal(v) => v.clone(),
                Field::Expr(e) => {
                    let v = e.eval(&scope).map_err(|e| err(e.to_string()))?;
                    cel_to_json(&v).map_err(|e| err(format!("{name}: {e}")))?
                }
            };
            obj.insert(name.clone(), v);
        }
        let key = match &self.key {
            Some(e) => Some(match e.eval(&scope).map_err(|e| err(e.to_string()))? {
                Value::String(s) => std::sync::Arc::unwrap_or_clone(s),
                other => cel_to_json(&other)
                    .map_err(|e| err(e.to_string()))?
                    .to_string(),
            }),
            None => None,
        };
        Ok((key, serde_json::Value::Object(obj)))
    }
}

/// Parses a rate such as `1000` or `1000/s` (records per second, above zero).
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let n = s.trim_end_matches("/s");
    match n.parse::<f64>() {
        Ok(r) if r > 0.0 && r.is_finite() => Ok(r),
        _ => Err(format!("{s:?} is not a rate like 1000 or 1000/s")),
    }
}

/// How much to generate.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Records per second; `None` is as fast as possible.
    pub rate: Option<f64>,
    /// Stop after this many; `None` runs until interrupted.
    pub count: Option<u64>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Writes records to `topic`, printing progress each second; returns how many were sent.
pub fn run(
    settings: &KafkaSettings,
    topic: &str,
    template: &Template,
    pace: Pace,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<u64, GenerateError> {
    run_with_status(settings, topic, template, pace, stop, None)
}

/// [`run`], telling `status` (the probes' view) that it is ready once the producer is up
/// and that its loop turns with each record.
pub fn run_with_status(
    settings: &KafkaSettings,
    topic: &str,
    template: &Template,
    pace: Pace,
    stop: &std::sync::atomic::AtomicBool,
    status: Option<&crate::health::Status>,
) -> Result<u64, GenerateError> {
    let producer: ThreadedProducer<Deliveries> = settings
        .client_config()
        .set("linger.ms", "10")
        .set("enable.idempotence", "true")
        .create_with_context(Deliveries::default())?;
    if let Some(status) = status {
        status.beat();
        status
            .ready
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let start = Instant::now();
    let mut last_report = Instant::now();
    let mut last_count = 0u64;
    let mut i = 0u64;
    while pace.count.is_none_or(|c| i < c) && !stop.load(std::sync::atomic::Ordering::Relaxed) {
        if let Some(rate) = pace.rate {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        if let Some(status) = status {
            status.beat();
        }
        producer.context().check()?;
        let (key, value) = template.record(i, now_ms())?;
        let payload =
            serde_json::to_vec(&value).map_err(|e| GenerateError::Template(e.to_string()))?;
        let mut rec: BaseRecord<'_, str, [u8]> = BaseRecord::to(topic).payload(&payload);
        if let Some(k) = &key {
            rec = rec.key(k.as_str());
        }
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    back,
                )) => {
                    std::thread::sleep(Duration::from_millis(5));
                    rec = back;
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
        i += 1;
        if last_report.elapsed() >= Duration::from_secs(1) {
            let rate = (i - last_count) as f64 / last_report.elapsed().as_secs_f64();
            eprintln!("generate: {i} records sent to {topic} ({rate:.0}/s)");
            last_report = Instant::now();
            last_count = i;
        }
    }
    producer.flush(Duration::from_secs(60))?;
    producer.context().check()?;
    Ok(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_records_from_expressions() {
        let t = Template::compile(
            r#"{"orderId": "'o-' + string(i)", "region": "['eu-west','us-east','ap-south'][i % 3]", "total": "double(i % 50) - 5.0", "v": 1}"#,
            Some("'k' + string(i % 2)"),
        )
        .unwrap();
        let (key, v) = t.record(4, 0).unwrap();
        assert_eq!(key.as_deref(), Some("k0"));
        assert_eq!(
            v,
            serde_json::json!({"orderId": "o-4", "region": "us-east", "total": -1.0, "v": 1})
        );
    }

    #[test]
    fn template_errors_are_clear() {
        assert!(matches!(
            Template::compile("[1]", None),
            Err(GenerateError::Template(_))
        ));
        assert!(matches!(
            Template::compile(r#"{"a": "i +"}"#, None),
            Err(GenerateError::Compile(_))
        ));
        let t = Template::compile(r#"{"a": "10 / (i - 1)"}"#, None).unwrap();
        assert!(matches!(
            t.record(1, 0),
            Err(GenerateError::Eval { index: 1, .. })
        ));
    }
}
