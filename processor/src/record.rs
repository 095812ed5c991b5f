//! A record as the steps see it: decoded value plus Kafka metadata.

use std::collections::BTreeSet;
use std::sync::Arc;

use cel::Value;
use cel::objects::{Key, Map};

use crate::expr::json_to_cel;

/// The decoded value of a record.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// A parsed JSON document.
    Json(serde_json::Value),
    /// UTF-8 text.
    Text(String),
    /// Raw bytes.
    Bytes(Vec<u8>),
}

impl Payload {
    /// The whole value as CEL sees it.
    pub fn to_cel(&self) -> Value {
        match self {
            Payload::Json(v) => json_to_cel(v),
            Payload::Text(s) => Value::String(Arc::new(s.clone())),
            Payload::Bytes(b) => Value::Bytes(Arc::new(b.clone())),
        }
    }

    /// Only the named top-level fields of a JSON object (absent fields stay absent, so
    /// reading them fails as it would on the whole value). Other payloads convert whole.
    pub fn to_cel_fields(&self, fields: &BTreeSet<String>) -> Value {
        match self {
            Payload::Json(serde_json::Value::Object(obj)) => {
                let map: std::collections::HashMap<Key, Value> = fields
                    .iter()
                    .filter_map(|f| {
                        obj.get(f)
                            .map(|v| (Key::String(Arc::new(f.clone())), json_to_cel(v)))
                    })
                    .collect();
                Value::Map(Map { map: Arc::new(map) })
            }
            other => other.to_cel(),
        }
    }
}

/// One record flowing through a pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Topic it was read from.
    pub topic: String,
    /// Partition it was read from.
    pub partition: i32,
    /// Offset it was read from.
    pub offset: i64,
    /// Timestamp in milliseconds since the epoch.
    pub timestamp: i64,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Decoded value.
    pub value: Payload,
}

impl Record {
    /// A record without headers.
    pub fn new(
        topic: &str,
        partition: i32,
        offset: i64,
        timestamp: i64,
        key: Option<Vec<u8>>,
        value: Payload,
    ) -> Self {
        Self {
            topic: topic.to_string(),
            partition,
            offset,
            timestamp,
            key,
            headers: Vec::new(),
            value,
        }
    }
}
