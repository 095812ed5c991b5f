//! CEL expressions: compiled once per pipeline (and lowered to a native evaluator where
//! that is exact, see [`native`]), evaluated per record against a [`Scope`].
//!
//! Each expression records which record variables it reads, and which top-level fields
//! of `value` it selects, so the hot path converts only those fields into CEL values.

use std::collections::BTreeSet;
use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr as Ast};
use cel::objects::{Key, Map};
use cel::parser::Expression;
use cel::{Context, Program, Value};

mod native;
mod scope;

pub use scope::Scope;

use crate::json_object::{FieldRef, UnreadableField};
use crate::record::Record;

/// An expression that failed to compile.
#[derive(Debug, thiserror::Error)]
#[error("invalid CEL expression `{source_text}`: {message}")]
pub struct CompileError {
    /// The expression as written.
    pub source_text: String,
    /// What the parser said.
    pub message: String,
}

/// The functions `program` calls that CEL does not define, so that a typo is refused
/// when the spec is checked rather than on every record. Each named call is probed on an
/// empty context, as a global and as a member function without arguments: a function CEL
/// defines fails there for its arguments, an undefined one as an undeclared reference.
fn unknown_functions(program: &Program) -> Vec<String> {
    let references = program.references();
    let called = references.functions();
    let named = called
        .into_iter()
        .filter(|f| !f.is_empty() && f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .filter(|f| !f.starts_with('_'));
    let root = Context::default();
    let undeclared = |probe: String, name: &str| match Program::compile(&probe) {
        Ok(p) => matches!(
            p.execute(&root),
            Err(cel::ExecutionError::UndeclaredReference(r)) if r.as_str() == name
        ),
        Err(_) => false,
    };
    named
        .filter(|f| undeclared(format!("{f}()"), f) && undeclared(format!("0.{f}()"), f))
        .map(str::to_string)
        .collect()
}

/// An expression that failed on a record.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EvalError {
    /// CEL raised an error (missing field, wrong type, ...).
    #[error("expression `{expr}` failed: {message}")]
    Execution {
        /// The expression as written.
        expr: String,
        /// CEL's message.
        message: String,
    },
    /// The expression returned a value of the wrong type.
    #[error("expression `{expr}` returned {got}, expected {want}")]
    WrongType {
        /// The expression as written.
        expr: String,
        /// The type it returned.
        got: String,
        /// The type that was needed.
        want: &'static str,
    },
    /// A field the expression reads holds text that is not a value (a number out of range).
    #[error(transparent)]
    Unreadable(#[from] UnreadableField),
}

/// Which parts of a record an expression reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    /// `value` is used other than through `value.<field>`: bind the whole record.
    pub whole_value: bool,
    /// Top-level fields selected as `value.<field>`.
    pub fields: BTreeSet<String>,
    /// Fields tested with `has(value.<field>)`: these need a `value` map.
    pub tested: BTreeSet<String>,
    /// `key` is read.
    pub key: bool,
    /// `headers` is read.
    pub headers: bool,
    /// `topic` is read.
    pub topic: bool,
    /// `partition` is read.
    pub partition: bool,
    /// `offset` is read.
    pub offset: bool,
    /// `timestamp` is read.
    pub timestamp: bool,
}

impl Needs {
    /// Adds what `other` needs.
    pub fn merge(&mut self, other: &Needs) {
        self.whole_value |= other.whole_value;
        self.fields.extend(other.fields.iter().cloned());
        self.tested.extend(other.tested.iter().cloned());
        self.key |= other.key;
        self.headers |= other.headers;
        self.topic |= other.topic;
        self.partition |= other.partition;
        self.offset |= other.offset;
        self.timestamp |= other.timestamp;
    }

    fn of(expr: &Expression) -> Needs {
        let mut needs = Needs::default();
        walk(expr, &mut needs);
        needs
    }
}

