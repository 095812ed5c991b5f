//! What an expression sees of one record: the parts its pipeline segment reads, as CEL
//! values, and the CEL context built from them only when an expression needs the
//! interpreter.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::sync::Arc;

use cel::objects::{Key, Map};
use cel::{Context, Value};

use super::EvalError;
use super::Needs;
use crate::record::{Payload, Record};

/// One record's variables (see the module docs).
pub struct Scope<'a> {
    root: &'a Context<'a, 'static>,
    /// `value.<field>` for each selected field the record has.
    fields: Vec<(&'a str, Value)>,
    /// `value` itself: the whole value, or a map of the selected fields when one is tested
    /// with `has()` or absent (so those behave as on the whole record).
    value: Option<Value>,
    /// `key`, `headers`, `topic`, `partition`, `offset`, `timestamp`, as read.
    meta: Vec<(&'static str, Value)>,
    /// Boxed: a context is large, and a scope is moved from step to step.
    cel: OnceCell<Box<Context<'a, 'static>>>,
}

impl<'a> Scope<'a> {
    /// The parts of `record` that `needs` asks for.
    pub fn of(
        root: &'a Context<'a, 'static>,
        record: &Record,
        needs: &'a Needs,
    ) -> Result<Self, EvalError> {
        let mut scope = Scope {
            root,
            fields: Vec::with_capacity(needs.fields.len()),
            value: None,
            meta: Vec::new(),
            cel: OnceCell::new(),
        };
        if needs.whole_value {
            scope.value = Some(record.value.to_cel()?);
        } else if !needs.fields.is_empty() || !needs.tested.is_empty() {
            scope.bind_fields(&record.value, needs)?;
        }
        scope.bind_meta(record, needs);
        Ok(scope)
    }

    /// A scope whose CEL context is already made (variables other than a record's).
    pub fn with_context(root: &'a Context<'a, 'static>, context: Context<'a, 'static>) -> Self {
        Scope {
            root,
            fields: Vec::new(),
            value: None,
            meta: Vec::new(),
            cel: OnceCell::from(Box::new(context)),
        }
    }

    fn bind_fields(&mut self, value: &Payload, needs: &'a Needs) -> Result<(), EvalError> {
        if !value.is_object() {
            self.value = Some(value.to_cel()?);
            return Ok(());
        }
        let mut need_map = !needs.tested.is_empty();
        for f in &needs.fields {
            match value.field_to_cel(f).transpose()? {
                Some(v) => self.fields.push((f.as_str(), v)),
                None => need_map = true,
            }
        }
        if need_map {
            // The selected fields just converted, and the tested ones; absent ones stay
            // absent, so reading them fails as it would on the whole value.
            let mut map: HashMap<Key, Value> = self
                .fields
                .iter()
                .map(|(f, v)| (Key::String(Arc::new(f.to_string())), v.clone()))
                .collect();
            for f in needs.tested.difference(&needs.fields) {
                if let Some(v) = value.field_to_cel(f).transpose()? {
                    map.insert(Key::String(Arc::new(f.clone())), v);
                }
            }
            self.value = Some(Value::Map(Map { map: Arc::new(map) }));
        }
        Ok(())
    }

    fn bind_meta(&mut self, record: &Record, needs: &Needs) {
        if needs.key {
            let key = match &record.key {
                Some(k) => Value::String(Arc::new(String::from_utf8_lossy(k).into_owned())),
                None => Value::Null,
            };
            self.meta.push(("key", key));
        }
        if needs.headers {
            let map: HashMap<Key, Value> = record
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        Key::String(Arc::new(k.clone())),
                        Value::String(Arc::new(String::from_utf8_lossy(v).into_owned())),
                    )
                })
                .collect();
            self.meta
                .push(("headers", Value::Map(Map { map: Arc::new(map) })));
        }
        if needs.topic {
            self.meta
                .push(("topic", Value::String(Arc::new(record.topic.to_string()))));
        }
        if needs.partition {
            self.meta
                .push(("partition", Value::Int(i64::from(record.partition))));
        }
        if needs.offset {
            self.meta.push(("offset", Value::Int(record.offset)));
        }
        if needs.timestamp {
            self.meta.push(("timestamp", Value::Int(record.timestamp)));
        }
    }

    /// The selected field `value.<name>` (`key` is the same name as a CEL map key), when
    /// the record has it.
    pub fn field(&self, name: &str, key: &Key) -> Option<&Value> {
        if let Some((_, v)) = self.fields.iter().find(|(f, _)| *f == name) {
            return Some(v);
        }
        match &self.value {
            Some(Value::Map(m)) => m.map.get(key),
            _ => None,
        }
    }

    /// Whether `value` is bound as a whole or as a map (so `has()` can be answered).
    pub fn value(&self) -> Option<&Value> {
        self.value.as_ref()
    }

    /// A record variable other than `value` (`key`, `topic`, ...), when bound.
    pub fn meta(&self, name: &str) -> Option<&Value> {
        self.meta.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// The CEL context for the interpreter, made on first use: each selected field as
    /// its own variable `value.<field>` (CEL resolves the qualified name to it directly),
    /// `value` and the record's other variables.
    pub fn cel(&self) -> &Context<'a, 'static> {
        self.cel.get_or_init(|| {
            let mut c = Box::new(self.root.new_inner_scope());
            for (f, v) in &self.fields {
                c.add_variable_from_value(format!("value.{f}"), v.clone());
            }
            if let Some(v) = &self.value {
                c.add_variable_from_value("value", v.clone());
            }
            for (n, v) in &self.meta {
                c.add_variable_from_value(*n, v.clone());
            }
            c
        })
    }
}
