//! The CRDs install into the real API server, every example is accepted, and every invalid
//! manifest is refused with its CEL message.

use sluice_e2e::cluster;
use sluice_e2e::env::TestEnv;

fn repo_files(dir: &str) -> Vec<String> {
    let root = sluice_e2e::env::repo_root();
    let mut files: Vec<String> = std::fs::read_dir(root.join(dir))
        .unwrap()
        .map(|e| format!("{dir}/{}", e.unwrap().file_name().to_string_lossy()))
        .filter(|p| p.ends_with(".yaml"))
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn examples_are_accepted_and_invalid_manifests_refused_with_cel_messages() {
    let env = TestEnv::require();
    let client = cluster::client(&env).await.unwrap();
    cluster::install_crds(&client).await.unwrap();
    let ns = cluster::namespace(&client, "crds").await.unwrap();

    let mut applied = 0;
    for file in repo_files("manifests/examples") {
        for doc in cluster::manifest(&file).unwrap() {
            let obj = cluster::apply(&client, &ns, &doc)
                .await
                .unwrap_or_else(|e| panic!("{file}: {} refused: {e}", doc["metadata"]["name"]));
            assert!(obj.metadata.uid.is_some());
            applied += 1;
        }
    }
    assert!(applied >= 10, "only {applied} example documents applied");

    let invalid = repo_files("manifests/invalid");
    assert!(invalid.len() >= 5);
    for file in invalid {
        let text = std::fs::read_to_string(sluice_e2e::env::repo_root().join(&file)).unwrap();
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap();
        let doc = &cluster::manifest(&file).unwrap()[0];
        let err = match cluster::apply(&client, &ns, doc).await {
            Ok(_) => panic!("{file} was accepted; expected refusal with {expect:?}"),
            Err(err) => err,
        };
        match err.downcast_ref::<kube::Error>() {
            Some(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{file}: {status:?}");
                assert!(
                    status.message.contains(expect),
                    "{file}: {} lacks {expect:?}",
                    status.message
                );
            }
            _ => panic!("{file}: unexpected error {err}"),
        }
    }

    // A transition rule: topicName cannot change once set.
    let topic = serde_json::json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "Topic",
        "metadata": {"name": "renamed"}, "spec": {"topicName": "first", "partitions": 1}
    });
    cluster::apply(&client, &ns, &topic).await.unwrap();
    let mut renamed = topic.clone();
    renamed["spec"]["topicName"] = "second".into();
    let err = cluster::apply(&client, &ns, &renamed).await.unwrap_err();
    assert!(
        err.to_string().contains("topicName cannot be changed"),
        "{err}"
    );
    // Passed: the examples' Topics must not keep claiming their Kafka topic names.
    cluster::delete_namespace(&client, &ns).await.unwrap();
}
