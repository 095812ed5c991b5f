//! The validate step: required fields and JSON types.

use sluice_crds::pipeline::{FieldType, ValidateStep};

use super::StepError;
use crate::record::Record;

/// A validate step.
#[derive(Debug)]
pub struct Validate {
    required: Vec<String>,
    types: Vec<(String, FieldType)>,
}

impl Validate {
    /// From the spec.
    pub fn new(spec: &ValidateStep) -> Self {
        Self {
            required: spec.required.clone(),
            types: spec.types.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        }
    }

    /// Ok when the record has every required field and each typed field (when present) has its type.
    pub fn check(&self, record: &Record) -> Result<(), StepError> {
        if !record.value.is_object() {
            return Err(StepError::Shape("validate needs a JSON object".to_string()));
        }
        if let Some(missing) = self.required.iter().find(|f| !record.value.has_field(f)) {
            return Err(StepError::Shape(format!(
                "required field {missing} is missing"
            )));
        }
        for (field, ty) in &self.types {
            let value = record.value.field_json(field).transpose();
            if let Some(v) = value.map_err(|e| StepError::Shape(e.to_string()))? {
                let ok = match ty {
                    FieldType::String => v.is_string(),
                    FieldType::Number => v.is_number(),
                    FieldType::Integer => v.is_i64() || v.is_u64(),
                    FieldType::Boolean => v.is_boolean(),
                    FieldType::Object => v.is_object(),
                    FieldType::Array => v.is_array(),
                };
                if !ok {
                    return Err(StepError::Shape(format!(
                        "field {field} should be {ty:?}, got {v}"
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Payload;

    #[test]
    fn checks_required_and_types() {
        let v = Validate::new(
            &serde_saphyr::from_str("required: [id]\ntypes: {total: number, n: integer}\n")
                .unwrap(),
        );
        let rec = |j| Record::new("t", 0, 0, 0, None, Payload::Json(j));
        assert!(
            v.check(&rec(serde_json::json!({"id": 1, "total": 2.5, "n": 3})))
                .is_ok()
        );
        assert!(
            v.check(&rec(serde_json::json!({"total": 2.5})))
                .unwrap_err()
                .to_string()
                .contains("id")
        );
        assert!(
            v.check(&rec(serde_json::json!({"id": 1, "total": "x"})))
                .is_err()
        );
        assert!(
            v.check(&rec(serde_json::json!({"id": 1, "n": 2.5})))
                .is_err()
        );
        assert!(v.check(&rec(serde_json::json!("x"))).is_err());
    }
}
