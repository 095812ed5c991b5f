//! A JSON object kept as its top-level fields, each left as the text it was read as until
//! a step reads or replaces it.
//!
//! Most pipelines read a few fields of each record and pass the rest through. Parsing the
//! whole document into a tree and printing it again costs more than the steps themselves;
//! here decoding only validates the text and notes where each field's key and value are,
//! reading a field parses that field alone, and encoding copies untouched fields verbatim.
//! The whole tree is built only for steps that need it ([`JsonObject::to_value`]).

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use serde::Deserializer as _;
use serde::de::{self, MapAccess, Visitor};
use serde_json::value::RawValue;

mod flat;

/// A field's name: a span of the source text when it had no escapes, else its own string
/// (shared, so a step that sets the same field on every record does not copy its name).
#[derive(Clone)]
enum Name {
    Span(Range<usize>),
    Owned(Arc<str>),
}

/// A field's value: a span of the source text, or a value a step put there.
#[derive(Clone)]
enum Slot {
    Raw(Range<usize>),
    Value(serde_json::Value),
}

/// A field's value, as [`JsonObject::get`] hands it out.
#[derive(Debug, Clone, Copy)]
pub enum FieldRef<'a> {
    /// The JSON text as it was read (valid JSON, whitespace and all).
    Raw(&'a str),
    /// A value a step set.
    Value(&'a serde_json::Value),
}

impl FieldRef<'_> {
    /// The field as a JSON value (parsing it when it is still text; decoding checked it, so
    /// an error here means text that did not come from [`JsonObject::decode`]).
    pub fn to_value(self) -> Result<serde_json::Value, serde_json::Error> {
        match self {
            FieldRef::Raw(text) => serde_json::from_str(text),
            FieldRef::Value(v) => Ok(v.clone()),
        }
    }
}

/// A field whose text cannot be parsed (not expected after [`JsonObject::decode`], which
/// refuses what a full parse refuses; kept as an error rather than a panic).
#[derive(Debug, Clone, thiserror::Error)]
#[error("field {field} cannot be read: {message}")]
pub struct UnreadableField {
    /// The field's name.
    pub field: String,
    /// What the JSON parser said.
    pub message: String,
}

impl UnreadableField {
    /// `field` failed with `error`.
    pub fn new(field: &str, error: impl ToString) -> Self {
        Self {
            field: field.to_string(),
            message: error.to_string(),
        }
    }
}

/// A decoded JSON object (see the module docs). Keys are unique: as in `serde_json`, a
/// repeated key keeps its last value.
#[derive(Clone)]
pub struct JsonObject {
    /// The record's text; spans point into it. Valid UTF-8 (checked while decoding).
    src: String,
    fields: Vec<(Name, Slot)>,
}

