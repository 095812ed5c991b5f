//! Helpers shared by the end-to-end tests.

pub mod cluster;
pub mod env;
pub mod installed;
pub mod kafka;
pub mod processor;
pub mod sink;
pub mod topic_harness;
