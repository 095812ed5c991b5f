//! The deletion finalizer: present exactly when `deletionPolicy` is `Delete`, so a Topic
//! that keeps its Kafka topic never blocks a namespace from terminating.

use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use sluice_crds::Topic;
use sluice_crds::topic::DeletionPolicy;

use crate::context::{Context, FIELD_MANAGER};
use crate::error::{Error, Result};
use crate::topic::KIND;

/// The finalizer that deletes the Kafka topic.
pub const FINALIZER: &str = "sluice.dev/delete-kafka-topic";

/// True when `topic` carries the finalizer.
pub fn present(topic: &Topic) -> bool {
    topic.finalizers().iter().any(|f| f == FINALIZER)
}

/// The finalizer list after adding or removing ours; `None` when it already is as wanted.
pub fn finalizers_after(current: &[String], want: bool) -> Option<Vec<String>> {
    let has = current.iter().any(|f| f == FINALIZER);
    match (want, has) {
        (true, false) => {
            let mut list = current.to_vec();
            list.push(FINALIZER.to_string());
            Some(list)
        }
        (false, true) => Some(
            current
                .iter()
                .filter(|f| *f != FINALIZER)
                .cloned()
                .collect(),
        ),
        _ => None,
    }
}

/// Adds the finalizer when the policy is `Delete`, removes it otherwise. Returns true when it wrote.
pub async fn ensure(topic: &Topic, api: &Api<Topic>, ctx: &Context) -> Result<bool> {
    let want = topic.spec.deletion_policy == DeletionPolicy::Delete;
    set(topic, api, ctx, want).await
}

/// Removes the finalizer (after cleanup).
pub async fn remove(topic: &Topic, api: &Api<Topic>, ctx: &Context) -> Result<bool> {
    set(topic, api, ctx, false).await
}

async fn set(topic: &Topic, api: &Api<Topic>, ctx: &Context, want: bool) -> Result<bool> {
    let Some(list) = finalizers_after(topic.finalizers(), want) else {
        return Ok(false);
    };
    // The resourceVersion makes this an optimistic write: it fails if the object moved on.
    let patch = json!({
        "metadata": {
            "finalizers": list,
            "resourceVersion": topic.resource_version(),
        }
    });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    };
    api.patch(&topic.name_any(), &params, &Patch::Merge(&patch))
        .await
        .map_err(Error::kube(if want {
            "add finalizer"
        } else {
            "remove finalizer"
        }))?;
    ctx.metrics.kube_write(KIND, "finalizer");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_and_removes_only_ours() {
        let other = vec!["example.com/keep".to_string()];
        assert_eq!(
            finalizers_after(&other, true),
            Some(vec!["example.com/keep".to_string(), FINALIZER.to_string()])
        );
        let both = vec!["example.com/keep".to_string(), FINALIZER.to_string()];
        assert_eq!(finalizers_after(&both, true), None);
        assert_eq!(finalizers_after(&both, false), Some(other.clone()));
        assert_eq!(finalizers_after(&other, false), None);
        assert_eq!(finalizers_after(&[], false), None);
    }
}
