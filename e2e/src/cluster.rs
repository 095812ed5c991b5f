//! Helpers for tests against the real API server: a client from the env's kubeconfig,
//! the Sluice CRDs installed, unique namespaces, and applying manifest files.

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, Config};
use serde_json::Value;

use crate::env::TestEnv;

/// Field manager of everything the tests apply.
pub const FIELD_MANAGER: &str = "sluice-e2e";

/// A client for the e2e API server, as its admin.
pub async fn client(env: &TestEnv) -> anyhow::Result<Client> {
    let kubeconfig = Kubeconfig::read_from(env.get("KUBECONFIG")?)?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!(
        "{prefix}-{}-{:06x}",
        std::process::id() % 10_000,
        nanos % 0xff_ffff
    )
}

/// Installs (server-side applies) the Sluice CRDs and waits until they are Established.
pub async fn install_crds(client: &Client) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for crd in sluice_crds::generate::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &params, &Patch::Apply(&crd)).await?;
    }
    for crd in sluice_crds::generate::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let cond = kube::runtime::wait::conditions::is_crd_established();
        tokio::time::timeout(
            Duration::from_secs(30),
            kube::runtime::wait::await_condition(api.clone(), &name, cond),
        )
        .await
        .map_err(|_| anyhow::anyhow!("CRD {name} not Established within 30s"))??;
    }
    Ok(())
}

/// Creates a fresh namespace labelled as an e2e test namespace and returns its name.
pub async fn namespace(client: &Client, prefix: &str) -> anyhow::Result<String> {
    let name = unique(prefix);
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"e2e.sluice.dev/test": prefix}}
    }))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    Ok(name)
}

/// Deletes a test's namespace and, through their owners and finalizers, everything in it
/// (processors stop, Topics with `deletionPolicy: Delete` remove their Kafka topics).
/// Tests call it when they pass; a failed test keeps its namespace for inspection until
/// `e2e/lib/delete-test-namespaces` (run by `make e2e` and `make demo`) removes it.
pub async fn delete_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    Api::<Namespace>::all(client.clone())
        .delete(name, &kube::api::DeleteParams::background())
        .await?;
    Ok(())
}

/// The API of the kind in `doc` (core or sluice.dev kinds, plural by the usual rule).
pub fn api_for(
    client: &Client,
    namespace: &str,
    doc: &Value,
) -> anyhow::Result<Api<DynamicObject>> {
    let api_version = doc["apiVersion"].as_str().unwrap_or_default();
    let kind = doc["kind"].as_str().unwrap_or_default();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    anyhow::ensure!(
        !kind.is_empty() && !version.is_empty(),
        "document without apiVersion/kind"
    );
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let plural = format!("{}s", kind.to_lowercase());
    let resource = ApiResource::from_gvk_with_plural(&gvk, &plural);
    Ok(Api::namespaced_with(client.clone(), namespace, &resource))
}

/// Server-side applies one manifest document into `namespace`.
/// A refusal by the API server comes back as a `kube::Error` inside the `anyhow::Error`.
pub async fn apply(client: &Client, namespace: &str, doc: &Value) -> anyhow::Result<DynamicObject> {
    let name = doc["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let api = api_for(client, namespace, doc)?;
    let mut doc = doc.clone();
    doc["metadata"]["namespace"] = Value::String(namespace.to_string());
    Ok(api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&doc),
        )
        .await?)
}

/// The YAML documents of a manifest file (path relative to the repository root).
pub fn manifest(path: &str) -> anyhow::Result<Vec<Value>> {
    let full = crate::env::repo_root().join(path);
    let text = std::fs::read_to_string(&full)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", full.display()))?;
    Ok(serde_saphyr::from_multiple::<Value>(&text)?)
}
