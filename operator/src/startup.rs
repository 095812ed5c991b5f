//! Checks made once at start: the CRDs are installed.

use kube::api::ListParams;
use kube::{Api, Client};
use sluice_crds::Topic;

use crate::error::{Error, Result};

/// Fails with [`Error::CrdMissing`] when the Topic CRD is not served by the API server.
pub async fn check_crds(client: &Client, namespace: Option<&str>) -> Result<()> {
    let api: Api<Topic> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => {
            Err(Error::CrdMissing("topics.sluice.dev".into()))
        }
        Err(source) => Err(Error::Kube {
            action: "check that the CRDs are installed",
            source,
        }),
    }
}
