//! A record as the steps see it: decoded value plus Kafka metadata.

use std::collections::BTreeSet;
use std::sync::Arc;

use cel::Value;
use cel::objects::{Key, Map};

use crate::expr::{field_to_cel, json_to_cel};
use crate::json_object::{JsonObject, UnreadableField};

/// The decoded value of a record. Equality is by content: a JSON object read lazily
/// equals the same object as a tree.
#[derive(Debug, Clone)]
pub enum Payload {
    /// A JSON document as a tree (aggregate outputs, non-object JSON, tests).
    Json(serde_json::Value),
    /// A JSON object as read, its fields parsed only when used.
    JsonObject(JsonObject),
    /// UTF-8 text.
    Text(String),
    /// Raw bytes.
    Bytes(Vec<u8>),
}

impl Payload {
    /// The whole value as CEL sees it.
    pub fn to_cel(&self) -> Result<Value, UnreadableField> {
        Ok(match self {
            Payload::Json(v) => json_to_cel(v),
            Payload::JsonObject(o) => {
                let map = o
                    .iter()
                    .map(|(k, v)| Ok((Key::String(Arc::new(k.to_string())), field_to_cel(k, v)?)))
                    .collect::<Result<std::collections::HashMap<Key, Value>, UnreadableField>>()?;
                Value::Map(Map { map: Arc::new(map) })
            }
            Payload::Text(s) => Value::String(Arc::new(s.clone())),
            Payload::Bytes(b) => Value::Bytes(Arc::new(b.clone())),
        })
    }

    /// Only the named top-level fields of a JSON object (absent fields stay absent, so
    /// reading them fails as it would on the whole value). Other payloads convert whole.
    pub fn to_cel_fields(&self, fields: &BTreeSet<String>) -> Result<Value, UnreadableField> {
        Ok(match self {
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
            Payload::JsonObject(obj) => {
                let map = fields
                    .iter()
                    .filter_map(|f| {
                        obj.get(f).map(|v| {
                            field_to_cel(f, v).map(|v| (Key::String(Arc::new(f.clone())), v))
                        })
                    })
                    .collect::<Result<std::collections::HashMap<Key, Value>, UnreadableField>>()?;
                Value::Map(Map { map: Arc::new(map) })
            }
            other => other.to_cel()?,
        })
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Payload::Json(a), Payload::Json(b)) => a == b,
            (Payload::JsonObject(a), Payload::JsonObject(b)) => a == b,
            (Payload::JsonObject(a), Payload::Json(b))
            | (Payload::Json(b), Payload::JsonObject(a)) => a.to_value().is_ok_and(|a| a == *b),
            (Payload::Text(a), Payload::Text(b)) => a == b,
            (Payload::Bytes(a), Payload::Bytes(b)) => a == b,
            _ => false,
        }
    }
}

/// One record flowing through a pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Topic it was read from.
    pub topic: Arc<str>,
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
            topic: Arc::from(topic),
            partition,
            offset,
            timestamp,
            key,
            headers: Vec::new(),
            value,
        }
    }
}
