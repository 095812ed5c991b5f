//! The pure part of a Sluice pipeline, shared by the processor (which runs it) and the
//! operator (which checks a spec with it before deploying): records and their formats,
//! CEL expressions, the steps and their keyed state, and the engine that runs the steps
//! over one record. No Kafka client, async runtime, HTTP server or allocator here.

pub mod check;
pub mod engine;
pub mod expr;
pub mod format;
pub mod json_object;
pub mod metrics;
pub mod record;
pub mod state;
pub mod steps;
pub mod window;