impl JsonObject {
    /// Decodes `bytes` when they hold a JSON object; `Ok(None)` when they hold other JSON
    /// (or none), so the caller can parse them as a whole.
    pub fn decode(bytes: &[u8]) -> Result<Option<Self>, serde_json::Error> {
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Ok(None);
        }
        let src = std::str::from_utf8(bytes)
            .map_err(|e| <serde_json::Error as de::Error>::custom(format!("invalid UTF-8: {e}")))?;
        let fields = match flat::fields(src) {
            Some((fields, false)) => fields,
            Some((fields, true)) => unique(src, fields),
            None => {
                let mut de = serde_json::Deserializer::from_str(src);
                let spans = de.deserialize_map(SpanVisitor { src })?;
                de.end()?;
                unique(src, spans)
            }
        };
        Ok(Some(JsonObject {
            src: src.to_string(),
            fields,
        }))
    }

    fn name<'a>(&'a self, name: &'a Name) -> &'a str {
        name_text(&self.src, name)
    }

    fn position(&self, key: &str) -> Option<usize> {
        let key = key.as_bytes();
        self.fields
            .iter()
            .position(|(n, _)| name_bytes(&self.src, n) == key)
    }

    fn field_ref<'a>(&'a self, slot: &'a Slot) -> FieldRef<'a> {
        match slot {
            Slot::Raw(r) => FieldRef::Raw(self.src.get(r.clone()).unwrap_or("null")),
            Slot::Value(v) => FieldRef::Value(v),
        }
    }

    /// The field `key`, if present.
    pub fn get(&self, key: &str) -> Option<FieldRef<'_>> {
        let i = self.position(key)?;
        Some(self.field_ref(&self.fields[i].1))
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_some()
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The fields in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, FieldRef<'_>)> {
        self.fields
            .iter()
            .map(|(n, s)| (self.name(n), self.field_ref(s)))
    }

    /// Sets `key` to `value` (in place when present, else at the end).
    pub fn insert(&mut self, key: &str, value: serde_json::Value) {
        self.put(key, Slot::Value(value), || Arc::from(key));
    }

    /// [`JsonObject::insert`] with a name the caller keeps (no copy of it per record).
    pub fn insert_shared(&mut self, key: &Arc<str>, value: serde_json::Value) {
        self.put(key, Slot::Value(value), || key.clone());
    }

    fn put(&mut self, key: &str, slot: Slot, name: impl FnOnce() -> Arc<str>) {
        match self.position(key) {
            Some(i) => self.fields[i].1 = slot,
            None => self.fields.push((Name::Owned(name()), slot)),
        }
    }

    /// Removes `key`; true when it was present.
    pub fn remove(&mut self, key: &str) -> bool {
        match self.position(key) {
            Some(i) => {
                self.fields.remove(i);
                true
            }
            None => false,
        }
    }

    /// Moves the value of `from` to `to` (replacing what `to` held); nothing when `from`
    /// is absent.
    pub fn rename(&mut self, from: &str, to: &str) {
        if let Some(i) = self.position(from) {
            let (_, slot) = self.fields.remove(i);
            self.put(to, slot, || Arc::from(to));
        }
    }

    /// Keeps only the fields for which `keep` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        let src = &self.src;
        self.fields.retain(|(n, _)| keep(name_text(src, n)));
    }

    /// The whole object as a JSON tree.
    pub fn to_value(&self) -> Result<serde_json::Value, UnreadableField> {
        self.iter()
            .map(|(k, v)| {
                v.to_value()
                    .map(|v| (k.to_string(), v))
                    .map_err(|e| UnreadableField::new(k, e))
            })
            .collect::<Result<_, _>>()
            .map(serde_json::Value::Object)
    }

    /// Writes the object as JSON text: untouched fields as they were read, in order.
    pub fn write(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        out.reserve(self.src.len() + 16);
        out.push(b'{');
        let mut i = 0;
        while i < self.fields.len() {
            if i > 0 {
                out.push(b',');
            }
            match self.compact_entry(i) {
                // A run of untouched fields that stood together in the source, written
                // compactly there, is one copy.
                Some(run) => {
                    let mut end = run.end;
                    i += 1;
                    while let Some(next) = self.compact_entry(i)
                        && next.start == end + 1
                        && self.src.as_bytes().get(end) == Some(&b',')
                    {
                        end = next.end;
                        i += 1;
                    }
                    out.extend_from_slice(
                        self.src.as_bytes().get(run.start..end).unwrap_or_default(),
                    );
                }
                None => {
                    self.write_field(i, out)?;
                    i += 1;
                }
            }
        }
        out.push(b'}');
        Ok(())
    }

    /// The source text `"name":value` of field `i` when it is untouched and was written
    /// with nothing between its name, the colon and its value.
    fn compact_entry(&self, i: usize) -> Option<Range<usize>> {
        match self.fields.get(i)? {
            (Name::Span(name), Slot::Raw(value))
                if value.start == name.end + 2
                    && self.src.as_bytes().get(name.end + 1) == Some(&b':') =>
            {
                // The span is the text between the quotes.
                Some(name.start.checked_sub(1)?..value.end)
            }
            _ => None,
        }
    }

    fn write_field(&self, i: usize, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        let Some((name, slot)) = self.fields.get(i) else {
            return Ok(());
        };
        match name {
            // The span is the text between the quotes, which had no escapes.
            Name::Span(r) => {
                out.push(b'"');
                out.extend_from_slice(self.src.get(r.clone()).unwrap_or_default().as_bytes());
                out.push(b'"');
            }
            Name::Owned(s) if !needs_escape(s) => {
                out.push(b'"');
                out.extend_from_slice(s.as_bytes());
                out.push(b'"');
            }
            Name::Owned(s) => serde_json::to_writer(&mut *out, &**s)?,
        }
        out.push(b':');
        match slot {
            Slot::Raw(r) => {
                out.extend_from_slice(self.src.get(r.clone()).unwrap_or("null").as_bytes())
            }
            Slot::Value(v) => serde_json::to_writer(&mut *out, v)?,
        }
        Ok(())
    }
}

