//! Adding and removing one finalizer of ours on an object of any kind, leaving the
//! others' finalizers alone.

use std::fmt::Debug;

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::context::{Context, FIELD_MANAGER};
use crate::error::{Error, Result};

/// The finalizer list after adding or removing `name`; `None` when it already is as wanted.
pub fn finalizers_after(current: &[String], name: &str, want: bool) -> Option<Vec<String>> {
    let has = current.iter().any(|f| f == name);
    match (want, has) {
        (true, false) => {
            let mut list = current.to_vec();
            list.push(name.to_string());
            Some(list)
        }
        (false, true) => Some(current.iter().filter(|f| *f != name).cloned().collect()),
        _ => None,
    }
}

/// True when `object` carries finalizer `name`.
pub fn present<K: Resource>(object: &K, name: &str) -> bool {
    object.finalizers().iter().any(|f| f == name)
}

/// Adds (`want`) or removes finalizer `name` on `object`. Returns true when it wrote.
pub async fn set<K>(
    object: &K,
    api: &Api<K>,
    ctx: &Context,
    kind: &str,
    name: &str,
    want: bool,
) -> Result<bool>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let Some(list) = finalizers_after(object.finalizers(), name, want) else {
        return Ok(false);
    };
    // The resourceVersion makes this an optimistic write: it fails if the object moved on.
    let patch = json!({
        "metadata": {
            "finalizers": list,
            "resourceVersion": object.resource_version(),
        }
    });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    };
    api.patch(&object.name_any(), &params, &Patch::Merge(&patch))
        .await
        .map_err(Error::kube(if want {
            "add finalizer"
        } else {
            "remove finalizer"
        }))?;
    ctx.metrics.kube_write(kind, "finalizer");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &str = "sluice.dev/test";

    #[test]
    fn adds_and_removes_only_ours() {
        let other = vec!["example.com/keep".to_string()];
        assert_eq!(
            finalizers_after(&other, OURS, true),
            Some(vec!["example.com/keep".to_string(), OURS.to_string()])
        );
        let both = vec!["example.com/keep".to_string(), OURS.to_string()];
        assert_eq!(finalizers_after(&both, OURS, true), None);
        assert_eq!(finalizers_after(&both, OURS, false), Some(other.clone()));
        assert_eq!(finalizers_after(&other, OURS, false), None);
        assert_eq!(finalizers_after(&[], OURS, false), None);
    }
}
