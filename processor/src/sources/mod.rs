//! Native sources: systems outside Kafka, each a [`crate::runtime::source::Source`]
//! whose records a Kafka sink ([`crate::kafka::sink`]) writes exactly once.

pub mod postgres_cdc;
