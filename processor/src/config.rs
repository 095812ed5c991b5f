//! Loading a pipeline's configuration: the file the operator mounts, or a Pipeline manifest.

use std::collections::BTreeMap;
use std::path::Path;

use sluice_crds::pipeline::PipelineSpec;

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file is not YAML or JSON.
    #[error("{path} is not valid YAML or JSON: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message.
        message: String,
    },
    /// The content does not describe a pipeline.
    #[error("{path}: {message}")]
    Shape {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A `--kafka-config` line is not `key=value`.
    #[error("{path} line {line}: expected key=value")]
    KafkaProperty {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
    },
}

/// A pipeline to run: its identity and spec.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Pipeline name.
    pub name: String,
    /// Namespace (`default` when not given).
    pub namespace: String,
    /// The spec.
    pub spec: PipelineSpec,
    /// A consumer group set by the operator (`SLUICE_GROUP_ID`), instead of the default.
    pub group_override: Option<String>,
}

impl PipelineConfig {
    /// The consumer group: stable per pipeline, so restarts and rescales keep offsets.
    pub fn group_id(&self) -> String {
        if let Some(g) = &self.group_override {
            return g.clone();
        }
        sluice_crds::contract::group_id(&self.namespace, &self.name)
    }

    /// Reads a config file (see [`PipelineConfig::parse`]).
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Accepts, as YAML or JSON: a `kind: Pipeline` manifest; `{name, namespace, spec}`;
    /// or the spec's fields with `name` and `namespace` beside them.
    pub fn parse(text: &str, origin: &str) -> Result<Self, LoadError> {
        let shape = |message: String| LoadError::Shape {
            path: origin.to_string(),
            message,
        };
        let doc: serde_json::Value =
            serde_saphyr::from_str(text).map_err(|e| LoadError::Parse {
                path: origin.to_string(),
                message: e.to_string(),
            })?;
        let serde_json::Value::Object(mut obj) = doc else {
            return Err(shape("expected a mapping".to_string()));
        };
        let text_field =
            |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).map(str::to_string);
        let (name, namespace, spec) = if obj.contains_key("kind") {
            let kind = text_field(obj.get("kind")).unwrap_or_default();
            if kind != "Pipeline" {
                return Err(shape(format!("kind is {kind:?}, expected Pipeline")));
            }
            let meta = obj.get("metadata").cloned().unwrap_or_default();
            (
                text_field(meta.get("name")),
                text_field(meta.get("namespace")),
                obj.remove("spec")
                    .ok_or_else(|| shape("the manifest has no spec".to_string()))?,
            )
        } else if let Some(spec) = obj.remove("spec") {
            (
                text_field(obj.get("name")),
                text_field(obj.get("namespace")),
                spec,
            )
        } else {
            let name = text_field(obj.remove("name").as_ref());
            let namespace = text_field(obj.remove("namespace").as_ref());
            (name, namespace, serde_json::Value::Object(obj))
        };
        let name = name.ok_or_else(|| shape("the pipeline has no name".to_string()))?;
        let spec: PipelineSpec = serde_json::from_value(spec)
            .map_err(|e| shape(format!("invalid pipeline spec: {e}")))?;
        Ok(Self {
            name,
            namespace: namespace.unwrap_or_else(|| "default".to_string()),
            spec,
            group_override: None,
        })
    }
}

/// Reads extra librdkafka properties: `key=value` lines, `#` comments.
pub fn load_kafka_properties(path: &Path) -> Result<BTreeMap<String, String>, LoadError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: origin.clone(),
        source,
    })?;
    parse_kafka_properties(&text, &origin)
}

/// Parses `key=value` lines ([`sluice_crds::contract::parse_properties`]).
pub fn parse_kafka_properties(
    text: &str,
    origin: &str,
) -> Result<BTreeMap<String, String>, LoadError> {
    sluice_crds::contract::parse_properties(text).map_err(|line| LoadError::KafkaProperty {
        path: origin.to_string(),
        line,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_manifest() {
        let c = PipelineConfig::parse(
            "apiVersion: sluice.dev/v1alpha1\nkind: Pipeline\nmetadata: {name: orders, namespace: shop}\nspec:\n  inputs: [o]\n  outputs: [{topic: x}]\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.group_id(), "sluice-shop-orders");
        assert_eq!(c.spec.inputs, vec!["o"]);
    }

    #[test]
    fn reads_the_operator_file_in_both_shapes() {
        let a = PipelineConfig::parse(
            r#"{"name":"p","namespace":"shop","spec":{"inputs":["o"]}}"#,
            "t",
        )
        .unwrap();
        let b = PipelineConfig::parse(
            "name: p\nnamespace: shop\ninputs: [o]\ncommitInterval: 1s\n",
            "t",
        )
        .unwrap();
        assert_eq!(a.group_id(), b.group_id());
        assert_eq!(b.spec.commit_interval, "1s");
    }

    #[test]
    fn says_what_is_wrong() {
        let e = PipelineConfig::parse("kind: Topic\nspec: {}\n", "f.yaml").unwrap_err();
        assert!(e.to_string().contains("expected Pipeline"), "{e}");
        let e = PipelineConfig::parse("inputs: [o]\n", "f.yaml").unwrap_err();
        assert!(e.to_string().contains("no name"), "{e}");
        let e = PipelineConfig::parse("name: p\ninputs: 3\n", "f.yaml").unwrap_err();
        assert!(e.to_string().contains("invalid pipeline spec"), "{e}");
    }

    #[test]
    fn parses_kafka_properties() {
        let p = parse_kafka_properties(
            "# sasl\nsecurity.protocol=SASL_SSL\n sasl.password = a=b \n",
            "f",
        )
        .unwrap();
        assert_eq!(p["security.protocol"], "SASL_SSL");
        assert_eq!(p["sasl.password"], "a=b");
        assert!(parse_kafka_properties("nokey\n", "f").is_err());
    }
}
