//! The map step: set fields from expressions, rename, drop.

use std::sync::Arc;

use crate::expr::Scope;
use sluice_crds::pipeline::MapStep;

use super::{ConfigError, StepError, compile_expr};
use crate::expr::{Expr, Needs, cel_to_json};
use crate::record::{Payload, Record};

/// A compiled map step.
#[derive(Debug)]
pub struct Map {
    set: Vec<(Arc<str>, Expr)>,
    rename: Vec<(String, String)>,
    drop: Vec<String>,
}

impl Map {
    /// Compiles the `set` expressions.
    pub fn compile(step: &str, spec: &MapStep) -> Result<Self, ConfigError> {
        let set = spec
            .set
            .iter()
            .map(|(field, src)| Ok((Arc::from(field.as_str()), compile_expr(step, src)?)))
            .collect::<Result<_, ConfigError>>()?;
        Ok(Self {
            set,
            rename: spec
                .rename
                .iter()
                .map(|(a, b)| (a.clone(), b.clone()))
                .collect(),
            drop: spec.drop.clone(),
        })
    }

    /// What the `set` expressions read.
    pub fn needs(&self) -> Needs {
        let mut needs = Needs::default();
        self.set.iter().for_each(|(_, e)| needs.merge(e.needs()));
        needs
    }

    /// Applies set, rename, drop. Every `set` sees the record as it came in: expressions
    /// read the scope, which was made from it, so a field set here is not seen by the
    /// next expression.
    pub fn apply(&self, record: &mut Record, scope: &Scope<'_>) -> Result<(), StepError> {
        match &mut record.value {
            Payload::JsonObject(obj) => {
                for (field, expr) in &self.set {
                    obj.insert_shared(field, Self::eval(field, expr, scope)?);
                }
                for (from, to) in &self.rename {
                    obj.rename(from, to);
                }
                for field in &self.drop {
                    obj.remove(field);
                }
            }
            Payload::Json(serde_json::Value::Object(obj)) => {
                for (field, expr) in &self.set {
                    obj.insert(field.to_string(), Self::eval(field, expr, scope)?);
                }
                for (from, to) in &self.rename {
                    if let Some(v) = obj.remove(from) {
                        obj.insert(to.clone(), v);
                    }
                }
                for field in &self.drop {
                    obj.remove(field);
                }
            }
            _ => return Err(StepError::Shape("map needs a JSON object".to_string())),
        }
        Ok(())
    }

    fn eval(field: &str, expr: &Expr, scope: &Scope<'_>) -> Result<serde_json::Value, StepError> {
        let v = expr.eval(scope)?;
        cel_to_json(&v).map_err(|e| StepError::Shape(format!("field {field}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::{root_context, scope};

    fn map(yaml: &str) -> Map {
        Map::compile("m", &serde_saphyr::from_str(yaml).unwrap()).unwrap()
    }

    fn apply(m: &Map, v: serde_json::Value) -> Result<Record, StepError> {
        let root = root_context();
        let r = Record::new("in", 0, 0, 0, None, Payload::Json(v));
        let needs = m.needs();
        let s = scope(&root, &r, &needs).unwrap();
        let mut out = r.clone();
        m.apply(&mut out, &s).map(|()| out)
    }

    #[test]
    fn sets_renames_and_drops() {
        let m = map(
            "set: {total: 'value.price * 2.0', tag: '\"x\"'}\nrename: {id: orderId}\ndrop: [secret]\n",
        );
        let r = apply(
            &m,
            serde_json::json!({"price": 1.5, "id": "o1", "secret": 1}),
        )
        .unwrap();
        assert_eq!(
            r.value,
            Payload::Json(
                serde_json::json!({"price": 1.5, "total": 3.0, "tag": "x", "orderId": "o1"})
            )
        );
    }

    #[test]
    fn set_sees_the_record_before_the_step() {
        let m = map("set: {a: 'value.b', b: 'value.a'}\n");
        let r = apply(&m, serde_json::json!({"a": 1, "b": 2})).unwrap();
        assert_eq!(r.value, Payload::Json(serde_json::json!({"a": 2, "b": 1})));
    }

    #[test]
    fn failing_expression_and_non_object_are_errors() {
        let m = map("set: {a: 'value.missing + 1'}\n");
        assert!(matches!(
            apply(&m, serde_json::json!({"b": 1})),
            Err(StepError::Eval(_))
        ));
        let m = map("drop: [a]\n");
        assert!(matches!(
            apply(&m, serde_json::json!([1, 2])),
            Err(StepError::Shape(_))
        ));
    }
}
