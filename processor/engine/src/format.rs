//! Record formats: bytes on the wire to [`Payload`] and back.

use sluice_crds::pipeline::Format;

use crate::json_object::JsonObject;
use crate::record::Payload;

/// A value that could not be decoded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DecodeError {
    /// The record has no value (a tombstone).
    #[error("the record has no value")]
    Empty,
    /// Not valid JSON.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// Not valid UTF-8.
    #[error("invalid UTF-8: {0}")]
    Utf8(String),
}

/// A value that could not be encoded.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot encode the value as {format}: {message}")]
pub struct EncodeError {
    /// The target format.
    pub format: &'static str,
    /// Why.
    pub message: String,
}

/// A format this processor can read and write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordFormat {
    /// JSON documents.
    Json,
    /// UTF-8 text.
    Text,
    /// Raw bytes.
    Bytes,
}

/// A format the pipeline asks for that this build does not handle.
#[derive(Debug, Clone, thiserror::Error)]
#[error("format {0} is not supported yet (use json, string or bytes)")]
pub struct UnsupportedFormat(pub &'static str);

impl RecordFormat {
    /// The format for a spec's `format`.
    pub fn from_spec(format: Format) -> Result<Self, UnsupportedFormat> {
        match format {
            Format::Json => Ok(Self::Json),
            Format::String => Ok(Self::Text),
            Format::Bytes => Ok(Self::Bytes),
            Format::Avro => Err(UnsupportedFormat("avro")),
        }
    }

    /// Decodes a record value.
    pub fn decode(self, bytes: Option<&[u8]>) -> Result<Payload, DecodeError> {
        let bytes = bytes.ok_or(DecodeError::Empty)?;
        match self {
            Self::Json => match JsonObject::decode(bytes) {
                Ok(Some(obj)) => Ok(Payload::JsonObject(obj)),
                Ok(None) => serde_json::from_slice(bytes)
                    .map(Payload::Json)
                    .map_err(|e| DecodeError::Json(e.to_string())),
                Err(e) => Err(DecodeError::Json(e.to_string())),
            },
            Self::Text => std::str::from_utf8(bytes)
                .map(|s| Payload::Text(s.to_string()))
                .map_err(|e| DecodeError::Utf8(e.to_string())),
            Self::Bytes => Ok(Payload::Bytes(bytes.to_vec())),
        }
    }

    /// Encodes a value it may consume: bytes and strings are handed over as they are,
    /// without a copy; anything written as text goes into `buf` (a buffer to reuse).
    pub fn encode_owned(self, value: Payload, mut buf: Vec<u8>) -> Result<Vec<u8>, EncodeError> {
        match (self, value) {
            (Self::Text | Self::Bytes, Payload::Bytes(b)) => Ok(b),
            (Self::Text | Self::Bytes, Payload::Text(s)) => Ok(s.into_bytes()),
            (format, value) => {
                buf.clear();
                format.encode_into(&value, &mut buf)?;
                Ok(buf)
            }
        }
    }

    /// Encodes a value for output.
    pub fn encode(self, value: &Payload) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::new();
        self.encode_into(value, &mut out)?;
        Ok(out)
    }

    /// Appends a value's encoding to `out`.
    fn encode_into(self, value: &Payload, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let error = |format: &'static str| {
            move |e: serde_json::Error| EncodeError {
                format,
                message: e.to_string(),
            }
        };
        match (self, value) {
            (_, Payload::Absent) => Err(EncodeError {
                format: match self {
                    Self::Json => "json",
                    Self::Text => "string",
                    Self::Bytes => "bytes",
                },
                message: "a tombstone has no value to encode".to_string(),
            }),
            (Self::Json, Payload::Json(v)) => serde_json::to_writer(out, v).map_err(error("json")),
            (_, Payload::JsonObject(o)) => o.write(out).map_err(error("json")),
            (Self::Json, Payload::Text(s)) => serde_json::to_writer(out, s).map_err(error("json")),
            (Self::Json, Payload::Bytes(_)) => Err(EncodeError {
                format: "json",
                message: "bytes have no JSON form".to_string(),
            }),
            (Self::Text | Self::Bytes, Payload::Text(s)) => {
                out.extend_from_slice(s.as_bytes());
                Ok(())
            }
            (Self::Text | Self::Bytes, Payload::Bytes(b)) => {
                out.extend_from_slice(b);
                Ok(())
            }
            (Self::Text | Self::Bytes, Payload::Json(serde_json::Value::String(s))) => {
                out.extend_from_slice(s.as_bytes());
                Ok(())
            }
            (Self::Text | Self::Bytes, Payload::Json(v)) => {
                serde_json::to_writer(out, v).map_err(error("text"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_decodes_and_encodes() {
        let p = RecordFormat::Json.decode(Some(br#"{"a":1}"#)).unwrap();
        assert_eq!(p, Payload::Json(serde_json::json!({"a": 1})));
        assert_eq!(
            RecordFormat::Json.encode(&p).unwrap(),
            br#"{"a":1}"#.to_vec()
        );
    }

    #[test]
    fn bad_input_is_a_decode_error() {
        assert!(matches!(
            RecordFormat::Json.decode(Some(b"{nope")),
            Err(DecodeError::Json(_))
        ));
        assert!(matches!(
            RecordFormat::Json.decode(None),
            Err(DecodeError::Empty)
        ));
        assert!(matches!(
            RecordFormat::Text.decode(Some(&[0xff, 0xfe])),
            Err(DecodeError::Utf8(_))
        ));
        assert_eq!(
            RecordFormat::Bytes.decode(Some(&[0xff])).unwrap(),
            Payload::Bytes(vec![0xff])
        );
    }

    #[test]
    fn avro_is_refused_clearly() {
        let err = RecordFormat::from_spec(Format::Avro).unwrap_err();
        assert!(err.to_string().contains("not supported yet"));
    }
}
