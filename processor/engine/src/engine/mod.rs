//! The compiled pipeline: runs one record through the steps and says what to write.
//! No Kafka here, so every path is unit-tested.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cel::{Context, Value};
use sluice_crds::pipeline::{Delivery, PipelineSpec};

use crate::expr::{Expr, Needs, Scope, root_context, scope};

mod changes;
use crate::format::RecordFormat;
use crate::metrics::{PipelineMetrics, StepMetrics};
use crate::record::{Payload, Record};
use crate::steps::{ConfigError, Kind, Outcome, StateStep, Step, StepError};
pub use changes::CHANGE_HEADER;

/// Measure step latency on one record in this many.
const LATENCY_SAMPLE: u64 = 16;

/// A record to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Emit {
    /// Target topic.
    pub topic: Arc<str>,
    /// Why it is written.
    pub kind: EmitKind,
    /// The record (its key, value, headers and timestamp are written).
    pub record: Record,
}

/// What an emitted record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmitKind {
    /// An output or route topic.
    Output,
    /// The internal topic that brings records with the same group key together.
    Repartition,
}

/// Why a record could not be processed: it goes to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("step {step}: {error}")]
pub struct Failure {
    /// The step (or `decode`, `output`, `produce`).
    pub step: String,
    /// What went wrong.
    pub error: String,
}

impl Failure {
    /// A failure outside the steps.
    pub fn new(step: &str, error: impl ToString) -> Self {
        Self {
            step: step.to_string(),
            error: error.to_string(),
        }
    }
}

/// The longest `commitInterval` under `exactlyOnce`. Each interval is one transaction,
/// and brokers abort a transaction open longer than `transaction.max.timeout.ms` (15
/// minutes by default); the processor asks for three intervals (see
/// `kafka::worker::transaction_timeout`), so five minutes is the most that fits.
pub const MAX_EXACTLY_ONCE_COMMIT_INTERVAL: Duration = Duration::from_secs(300);

/// Refuses a commit interval that is no duration, or too long for a transaction.
fn check_commit_interval(spec: &PipelineSpec) -> Result<(), ConfigError> {
    let interval = humantime::parse_duration(&spec.commit_interval).map_err(|e| {
        ConfigError::Invalid(format!(
            "commitInterval {:?} is not a duration (like 100ms or 2s): {e}",
            spec.commit_interval
        ))
    })?;
    if spec.delivery == Delivery::ExactlyOnce && interval > MAX_EXACTLY_ONCE_COMMIT_INTERVAL {
        return Err(ConfigError::Invalid(format!(
            "commitInterval {} is longer than {}, the most exactlyOnce allows: each interval \
             is one Kafka transaction, and brokers abort transactions open longer than 15 \
             minutes by default",
            spec.commit_interval,
            humantime::format_duration(MAX_EXACTLY_ONCE_COMMIT_INTERVAL)
        )));
    }
    Ok(())
}

/// A pipeline ready to process records.
pub struct Engine {
    name: String,
    format: RecordFormat,
    steps: Vec<Step>,
    step_metrics: Vec<Arc<StepMetrics>>,
    /// What step i and the steps after it up to the next one that changes the record
    /// read: one scope serves them all.
    segment_needs: Vec<Needs>,
    outputs: Vec<(Arc<str>, Option<Expr>)>,
    output_needs: Needs,
    aggregate: Option<usize>,
    repartition: Option<Arc<str>>,
    /// The input is a table's change stream (an aggregate with `changes`): tombstones
    /// are skipped.
    reads_changes: bool,
    root: Context<'static, 'static>,
    metrics: PipelineMetrics,
    seen: u64,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("name", &self.name)
            .field("steps", &self.steps)
            .finish()
    }
}

