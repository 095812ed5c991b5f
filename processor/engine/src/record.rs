//! A record as the steps see it: decoded value plus Kafka metadata.

use std::borrow::Cow;
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
    /// No value: a tombstone (read from a change stream, or a group an aggregate of
    /// changes deleted).
    Absent,
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
            Payload::Absent => Value::Null,
        })
    }

    /// Whether this is a JSON object (as a tree or read lazily).
    pub fn is_object(&self) -> bool {
        matches!(
            self,
            Payload::JsonObject(_) | Payload::Json(serde_json::Value::Object(_))
        )
    }

    /// Whether this is a JSON object with the top-level field `name`.
    pub fn has_field(&self, name: &str) -> bool {
        match self {
            Payload::JsonObject(obj) => obj.contains_key(name),
            Payload::Json(serde_json::Value::Object(obj)) => obj.contains_key(name),
            _ => false,
        }
    }

    /// A top-level field of a JSON object as JSON; `None` when the field is absent or the
    /// value is not an object.
    pub fn field_json(
        &self,
        name: &str,
    ) -> Option<Result<Cow<'_, serde_json::Value>, UnreadableField>> {
        match self {
            Payload::JsonObject(obj) => obj.get(name).map(|v| {
                v.to_value()
                    .map(Cow::Owned)
                    .map_err(|e| UnreadableField::new(name, e))
            }),
            Payload::Json(serde_json::Value::Object(obj)) => {
                obj.get(name).map(|v| Ok(Cow::Borrowed(v)))
            }
            _ => None,
        }
    }

    /// A top-level field of a JSON object as CEL sees it; `None` when the field is absent
    /// or the value is not an object.
    pub fn field_to_cel(&self, name: &str) -> Option<Result<Value, UnreadableField>> {
        match self {
            Payload::JsonObject(obj) => obj.get(name).map(|v| field_to_cel(name, v)),
            Payload::Json(serde_json::Value::Object(obj)) => {
                obj.get(name).map(|v| Ok(json_to_cel(v)))
            }
            _ => None,
        }
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
            (Payload::Absent, Payload::Absent) => true,
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
