//! A client of Kafka Connect's REST API: the calls the Connector controller makes, with
//! answers typed and errors sorted into "Connect is unreachable" and "Connect refused".

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// How long one REST call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A failed call to Kafka Connect.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No answer: connection refused, timeout, or a server error (5xx).
    #[error("Kafka Connect at {url} is unavailable: {message}")]
    Unavailable {
        /// The cluster's URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// Connect is rebalancing its workers (409, or 500 naming a rebalance): asked again
    /// shortly, nothing reported.
    #[error("Kafka Connect is busy (a rebalance): {what}")]
    Busy {
        /// The request.
        what: String,
    },
    /// Connect answered and refused the request (4xx other than 404 and 409).
    #[error("Kafka Connect refused {what}: {message}")]
    Refused {
        /// The request.
        what: String,
        /// Connect's own message.
        message: String,
    },
}

/// The state of a connector or one of its tasks, as `GET /connectors/{name}/status` gives it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Health {
    /// RUNNING, PAUSED, STOPPED, FAILED, UNASSIGNED or RESTARTING.
    pub state: String,
    /// The worker it runs on.
    #[serde(default)]
    pub worker_id: Option<String>,
    /// The stack trace of a failure.
    #[serde(default)]
    pub trace: Option<String>,
}

/// One task's state.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TaskHealth {
    /// Task number.
    pub id: i32,
    /// Its state.
    #[serde(flatten)]
    pub health: Health,
}

/// A connector's status on the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ConnectorHealth {
    /// The connector itself.
    pub connector: Health,
    /// Its tasks.
    #[serde(default)]
    pub tasks: Vec<TaskHealth>,
}

/// One problem Connect found with a setting when validating a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The setting.
    pub field: String,
    /// Connect's (or the connector's) message.
    pub message: String,
}

/// One offset a connector reports.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Offset {
    /// The source partition or Kafka topic partition.
    pub partition: Value,
    /// The position in it.
    pub offset: Value,
}

/// A Kafka Connect cluster's REST API.
#[derive(Debug, Clone)]
pub struct ConnectClient {
    http: reqwest::Client,
    url: String,
}

impl ConnectClient {
    /// A client of the cluster at `url` (for example `http://connect:8083`).
    pub fn new(http: reqwest::Client, url: &str) -> Self {
        Self {
            http,
            url: url.trim_end_matches('/').to_string(),
        }
    }

    /// The HTTP client every [`ConnectClient`] shares (one connection pool).
    pub fn shared_http() -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .build()
            .unwrap_or_default()
    }

    /// The connector's stored config (placeholders unresolved); `None` when it does not exist.
    pub async fn config(
        &self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, String>>, ConnectError> {
        self.get_optional(&format!("/connectors/{}/config", encode(name)))
            .await
    }

    /// The connector's status; `None` when it does not exist.
    pub async fn status(&self, name: &str) -> Result<Option<ConnectorHealth>, ConnectError> {
        self.get_optional(&format!("/connectors/{}/status", encode(name)))
            .await
    }

    /// The topics the connector has used.
    pub async fn topics(&self, name: &str) -> Result<Vec<String>, ConnectError> {
        #[derive(Deserialize)]
        struct Topics {
            topics: Vec<String>,
        }
        let answer: Option<BTreeMap<String, Topics>> = self
            .get_optional(&format!("/connectors/{}/topics", encode(name)))
            .await?;
        Ok(answer
            .and_then(|mut by_name| by_name.remove(name))
            .map(|t| t.topics)
            .unwrap_or_default())
    }

    /// The offsets the connector reports.
    pub async fn offsets(&self, name: &str) -> Result<Vec<Offset>, ConnectError> {
        #[derive(Deserialize)]
        struct Offsets {
            offsets: Vec<Offset>,
        }
        let answer: Option<Offsets> = self
            .get_optional(&format!("/connectors/{}/offsets", encode(name)))
            .await?;
        Ok(answer.map(|o| o.offsets).unwrap_or_default())
    }

    /// Validates `config` with the plugin `class`; the problems Connect found, per setting.
    pub async fn validate(
        &self,
        class: &str,
        config: &BTreeMap<String, String>,
    ) -> Result<Vec<FieldError>, ConnectError> {
        let path = format!("/connector-plugins/{}/config/validate", encode(class));
        let answer: Value = self
            .call(Method::PUT, &path, Some(config))
            .await?
            .unwrap_or(Value::Null);
        Ok(field_errors(&answer))
    }

    /// Creates or updates the connector with `config`.
    pub async fn put_config(
        &self,
        name: &str,
        config: &BTreeMap<String, String>,
    ) -> Result<(), ConnectError> {
        self.call::<Value>(
            Method::PUT,
            &format!("/connectors/{}/config", encode(name)),
            Some(config),
        )
        .await
        .map(drop)
    }

    /// Pauses, resumes or stops the connector (`pause`, `resume`, `stop`).
    pub async fn transition(&self, name: &str, verb: &str) -> Result<(), ConnectError> {
        self.call::<Value>(
            Method::PUT,
            &format!("/connectors/{}/{verb}", encode(name)),
            None,
        )
        .await
        .map(drop)
    }

    /// Restarts the connector and its tasks; only the failed ones when `only_failed`.
    pub async fn restart(&self, name: &str, only_failed: bool) -> Result<(), ConnectError> {
        let path = format!(
            "/connectors/{}/restart?includeTasks=true&onlyFailed={only_failed}",
            encode(name)
        );
        self.call::<Value>(Method::POST, &path, None)
            .await
            .map(drop)
    }

    /// Restarts one task.
    pub async fn restart_task(&self, name: &str, task: i32) -> Result<(), ConnectError> {
        let path = format!("/connectors/{}/tasks/{task}/restart", encode(name));
        self.call::<Value>(Method::POST, &path, None)
            .await
            .map(drop)
    }

    /// Resets the offsets of a stopped connector.
    pub async fn reset_offsets(&self, name: &str) -> Result<(), ConnectError> {
        let path = format!("/connectors/{}/offsets", encode(name));
        self.call::<Value>(Method::DELETE, &path, None)
            .await
            .map(drop)
    }

    /// Deletes the connector; true when it existed.
    pub async fn delete(&self, name: &str) -> Result<bool, ConnectError> {
        let path = format!("/connectors/{}", encode(name));
        Ok(self
            .call::<Value>(Method::DELETE, &path, None)
            .await?
            .is_some())
    }

    async fn get_optional<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Option<T>, ConnectError> {
        self.call(Method::GET, path, None).await
    }

    /// One call; `Ok(None)` for 404, an empty body gives `T` from `null`.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&BTreeMap<String, String>>,
    ) -> Result<Option<T>, ConnectError> {
        let what = format!("{method} {path}");
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(body) = body {
            request = request.json(body);
        }
        let unavailable = |message: String| ConnectError::Unavailable {
            url: self.url.clone(),
            message,
        };
        let response = request
            .send()
            .await
            .map_err(|e| unavailable(format!("{what}: {}", error_chain(&e))))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| unavailable(format!("{what}: reading the answer: {e}")))?;
        if status == StatusCode::NOT_FOUND && !path.starts_with("/connector-plugins/") {
            return Ok(None);
        }
        // A rebalance among the workers answers 409, or 500 "a rebalance is expected".
        if status == StatusCode::CONFLICT
            || (status.is_server_error() && message_of(&text).contains("rebalance"))
        {
            return Err(ConnectError::Busy { what });
        }
        if status.is_server_error() {
            return Err(unavailable(format!(
                "{what}: {status}: {}",
                message_of(&text)
            )));
        }
        if !status.is_success() {
            return Err(ConnectError::Refused {
                what,
                message: message_of(&text),
            });
        }
        let value = if text.trim().is_empty() {
            serde_json::from_value(Value::Null)
        } else {
            serde_json::from_str(&text)
        };
        value.map(Some).map_err(|e| {
            unavailable(format!(
                "{what}: an answer this client cannot read ({e}): {}",
                first_line(&text, 200)
            ))
        })
    }
}

