//! The one Kafka admin client every controller shares.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{
    AdminClient, AdminOptions, ConfigSource, NewPartitions, NewTopic, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::kafka::incremental::{self, ConfigOp};
use crate::metrics::Metrics;

/// What Kafka has for one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicState {
    /// Number of partitions.
    pub partitions: i32,
    /// Replicas per partition (the largest over the partitions).
    pub replication_factor: i32,
    /// The topic-level overrides (configs whose source is the topic, not a default).
    pub config: BTreeMap<String, String>,
    /// Every config name the broker knows for topics (to name unknown keys in a spec).
    pub known_keys: Vec<String>,
}

/// Why an admin operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// Kafka did not answer: retry later.
    #[error("{0}")]
    Unavailable(String),
    /// Kafka answered and refused.
    #[error("{message}")]
    Rejected {
        /// Kafka's error code.
        code: RDKafkaErrorCode,
        /// Kafka's description of it.
        message: String,
    },
}

impl AdminError {
    pub(crate) fn from_code(code: RDKafkaErrorCode) -> Self {
        if is_transient(code) {
            AdminError::Unavailable(code.to_string())
        } else {
            AdminError::Rejected {
                code,
                message: code.to_string(),
            }
        }
    }

    fn from_kafka(err: KafkaError) -> Self {
        match err.rdkafka_error_code() {
            Some(code) if !is_transient(code) => AdminError::Rejected {
                code,
                message: err.to_string(),
            },
            _ => AdminError::Unavailable(err.to_string()),
        }
    }
}

/// Codes that mean "Kafka did not answer / is not ready", as opposed to a refusal.
fn is_transient(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::OperationTimedOut
            | C::RequestTimedOut
            | C::BrokerTransportFailure
            | C::AllBrokersDown
            | C::NetworkException
            | C::BrokerNotAvailable
            | C::LeaderNotAvailable
            | C::NotController
            | C::NotCoordinator
            | C::CoordinatorNotAvailable
            | C::Resolve
            | C::TimedOutQueue
            | C::WaitCache
    )
}

