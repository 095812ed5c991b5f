//! Errors of the runner.

use std::path::PathBuf;

/// A failure that stops the runner.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The kubeconfig could not be read.
    #[error("reading kubeconfig {path}: {source}")]
    ReadKubeconfig {
        /// Its path.
        path: PathBuf,
        /// Why.
        source: kube::config::KubeconfigError,
    },
    /// No client could be built from the kubeconfig.
    #[error("building a Kubernetes client from {path}: {source}")]
    Client {
        /// The kubeconfig.
        path: PathBuf,
        /// Why.
        source: kube::Error,
    },
    /// The kubeconfig has no usable cluster.
    #[error("kubeconfig {path} has no cluster for its current context")]
    NoCluster {
        /// The kubeconfig.
        path: PathBuf,
    },
    /// Registering the Node failed.
    #[error("registering node {node}: {source}")]
    RegisterNode {
        /// Node name.
        node: String,
        /// Why.
        source: kube::Error,
    },
    /// A local directory could not be created.
    #[error("creating {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Why a pod could not be prepared to run (reported as `CreateContainerConfigError`
/// and retried, as the kubelet does).
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// A referenced ConfigMap or Secret does not exist.
    #[error("{kind} {namespace}/{name} not found")]
    NotFound {
        /// `ConfigMap` or `Secret`.
        kind: &'static str,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// A referenced key is missing.
    #[error("key {key:?} not found in {kind} {name}")]
    MissingKey {
        /// `ConfigMap` or `Secret`.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The key.
        key: String,
    },
    /// A fieldRef or resourceFieldRef the runner cannot resolve.
    #[error("unsupported field reference {0:?}")]
    UnsupportedField(String),
    /// An API call failed.
    #[error("{action}: {source}")]
    Api {
        /// What was being done.
        action: String,
        /// Why.
        source: kube::Error,
    },
    /// Writing a volume file failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The service account token was not issued.
    #[error("TokenRequest for service account {namespace}/{name} returned no token")]
    NoToken {
        /// Namespace.
        namespace: String,
        /// Service account.
        name: String,
    },
    /// A container image is not mapped to a binary (the pod changed under us).
    #[error("image {0:?} is not mapped to a local binary")]
    UnmappedImage(String),
    /// No free port could be found.
    #[error("allocating a local port: {0}")]
    Port(std::io::Error),
}

impl PrepareError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }

    pub(crate) fn api(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let action = action.into();
        move |source| Self::Api { action, source }
    }
}
