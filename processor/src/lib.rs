//! The Sluice processor: the data plane that runs pipelines against Kafka. The pure part
//! (records, expressions, steps, state) is the `sluice-engine` crate, re-exported here.

pub use sluice_engine::{engine, expr, format, json_object, metrics, record, steps};

pub mod allocator;
pub mod app;
pub mod config;
pub mod connector;
pub mod generate;
pub mod health;
pub mod http;
pub mod kafka;
pub mod logging;
pub mod pace;
pub mod runtime;
pub mod sinks;
pub mod sources;
