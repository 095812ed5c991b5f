//! Everything that talks to Kafka: client settings, topic checks, state restore, and the
//! consume-transform-produce loop.

mod acks;
mod compacted;
mod dead_letter;
pub mod dead_letters;
mod headers;
mod lane;
mod output;
pub mod restore;
pub mod sink;
pub mod source;
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

    /// A client config for a consumer: [`KafkaSettings::client_config`], and, unless the
    /// extra properties set it, a fetch backoff of 20 ms. librdkafka stops fetching a
    /// partition whose local queue is full and by default waits a whole second before
    /// fetching again, so a loop that drains its queue faster than that sits idle for
    /// the rest of the second (measured: 2.4x the records/s of filter+map).
    pub fn consumer_config(&self) -> ClientConfig {
        let mut c = self.client_config();
        if !self.extra.contains_key("fetch.queue.backoff.ms") {
            c.set("fetch.queue.backoff.ms", "20");
        }
        c
    }

    /// A consumer in `group` that commits by hand, reads only committed records, and
    /// rebalances cooperatively; a new group starts at `start_from`. A replica killed
    /// without leaving holds its partitions for the session timeout: 10 s unless the
    /// extra properties say.
    pub fn group_consumer_config(
        &self,
        group: &str,
        start_from: sluice_crds::pipeline::StartFrom,
    ) -> ClientConfig {
        let mut c = self.consumer_config();
        c.set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("queued.max.messages.kbytes", "32768")
            .set(
                "auto.offset.reset",
                match start_from {
                    sluice_crds::pipeline::StartFrom::Earliest => "earliest",
                    sluice_crds::pipeline::StartFrom::Latest => "latest",
                },
            );
        if !self.extra.contains_key("session.timeout.ms") {
            c.set("session.timeout.ms", "10000");
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumers_fetch_again_soon_unless_told_otherwise() {
        let mut settings = KafkaSettings {
            bootstrap: "b:9092".into(),
            extra: BTreeMap::new(),
        };
        let c = settings.consumer_config();
        assert_eq!(c.get("fetch.queue.backoff.ms"), Some("20"));
        assert_eq!(c.get("bootstrap.servers"), Some("b:9092"));
        assert_eq!(settings.client_config().get("fetch.queue.backoff.ms"), None);
        settings
            .extra
            .insert("fetch.queue.backoff.ms".into(), "500".into());
        assert_eq!(
            settings.consumer_config().get("fetch.queue.backoff.ms"),
            Some("500")
        );
    }
}