fn walk(expr: &Expression, needs: &mut Needs) {
    match &expr.expr {
        Ast::Select(select) => {
            if let Ast::Ident(name) = &select.operand.expr
                && name == "value"
            {
                if select.test {
                    needs.tested.insert(select.field.clone());
                } else {
                    needs.fields.insert(select.field.clone());
                }
            } else {
                walk(&select.operand, needs);
            }
        }
        Ast::Ident(name) => match name.as_str() {
            "value" => needs.whole_value = true,
            "key" => needs.key = true,
            "headers" => needs.headers = true,
            "topic" => needs.topic = true,
            "partition" => needs.partition = true,
            "offset" => needs.offset = true,
            "timestamp" => needs.timestamp = true,
            _ => {}
        },
        Ast::Call(call) => {
            if let Some(target) = &call.target {
                walk(target, needs);
            }
            call.args.iter().for_each(|a| walk(a, needs));
        }
        Ast::Comprehension(c) => {
            for e in [
                &c.iter_range,
                &c.accu_init,
                &c.loop_cond,
                &c.loop_step,
                &c.result,
            ] {
                walk(e, needs);
            }
        }
        Ast::List(list) => list.elements.iter().for_each(|e| walk(e, needs)),
        Ast::Map(map) => map.entries.iter().for_each(|e| walk_entry(&e.expr, needs)),
        Ast::Struct(s) => s.entries.iter().for_each(|e| walk_entry(&e.expr, needs)),
        Ast::Literal(_) | Ast::Unspecified => {}
    }
}

fn walk_entry(entry: &EntryExpr, needs: &mut Needs) {
    match entry {
        EntryExpr::MapEntry(e) => {
            walk(&e.key, needs);
            walk(&e.value, needs);
        }
        EntryExpr::StructField(f) => walk(&f.value, needs),
    }
}

/// A compiled CEL expression.
#[derive(Debug)]
pub struct Expr {
    source: String,
    program: Program,
    needs: Needs,
    /// The same expression lowered to native code, when all its parts allow it.
    native: Option<native::Node>,
}

impl Expr {
    /// Compiles `source`.
    pub fn compile(source: &str) -> Result<Self, CompileError> {
        let program = Program::compile(source).map_err(|e| CompileError {
            source_text: source.to_string(),
            message: e.to_string(),
        })?;
        let unknown = unknown_functions(&program);
        if !unknown.is_empty() {
            return Err(CompileError {
                source_text: source.to_string(),
                message: format!(
                    "no such function: {} (CEL's standard functions are size, contains, \
                     startsWith, endsWith, matches, int, uint, double, string, bytes, bool, \
                     duration, timestamp, ...)",
                    unknown.join(", ")
                ),
            });
        }
        let needs = Needs::of(program.expression());
        let native = native::lower(program.expression());
        Ok(Self {
            source: source.to_string(),
            program,
            needs,
            native,
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// What it reads from a record.
    pub fn needs(&self) -> &Needs {
        &self.needs
    }

    /// Evaluates against one record's `scope`: natively when the expression and the
    /// values allow it, else with CEL's interpreter.
    pub fn eval(&self, scope: &Scope<'_>) -> Result<Value, EvalError> {
        if let Some(v) = self.native.as_ref().and_then(|n| n.eval(scope)) {
            return Ok(v);
        }
        self.interpret(scope)
    }

    /// Evaluates with CEL's interpreter alone.
    pub fn interpret(&self, scope: &Scope<'_>) -> Result<Value, EvalError> {
        self.program
            .execute(scope.cel())
            .map_err(|e| EvalError::Execution {
                expr: self.source.clone(),
                message: e.to_string(),
            })
    }

    /// Evaluates to a bool.
    pub fn eval_bool(&self, scope: &Scope<'_>) -> Result<bool, EvalError> {
        match self.eval(scope)? {
            Value::Bool(b) => Ok(b),
            other => Err(self.wrong_type(&other, "bool")),
        }
    }

    /// Evaluates to a number (int, uint or double) as f64.
    pub fn eval_number(&self, scope: &Scope<'_>) -> Result<Number, EvalError> {
        match self.eval(scope)? {
            Value::Int(i) => Ok(Number::Int(i)),
            Value::UInt(u) => Ok(i64::try_from(u).map_or(Number::Float(u as f64), Number::Int)),
            Value::Float(f) => Ok(Number::Float(f)),
            other => Err(self.wrong_type(&other, "a number")),
        }
    }

    fn wrong_type(&self, got: &Value, want: &'static str) -> EvalError {
        EvalError::WrongType {
            expr: self.source.clone(),
            got: format!("{:?}", got.type_of()),
            want,
        }
    }
}

/// A number an expression produced.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Number {
    /// A whole number.
    Int(i64),
    /// A floating-point number.
    Float(f64),
}

impl Number {
    /// As f64.
    pub fn as_f64(self) -> f64 {
        match self {
            Number::Int(i) => i as f64,
            Number::Float(f) => f,
        }
    }
}

/// The root CEL context: built once (it holds the standard library), shared by all
/// evaluations; each record gets a cheap child scope.
pub fn root_context() -> Context<'static, 'static> {
    Context::default()
}

/// The parts of `record` that `needs` asks for, as expressions see them.
pub fn scope<'a>(
    root: &'a Context<'a, 'static>,
    record: &Record,
    needs: &'a Needs,
) -> Result<Scope<'a>, EvalError> {
    Scope::of(root, record, needs)
}