impl Engine {
    /// Compiles every step and expression of `spec` (once).
    pub fn new(
        name: &str,
        spec: &PipelineSpec,
        metrics: PipelineMetrics,
    ) -> Result<Self, ConfigError> {
        let format = RecordFormat::from_spec(spec.format)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if spec.inputs.is_empty() {
            return Err(ConfigError::Invalid("spec.inputs is empty".to_string()));
        }
        check_commit_interval(spec)?;
        let steps = spec
            .steps
            .iter()
            .map(Step::compile)
            .collect::<Result<Vec<_>, _>>()?;
        let aggregates: Vec<usize> = steps
            .iter()
            .enumerate()
            .filter(|(_, s)| s.kind.state().is_some())
            .map(|(i, _)| i)
            .collect();
        if aggregates.len() > 1 {
            return Err(ConfigError::Unsupported {
                step: steps[aggregates[1]].name.clone(),
                what: "more than one stateful step (aggregate, dedupe) in a pipeline".to_string(),
            });
        }
        if steps.iter().any(|s| matches!(s.kind, Kind::Aggregate(_)))
            && format != RecordFormat::Json
        {
            return Err(ConfigError::Invalid(
                "an aggregate step needs format json".to_string(),
            ));
        }
        let has_route = steps.iter().any(|s| matches!(s.kind, Kind::Route(_)));
        if spec.outputs.is_empty() && !has_route {
            return Err(ConfigError::Invalid(
                "a pipeline needs at least one output, or a route step".to_string(),
            ));
        }
        let mut names = std::collections::HashSet::new();
        if let Some(dup) = steps.iter().find(|s| !names.insert(s.name.as_str())) {
            return Err(ConfigError::Invalid(format!(
                "step names must be unique ({} twice)",
                dup.name
            )));
        }
        let outputs: Vec<(Arc<str>, Option<Expr>)> = spec
            .outputs
            .iter()
            .map(|o| {
                let key = o
                    .key
                    .as_deref()
                    .map(|k| {
                        Expr::compile(k).map_err(|source| ConfigError::Expr {
                            step: format!("output {}", o.topic),
                            source,
                        })
                    })
                    .transpose()?;
                Ok((Arc::from(o.topic.as_str()), key))
            })
            .collect::<Result<_, ConfigError>>()?;
        let mut output_needs = Needs::default();
        outputs
            .iter()
            .filter_map(|(_, k)| k.as_ref())
            .for_each(|k| output_needs.merge(k.needs()));
        let step_metrics = steps.iter().map(|s| metrics.step(&s.name)).collect();
        let mut segment_needs = vec![Needs::default(); steps.len()];
        for i in (0..steps.len()).rev() {
            let mut needs = steps[i].needs.clone();
            if !changes_record(&steps[i].kind) && i + 1 < steps.len() {
                needs.merge(&segment_needs[i + 1]);
            }
            segment_needs[i] = needs;
        }
        let reads_changes = steps
            .iter()
            .any(|s| matches!(&s.kind, Kind::Aggregate(a) if a.reads_changes()));
        if reads_changes {
            // Its outputs include tombstones (groups deleted), which no later step or key
            // expression could read.
            if aggregates.first().is_some_and(|&i| i + 1 != steps.len()) {
                return Err(ConfigError::Invalid(
                    "an aggregate of changes (changes: debezium) is the last step: its outputs include tombstones of deleted groups, which later steps could not read".to_string(),
                ));
            }
            if outputs.iter().any(|(_, key)| key.is_some()) {
                return Err(ConfigError::Invalid(
                    "the outputs of an aggregate of changes (changes: debezium) are keyed by their group: an output key expression could not read a deleted group's tombstone".to_string(),
                ));
            }
        }
        Ok(Self {
            name: name.to_string(),
            format,
            steps,
            step_metrics,
            segment_needs,
            outputs,
            output_needs,
            reads_changes,
            aggregate: aggregates.first().copied(),
            repartition: None,
            root: root_context(),
            metrics,
            seen: 0,
        })
    }

    /// Sends records through `topic` before the aggregate step, so that each group's
    /// records meet in one partition (needed when the input has more than one partition).
    pub fn set_repartition_topic(&mut self, topic: Option<String>) {
        self.repartition = topic.map(Arc::from);
    }

    /// The repartition topic, if one is in use.
    pub fn repartition_topic(&self) -> Option<&str> {
        self.repartition.as_deref()
    }

    /// Whether the input is a table's change stream: its tombstones (a delete's second
    /// record) are read as [`Payload::Absent`] and skipped.
    pub fn reads_changes(&self) -> bool {
        self.reads_changes
    }

    /// The stateful step's name (aggregate or dedupe), if the pipeline has one.
    pub fn aggregate_step(&self) -> Option<&str> {
        self.aggregate.map(|i| self.steps[i].name.as_str())
    }

    /// The stateful step's state.
    pub fn aggregate_mut(&mut self) -> Option<&mut dyn StateStep> {
        let i = self.aggregate?;
        self.steps[i].kind.state_mut()
    }

