//! Native sinks: targets outside Kafka, each a [`crate::runtime::sink::Sink`].

pub mod http;
mod parquet;
mod pg_batch;
pub mod pg_connect;
pub mod postgres;
pub mod s3;
pub mod secret;
