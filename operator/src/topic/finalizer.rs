//! The deletion finalizer: present exactly when `deletionPolicy` is `Delete`, so a Topic
//! that keeps its Kafka topic never blocks a namespace from terminating.

use kube::Api;
use sluice_crds::Topic;
use sluice_crds::topic::DeletionPolicy;

use crate::context::Context;
use crate::error::Result;
use crate::topic::KIND;

/// The finalizer that deletes the Kafka topic.
pub const FINALIZER: &str = "sluice.dev/delete-kafka-topic";

/// True when `topic` carries the finalizer.
pub fn present(topic: &Topic) -> bool {
    crate::finalizer::present(topic, FINALIZER)
}

/// Adds the finalizer when the policy is `Delete`, removes it otherwise. Returns true when it wrote.
pub async fn ensure(topic: &Topic, api: &Api<Topic>, ctx: &Context) -> Result<bool> {
    let want = topic.spec.deletion_policy == DeletionPolicy::Delete;
    crate::finalizer::set(topic, api, ctx, KIND, FINALIZER, want).await
}

/// Removes the finalizer (after cleanup).
pub async fn remove(topic: &Topic, api: &Api<Topic>, ctx: &Context) -> Result<bool> {
    crate::finalizer::set(topic, api, ctx, KIND, FINALIZER, false).await
}