/// Whether `s` needs escapes inside a JSON string.
fn needs_escape(s: &str) -> bool {
    s.bytes().any(|b| flat::ENDS_PLAIN[usize::from(b)])
}

impl PartialEq for JsonObject {
    fn eq(&self, other: &Self) -> bool {
        matches!((self.to_value(), other.to_value()), (Ok(a), Ok(b)) if a == b)
    }
}

impl fmt::Debug for JsonObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_value() {
            Ok(v) => write!(f, "JsonObject({v})"),
            Err(e) => write!(f, "JsonObject({:?}: {e})", self.src),
        }
    }
}

/// A name's bytes (comparing bytes skips the character-boundary checks of `str` slicing).
fn name_bytes<'a>(src: &'a str, name: &'a Name) -> &'a [u8] {
    match name {
        Name::Span(r) => src.as_bytes().get(r.clone()).unwrap_or_default(),
        Name::Owned(s) => s.as_bytes(),
    }
}

fn name_text<'a>(src: &'a str, name: &'a Name) -> &'a str {
    match name {
        Name::Span(r) => src.get(r.clone()).unwrap_or_default(),
        Name::Owned(s) => s,
    }
}

/// The fields with each repeated key keeping its first place and last value (as
/// `serde_json` keeps the last value).
fn unique(src: &str, fields: Vec<(Name, Slot)>) -> Vec<(Name, Slot)> {
    let repeated = if fields.len() <= 16 {
        // Small objects (the common case) are checked without hashing or copying.
        (1..fields.len()).any(|i| {
            let k = name_bytes(src, &fields[i].0);
            fields[..i].iter().any(|(n, _)| name_bytes(src, n) == k)
        })
    } else {
        let mut seen = std::collections::HashSet::with_capacity(fields.len());
        !fields.iter().all(|(n, _)| seen.insert(name_text(src, n)))
    };
    if !repeated {
        return fields;
    }
    let mut at: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut kept: Vec<(Name, Slot)> = Vec::with_capacity(fields.len());
    for (name, slot) in fields {
        match at.get(name_text(src, &name)) {
            Some(&j) => kept[j].1 = slot,
            None => {
                at.insert(name_text(src, &name).to_string(), kept.len());
                kept.push((name, slot));
            }
        }
    }
    kept
}

/// Where `inner` sits in `outer` (it must be a subslice of it).
fn span_of(outer: &str, inner: &str) -> Option<Range<usize>> {
    let start = (inner.as_ptr() as usize).checked_sub(outer.as_ptr() as usize)?;
    let end = start + inner.len();
    (end <= outer.len()).then_some(start..end)
}

/// Collects each top-level key (borrowed when it had no escapes) and value span.
struct SpanVisitor<'de> {
    src: &'de str,
}

impl<'de> Visitor<'de> for SpanVisitor<'de> {
    type Value = Vec<(Name, Slot)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8));
        while let Some(key) = map.next_key::<KeyText<'de>>()? {
            let value: &'de RawValue = map.next_value()?;
            check(value.get()).map_err(de::Error::custom)?;
            let value = span_of(self.src, value.get())
                .ok_or_else(|| de::Error::custom("value outside the document"))?;
            let name = match key {
                KeyText::Borrowed(k) => match span_of(self.src, k) {
                    Some(r) => Name::Span(r),
                    None => Name::Owned(Arc::from(k)),
                },
                KeyText::Owned(k) => Name::Owned(Arc::from(k)),
            };
            out.push((name, Slot::Raw(value)));
        }
        Ok(out)
    }
}

