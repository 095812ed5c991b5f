//! ConfigMaps and Secrets a pod references, fetched once per pod start.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client};

use super::error::PrepareError;

/// Key -> bytes of a ConfigMap (data and binaryData) or a Secret.
pub type Data = BTreeMap<String, Vec<u8>>;

/// A per-pod cache of the ConfigMaps and Secrets it references.
pub struct Objects {
    config_maps: Api<ConfigMap>,
    secrets: Api<Secret>,
    namespace: String,
    cache: HashMap<(&'static str, String), Option<Data>>,
}

impl Objects {
    /// A cache for `namespace`.
    pub fn new(client: Client, namespace: &str) -> Self {
        Self {
            config_maps: Api::namespaced(client.clone(), namespace),
            secrets: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            cache: HashMap::new(),
        }
    }

    /// A ConfigMap's data; `None` when it is missing and `optional`, an error when it is
    /// missing and required.
    pub async fn config_map(
        &mut self,
        name: &str,
        optional: bool,
    ) -> Result<Option<Data>, PrepareError> {
        self.get("ConfigMap", name, optional).await
    }

    /// A Secret's data, as [`Objects::config_map`].
    pub async fn secret(
        &mut self,
        name: &str,
        optional: bool,
    ) -> Result<Option<Data>, PrepareError> {
        self.get("Secret", name, optional).await
    }

    async fn get(
        &mut self,
        kind: &'static str,
        name: &str,
        optional: bool,
    ) -> Result<Option<Data>, PrepareError> {
        let key = (kind, name.to_string());
        if !self.cache.contains_key(&key) {
            let action = format!("reading {kind} {}/{name}", self.namespace);
            let data = if kind == "Secret" {
                self.secrets
                    .get_opt(name)
                    .await
                    .map_err(PrepareError::api(action))?
                    .map(secret_data)
            } else {
                self.config_maps
                    .get_opt(name)
                    .await
                    .map_err(PrepareError::api(action))?
                    .map(config_map_data)
            };
            self.cache.insert(key.clone(), data);
        }
        match self.cache.get(&key).cloned().flatten() {
            Some(data) => Ok(Some(data)),
            None if optional => Ok(None),
            None => Err(PrepareError::NotFound {
                kind,
                namespace: self.namespace.clone(),
                name: name.to_string(),
            }),
        }
    }
}

fn config_map_data(cm: ConfigMap) -> Data {
    let mut data: Data = cm
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    data.extend(
        cm.binary_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0)),
    );
    data
}

fn secret_data(s: Secret) -> Data {
    let mut data: Data = s
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    data.extend(
        s.string_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes())),
    );
    data
}
