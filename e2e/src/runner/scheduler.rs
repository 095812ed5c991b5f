//! Playing the scheduler: which pods this node takes, and binding them.

use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};

use super::images::ImageMap;

/// The scheduler name the runner serves.
pub const DEFAULT_SCHEDULER: &str = "default-scheduler";

/// What to do with a pod seen in the watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Unscheduled and runnable: bind it to this node.
    Bind,
    /// Bound to this node: run it (or stop it when it is being deleted).
    Ours,
    /// Unscheduled but not runnable here; the reason is logged once.
    CannotRun(String),
    /// Somebody else's (another node, another scheduler, another namespace, finished).
    Ignore,
}

/// Decides what the runner does with `pod`.
pub fn decide(pod: &Pod, node: &str, images: &ImageMap, namespaces: &[String]) -> Decision {
    let Some(spec) = &pod.spec else {
        return Decision::Ignore;
    };
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    if !namespaces.is_empty() && !namespaces.iter().any(|n| n == ns) {
        return Decision::Ignore;
    }
    match spec.node_name.as_deref() {
        Some(n) if n == node => return Decision::Ours,
        Some(n) if !n.is_empty() => return Decision::Ignore,
        _ => {}
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return Decision::Ignore;
    }
    let scheduler = spec.scheduler_name.as_deref().unwrap_or(DEFAULT_SCHEDULER);
    if scheduler != DEFAULT_SCHEDULER && !scheduler.is_empty() {
        return Decision::Ignore;
    }
    let labels = super::node::node_labels(node);
    if let Some((key, value)) = spec
        .node_selector
        .iter()
        .flatten()
        .find(|(k, v)| labels.get(k.as_str()) != Some(v))
    {
        return Decision::CannotRun(format!(
            "nodeSelector {key}={value} does not match node {node}"
        ));
    }
    let all = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter());
    let mut any = false;
    for c in all {
        any = true;
        let image = c.image.as_deref().unwrap_or_default();
        if images.binary(image).is_none() {
            return Decision::CannotRun(format!(
                "container {} image {image:?} is not mapped to a local binary",
                c.name
            ));
        }
    }
    if any {
        Decision::Bind
    } else {
        Decision::CannotRun("pod has no containers".into())
    }
}

/// Binds `pod` to `node` through the pods/binding subresource.
pub async fn bind(api: &Api<Pod>, pod: &Pod, node: &str) -> Result<(), kube::Error> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: pod.metadata.namespace.clone(),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.to_string()),
            ..Default::default()
        },
    };
    let _: serde_json::Value = api
        .create_subresource("binding", &name, &PostParams::default(), &binding)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};

    fn pod(image: &str, node: Option<&str>, scheduler: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(str::to_string),
                scheduler_name: scheduler.map(str::to_string),
                containers: vec![Container {
                    name: "c".into(),
                    image: Some(image.into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn binds_only_unscheduled_runnable_pods() {
        let images = ImageMap::parse(&["ghcr.io/sluice/p=/bin/p"]).unwrap();
        let d = |p: &Pod, ns: &[String]| decide(p, "n1", &images, ns);
        assert_eq!(
            d(&pod("ghcr.io/sluice/p:1", None, None), &[]),
            Decision::Bind
        );
        assert_eq!(
            d(
                &pod("ghcr.io/sluice/p:1", Some(""), Some("default-scheduler")),
                &[]
            ),
            Decision::Bind
        );
        assert_eq!(
            d(&pod("ghcr.io/sluice/p:1", Some("n1"), None), &[]),
            Decision::Ours
        );
        assert_eq!(
            d(&pod("ghcr.io/sluice/p:1", Some("n2"), None), &[]),
            Decision::Ignore
        );
        assert_eq!(
            d(&pod("ghcr.io/sluice/p:1", None, Some("other")), &[]),
            Decision::Ignore
        );
        assert!(matches!(
            d(&pod("nginx", None, None), &[]),
            Decision::CannotRun(_)
        ));
        assert_eq!(
            d(
                &pod("ghcr.io/sluice/p:1", None, None),
                &["other".to_string()]
            ),
            Decision::Ignore
        );
        assert_eq!(
            d(&pod("ghcr.io/sluice/p:1", None, None), &["ns".to_string()]),
            Decision::Bind
        );
    }

    #[test]
    fn honours_node_selectors() {
        let images = ImageMap::parse(&["ghcr.io/sluice/p=/bin/p"]).unwrap();
        let mut p = pod("ghcr.io/sluice/p:1", None, None);
        let select = |p: &mut Pod, k: &str, v: &str| {
            if let Some(spec) = p.spec.as_mut() {
                spec.node_selector = Some([(k.to_string(), v.to_string())].into());
            }
        };
        select(&mut p, "kubernetes.io/hostname", "n1");
        assert_eq!(decide(&p, "n1", &images, &[]), Decision::Bind);
        select(&mut p, "kubernetes.io/hostname", "n2");
        assert!(matches!(
            decide(&p, "n1", &images, &[]),
            Decision::CannotRun(_)
        ));
        select(&mut p, "kubernetes.io/os", "linux");
        assert_eq!(decide(&p, "n1", &images, &[]), Decision::Bind);
    }

    #[test]
    fn a_sidecar_with_an_unmapped_image_makes_the_pod_unrunnable() {
        let images = ImageMap::parse(&["ghcr.io/sluice/p=/bin/p"]).unwrap();
        let mut p = pod("ghcr.io/sluice/p:1", None, None);
        if let Some(spec) = p.spec.as_mut() {
            spec.containers.push(Container {
                name: "side".into(),
                image: Some("envoy".into()),
                ..Default::default()
            });
        }
        assert!(matches!(
            decide(&p, "n1", &images, &[]),
            Decision::CannotRun(_)
        ));
        p.spec = None;
        assert_eq!(decide(&p, "n1", &images, &[]), Decision::Ignore);
    }
}
