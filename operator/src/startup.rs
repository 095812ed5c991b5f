//! Checks made once at start: the CRDs are installed.

use kube::api::ListParams;
use kube::{Api, Client};
use sluice_crds::{Connector, Pipeline, Topic};

use crate::error::{Error, Result};

/// Fails with [`Error::CrdMissing`] when a CRD the controllers watch is not served by the
/// API server.
pub async fn check_crds(client: &Client, namespace: Option<&str>) -> Result<()> {
    check_crd::<Topic>(client, namespace, "topics.sluice.dev").await?;
    check_crd::<Pipeline>(client, namespace, "pipelines.sluice.dev").await?;
    check_crd::<Connector>(client, namespace, "connectors.sluice.dev").await
}

async fn check_crd<K>(client: &Client, namespace: Option<&str>, crd: &str) -> Result<()>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    let api: Api<K> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Err(Error::CrdMissing(crd.into())),
        Err(source) => Err(Error::Kube {
            action: "check that the CRDs are installed".into(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::client::Body;

    /// A client whose API server answers the one request with `status` and `body`.
    fn scripted(status: u16, body: &'static str) -> (Client, tokio::task::JoinHandle<String>) {
        let (service, mut handle) =
            tower_test::mock::pair::<http::Request<Body>, http::Response<Body>>();
        let server = tokio::spawn(async move {
            let (request, send) = handle.next_request().await.expect("one request");
            send.send_response(
                http::Response::builder()
                    .status(status)
                    .body(Body::from(body.as_bytes().to_vec()))
                    .expect("a response"),
            );
            request.uri().to_string()
        });
        (Client::new(service, "default"), server)
    }

    #[tokio::test]
    async fn a_missing_crd_is_a_clear_error() {
        let (client, server) = scripted(
            404,
            r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"the server could not find the requested resource","reason":"NotFound","code":404}"#,
        );
        let err = check_crds(&client, None).await.unwrap_err();
        assert!(matches!(err, Error::CrdMissing(_)), "{err:?}");
        assert!(
            err.to_string()
                .contains("topics.sluice.dev is not installed"),
            "{err}"
        );
        assert!(
            server
                .await
                .unwrap()
                .starts_with("/apis/sluice.dev/v1alpha1/topics?")
        );
    }

    #[tokio::test]
    async fn installed_crds_pass_in_the_watched_namespace() {
        let (client, server) = scripted(
            200,
            r#"{"kind":"PartialObjectMetadataList","apiVersion":"meta.k8s.io/v1","metadata":{},"items":[]}"#,
        );
        check_crd::<Topic>(&client, Some("team-a"), "topics.sluice.dev")
            .await
            .unwrap();
        assert!(
            server
                .await
                .unwrap()
                .starts_with("/apis/sluice.dev/v1alpha1/namespaces/team-a/topics?")
        );
    }
}
