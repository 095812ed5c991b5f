//! librdkafka properties from flags and a `key=value` file (for SASL/TLS from a mounted Secret).

use std::collections::BTreeMap;

/// Parses `key=value` lines; blank lines and lines starting with `#` or `!` are skipped.
///
/// Returns the line number (1-based) of the first line that is not `key=value`.
pub fn parse_properties(text: &str) -> Result<BTreeMap<String, String>, usize> {
    let mut out = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        let (key, value) = line.split_once('=').ok_or(i + 1)?;
        let key = key.trim();
        if key.is_empty() {
            return Err(i + 1);
        }
        out.insert(key.to_string(), value.trim().to_string());
    }
    Ok(out)
}

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
    fn parses_properties_files() {
        let p = parse_properties(
            "# SASL\nsecurity.protocol=SASL_SSL\n\nsasl.password = a=b \n! also a comment\n",
        )
        .unwrap();
        assert_eq!(p["security.protocol"], "SASL_SSL");
        assert_eq!(p["sasl.password"], "a=b");
        assert_eq!(p.len(), 2);
        assert_eq!(parse_properties("a=1\nnot a property\n"), Err(2));
        assert_eq!(parse_properties("=x"), Err(1));
    }

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
