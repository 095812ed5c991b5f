//! Downward API values (`fieldRef`, `resourceFieldRef`) of a pod on this node.
//!
//! Every pod runs on 127.0.0.1, so `status.podIP` and `status.hostIP` are `127.0.0.1`.

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The pod and host IP of every pod the runner runs.
pub const POD_IP: &str = "127.0.0.1";

/// The value of a `fieldRef.fieldPath`, `None` when the runner does not support it.
pub fn field_value(pod: &Pod, node: &str, path: &str) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let keyed = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_prefix("['"))
            .and_then(|r| r.strip_suffix("']"))
    };
    if let Some(key) = keyed("metadata.labels") {
        return Some(
            meta.labels
                .as_ref()
                .and_then(|l| l.get(key))
                .cloned()
                .unwrap_or_default(),
        );
    }
    if let Some(key) = keyed("metadata.annotations") {
        return Some(
            meta.annotations
                .as_ref()
                .and_then(|a| a.get(key))
                .cloned()
                .unwrap_or_default(),
        );
    }
    let map_lines = |m: Option<&std::collections::BTreeMap<String, String>>| {
        m.into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", serde_json::Value::String(v.clone())))
            .collect::<Vec<_>>()
            .join("\n")
    };
    Some(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => map_lines(meta.labels.as_ref()),
        "metadata.annotations" => map_lines(meta.annotations.as_ref()),
        "spec.nodeName" => node.to_string(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".to_string()),
        "status.podIP" | "status.podIPs" | "status.hostIP" | "status.hostIPs" => POD_IP.to_string(),
        _ => return None,
    })
}

/// The value of a `resourceFieldRef` for `container`: its limit (or request), else this
/// machine's capacity, in units of `divisor` (default 1) rounded up, as the kubelet does.
pub fn resource_value(
    container: &Container,
    resource: &str,
    divisor: Option<&Quantity>,
) -> Option<String> {
    let resources = container.resources.as_ref();
    let (kind, name) = resource.split_once('.')?;
    let set = match kind {
        "limits" => resources.and_then(|r| r.limits.as_ref()),
        "requests" => resources.and_then(|r| r.requests.as_ref()),
        _ => return None,
    };
    let amount = match set.and_then(|m| m.get(name)) {
        Some(q) => parse_quantity(&q.0)?,
        None => match name {
            "cpu" => std::thread::available_parallelism().map_or(1, |n| n.get()) as f64,
            "memory" | "ephemeral-storage" => 8.0 * 1024.0 * 1024.0 * 1024.0,
            _ => return None,
        },
    };
    let divisor = match divisor {
        Some(q) => parse_quantity(&q.0).filter(|d| *d > 0.0)?,
        None => 1.0,
    };
    Some(format!("{}", (amount / divisor).ceil() as u64))
}

/// Parses a Kubernetes quantity (`500m`, `2`, `1Gi`, `1e3`, `64M`) to a number.
pub fn parse_quantity(q: &str) -> Option<f64> {
    const SUFFIXES: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("Ei", 1152921504606846976.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    let q = q.trim();
    for (suffix, factor) in SUFFIXES {
        if let Some(num) = q.strip_suffix(suffix) {
            return num.parse::<f64>().ok().map(|n| n * factor);
        }
    }
    q.parse::<f64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};
    use kube::api::ObjectMeta;

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                uid: Some("u-1".into()),
                labels: Some([("app".to_string(), "x".to_string())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec::default()),
            ..Default::default()
        }
    }

    #[test]
    fn resolves_supported_field_paths() {
        let p = pod();
        let f = |path| field_value(&p, "node-1", path);
        assert_eq!(f("metadata.name").as_deref(), Some("p"));
        assert_eq!(f("metadata.namespace").as_deref(), Some("ns"));
        assert_eq!(f("metadata.uid").as_deref(), Some("u-1"));
        assert_eq!(f("metadata.labels['app']").as_deref(), Some("x"));
        assert_eq!(f("metadata.labels['none']").as_deref(), Some(""));
        assert_eq!(f("metadata.labels").as_deref(), Some("app=\"x\""));
        assert_eq!(f("spec.nodeName").as_deref(), Some("node-1"));
        assert_eq!(f("spec.serviceAccountName").as_deref(), Some("default"));
        assert_eq!(f("status.podIP").as_deref(), Some("127.0.0.1"));
        assert_eq!(f("spec.bogus"), None);
    }

    #[test]
    fn resource_values_use_limits_and_divisors() {
        let c = Container {
            resources: Some(ResourceRequirements {
                limits: Some(
                    [
                        ("cpu".to_string(), Quantity("1500m".into())),
                        ("memory".to_string(), Quantity("64Mi".into())),
                    ]
                    .into(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(resource_value(&c, "limits.cpu", None).as_deref(), Some("2"));
        assert_eq!(
            resource_value(&c, "limits.memory", Some(&Quantity("1Mi".into()))).as_deref(),
            Some("64")
        );
        assert_eq!(resource_value(&c, "limits.gpu", None), None);
        assert_eq!(resource_value(&c, "bogus", None), None);
    }

    #[test]
    fn parses_quantities() {
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("1Gi"), Some(1073741824.0));
        assert_eq!(parse_quantity("1e3"), Some(1000.0));
        assert_eq!(parse_quantity("x"), None);
    }
}
