//! The runner's kubeconfig, and the per-pod kubeconfig that makes in-cluster clients
//! authenticate as the pod's ServiceAccount.
//!
//! A process cannot see `/var/run/secrets/kubernetes.io/serviceaccount` or the
//! `KUBERNETES_SERVICE_*` address of a real pod, so for every pod with a projected
//! ServiceAccount token the runner writes `<pod dir>/kubeconfig`: the API server and CA
//! of the runner's own kubeconfig, and a `tokenFile` user pointing at the pod's token
//! (kube-rs and client-go re-read token files, so refreshed tokens are picked up). The
//! process gets `KUBECONFIG` set to it, so `kube::Client::try_default()` talks to the API
//! server as `system:serviceaccount:<ns>:<sa>` and the chart's RBAC is exercised.

use std::path::{Path, PathBuf};

use base64::Engine;
use kube::config::{
    AuthInfo, Cluster, Context, KubeConfigOptions, Kubeconfig, NamedAuthInfo, NamedCluster,
    NamedContext,
};

use super::error::RunnerError;

/// The runner's connection to the API server.
pub struct ApiAccess {
    /// The client the runner uses.
    pub client: kube::Client,
    /// The cluster entry (server, CA) copied into pod kubeconfigs, CA inlined.
    pub cluster: Cluster,
    /// The cluster CA as PEM, when the kubeconfig has one.
    pub ca_pem: Option<Vec<u8>>,
}

/// Reads `path` and builds the runner's client.
pub async fn load(path: &Path) -> Result<ApiAccess, RunnerError> {
    let kubeconfig = Kubeconfig::read_from(path).map_err(|source| RunnerError::ReadKubeconfig {
        path: path.to_path_buf(),
        source,
    })?;
    let mut cluster = current_cluster(&kubeconfig).ok_or_else(|| RunnerError::NoCluster {
        path: path.to_path_buf(),
    })?;
    let ca_pem = match (
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    ) {
        (Some(data), _) => base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .ok(),
        (None, Some(file)) => std::fs::read(file).ok(),
        (None, None) => None,
    };
    if let Some(pem) = &ca_pem {
        cluster.certificate_authority_data =
            Some(base64::engine::general_purpose::STANDARD.encode(pem));
        cluster.certificate_authority = None;
    }
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|source| RunnerError::ReadKubeconfig {
            path: path.to_path_buf(),
            source,
        })?;
    let client = kube::Client::try_from(config).map_err(|source| RunnerError::Client {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(ApiAccess {
        client,
        cluster,
        ca_pem,
    })
}

/// The cluster of the current context (or the only cluster).
fn current_cluster(kubeconfig: &Kubeconfig) -> Option<Cluster> {
    let by_context = kubeconfig.current_context.as_ref().and_then(|current| {
        let context = kubeconfig.contexts.iter().find(|c| &c.name == current)?;
        let cluster_name = &context.context.as_ref()?.cluster;
        kubeconfig.clusters.iter().find(|c| &c.name == cluster_name)
    });
    by_context
        .or_else(|| kubeconfig.clusters.first())
        .and_then(|c| c.cluster.clone())
}

/// The kubeconfig for a pod: `cluster`, the pod's namespace, and its token file.
pub fn for_pod(cluster: &Cluster, namespace: &str, token_file: &Path) -> Kubeconfig {
    const NAME: &str = "pod";
    Kubeconfig {
        clusters: vec![NamedCluster {
            name: NAME.into(),
            cluster: Some(cluster.clone()),
            ..Default::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: NAME.into(),
            auth_info: Some(AuthInfo {
                token_file: Some(token_file.to_string_lossy().into_owned()),
                ..Default::default()
            }),
            ..Default::default()
        }],
        contexts: vec![NamedContext {
            name: NAME.into(),
            context: Some(Context {
                cluster: NAME.into(),
                user: Some(NAME.into()),
                namespace: Some(namespace.into()),
                ..Default::default()
            }),
            ..Default::default()
        }],
        current_context: Some(NAME.into()),
        api_version: Some("v1".into()),
        kind: Some("Config".into()),
        ..Default::default()
    }
}

/// Writes a pod kubeconfig to `path` as YAML.
pub fn write_for_pod(
    path: &Path,
    cluster: &Cluster,
    namespace: &str,
    token_file: &Path,
) -> Result<PathBuf, super::error::PrepareError> {
    let text =
        serde_json::to_string_pretty(&for_pod(cluster, namespace, token_file)).map_err(|e| {
            super::error::PrepareError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other(e),
            }
        })?;
    super::volumes::write_atomic(path, text.as_bytes(), 0o600)?;
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_kubeconfig_uses_the_token_file_and_namespace() {
        let cluster = Cluster {
            server: Some("https://127.0.0.1:6443".into()),
            certificate_authority_data: Some("Q0E=".into()),
            ..Default::default()
        };
        let text = serde_json::to_string(&for_pod(&cluster, "ns1", Path::new("/w/token"))).unwrap();
        let parsed = Kubeconfig::from_yaml(&text).unwrap();
        assert_eq!(parsed.current_context.as_deref(), Some("pod"));
        let user = parsed.auth_infos[0].auth_info.as_ref().unwrap();
        assert_eq!(user.token_file.as_deref(), Some("/w/token"));
        assert!(user.client_certificate_data.is_none());
        let ctx = parsed.contexts[0].context.as_ref().unwrap();
        assert_eq!(ctx.namespace.as_deref(), Some("ns1"));
        let c = parsed.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(c.server.as_deref(), Some("https://127.0.0.1:6443"));
        assert_eq!(
            current_cluster(&parsed)
                .unwrap()
                .certificate_authority_data
                .as_deref(),
            Some("Q0E=")
        );
    }
}
