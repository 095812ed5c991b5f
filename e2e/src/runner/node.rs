//! The Node this runner plays the kubelet of: registration, status and Lease heartbeats.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client, Resource};
use serde_json::{Value, json};

use super::error::RunnerError;
use super::fields::POD_IP;

/// The field manager of everything the runner writes with server-side apply.
pub const FIELD_MANAGER: &str = "sluice-runner";
/// How often the Lease is renewed.
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
/// The Lease duration the node lifecycle controller checks against.
const LEASE_SECONDS: i32 = 40;
/// Pods the node accepts.
pub const MAX_PODS: u32 = 110;

/// The labels of the Node (what `nodeSelector`s are matched against).
pub fn node_labels(name: &str) -> BTreeMap<&'static str, String> {
    [
        ("kubernetes.io/hostname", name.to_string()),
        ("kubernetes.io/os", "linux".to_string()),
        ("kubernetes.io/arch", go_arch().to_string()),
        (
            "node.kubernetes.io/instance-type",
            "sluice-runner".to_string(),
        ),
        ("sluice.dev/e2e-runner", "true".to_string()),
    ]
    .into()
}

/// The Node object (labels) to apply.
pub fn node_object(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": name, "labels": node_labels(name) },
        // The runner binds the pods it runs itself; the taint keeps kube-scheduler, which
        // places pods on the environment's kubelet node, from binding any here.
        "spec": { "taints": [{ "key": RUNNER_TAINT, "value": "true", "effect": "NoSchedule" }] },
    })
}

/// The taint on the runner's node: kube-scheduler leaves it alone.
pub const RUNNER_TAINT: &str = "sluice.dev/process-runner";

/// The Node status: Ready, no pressure, this machine's capacity.
pub fn node_status(name: &str, now: Timestamp, started: Timestamp) -> Value {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let capacity = json!({
        "cpu": cpus.to_string(),
        "memory": format!("{}Ki", memory_kib()),
        "pods": MAX_PODS.to_string(),
        "ephemeral-storage": "100Gi",
    });
    let condition = |kind: &str, status: &str, reason: &str, message: &str| {
        json!({
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": Time(now),
            "lastTransitionTime": Time(started),
        })
    };
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": name },
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "sluice-runner has sufficient memory"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "sluice-runner has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "sluice-runner has sufficient PID"),
                condition("Ready", "True", "KubeletReady", "sluice-runner is posting ready status"),
            ],
            "addresses": [
                { "type": "InternalIP", "address": POD_IP },
                { "type": "Hostname", "address": name },
            ],
            "daemonEndpoints": { "kubeletEndpoint": { "Port": 0 } },
            "nodeInfo": {
                "machineID": "sluice-runner",
                "systemUUID": "sluice-runner",
                "bootID": format!("sluice-runner-{}", started.as_second()),
                "kernelVersion": "",
                "osImage": "sluice-runner (local processes)",
                "containerRuntimeVersion": "sluice-runner://0.1",
                "kubeletVersion": "v1.34.0-sluice-runner",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": go_arch(),
            },
        },
    })
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn memory_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(8 * 1024 * 1024)
}

/// Registers the Node (or takes it over) and marks it Ready.
pub async fn register(client: &Client, name: &str, started: Timestamp) -> Result<(), RunnerError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let err = |source| RunnerError::RegisterNode {
        node: name.to_string(),
        source,
    };
    nodes
        .patch(name, &params, &Patch::Apply(node_object(name)))
        .await
        .map_err(err)?;
    heartbeat(client, name, started).await.map_err(err)
}

/// Renews the Lease and the Node status.
pub async fn heartbeat(client: &Client, name: &str, started: Timestamp) -> Result<(), kube::Error> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let now = Timestamp::now();
    let nodes: Api<Node> = Api::all(client.clone());
    let node = nodes
        .patch_status(
            name,
            &params,
            &Patch::Apply(node_status(name, now, started)),
        )
        .await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let owner = node.owner_ref(&());
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": { "name": name, "ownerReferences": owner.into_iter().collect::<Vec<_>>() },
        "spec": {
            "holderIdentity": name,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": MicroTime(now),
        },
    });
    leases.patch(name, &params, &Patch::Apply(lease)).await?;
    Ok(())
}

/// Deletes the Node (used by tests that start their own runner).
pub async fn delete(client: &Client, name: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    if let Err(err) = nodes.delete(name, &DeleteParams::default()).await {
        tracing::warn!(node = name, %err, "deleting the node failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_ready_with_capacity() {
        let now = Timestamp::from_second(10).unwrap();
        let v = node_status("n1", now, now);
        let node: Node = serde_json::from_value(v).unwrap();
        let status = node.status.unwrap();
        let ready = status
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "True");
        let cap = status.capacity.unwrap();
        assert_eq!(cap["pods"].0, "110");
        assert!(cap["memory"].0.ends_with("Ki"));
        assert_eq!(status.addresses.unwrap()[0].address, "127.0.0.1");
    }

    #[test]
    fn node_object_parses() {
        let node: Node = serde_json::from_value(node_object("n1")).unwrap();
        assert_eq!(
            node.metadata.labels.unwrap()["kubernetes.io/hostname"],
            "n1"
        );
        let taints = node.spec.unwrap().taints.unwrap();
        assert_eq!(taints[0].key, RUNNER_TAINT);
    }
}
