//! The Sluice processor: the data plane that runs pipelines against Kafka.

pub mod allocator;
pub mod app;
pub mod config;
pub mod engine;
pub mod expr;
pub mod format;
pub mod generate;
pub mod health;
pub mod http;
pub mod json_object;
pub mod kafka;
pub mod logging;
pub mod metrics;
pub mod pace;
pub mod record;
pub mod steps;