/// Checks what skipping a value leaves unchecked, so decoding accepts exactly what a full
/// `serde_json` parse accepts: escapes in strings (a lone surrogate), numbers out of a
/// double's range, and nesting deeper than serde_json's limit. Plain strings, short
/// numbers without an exponent and literals need no second look.
fn check(text: &str) -> Result<(), serde_json::Error> {
    let needs_parse = match text.as_bytes().first() {
        Some(b'"') => text.as_bytes().contains(&b'\\'),
        Some(b'-' | b'0'..=b'9') => {
            text.len() > flat::LONGEST_NUMBER || text.bytes().any(|b| matches!(b, b'e' | b'E'))
        }
        Some(b'[' | b'{') => true,
        _ => false,
    };
    if !needs_parse {
        return Ok(());
    }
    // The value sits one level inside the record, so it may nest one level less than
    // serde_json allows a whole document. Only a long value can nest that deep (each
    // level takes two bytes): a value of NESTING_LIMIT bytes or more is parsed inside an
    // array, which puts it at its real depth; shorter ones are parsed as they are,
    // without the copy.
    let wrapped;
    let text = if text.len() >= NESTING_LIMIT {
        wrapped = format!("[{text}]");
        wrapped.as_str()
    } else {
        text
    };
    let mut de = serde_json::Deserializer::from_str(text);
    de::Deserializer::deserialize_any(&mut de, Strict)?;
    de.end()
}

/// serde_json's recursion limit: a document may nest fewer levels than this.
const NESTING_LIMIT: usize = 128;

/// Reads a JSON value to its end as a full parse does, keeping nothing.
struct Strict;

impl<'de> de::Deserialize<'de> for Strict {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Strict)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Strict;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        while seq.next_element::<Strict>()?.is_some() {}
        Ok(Strict)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        while map.next_entry::<Strict, Strict>()?.is_some() {}
        Ok(Strict)
    }
}