/// The operator's Kafka admin client.
#[derive(Clone)]
pub struct KafkaAdmin {
    admin: Arc<AdminClient<DefaultClientContext>>,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl KafkaAdmin {
    /// Builds the client from librdkafka properties. It connects lazily.
    pub fn new(
        properties: &BTreeMap<String, String>,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Self, KafkaError> {
        let mut config = ClientConfig::new();
        for (k, v) in properties {
            config.set(k, v);
        }
        let admin: AdminClient<DefaultClientContext> = config.create()?;
        Ok(Self {
            admin: Arc::new(admin),
            timeout,
            metrics,
        })
    }

    /// The shared librdkafka client, for reads the admin API lacks (offsets, watermarks).
    pub fn client(&self) -> Arc<AdminClient<DefaultClientContext>> {
        self.admin.clone()
    }

    /// Timeout of one request.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn options(&self) -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(self.timeout))
            .operation_timeout(Some(self.timeout))
    }

    fn count<T>(&self, op: &str, r: Result<T, AdminError>) -> Result<T, AdminError> {
        if r.is_err() {
            self.metrics.kafka_error(op);
        }
        r
    }

    /// Partitions, replication factor and overrides of `topic`; `None` when it does not exist.
    pub async fn describe(&self, topic: &str) -> Result<Option<TopicState>, AdminError> {
        let r = self.describe_inner(topic).await;
        self.count("describe", r)
    }

    async fn describe_inner(&self, topic: &str) -> Result<Option<TopicState>, AdminError> {
        let admin = self.admin.clone();
        let name = topic.to_string();
        let timeout = self.timeout;
        let layout = tokio::task::spawn_blocking(move || {
            let md = admin
                .inner()
                .fetch_metadata(Some(&name), timeout)
                .map_err(|e| AdminError::Unavailable(e.to_string()))?;
            let Some(t) = md.topics().iter().find(|t| t.name() == name) else {
                return Ok(None);
            };
            if let Some(err) = t.error() {
                let code = RDKafkaErrorCode::from(err);
                return match code {
                    RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => {
                        Ok(None)
                    }
                    other => Err(AdminError::from_code(other)),
                };
            }
            let partitions = i32::try_from(t.partitions().len()).unwrap_or(i32::MAX);
            let rf = t
                .partitions()
                .iter()
                .map(|p| p.replicas().len())
                .max()
                .unwrap_or(0);
            Ok(Some((partitions, i32::try_from(rf).unwrap_or(i32::MAX))))
        })
        .await
        .map_err(|e| AdminError::Unavailable(format!("metadata task failed: {e}")))??;
        let Some((partitions, replication_factor)) = layout else {
            return Ok(None);
        };
        if partitions == 0 {
            return Err(AdminError::Unavailable(format!(
                "topic {topic} has no partitions yet"
            )));
        }

        let results = self
            .admin
            .describe_configs(&[ResourceSpecifier::Topic(topic)], &self.options())
            .await
            .map_err(AdminError::from_kafka)?;
        let resource = results
            .into_iter()
            .next()
            .ok_or_else(|| AdminError::Unavailable("empty DescribeConfigs answer".into()))?;
        let resource = match resource {
            Ok(r) => r,
            Err(RDKafkaErrorCode::UnknownTopicOrPartition) => return Ok(None),
            Err(code) => return Err(AdminError::from_code(code)),
        };
        let known_keys = resource.entries.iter().map(|e| e.name.clone()).collect();
        let config = resource
            .entries
            .into_iter()
            .filter(|e| e.source == ConfigSource::DynamicTopic)
            .filter_map(|e| e.value.map(|v| (e.name, v)))
            .collect();
        Ok(Some(TopicState {
            partitions,
            replication_factor,
            config,
            known_keys,
        }))
    }

    /// Creates `topic`; `replication_factor: None` uses the broker's default.
    pub async fn create(
        &self,
        topic: &str,
        partitions: i32,
        replication_factor: Option<i32>,
        config: &BTreeMap<String, String>,
    ) -> Result<(), AdminError> {
        let mut new = NewTopic::new(
            topic,
            partitions,
            TopicReplication::Fixed(replication_factor.unwrap_or(-1)),
        );
        for (k, v) in config {
            new = new.set(k, v);
        }
        let r = self
            .admin
            .create_topics(&[new], &self.options())
            .await
            .map_err(AdminError::from_kafka)
            .and_then(first_topic_result);
        self.count("create", r)
    }

    /// Grows `topic` to `total` partitions.
    pub async fn create_partitions(&self, topic: &str, total: i32) -> Result<(), AdminError> {
        let count = usize::try_from(total).unwrap_or(0);
        let r = self
            .admin
            .create_partitions(&[NewPartitions::new(topic, count)], &self.options())
            .await
            .map_err(AdminError::from_kafka)
            .and_then(first_topic_result);
        self.count("create_partitions", r)
    }

    /// Applies config changes to `topic` key by key (incremental alter configs). With
    /// `validate_only`, Kafka checks them and changes nothing. A refusal carries Kafka's message.
    pub async fn alter_configs(
        &self,
        topic: &str,
        ops: Vec<ConfigOp>,
        validate_only: bool,
    ) -> Result<(), AdminError> {
        let admin = self.admin.clone();
        let name = topic.to_string();
        let timeout = self.timeout;
        let r = tokio::task::spawn_blocking(move || {
            incremental::alter_topic_configs(&admin, &name, &ops, validate_only, timeout)
        })
        .await
        .map_err(|e| AdminError::Unavailable(format!("alter configs task failed: {e}")))
        .and_then(|r| r);
        self.count(
            if validate_only {
                "validate_configs"
            } else {
                "alter_configs"
            },
            r,
        )
    }

    /// Deletes `topic`; a topic that is already gone is not an error.
    pub async fn delete(&self, topic: &str) -> Result<(), AdminError> {
        let r = self
            .admin
            .delete_topics(&[topic], &self.options())
            .await
            .map_err(AdminError::from_kafka)
            .and_then(first_topic_result);
        let r = match r {
            Err(AdminError::Rejected {
                code: RDKafkaErrorCode::UnknownTopicOrPartition,
                ..
            }) => Ok(()),
            other => other,
        };
        self.count("delete", r)
    }
}

fn first_topic_result(
    results: Vec<Result<String, (String, RDKafkaErrorCode)>>,
) -> Result<(), AdminError> {
    match results.into_iter().next() {
        Some(Ok(_)) => Ok(()),
        Some(Err((_, code))) => Err(AdminError::from_code(code)),
        None => Err(AdminError::Unavailable("empty answer from Kafka".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_unavailable_and_refusals_are_rejected() {
        assert!(matches!(
            AdminError::from_code(RDKafkaErrorCode::OperationTimedOut),
            AdminError::Unavailable(_)
        ));
        match AdminError::from_code(RDKafkaErrorCode::InvalidConfig) {
            AdminError::Rejected { code, message } => {
                assert_eq!(code, RDKafkaErrorCode::InvalidConfig);
                assert!(message.contains("onfig"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}
