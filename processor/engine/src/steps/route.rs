//! The route step: the first route whose `when` holds sends the record to its topic.

use std::sync::Arc;

use crate::expr::Scope;
use sluice_crds::pipeline::RouteStep;

use super::{ConfigError, Outcome, StepError, compile_expr};
use crate::expr::{Expr, Needs};

/// A compiled route step.
#[derive(Debug)]
pub struct Route {
    routes: Vec<(Expr, Arc<str>)>,
    default: Option<Arc<str>>,
}

impl Route {
    /// Compiles the predicates.
    pub fn compile(step: &str, spec: &RouteStep) -> Result<Self, ConfigError> {
        let routes = spec
            .routes
            .iter()
            .map(|r| Ok((compile_expr(step, &r.when)?, Arc::from(r.topic.as_str()))))
            .collect::<Result<_, ConfigError>>()?;
        Ok(Self {
            routes,
            default: spec.default.as_deref().map(Arc::from),
        })
    }

    /// Topics this step can write to.
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.routes
            .iter()
            .map(|(_, t)| &**t)
            .chain(self.default.as_deref())
    }

    /// What the predicates read.
    pub fn needs(&self) -> Needs {
        let mut needs = Needs::default();
        self.routes.iter().for_each(|(e, _)| needs.merge(e.needs()));
        needs
    }

    /// Picks the topic, or lets the record continue when nothing matches and there is no default.
    pub fn apply(&self, scope: &Scope<'_>) -> Result<Outcome, StepError> {
        for (when, topic) in &self.routes {
            if when.eval_bool(scope)? {
                return Ok(Outcome::Routed(topic.clone()));
            }
        }
        Ok(match &self.default {
            Some(topic) => Outcome::Routed(topic.clone()),
            None => Outcome::Continue,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::{root_context, scope};
    use crate::record::{Payload, Record};

    fn route(yaml: &str) -> Route {
        Route::compile("r", &serde_saphyr::from_str(yaml).unwrap()).unwrap()
    }

    fn apply(r: &Route, v: serde_json::Value) -> Result<Outcome, StepError> {
        let root = root_context();
        let rec = Record::new("in", 0, 0, 0, None, Payload::Json(v));
        let needs = r.needs();
        let s = scope(&root, &rec, &needs).unwrap();
        r.apply(&s)
    }

    fn topic(o: Result<Outcome, StepError>) -> Option<String> {
        match o.unwrap() {
            Outcome::Routed(t) => Some(t.to_string()),
            _ => None,
        }
    }

    #[test]
    fn first_match_wins_then_default() {
        let r = route(
            "routes:\n- {when: 'value.total > 100.0', topic: big}\n- {when: 'value.total > 10.0', topic: mid}\ndefault: small\n",
        );
        assert_eq!(
            topic(apply(&r, serde_json::json!({"total": 500.0}))).as_deref(),
            Some("big")
        );
        assert_eq!(
            topic(apply(&r, serde_json::json!({"total": 50.0}))).as_deref(),
            Some("mid")
        );
        assert_eq!(
            topic(apply(&r, serde_json::json!({"total": 5.0}))).as_deref(),
            Some("small")
        );
        assert_eq!(r.topics().collect::<Vec<_>>(), vec!["big", "mid", "small"]);
    }

    #[test]
    fn no_match_without_default_continues() {
        let r = route("routes:\n- {when: 'value.eu', topic: eu}\n");
        assert!(matches!(
            apply(&r, serde_json::json!({"eu": false})),
            Ok(Outcome::Continue)
        ));
        assert!(apply(&r, serde_json::json!({"eu": 1})).is_err());
    }
}
