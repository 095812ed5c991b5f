//! Kafka: client configuration and the admin operations the controllers use.

pub mod admin;
pub mod config;
pub mod incremental;

pub use admin::{AdminError, KafkaAdmin, TopicState};
pub use incremental::ConfigOp;
