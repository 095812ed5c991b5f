//! One check of a Pipeline spec, for the operator (before it deploys anything) and the
//! processor alike: every expression that does not compile, named by its field path,
//! and else what the engine refuses.

use std::fmt;

use sluice_crds::PipelineSpec;

use crate::engine::Engine;
use crate::expr::Expr;
use crate::metrics::PipelineMetrics;

/// Something in a spec that keeps it from running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where, as a person reads it (`step positive filter`, `output totals key`), or
    /// empty for the spec as a whole.
    pub place: String,
    /// The field path (`spec.steps[0].filter`).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.place.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{} ({}): {}", self.place, self.path, self.message)
        }
    }
}

/// The problems of `spec`, empty when it runs: each expression that does not compile
/// (syntax, or a function this build does not have), else the engine's refusal (an
/// unsupported feature, a bad commit interval, ...).
pub fn check(name: &str, spec: &PipelineSpec) -> Vec<Problem> {
    let problems: Vec<Problem> = expressions(spec)
        .into_iter()
        .filter_map(|(place, path, source)| {
            Expr::compile(&source).err().map(|e| Problem {
                place,
                path,
                message: format!("invalid expression {source:?}: {}", e.message),
            })
        })
        .collect();
    if !problems.is_empty() {
        return problems;
    }
    match Engine::new(name, spec, PipelineMetrics::detached(name)) {
        Ok(_) => Vec::new(),
        Err(e) => vec![Problem {
            place: String::new(),
            path: "spec".into(),
            message: e.to_string(),
        }],
    }
}

/// Every expression of a spec: where it is written (for a person, and as a field path)
/// and its source.
fn expressions(spec: &PipelineSpec) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (i, step) in spec.steps.iter().enumerate() {
        let mut add = |what: String, field: String, source: &str| {
            out.push((
                format!("step {} {what}", step.name),
                format!("spec.steps[{i}].{field}"),
                source.to_string(),
            ));
        };
        if let Some(f) = &step.filter {
            add("filter".into(), "filter".into(), f);
        }
        if let Some(m) = &step.map {
            for (k, v) in &m.set {
                add(format!("map.set.{k}"), format!("map.set.{k}"), v);
            }
        }
        if let Some(r) = &step.route {
            for (j, route) in r.routes.iter().enumerate() {
                add(
                    "route.when".into(),
                    format!("route.routes[{j}].when"),
                    &route.when,
                );
            }
        }
        if let Some(a) = &step.aggregate {
            for (k, v) in &a.group_by {
                add(
                    format!("aggregate.groupBy.{k}"),
                    format!("aggregate.groupBy.{k}"),
                    v,
                );
            }
            for (j, g) in a.aggregations.iter().enumerate() {
                if let Some(of) = &g.of {
                    add(
                        format!("aggregate {}", g.name),
                        format!("aggregate.aggregations[{j}].of"),
                        of,
                    );
                }
            }
        }
        if let Some(d) = &step.dedupe {
            add("dedupe.key".into(), "dedupe.key".into(), &d.key);
        }
        if let Some(e) = &step.enrich {
            add("enrich.key".into(), "enrich.key".into(), &e.key);
        }
    }
    for (j, o) in spec.outputs.iter().enumerate() {
        if let Some(k) = &o.key {
            out.push((
                format!("output {} key", o.topic),
                format!("spec.outputs[{j}].key"),
                k.clone(),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> PipelineSpec {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn every_bad_expression_is_named_by_its_field_path() {
        let problems = check(
            "p",
            &spec(
                r#"
inputs: [in]
steps:
- {name: ok, filter: "value.total > 0.0"}
- {name: broken, filter: "value.total >"}
- name: shape
  map: {set: {cents: "nosuchfn(value.total)"}}
outputs: [{topic: out, key: "value.region +"}]
"#,
            ),
        );
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "spec.steps[1].filter",
                "spec.steps[2].map.set.cents",
                "spec.outputs[0].key"
            ]
        );
        let text = problems[0].to_string();
        assert!(
            text.starts_with("step broken filter (spec.steps[1].filter): invalid expression"),
            "{text}"
        );
        assert!(problems[1].message.contains("nosuchfn"), "{}", problems[1]);
    }

    #[test]
    fn with_good_expressions_the_engines_refusal_is_the_problem() {
        let problems = check(
            "p",
            &spec(
                "inputs: [in]\noutputs: [{topic: out}]\ndelivery: exactlyOnce\ncommitInterval: 6m\n",
            ),
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].path, "spec");
        assert!(
            problems[0].to_string().contains("longer than 5m"),
            "{}",
            problems[0]
        );
        assert!(check("p", &spec("inputs: [in]\noutputs: [{topic: out}]\n")).is_empty());
    }
}
