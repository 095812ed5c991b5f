//! The `sluice.dev/v1alpha1` API: `Topic`, `Connector` and `Pipeline`, shared by the
//! operator and the processor, and the generator of their CRD YAML.
#![forbid(unsafe_code)]
// kube-derive takes one `type_ = ...` per printcolumn; clippy reads them as duplicates.
#![allow(clippy::duplicated_attributes)]

pub mod common;
pub mod connector;
pub mod contract;
pub mod generate;
pub mod pipeline;
pub mod plugins;
pub mod topic;

pub use connector::{Connector, ConnectorSpec, ConnectorStatus};
pub use pipeline::{Pipeline, PipelineSpec, PipelineStatus};
pub use topic::{Topic, TopicSpec, TopicStatus};

/// API group of every Sluice kind.
pub const GROUP: &str = "sluice.dev";