    /// Updates the state-size gauge.
    pub fn report_state(&mut self) {
        if let Some(i) = self.aggregate {
            let groups = self.steps[i].kind.state().map_or(0, |s| s.group_count());
            self.step_metrics[i]
                .state_groups
                .set(i64::try_from(groups).unwrap_or(i64::MAX));
        }
    }

    /// The table topics of enrich steps.
    pub fn table_topics(&self) -> Vec<String> {
        let mut t: Vec<String> = self
            .steps
            .iter()
            .filter_map(|s| match &s.kind {
                Kind::Enrich(e) => Some(e.table_topic().to_string()),
                _ => None,
            })
            .collect();
        t.sort();
        t.dedup();
        t
    }

    /// Attaches a loaded table to every enrich step that reads `topic`.
    pub fn attach_table(
        &mut self,
        topic: &str,
        table: &std::sync::Arc<crate::steps::enrich::Table>,
    ) {
        for s in &mut self.steps {
            if let Kind::Enrich(e) = &mut s.kind
                && e.table_topic() == topic
            {
                e.attach(table.clone());
            }
        }
    }

    /// The record format.
    pub fn format(&self) -> RecordFormat {
        self.format
    }

    /// Every topic this pipeline may write to (outputs and routes; not internal ones).
    pub fn output_topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.outputs.iter().map(|(t, _)| t.to_string()).collect();
        for s in &self.steps {
            if let Kind::Route(r) = &s.kind {
                topics.extend(r.topics().map(str::to_string));
            }
        }
        topics.sort();
        topics.dedup();
        topics
    }

    /// The pipeline name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs one decoded record through the steps, appending what to write to `out`.
    /// On failure nothing is appended and the record goes to the dead-letter topic.
    pub fn process(&mut self, record: Record, out: &mut Vec<Emit>) -> Result<(), Failure> {
        self.seen = self.seen.wrapping_add(1);
        if self.reads_changes && matches!(record.value, Payload::Absent) {
            return Ok(());
        }
        let sample = self.seen.is_multiple_of(LATENCY_SAMPLE);
        let from_repartition = self
            .repartition
            .as_deref()
            .is_some_and(|t| *t == *record.topic);
        let start = if from_repartition {
            self.aggregate.unwrap_or(0)
        } else {
            0
        };
        let before = out.len();
        let result = self.run_from(start, record, from_repartition, sample, out);
        if result.is_err() {
            out.truncate(before);
        }
        result
    }

    /// An aggregate of changes at step `i`: each row of the change (Debezium's envelope)
    /// is put into or taken out of its group. With a repartition topic each row crosses
    /// it first, keyed by its group, its direction in [`CHANGE_HEADER`].
    fn run_changes(
        &mut self,
        i: usize,
        record: Record,
        from_repartition: bool,
        out: &mut Vec<Emit>,
    ) -> Result<(), Failure> {
        let name = self.steps[i].name.clone();
        let failed = |metrics: &StepMetrics, e: StepError| {
            metrics.failed.inc();
            step_failure(&name, e)
        };
        let rows = if from_repartition {
            let retract = record
                .headers
                .iter()
                .any(|(k, v)| k == CHANGE_HEADER && v.as_slice() == b"retract");
            let mut record = record;
            record.headers.retain(|(k, _)| k != CHANGE_HEADER);
            vec![(retract, record)]
        } else {
            changes::rows(record).map_err(|e| failed(&self.step_metrics[i], e))?
        };
        // Every row is checked before any is applied: a change is applied whole or not
        // at all (it goes to the dead-letter topic).
        let mut scopes = Vec::with_capacity(rows.len());
        let mut keys = Vec::with_capacity(rows.len());
        for (retract, row) in &rows {
            let scope = scope(&self.root, row, &self.segment_needs[i])
                .map_err(|e| failed(&self.step_metrics[i], StepError::Eval(e)))?;
            let Some(agg) = self.steps[i].kind.state_mut() else {
                return Err(Failure::new(&name, "not a stateful step"));
            };
            let key = if self.repartition.is_some() && !from_repartition {
                agg.key(&scope)
            } else {
                agg.check_change(row.partition, &scope, *retract)
            }
            .map_err(|e| failed(&self.step_metrics[i], e))?;
            scopes.push(scope);
            keys.push(key);
        }
        let count = rows.len();
        let mut handed_on = Vec::new();
        for (n, ((retract, row), scope)) in rows.into_iter().zip(scopes).enumerate() {
            let Some(agg) = self.steps[i].kind.state_mut() else {
                return Err(Failure::new(&name, "not a stateful step"));
            };
            if let (Some(topic), false) = (&self.repartition, from_repartition) {
                drop(scope);
                let mut headers = row.headers;
                let direction: &[u8] = if retract { b"retract" } else { b"add" };
                headers.push((CHANGE_HEADER.to_string(), direction.to_vec()));
                out.push(Emit {
                    topic: topic.clone(),
                    kind: EmitKind::Repartition,
                    record: Record {
                        key: Some(keys[n].clone().into_bytes()),
                        value: project(row.value, &self.segment_needs[i]),
                        headers,
                        ..row
                    },
                });
                continue;
            }
            // An update that stays in its group: its old row out and its new row in are
            // one change of the group.
            let more = n + 1 < count && keys[n + 1] == keys[n];
            let partition = row.partition;
            let records = agg
                .change(partition, row, &scope, retract, more)
                .map_err(|e| failed(&self.step_metrics[i], e))?;
            drop(scope);
            handed_on.extend(records);
        }
        for r in handed_on {
            self.run_from(i + 1, r, from_repartition, false, out)?;
        }
        Ok(())
    }

    fn run_from(
        &mut self,
        start: usize,
        mut record: Record,
        from_repartition: bool,
        sample: bool,
        out: &mut Vec<Emit>,
    ) -> Result<(), Failure> {
        let mut cached: Option<Scope> = None;
        for i in start..self.steps.len() {
            let started = sample.then(Instant::now);
            let step = &mut self.steps[i];
            let metrics = &self.step_metrics[i];
            let scope = match cached.take() {
                Some(s) => s,
                None => match scope(&self.root, &record, &self.segment_needs[i]) {
                    Ok(s) => s,
                    Err(e) => {
                        metrics.failed.inc();
                        return Err(Failure::new(&step.name, e));
                    }
                },
            };
            let keep_scope = !changes_record(&step.kind);
            let is_dedupe = matches!(step.kind, Kind::Dedupe(_));
            let result = match step.kind.state_mut() {
                Some(agg) if agg.reads_changes() => {
                    drop(scope);
                    return self.run_changes(i, record, from_repartition, out);
                }
                Some(agg) => {
                    if let (Some(topic), false) = (&self.repartition, from_repartition) {
                        let key = agg.key(&scope);
                        drop(scope);
                        return match key {
                            Ok(key) => {
                                // Only what the stateful step reads crosses the topic.
                                let value = project(record.value, &self.segment_needs[i]);
                                out.push(Emit {
                                    topic: topic.clone(),
                                    kind: EmitKind::Repartition,
                                    record: Record {
                                        key: Some(key.into_bytes()),
                                        value,
                                        ..record
                                    },
                                });
                                Ok(())
                            }
                            Err(e) => {
                                metrics.failed.inc();
                                Err(Failure::new(&step.name, e))
                            }
                        };
                    }
                    let partition = record.partition;
                    let r = agg.update(partition, record, &scope);
                    drop(scope);
                    if let Some(t) = started {
                        metrics.latency.observe(t.elapsed().as_secs_f64());
                    }
                    match r {
                        Ok(records) => {
                            if records.is_empty() && is_dedupe {
                                metrics.filtered.inc();
                            }
                            for r in records {
                                self.run_from(i + 1, r, from_repartition, false, out)?;
                            }
                            return Ok(());
                        }
                        Err(e) => {
                            metrics.failed.inc();
                            return Err(step_failure(&step.name, e));
                        }
                    }
                }
                None => {
                    let r = step.apply(&mut record, &scope);
                    if keep_scope {
                        cached = Some(scope);
                    }
                    r
                }
            };
            if let Some(t) = started {
                metrics.latency.observe(t.elapsed().as_secs_f64());
            }
            match result {
                Ok(Outcome::Continue) => {}
                Ok(Outcome::Filtered) => {
                    metrics.filtered.inc();
                    return Ok(());
                }
                Ok(Outcome::Routed(topic)) => {
                    out.push(Emit {
                        topic,
                        kind: EmitKind::Output,
                        record,
                    });
                    return Ok(());
                }
                Err(e) => {
                    metrics.failed.inc();
                    return Err(step_failure(&step.name, e));
                }
            }
        }
        self.emit_outputs(record, out)
    }

    fn emit_outputs(&mut self, record: Record, out: &mut Vec<Emit>) -> Result<(), Failure> {
        let start = out.len();
        // The scope is read from the record as it is here, and only when an output has a
        // key expression; each output takes a copy of the record (the last one takes the
        // record itself) with its own key, if any.
        let scope = if self.outputs.iter().any(|(_, key)| key.is_some()) {
            Some(
                scope(&self.root, &record, &self.output_needs)
                    .map_err(|e| Failure::new("output", e))?,
            )
        } else {
            None
        };
        let n = self.outputs.len();
        let mut record = Some(record);
        for (i, (topic, key)) in self.outputs.iter().enumerate() {
            let key = match key
                .as_ref()
                .zip(scope.as_ref())
                .map(|(expr, scope)| expr.eval(scope))
            {
                Some(Ok(v)) => Some(key_bytes(&v)),
                Some(Err(e)) => {
                    out.truncate(start);
                    return Err(Failure::new(&format!("output {topic}"), e));
                }
                None => None,
            };
            let Some(mut r) = (if i + 1 == n {
                record.take()
            } else {
                record.clone()
            }) else {
                break;
            };
            if let Some(key) = key {
                r.key = key;
            }
            out.push(Emit {
                topic: topic.clone(),
                kind: EmitKind::Output,
                record: r,
            });
        }
        Ok(())
    }

    /// At the end of a commit interval: runs the records the stateful step held back
    /// (`emit: onCommit`) through the steps after it, appending what to write to `out`.
    /// Each failure comes back with the record that failed, for the dead-letter topic.
    pub fn flush(&mut self, out: &mut Vec<Emit>) -> Vec<(Record, Failure)> {
        let Some(i) = self.aggregate else {
            return Vec::new();
        };
        let pending = match self.steps[i].kind.state_mut() {
            Some(state) => state.take_pending(),
            None => return Vec::new(),
        };
        let mut failed = Vec::new();
        for record in pending {
            let before = out.len();
            if let Err(f) = self.run_from(i + 1, record.clone(), true, false, out) {
                out.truncate(before);
                failed.push((record, f));
            }
        }
        failed
    }

    /// Metric handles of this pipeline.
    pub fn metrics(&self) -> &PipelineMetrics {
        &self.metrics
    }
}

