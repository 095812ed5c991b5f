//! librdkafka properties from flags and a `key=value` file (for SASL/TLS from a mounted Secret).

use std::collections::BTreeMap;

/// The properties of the operator's Kafka clients: the file's, then the bootstrap servers,
/// and never automatic topic creation (a metadata lookup must not create a topic).
pub fn client_properties(
    bootstrap: &str,
    file: BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut props = file;
    props.insert("bootstrap.servers".into(), bootstrap.to_string());
    props.insert("allow.auto.create.topics".into(), "false".into());
    props
        .entry("client.id".into())
        .or_insert_with(|| "sluice-operator".into());
    props
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_flag_wins_and_auto_create_is_off() {
        let file = BTreeMap::from([
            ("bootstrap.servers".to_string(), "old:1".to_string()),
            ("allow.auto.create.topics".to_string(), "true".to_string()),
        ]);
        let p = client_properties("new:9092", file);
        assert_eq!(p["bootstrap.servers"], "new:9092");
        assert_eq!(p["allow.auto.create.topics"], "false");
        assert_eq!(p["client.id"], "sluice-operator");
    }
}
