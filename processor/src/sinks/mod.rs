//! Native sinks: targets outside Kafka, each a [`crate::runtime::sink::Sink`].

pub mod postgres;
