//! Everything that talks to Kafka: client settings, topic checks, state restore, and the
//! consume-transform-produce loop.

mod acks;
mod output;
pub mod restore;
pub mod table;
pub mod topics;
pub mod worker;

#[cfg(test)]
mod mock_tests;

use std::collections::BTreeMap;

use rdkafka::ClientConfig;

/// How to reach the brokers.
#[derive(Debug, Clone, Default)]
pub struct KafkaSettings {
    /// `bootstrap.servers`.
    pub bootstrap: String,
    /// Extra librdkafka properties (SASL, TLS, tuning), applied to every client.
    pub extra: BTreeMap<String, String>,
}

impl KafkaSettings {
    /// A client config with the bootstrap servers and the extra properties.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        for (k, v) in &self.extra {
            c.set(k, v);
        }
        c
    }
}