/// Converts a field of a [`JsonObject`](crate::json_object::JsonObject) into a CEL value,
/// parsing its text straight into CEL values (no JSON tree in between).
pub fn field_to_cel(name: &str, field: FieldRef<'_>) -> Result<Value, UnreadableField> {
    match field {
        FieldRef::Raw(text) => {
            if let Some(v) = plain_scalar(text) {
                return Ok(v);
            }
            let mut de = serde_json::Deserializer::from_str(text);
            serde::Deserializer::deserialize_any(&mut de, CelVisitor)
                .map_err(|e| UnreadableField::new(name, e))
        }
        FieldRef::Value(v) => Ok(json_to_cel(v)),
    }
}

/// The CEL value of a scalar's JSON text, when it can be read without serde_json's parser
/// to the same value: a string without escapes, an integer that fits an `i64` (not `-0`,
/// which serde_json reads as a float), a decimal of at most 15 digits without an exponent
/// (exact either way: the digits and the power of ten are exact, and one division
/// rounds), or a literal. `text` is a field's value as decoded, so it is valid JSON.
fn plain_scalar(text: &str) -> Option<Value> {
    let b = text.as_bytes();
    match *b.first()? {
        b'"' => {
            let inner = text.get(1..text.len().checked_sub(1)?)?;
            let plain = b.len() >= 2 && b.last() == Some(&b'"') && !inner.contains('\\');
            plain.then(|| Value::String(Arc::new(inner.to_string())))
        }
        b'-' | b'0'..=b'9' => plain_number(b),
        _ => match text {
            "true" => Some(Value::Bool(true)),
            "false" => Some(Value::Bool(false)),
            "null" => Some(Value::Null),
            _ => None,
        },
    }
}

/// Powers of ten a double holds exactly, for [`plain_number`].
const POW10: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// A JSON number's CEL value in one pass, for the numbers [`plain_scalar`] takes: an
/// integer of at most 18 digits (exact in an `i64`; longer ones go through `str::parse`),
/// or a decimal of at most 15 digits, whose digits and power of ten are exact doubles, so
/// one division rounds correctly.
fn plain_number(b: &[u8]) -> Option<Value> {
    let (negative, digits) = match b.split_first()? {
        (b'-', rest) => (true, rest),
        _ => (false, b),
    };
    let mut mantissa: u64 = 0;
    let mut count = 0usize;
    let mut point = None;
    for &c in digits {
        match c {
            b'0'..=b'9' if count < 19 => {
                mantissa = mantissa * 10 + u64::from(c - b'0');
                count += 1;
            }
            b'.' if point.is_none() && count > 0 => point = Some(count),
            _ => return None,
        }
    }
    match point {
        None if count == 0 || (negative && mantissa == 0) => None,
        None if count < 19 => {
            let m = i64::try_from(mantissa).ok()?;
            Some(Value::Int(if negative { -m } else { m }))
        }
        None => std::str::from_utf8(b).ok()?.parse().ok().map(Value::Int),
        Some(at) => {
            if count > 15 {
                return None;
            }
            let scale = *POW10.get(count.checked_sub(at).filter(|&f| f > 0)?)?;
            // At most 15 digits: below 2^53, so exact as a double.
            let v = mantissa as f64 / scale;
            Some(Value::Float(if negative { -v } else { v }))
        }
    }
}

