//! Every example parses into the Rust types and passes the CRDs' CEL rules; every invalid
//! manifest is refused by a CEL rule with the message it names; the generated YAML is fresh.

use std::path::{Path, PathBuf};

use kube::core::cel::validate_cel;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sluice_crds::{Connector, Pipeline, Topic};

/// The checkout under test: Cargo says it at run time (a target directory shared by
/// several checkouts can hold a binary compiled in another one).
fn repo() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("..")
}

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML files in {dir}");
    files
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Deserializes into `T` and checks its CEL rules; returns the CEL errors as text.
fn check<T>(doc: &Value) -> Result<(), String>
where
    T: DeserializeOwned + kube::CustomResourceExt + serde::Serialize,
{
    let obj: T = serde_json::from_value(doc.clone()).map_err(|e| format!("does not parse: {e}"))?;
    validate_cel(&obj).map_err(|e| e.to_string())
}

fn check_any(doc: &Value) -> Option<Result<(), String>> {
    match doc["kind"].as_str()? {
        "Topic" => Some(check::<Topic>(doc)),
        "Connector" => Some(check::<Connector>(doc)),
        "Pipeline" => Some(check::<Pipeline>(doc)),
        _ => None,
    }
}

#[test]
fn every_example_parses_and_passes_cel() {
    let mut checked = 0;
    for path in yaml_files("manifests/examples") {
        for doc in documents(&path) {
            if let Some(result) = check_any(&doc) {
                result.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 7,
        "only {checked} Sluice resources in the examples"
    );
}

#[test]
fn seed_pipeline_reads_as_written() {
    let docs = documents(&repo().join("manifests/examples/orders-pipeline.yaml"));
    let pipeline: Pipeline = serde_json::from_value(docs[0].clone()).unwrap();
    assert_eq!(pipeline.spec.inputs, vec!["orders"]);
    assert_eq!(
        pipeline.spec.delivery,
        sluice_crds::pipeline::Delivery::ExactlyOnce
    );
    let agg = pipeline.spec.steps[1].aggregate.as_ref().unwrap();
    assert_eq!(agg.group_by["region"], "value.region");
    assert_eq!(pipeline.spec.outputs[0].topic, "region-order-totals");
    assert_eq!(pipeline.spec.dead_letter.unwrap().topic, "orders-dlq");
    let topics = documents(&repo().join("manifests/examples/orders-topics.yaml"));
    let orders: Topic = serde_json::from_value(topics[0].clone()).unwrap();
    assert_eq!(
        (orders.kafka_name().as_str(), orders.spec.partitions),
        ("orders", 6)
    );
}

#[test]
fn every_invalid_manifest_is_refused_with_its_message() {
    for path in yaml_files("manifests/invalid") {
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} has no `# expect:` line", path.display()));
        let doc = &documents(&path)[0];
        match check_any(doc).expect("a Sluice kind") {
            Ok(()) => panic!("{} passed but should fail with {expect:?}", path.display()),
            Err(e) => assert!(
                e.contains(expect),
                "{}: {e} lacks {expect:?}",
                path.display()
            ),
        }
    }
}

#[test]
fn topic_name_cannot_change() {
    let old: Topic = serde_json::from_value(serde_json::json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "Topic",
        "metadata": {"name": "t"}, "spec": {"topicName": "a", "partitions": 1}
    }))
    .unwrap();
    let mut new = old.clone();
    new.spec.topic_name = Some("b".into());
    let err = kube::core::cel::validate_cel_update(&new, &old).unwrap_err();
    assert!(
        err.to_string().contains("topicName cannot be changed"),
        "{err}"
    );
    assert!(kube::core::cel::validate_cel_update(&old, &old).is_ok());
}

#[test]
fn generated_yaml_is_fresh() {
    let stale = sluice_crds::generate::stale(&repo()).unwrap();
    assert!(
        stale.is_empty(),
        "stale generated files {stale:?}: run `make generate` and commit"
    );
    let install = std::fs::read_to_string(repo().join("manifests/install.yaml")).unwrap();
    for crd in sluice_crds::generate::crds() {
        let name = crd.metadata.name.unwrap();
        assert!(
            install.contains(&format!("name: {name}")),
            "manifests/install.yaml lacks the {name} CRD: run `make generate`"
        );
    }
}