/// The `message` of a Connect error body, or the body's first line.
fn message_of(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| first_line(body, 300))
}

/// The first line of `text`, cut at `max` characters.
pub fn first_line(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or_default().trim();
    if line.chars().count() > max {
        let cut: String = line.chars().take(max).collect();
        format!("{cut}…")
    } else {
        line.to_string()
    }
}

/// The problems in a `config/validate` answer: every setting with errors.
fn field_errors(answer: &Value) -> Vec<FieldError> {
    let configs = answer
        .get("configs")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    configs
        .iter()
        .filter_map(|c| c.get("value"))
        .flat_map(|value| {
            let field = value
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            value
                .get("errors")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(move |message| FieldError {
                    field: field.clone(),
                    message: first_line(message, 300),
                })
        })
        .collect()
}

/// `err` with its causes, which is where reqwest says "connection refused".
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A path segment: connector names hold dots (`namespace.name`), which need no escaping;
/// anything outside the DNS-name alphabet is percent-encoded.
fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn validate_answers_become_errors_per_setting() {
        let answer = json!({
            "name": "io.debezium.connector.postgresql.PostgresConnector",
            "error_count": 2,
            "configs": [
                {"definition": {"name": "database.dbname"},
                 "value": {"name": "database.dbname", "value": "nope", "errors": [
                    "Error while validating connector config: FATAL: database \"nope\" does not exist\n\tat x"]}},
                {"value": {"name": "topic.prefix", "value": null, "errors": []}},
                {"value": {"name": "slot.name", "errors": ["a", "b"]}}
            ]
        });
        let errors = field_errors(&answer);
        assert_eq!(errors.len(), 3);
        assert_eq!(errors[0].field, "database.dbname");
        assert_eq!(
            errors[0].message,
            "Error while validating connector config: FATAL: database \"nope\" does not exist"
        );
        assert_eq!(errors[2].message, "b");
        assert!(field_errors(&json!({"error_count": 0})).is_empty());
    }

    #[test]
    fn statuses_read_as_connect_writes_them() {
        let status: ConnectorHealth = serde_json::from_value(json!({
            "name": "ns.cdc",
            "connector": {"state": "RUNNING", "worker_id": "10.0.0.1:8083"},
            "tasks": [{"id": 0, "state": "FAILED", "worker_id": "10.0.0.1:8083",
                       "trace": "org.apache.kafka.connect.errors.ConnectException: gone\n\tat a.b"}],
            "type": "source"
        }))
        .unwrap();
        assert_eq!(status.connector.state, "RUNNING");
        assert_eq!(status.tasks[0].id, 0);
        assert_eq!(status.tasks[0].health.state, "FAILED");
        assert!(
            status.tasks[0]
                .health
                .trace
                .as_deref()
                .unwrap()
                .contains("gone")
        );
    }

    #[test]
    fn errors_keep_connects_message_and_one_line() {
        assert_eq!(
            message_of(r#"{"error_code":400,"message":"Connector configuration is invalid"}"#),
            "Connector configuration is invalid"
        );
        assert_eq!(message_of("<html>\nbad gateway"), "<html>");
        assert_eq!(first_line("abcdef", 3), "abc…");
        assert_eq!(encode("ns.orders-cdc"), "ns.orders-cdc");
        assert_eq!(encode("a/b c"), "a%2Fb%20c");
    }
}
