//! The operator's one error type.

use std::time::Duration;

/// Everything that can go wrong in a reconcile or at start-up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Kafka did not answer (network, timeouts, no broker).
    #[error("Kafka is unavailable: {0}")]
    KafkaUnavailable(String),

    /// Kafka answered with an error for one operation.
    #[error("Kafka could not {action} topic {topic}: {message}")]
    KafkaAdmin {
        /// What was being done ("create", "delete", ...).
        action: &'static str,
        /// The Kafka topic.
        topic: String,
        /// Kafka's description of the error.
        message: String,
    },

    /// A Kubernetes API call failed.
    #[error("Kubernetes API call failed: {action}: {source}")]
    Kube {
        /// What was being done ("write status", "apply the processor Deployment", ...).
        action: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },

    /// A Pipeline could not be rendered into the objects that run it.
    #[error(transparent)]
    Render(#[from] crate::pipeline::render::RenderError),

    /// The object in the cluster could not be read as its kind.
    #[error("the object is malformed: {0}")]
    Malformed(String),

    /// The Kafka client could not be configured.
    #[error("Kafka client configuration: {0}")]
    KafkaConfig(String),

    /// A flag or environment variable has a value that cannot be used.
    #[error("invalid setting: {0}")]
    Setting(String),

    /// The CRDs are missing from the cluster.
    #[error(
        "CRD {0} is not installed: install the CRDs first (`kubectl apply -f crds/yaml/` or the Helm chart)"
    )]
    CrdMissing(String),

    /// Leader election failed.
    #[error("leader election: {0}")]
    Lease(String),

    /// This replica lost the leader lease; it stops so that only one replica writes.
    #[error("lost the leader lease")]
    LeadershipLost,

    /// The HTTP server could not start.
    #[error("HTTP server: {0}")]
    Http(#[from] std::io::Error),

    /// Kafka Connect could not be reached, or refused a call.
    #[error(transparent)]
    Connect(#[from] crate::connector::connect::ConnectError),

    /// A Kafka topic is still settling after a change; not a failure, retried soon.
    #[error("waiting for Kafka: {0}")]
    Settling(String),
}

impl Error {
    /// A short, stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Error::KafkaUnavailable(_) => "kafka_unavailable",
            Error::KafkaAdmin { .. } => "kafka_admin",
            Error::Kube { .. } => "kube",
            Error::Render(_) => "render",
            Error::Malformed(_) => "malformed",
            Error::KafkaConfig(_) => "kafka_config",
            Error::CrdMissing(_) => "crd_missing",
            Error::Setting(_) => "setting",
            Error::Settling(_) => "settling",
            Error::Connect(_) => "connect",
            Error::Lease(_) => "lease",
            Error::LeadershipLost => "leadership_lost",
            Error::Http(_) => "http",
        }
    }

    /// Wraps a Kubernetes client error with what was being done.
    pub fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let action = action.into();
        move |source| Error::Kube { action, source }
    }

    /// Fixed retry delay for errors that are not failures; `None` means use the backoff.
    pub fn fixed_retry(&self) -> Option<Duration> {
        match self {
            Error::Settling(_) => Some(Duration::from_secs(2)),
            _ => None,
        }
    }
}

/// The operator's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_as_sentences() {
        let e = Error::KafkaAdmin {
            action: "create",
            topic: "orders".into(),
            message: "Broker: Invalid replication factor".into(),
        };
        assert_eq!(
            e.to_string(),
            "Kafka could not create topic orders: Broker: Invalid replication factor"
        );
        assert_eq!(e.label(), "kafka_admin");
        assert_eq!(
            Error::Settling("x".into()).fixed_retry(),
            Some(Duration::from_secs(2))
        );
        assert_eq!(Error::KafkaUnavailable("x".into()).fixed_retry(), None);
    }
}
