//! The Sluice processor: the data plane that runs pipelines against Kafka.

pub mod config;
pub mod engine;
pub mod expr;
pub mod format;
pub mod metrics;
pub mod record;
pub mod steps;