/// Builds CEL values from JSON text as [`json_to_cel`] does from a tree.
struct CelVisitor;

impl<'de> serde::de::Visitor<'de> for CelVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E: serde::de::Error>(self, i: i64) -> Result<Value, E> {
        Ok(Value::Int(i))
    }
    fn visit_u64<E: serde::de::Error>(self, u: u64) -> Result<Value, E> {
        Ok(i64::try_from(u).map_or(Value::UInt(u), Value::Int))
    }
    fn visit_f64<E: serde::de::Error>(self, f: f64) -> Result<Value, E> {
        Ok(Value::Float(f))
    }
    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(Arc::new(s.to_string())))
    }
    fn visit_string<E: serde::de::Error>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(Arc::new(s)))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(CelFromJson(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::List(Arc::new(items)))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = std::collections::HashMap::with_capacity(map.size_hint().unwrap_or(0));
        while let Some((k, CelFromJson(v))) = map.next_entry::<String, CelFromJson>()? {
            entries.insert(Key::String(Arc::new(k)), v);
        }
        Ok(Value::Map(Map {
            map: Arc::new(entries),
        }))
    }
}

struct CelFromJson(Value);

impl<'de> serde::Deserialize<'de> for CelFromJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CelVisitor).map(CelFromJson)
    }
}

/// Converts a JSON value into a CEL value.
pub fn json_to_cel(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                Value::UInt(u)
            } else {
                Value::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => Value::String(Arc::new(s.clone())),
        serde_json::Value::Array(a) => Value::List(Arc::new(a.iter().map(json_to_cel).collect())),
        serde_json::Value::Object(o) => {
            let map: std::collections::HashMap<Key, Value> = o
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), json_to_cel(v)))
                .collect();
            Value::Map(Map { map: Arc::new(map) })
        }
    }
}

/// Why a CEL value cannot become JSON.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot represent {0} as JSON")]
pub struct ToJsonError(pub String);