/// Keeps only the top-level fields `needs` reads from a JSON object (everything when it
/// reads the whole value).
fn project(value: Payload, needs: &Needs) -> Payload {
    match value {
        Payload::Json(serde_json::Value::Object(mut obj)) if !needs.whole_value => {
            obj.retain(|k, _| needs.fields.contains(k) || needs.tested.contains(k));
            Payload::Json(serde_json::Value::Object(obj))
        }
        Payload::JsonObject(mut obj) if !needs.whole_value => {
            obj.retain(|k| needs.fields.contains(k) || needs.tested.contains(k));
            Payload::JsonObject(obj)
        }
        other => other,
    }
}

/// Whether a step hands on a different record than it got (so a new scope is needed).
fn changes_record(kind: &Kind) -> bool {
    matches!(
        kind,
        Kind::Map(_) | Kind::Aggregate(_) | Kind::Dedupe(_) | Kind::Enrich(_)
    )
}

fn step_failure(step: &str, e: StepError) -> Failure {
    Failure::new(step, e)
}

/// A key expression's value as key bytes.
fn key_bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.as_bytes().to_vec()),
        Value::Bytes(b) => Some(b.to_vec()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        Value::UInt(u) => Some(u.to_string().into_bytes()),
        Value::Float(f) => Some(f.to_string().into_bytes()),
        Value::Bool(b) => Some(b.to_string().into_bytes()),
        other => crate::expr::cel_to_json(other)
            .ok()
            .map(|j| j.to_string().into_bytes()),
    }
}

/// Decodes a Kafka value, or says why it cannot be.
pub fn decode(format: RecordFormat, value: Option<&[u8]>) -> Result<Payload, Failure> {
    format.decode(value).map_err(|e| Failure::new("decode", e))
}

/// Encodes an emitted record's value.
pub fn encode(format: RecordFormat, value: &Payload) -> Result<Vec<u8>, Failure> {
    format.encode(value).map_err(|e| Failure::new("output", e))
}

#[cfg(test)]
mod tests;
