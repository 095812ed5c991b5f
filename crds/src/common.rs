//! Types shared by every kind: conditions, secret references, durations.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The condition every kind carries: the resource is doing what its spec asks.
pub const READY: &str = "Ready";

/// A reference to a Secret in the resource's namespace. Secrets are never inlined.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret, in the same namespace as the resource.
    pub name: String,
}

/// Parses a duration written as in Kubernetes and Go (`30s`, `5m`, `1h30m`, `500ms`).
pub fn parse_duration(text: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(text)
}

/// JSON schema pattern for durations accepted by [`parse_duration`].
pub const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h))+$";

/// Builds a condition; `lastTransitionTime` is kept from `previous` when the status did not change.
pub fn condition(
    type_: &str,
    ready: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    previous: &[Condition],
) -> Condition {
    let status = if ready { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(Timestamp::now()));
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time,
    }
}

/// True when `conditions` holds `type_` with status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

/// Compares two condition lists ignoring `lastTransitionTime`, so status is written only on change.
pub fn same_conditions(a: &[Condition], b: &[Condition]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.type_ == y.type_
                && x.status == y.status
                && x.reason == y.reason
                && x.message == y.message
                && x.observed_generation == y.observed_generation
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_kubernetes() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn transition_time_kept_while_status_unchanged() {
        let first = condition(READY, false, "Pending", "waiting", Some(1), &[]);
        let again = condition(
            READY,
            false,
            "Other",
            "still waiting",
            Some(2),
            std::slice::from_ref(&first),
        );
        assert_eq!(first.last_transition_time, again.last_transition_time);
        assert!(!same_conditions(std::slice::from_ref(&first), &[again]));
        assert!(same_conditions(
            std::slice::from_ref(&first),
            std::slice::from_ref(&first)
        ));
        assert!(!is_true(&[first], READY));
    }
}