/// A key borrowed from the source when it had no escapes, else unescaped into a string.
enum KeyText<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl<'de> de::Deserialize<'de> for KeyText<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = KeyText<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(KeyText::Borrowed(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(KeyText::Owned(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(KeyText::Owned(v))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(text: &str) -> JsonObject {
        JsonObject::decode(text.as_bytes()).unwrap().unwrap()
    }

    fn written(o: &JsonObject) -> String {
        let mut out = Vec::new();
        o.write(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn untouched_fields_are_written_as_read_in_order() {
        let o = obj(r#" { "b" : [1, 2] , "a":{"x": "y"}, "n": 1.50 } "#);
        assert_eq!(written(&o), r#"{"b":[1, 2],"a":{"x": "y"},"n":1.50}"#);
        assert_eq!(
            o.to_value().unwrap(),
            json!({"b": [1, 2], "a": {"x": "y"}, "n": 1.5})
        );
    }

    #[test]
    fn runs_of_untouched_fields_are_copied_and_the_rest_written_compactly() {
        let mut o = obj(r#"{"a":1,"b":"x","c":true, "d":null,"e" :2,"f":[3],"g":4}"#);
        o.remove("b");
        o.insert("a", json!(5));
        o.insert("h", json!("y"));
        assert_eq!(
            written(&o),
            r#"{"a":5,"c":true,"d":null,"e":2,"f":[3],"g":4,"h":"y"}"#
        );
    }

    #[test]
    fn get_set_rename_remove_and_retain() {
        let mut o = obj(r#"{"id":"o-1","total":12.5,"region":"eu"}"#);
        assert_eq!(o.get("total").unwrap().to_value().unwrap(), json!(12.5));
        assert!(o.get("nope").is_none());
        o.insert("cents", json!(1250.0));
        o.insert("total", json!(13));
        o.rename("region", "area");
        assert!(o.remove("id"));
        assert!(!o.remove("id"));
        assert_eq!(written(&o), r#"{"total":13,"cents":1250.0,"area":"eu"}"#);
        o.rename("area", "total");
        assert_eq!(
            o.to_value().unwrap(),
            json!({"total": "eu", "cents": 1250.0})
        );
        o.retain(|k| k == "cents");
        assert_eq!(written(&o), r#"{"cents":1250.0}"#);
    }

    #[test]
    fn escaped_keys_and_values_round_trip() {
        let o = obj(r#"{"a\"b":"x\ny","\u00e9":"\u00e9"}"#);
        assert!(o.contains_key("a\"b"));
        assert_eq!(o.get("é").unwrap().to_value().unwrap(), json!("é"));
        let back: serde_json::Value = serde_json::from_str(&written(&o)).unwrap();
        assert_eq!(back, json!({"a\"b": "x\ny", "é": "é"}));
    }

    #[test]
    fn a_repeated_key_keeps_its_last_value_as_serde_json_does() {
        let text = r#"{"a":1,"b":2,"a":3}"#;
        let o = obj(text);
        let tree: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(o.to_value().unwrap(), tree);
        assert_eq!(o.len(), 2);
    }

    #[test]
    fn other_json_is_left_to_the_caller_and_bad_text_is_an_error() {
        assert!(JsonObject::decode(b"[1]").unwrap().is_none());
        assert!(JsonObject::decode(b" 12").unwrap().is_none());
        assert!(JsonObject::decode(b"").unwrap().is_none());
        for bad in [
            &b"{"[..],
            b"{\"a\":}",
            b"{\"a\":1} x",
            b"{\"a\":1,}",
            b"{1:2}",
            b"{\"a\":\xff}",
        ] {
            assert!(JsonObject::decode(bad).is_err(), "{:?}", bad);
        }
        assert!(obj("{}").is_empty());
    }

    /// What skipping a value does not check is checked too: decoding refuses what a full
    /// serde_json parse refuses, and accepts the rest.
    #[test]
    fn decoding_refuses_what_serde_json_refuses() {
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(200), "]".repeat(200));
        let nested_ok = format!("{{\"a\":{}1{}}}", "[".repeat(100), "]".repeat(100));
        for text in [
            r#"{"a":1e400}"#,
            r#"{"a":-1e400}"#,
            r#"{"a":"\ud800"}"#,
            r#"{"a":{"b":["\udc00"]}}"#,
            r#"{"a":[1e999]}"#,
            deep.as_str(),
        ] {
            assert!(
                serde_json::from_str::<serde_json::Value>(text).is_err(),
                "serde_json accepts {text}"
            );
            assert!(JsonObject::decode(text.as_bytes()).is_err(), "{text}");
        }
        for text in [
            r#"{"a":1e300,"b":"\ud83d\ude00","c":"\n","d":[1.5e-300,{"e":"\u00e9"}]}"#,
            nested_ok.as_str(),
        ] {
            let tree: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(obj(text).to_value().unwrap(), tree, "{text}");
        }
    }

    /// At the nesting limit, a field's value is judged at its depth in the record: the
    /// same records are refused as by a full parse.
    #[test]
    fn nesting_is_limited_as_in_a_full_parse() {
        for n in 120..=132 {
            for (open, close) in [("[", "]"), ("{\"x\":", "}")] {
                let text = format!("{{\"a\":{}1{}}}", open.repeat(n), close.repeat(n));
                let full = serde_json::from_str::<serde_json::Value>(&text).is_ok();
                assert_eq!(
                    JsonObject::decode(text.as_bytes()).is_ok(),
                    full,
                    "depth {n}"
                );
            }
        }
    }

    proptest::proptest! {
        /// Any JSON object decodes to what serde_json makes of it, and writes back to text
        /// that serde_json reads as the same value.
        #[test]
        fn agrees_with_serde_json(
            entries in proptest::collection::vec(("[a-c\"\\\\é ]{0,3}", proptest::num::f64::NORMAL, "\\PC{0,6}"), 0..6)
        ) {
            let mut text = String::from("{");
            for (i, (k, n, s)) in entries.iter().enumerate() {
                if i > 0 { text.push(','); }
                text.push_str(&serde_json::to_string(k).unwrap());
                text.push(':');
                if i % 2 == 0 {
                    text.push_str(&serde_json::to_string(n).unwrap());
                } else {
                    text.push_str(&serde_json::to_string(&json!({"s": s, "l": [n]})).unwrap());
                }
            }
            text.push('}');
            let tree: serde_json::Value = serde_json::from_str(&text).unwrap();
            let o = obj(&text);
            proptest::prop_assert_eq!(&o.to_value().unwrap(), &tree);
            let back: serde_json::Value = serde_json::from_str(&written(&o)).unwrap();
            proptest::prop_assert_eq!(back, tree);
        }
    }
}