/// Converts a CEL value into JSON (maps with non-string keys use the key's text).
pub fn cel_to_json(v: &Value) -> Result<serde_json::Value, ToJsonError> {
    Ok(match v {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::Int(i) => serde_json::Value::from(*i),
        Value::UInt(u) => serde_json::Value::from(*u),
        Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(serde_json::Value::Number)
            .ok_or_else(|| ToJsonError(format!("the number {f}")))?,
        Value::String(s) => serde_json::Value::String(String::clone(s)),
        Value::Bytes(b) => serde_json::Value::String(String::from_utf8_lossy(b).into_owned()),
        Value::List(l) => {
            serde_json::Value::Array(l.iter().map(cel_to_json).collect::<Result<_, _>>()?)
        }
        Value::Map(m) => {
            let mut obj = serde_json::Map::with_capacity(m.map.len());
            for (k, v) in m.map.iter() {
                let key = match k {
                    Key::String(s) => String::clone(s),
                    Key::Int(i) => i.to_string(),
                    Key::Uint(u) => u.to_string(),
                    Key::Bool(b) => b.to_string(),
                };
                obj.insert(key, cel_to_json(v)?);
            }
            serde_json::Value::Object(obj)
        }
        Value::Timestamp(t) => serde_json::Value::String(t.to_rfc3339()),
        Value::Duration(d) => serde_json::Value::String(format!("{}ms", d.num_milliseconds())),
        other => return Err(ToJsonError(format!("a {:?}", other.type_of()))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_to_a_function_cel_does_not_define_is_refused_at_compile() {
        let err = Expr::compile("value.total.frobnicate() > 1").unwrap_err();
        assert!(
            err.message.contains("no such function: frobnicate"),
            "{err}"
        );
        let err = Expr::compile("lenght(value.items) > 0").unwrap_err();
        assert!(err.message.contains("lenght"), "{err}");
        for fine in [
            "size(value.items) > 0",
            "value.items.size() > 0",
            "value.name.startsWith('a') && value.name.endsWith('z')",
            "value.name.contains('x') || value.name.matches('^a')",
            "int(value.x) + 1 > double(value.y)",
            "string(value.n) == 'x' && bool(value.b) && bytes('x') == b'x'",
            "has(value.x) && [1, 2].exists(x, x > 1) && [1].all(x, x > 0)",
            "[1, 2].map(x, x * 2).filter(x, x > 2).size() == 1",
            "timestamp(value.t) > timestamp('2024-01-01T00:00:00Z')",
            "duration('1s') < duration('2s') && type(1) == int && dyn(1) == 1",
            "value.region in ['eu', 'us'] && !(value.total < 0.0)",
            "value.total > 0.0 ? 'pos' : 'neg'",
            "uint(1) == 1u && 1 != 2",
        ] {
            assert!(
                Expr::compile(fine).is_ok(),
                "{fine}: {:?}",
                Expr::compile(fine).err()
            );
        }
        // `max` is not in this CEL library: it would fail on every record, so it is
        // refused here.
        let runtime = Program::compile("max(1, 2)")
            .unwrap()
            .execute(&Context::default());
        assert!(runtime.is_err(), "{runtime:?}");
        assert!(Expr::compile("max(1, 2) == 2").is_err());
    }

    use crate::record::{Payload, Record};

    fn rec(value: serde_json::Value) -> Record {
        Record::new(
            "orders",
            2,
            7,
            1000,
            Some(b"k1".to_vec()),
            Payload::Json(value),
        )
    }

    /// The CEL value serde_json's parser gives for `text`.
    fn parsed(text: &str) -> Value {
        let mut de = serde_json::Deserializer::from_str(text);
        serde::Deserializer::deserialize_any(&mut de, CelVisitor).unwrap()
    }

    /// Same variant and same bits (so -0.0 and 0.0 differ).
    fn same(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits(),
            _ => a == b,
        }
    }

    #[test]
    fn plain_scalars_read_as_serde_json_reads_them() {
        for text in [
            "0",
            "-1",
            "7",
            "9223372036854775807",
            "-9223372036854775808",
            "0.5",
            "-0.0",
            "1.50",
            "123456789.012345",
            "-12345678901.2345",
            "0.00000000000001",
            "true",
            "false",
            "null",
            r#""""#,
            r#""eu-west""#,
            r#""é☃""#,
        ] {
            let fast = plain_scalar(text).unwrap_or_else(|| panic!("{text} not read"));
            assert!(same(&fast, &parsed(text)), "{text}: {fast:?}");
        }
        // Left to serde_json: the fast reading would differ or needs unescaping.
        for text in [
            "-0",
            "9223372036854775808",
            "1e3",
            "0.1234567890123456",
            r#""a\nb""#,
            "[1]",
            r#"{"a":1}"#,
        ] {
            assert!(plain_scalar(text).is_none(), "{text}");
        }
    }

    proptest::proptest! {
        /// Any number serde_json can read, the fast path reads the same or leaves alone.
        #[test]
        fn plain_numbers_agree_with_serde_json(
            neg in proptest::bool::ANY,
            int in "0|[1-9][0-9]{0,19}",
            frac in proptest::option::of("[0-9]{1,17}"),
        ) {
            let text = format!("{}{int}{}", if neg { "-" } else { "" }, frac.map(|f| format!(".{f}")).unwrap_or_default());
            if let Some(fast) = plain_scalar(&text) {
                proptest::prop_assert!(same(&fast, &parsed(&text)), "{}: {:?} vs {:?}", text, fast, parsed(&text));
            }
        }
    }

    #[test]
    fn needs_lists_selected_fields_only() {
        let e = Expr::compile("value.total > 10.0 && value.region == 'eu' && key != ''").unwrap();
        assert!(!e.needs().whole_value);
        assert_eq!(
            e.needs().fields.iter().cloned().collect::<Vec<_>>(),
            vec!["region", "total"]
        );
        assert!(e.needs().key);
        assert!(!e.needs().headers);
        let whole = Expr::compile("size(value) > 1").unwrap();
        assert!(whole.needs().whole_value);
        let has = Expr::compile("has(value.x)").unwrap();
        assert!(has.needs().tested.contains("x"));
        assert!(!has.needs().whole_value);
    }

    #[test]
    fn evaluates_against_record_fields_and_metadata() {
        let root = root_context();
        let r = rec(serde_json::json!({"total": 12.5, "region": "eu", "items": [1, 2]}));
        let e = Expr::compile("value.total > 10.0 && topic == 'orders' && partition == 2 && offset == 7 && key == 'k1'").unwrap();
        assert!(e.eval_bool(&scope(&root, &r, e.needs()).unwrap()).unwrap());
        let e = Expr::compile("size(value.items)").unwrap();
        assert_eq!(
            e.eval_number(&scope(&root, &r, e.needs()).unwrap())
                .unwrap(),
            Number::Int(2)
        );
    }

    #[test]
    fn has_and_absent_fields_behave_as_on_the_whole_record() {
        let root = root_context();
        let r = rec(serde_json::json!({"a": 1, "n": {"x": 2}}));
        for (src, want) in [
            ("has(value.a) && !has(value.b)", true),
            ("value.a == 1 && has(value.a)", true),
            ("value.n.x == 2", true),
            ("has(value.n.x)", true),
        ] {
            let e = Expr::compile(src).unwrap();
            assert_eq!(
                e.eval_bool(&scope(&root, &r, e.needs()).unwrap()).unwrap(),
                want,
                "{src}"
            );
        }
        let e = Expr::compile("value.b == 1").unwrap();
        let err = e
            .eval_bool(&scope(&root, &r, e.needs()).unwrap())
            .unwrap_err();
        assert!(err.to_string().contains("No such key"), "{err}");
        let text = Record::new("t", 0, 0, 0, None, Payload::Text("hi".to_string()));
        let e = Expr::compile("size(value) == 2").unwrap();
        assert!(
            e.eval_bool(&scope(&root, &text, e.needs()).unwrap())
                .unwrap()
        );
        let e = Expr::compile("value.x == 1").unwrap();
        assert!(
            e.eval_bool(&scope(&root, &text, e.needs()).unwrap())
                .is_err()
        );
    }

    #[test]
    fn missing_field_is_an_error_not_a_panic() {
        let root = root_context();
        let r = rec(serde_json::json!({"a": 1}));
        let e = Expr::compile("value.b > 1").unwrap();
        let err = e
            .eval_bool(&scope(&root, &r, e.needs()).unwrap())
            .unwrap_err();
        assert!(err.to_string().contains("value.b > 1"), "{err}");
    }

    #[test]
    fn wrong_result_type_is_reported() {
        let root = root_context();
        let r = rec(serde_json::json!({"a": "x"}));
        let e = Expr::compile("value.a").unwrap();
        let err = e
            .eval_bool(&scope(&root, &r, e.needs()).unwrap())
            .unwrap_err();
        assert!(
            matches!(err, EvalError::WrongType { want: "bool", .. }),
            "{err}"
        );
        assert!(
            e.eval_number(&scope(&root, &r, e.needs()).unwrap())
                .is_err()
        );
    }

    #[test]
    fn syntax_error_is_a_compile_error() {
        let err = Expr::compile("value.a >").unwrap_err();
        assert!(err.to_string().contains("value.a >"));
    }

    #[test]
    fn json_round_trips_through_cel() {
        let v = serde_json::json!({"a": [1, 2.5, "x", null, true], "b": {"c": -3}});
        assert_eq!(cel_to_json(&json_to_cel(&v)).unwrap(), v);
    }
}
