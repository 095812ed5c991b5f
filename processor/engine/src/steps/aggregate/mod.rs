//! The keyed aggregate step (unwindowed, emitted on every update) and its state, kept
//! per state partition and logged to a changelog topic.
//!
//! Changelog records: key = the group key (a JSON array of the `groupBy` values),
//! value = [`GroupState`] as JSON. The latest record per key is the group's state, so
//! the topic can be compacted.

use std::collections::HashMap;

use crate::expr::Scope;
use serde::{Deserialize, Serialize};
use sluice_crds::pipeline::{AggregateOp, AggregateStep, Emit};

use super::{ConfigError, StateStep, StepError, compile_expr};
use crate::expr::{Expr, Needs, Number, cel_to_json};
use crate::record::{Payload, Record};
use crate::state::KeyedState;
use crate::window::{Shape, Span, Windowing};

mod acc;
pub use acc::Acc;
use acc::negated;

/// The state of one group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupState {
    /// The `groupBy` values, in field-name order.
    pub group: Vec<serde_json::Value>,
    /// One accumulator per aggregation, in spec order.
    pub accs: Vec<Acc>,
    /// Start of the window (ms) for windowed aggregates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_start: Option<i64>,
    /// Largest record timestamp added (ms): restores the partition's stream time.
    #[serde(default)]
    pub max_ts: i64,
    /// An aggregate of changes: the rows in the group (the group goes at none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rows: i64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// A changelog record that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("changelog record for group {key} is not valid state: {message}")]
pub struct RestoreError {
    /// The group key.
    pub key: String,
    /// Why.
    pub message: String,
}

/// A compiled aggregate step with its state.
#[derive(Debug)]
pub struct Aggregate {
    group_by: Vec<(String, Expr)>,
    aggs: Vec<AggSpec>,
    window: Option<Windowing>,
    emit: Emit,
    /// The input is a table's change stream: rows are added and taken back.
    changes: bool,
    /// Groups by key (windowed: a group per window), per state partition.
    state: KeyedState<GroupState>,
    /// `emit: onCommit`: per partition, the groups updated since the last emit, with
    /// the last input record (its topic, partition, offset, timestamp and headers go on
    /// the output).
    pending: HashMap<i32, HashMap<String, Record>>,
    /// Milliseconds since the epoch now (the wall clock; tests set their own).
    clock: fn() -> i64,
}

/// How far past the processor's clock a record's timestamp may be in a windowed
/// aggregate. Stream time only moves forward: one record stamped in the far future (a
/// producer's broken clock) would close every open window and make every later record
/// late. Such a record is dead-lettered instead and stream time stays where it was.
pub const MAX_FUTURE_MS: i64 = 3_600_000;

fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn millis(step: &str, field: &str, value: &str) -> Result<i64, ConfigError> {
    humantime::parse_duration(value)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .filter(|ms| *ms > 0 || field == "grace")
        .ok_or_else(|| {
            ConfigError::Invalid(format!(
                "step {step}: window {field} {value:?} is not a duration like 1m"
            ))
        })
}

impl Aggregate {
    /// Compiles the step. Tumbling windows are supported; hopping and session windows
    /// are refused until they are implemented.
    pub fn compile(step: &str, spec: &AggregateStep) -> Result<Self, ConfigError> {
        let unsupported = |what: &str| ConfigError::Unsupported {
            step: step.to_string(),
            what: what.to_string(),
        };
        let window = match &spec.window {
            None => None,
            Some(w) if w.hopping.is_some() => return Err(unsupported("a hopping window")),
            Some(w) if w.session.is_some() => return Err(unsupported("a session window")),
            Some(w) => {
                let size = w.tumbling.as_deref().ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "step {step}: a window sets tumbling, hopping or session"
                    ))
                })?;
                Some(Windowing {
                    shape: Shape::Tumbling {
                        size: millis(step, "tumbling", size)?,
                    },
                    grace: w
                        .grace
                        .as_deref()
                        .map(|g| millis(step, "grace", g))
                        .transpose()?
                        .unwrap_or(0),
                })
            }
        };
        let emit = spec.emit;
        let changes = spec.changes.is_some();
        if changes {
            if window.is_some() {
                return Err(ConfigError::Invalid(format!(
                    "step {step}: an aggregate of changes (changes: debezium) is a table's GROUP BY over all its rows: it takes no window"
                )));
            }
            if let Some(a) = spec
                .aggregations
                .iter()
                .find(|a| matches!(a.op, AggregateOp::Min | AggregateOp::Max))
            {
                return Err(ConfigError::Invalid(format!(
                    "step {step}: aggregation {} ({:?}) cannot take a deleted or updated row's value back out; an aggregate of changes (changes: debezium) has sum, count and avg",
                    a.name, a.op
                )));
            }
        }
        if emit == Emit::OnWindowClose && window.is_none() {
            return Err(ConfigError::Invalid(format!(
                "step {step}: emit onWindowClose needs a window"
            )));
        }
        if spec.group_by.is_empty() || spec.aggregations.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "step {step}: an aggregate needs groupBy and at least one aggregation"
            )));
        }
        let group_by = spec
            .group_by
            .iter()
            .map(|(f, src)| Ok((f.clone(), compile_expr(step, src)?)))
            .collect::<Result<_, ConfigError>>()?;
        let aggs = spec
            .aggregations
            .iter()
            .map(|a| {
                let of = match (&a.of, a.op) {
                    (Some(src), _) => Some(compile_expr(step, src)?),
                    (None, AggregateOp::Count) => None,
                    (None, op) => {
                        return Err(ConfigError::Invalid(format!(
                            "step {step}: aggregation {} ({op:?}) needs `of`",
                            a.name
                        )));
                    }
                };
                Ok((a.name.clone(), a.op, of))
            })
            .collect::<Result<_, ConfigError>>()?;
        Ok(Self {
            group_by,
            aggs,
            window,
            emit,
            changes,
            state: KeyedState::default(),
            pending: HashMap::new(),
            clock: wall_clock_ms,
        })
    }

    /// What the expressions read.
    pub fn needs(&self) -> Needs {
        let mut needs = Needs::default();
        self.group_by
            .iter()
            .for_each(|(_, e)| needs.merge(e.needs()));
        self.aggs
            .iter()
            .filter_map(|(_, _, e)| e.as_ref())
            .for_each(|e| needs.merge(e.needs()));
        needs
    }

    /// The group key of a record (also the key of its changelog and output records).
    pub fn group_key(
        &self,
        scope: &Scope<'_>,
    ) -> Result<(String, Vec<serde_json::Value>), StepError> {
        let mut values = Vec::with_capacity(self.group_by.len());
        for (field, expr) in &self.group_by {
            let v = expr.eval(scope)?;
            values.push(
                cel_to_json(&v).map_err(|e| StepError::Shape(format!("groupBy {field}: {e}")))?,
            );
        }
        let key = serde_json::to_string(&values).map_err(|e| StepError::Shape(e.to_string()))?;
        Ok((key, values))
    }

    /// The number each aggregation takes from the record `scope` sees (`None`: count).
    fn inputs(&self, scope: &Scope<'_>) -> Result<Vec<Option<Number>>, StepError> {
        self.aggs
            .iter()
            .map(|(_, _, of)| {
                of.as_ref()
                    .map(|e| e.eval_number(scope).map_err(StepError::from))
                    .transpose()
            })
            .collect()
    }

    /// Adds a record to its group in `partition` (windowed: to its group in every open
    /// window that holds its timestamp) and returns the records to emit: the updated
    /// aggregates (`onUpdate`), and for windowed aggregates the final value of every
    /// window the record's timestamp closed (`onWindowClose`). Every expression is
    /// evaluated before the state changes, so a failing record leaves no trace. A record
    /// whose windows all closed already is an error (it goes to the dead-letter topic).
    pub fn update(
        &mut self,
        partition: i32,
        record: Record,
        scope: &Scope<'_>,
    ) -> Result<Vec<Record>, StepError> {
        let (key, group) = self.group_key(scope)?;
        let inputs = self.inputs(scope)?;
        let ts = record.timestamp;
        // Outputs copy the input's topic, partition, offset, timestamp and headers; its
        // value (already read through `scope`) is not needed and not cloned.
        let record = Record {
            value: Payload::Bytes(Vec::new()),
            ..record
        };
        let part = self.state.partition(partition);
        let targets: Vec<(String, Option<Span>)> = match self.window {
            None => vec![(key, None)],
            Some(w) => {
                let now = (self.clock)();
                if ts > now.saturating_add(MAX_FUTURE_MS) {
                    return Err(StepError::Shape(format!(
                        "timestamp {ts} is more than 1h ahead of the processor's clock \
                         ({now}): refused, so that it does not close every open window"
                    )));
                }
                let spans = w.assign(ts);
                let open: Vec<(String, Option<Span>)> = spans
                    .iter()
                    .filter(|s| w.closes_at(**s) > part.stream_time())
                    .map(|s| (windowed_key(&key, s.start), Some(*s)))
                    .collect();
                if open.is_empty() {
                    let last = spans.last().copied().unwrap_or(w.span_at(ts));
                    return Err(StepError::Shape(format!(
                        "late record: timestamp {ts} belongs to window [{}, {}), closed at stream time {}",
                        last.start,
                        last.end,
                        part.stream_time()
                    )));
                }
                open
            }
        };
        for (k, _) in &targets {
            // A group not seen yet starts from empty accumulators (made only if it is kept).
            let accs = part.get(k).map(|g| &g.accs);
            let overflow =
                self.aggs
                    .iter()
                    .zip(&inputs)
                    .enumerate()
                    .find(|(i, ((_, op, _), x))| match accs.and_then(|a| a.get(*i)) {
                        Some(acc) => !acc.stays_finite(**x),
                        None => !Acc::new(*op).stays_finite(**x),
                    });
            if let Some((_, ((name, _, _), _))) = overflow {
                return Err(StepError::Shape(format!(
                    "aggregation {name} of group {k} would not be a finite number (an \
                     overflow, or a NaN or infinite input): the record is refused and the \
                     group keeps its value"
                )));
            }
        }
        let mut out = Vec::new();
        let pending = self.pending.entry(partition).or_default();
        for (k, span) in targets {
            if part.get(&k).is_none() {
                let state = GroupState {
                    group: group.clone(),
                    accs: self.aggs.iter().map(|(_, op, _)| Acc::new(*op)).collect(),
                    window_start: span.map(|s| s.start),
                    max_ts: ts,
                    rows: 0,
                };
                let deadline = self.window.zip(span).map(|(w, s)| w.closes_at(s));
                part.insert(k.clone(), state, deadline);
            }
            let Some(state) = part.get_mut(&k) else {
                return Err(StepError::Shape(format!("group {k} vanished")));
            };
            for (acc, x) in state.accs.iter_mut().zip(&inputs) {
                acc.add(*x);
            }
            state.max_ts = state.max_ts.max(ts);
            match self.emit {
                Emit::OnCommit => match pending.get_mut(&k) {
                    // The group's output will carry this record's coordinates and headers.
                    Some(last) => {
                        if last.topic != record.topic {
                            last.topic.clone_from(&record.topic);
                        }
                        last.partition = record.partition;
                        last.offset = record.offset;
                        last.timestamp = record.timestamp;
                        last.headers.clone_from(&record.headers);
                    }
                    None => {
                        pending.insert(k, record.clone());
                    }
                },
                Emit::OnUpdate => out.push(Record {
                    key: Some(output_key(&k, &state.group, self.window.is_some()).into_bytes()),
                    value: Payload::Json(output_value(
                        &self.group_by,
                        &self.aggs,
                        self.window,
                        state,
                    )),
                    ..record.clone()
                }),
                Emit::OnWindowClose => {}
            }
        }
        part.advance(ts);
        let Some(w) = self.window else {
            return Ok(out);
        };
        let mut closed = part.expire(|g| g.window_start.map(|start| w.closes_at(w.span_at(start))));
        closed.sort_by(|a, b| (a.1.window_start, &a.0).cmp(&(b.1.window_start, &b.0)));
        for (k, g) in closed {
            // A closing window's last value goes out now: at the commit its group is
            // gone.
            let emit = match self.emit {
                Emit::OnWindowClose => true,
                Emit::OnCommit => pending.remove(&k).is_some(),
                Emit::OnUpdate => false,
            };
            if emit {
                out.push(Record {
                    key: Some(output_key(&k, &g.group, true).into_bytes()),
                    value: Payload::Json(output_value(&self.group_by, &self.aggs, self.window, &g)),
                    ..record.clone()
                });
            }
        }
        Ok(out)
    }

    /// Whether the input is a table's change stream ([`Aggregate::change`]).
    pub fn reads_changes(&self) -> bool {
        self.changes
    }

    /// An aggregate of changes: the group key of the row `scope` sees, once checked that
    /// adding it (or taking it out, `retract`) leaves its group valid. Nothing changes.
    pub fn check_change(
        &mut self,
        partition: i32,
        scope: &Scope<'_>,
        retract: bool,
    ) -> Result<String, StepError> {
        self.prepare_change(partition, scope, retract)
            .map(|(key, _, _)| key)
    }

    /// The group key, group values and inputs of a row of a change, checked as
    /// [`Aggregate::check_change`] says.
    fn prepare_change(
        &mut self,
        partition: i32,
        scope: &Scope<'_>,
        retract: bool,
    ) -> Result<PreparedRow, StepError> {
        let (key, group) = self.group_key(scope)?;
        let inputs = self.inputs(scope)?;
        let existing = self.state.partition(partition).get(&key);
        if retract && existing.is_none() {
            return Err(StepError::Shape(format!(
                "a change takes a row out of group {key}, which holds none: the change stream was not read from its start (a connector with snapshot: initial gives every row first)"
            )));
        }
        for (i, ((name, op, _), x)) in self.aggs.iter().zip(&inputs).enumerate() {
            let x = if retract { x.map(negated) } else { *x };
            let finite = match existing.and_then(|g| g.accs.get(i)) {
                Some(acc) => acc.stays_finite(x),
                None => Acc::new(*op).stays_finite(x),
            };
            if !finite {
                return Err(StepError::Shape(format!(
                    "aggregation {name} of group {key} would not be a finite number: the change is refused and the group keeps its value"
                )));
            }
        }
        Ok((key, group, inputs))
    }

    /// An aggregate of changes: adds the row `scope` sees to its group, or takes it back
    /// out (`retract`), once [`Aggregate::check_change`] passed. A group left with no
    /// rows is deleted: its output is a tombstone and its changelog entry goes. With
    /// `more`, another row of the same change follows for this group (an update that
    /// stays in it): the group is neither deleted nor emitted until that row.
    pub fn change(
        &mut self,
        partition: i32,
        record: Record,
        scope: &Scope<'_>,
        retract: bool,
        more: bool,
    ) -> Result<Vec<Record>, StepError> {
        let (key, group, inputs) = self.prepare_change(partition, scope, retract)?;
        let record = Record {
            value: Payload::Bytes(Vec::new()),
            ..record
        };
        let part = self.state.partition(partition);
        if part.get(&key).is_none() {
            let state = GroupState {
                group: group.clone(),
                accs: self.aggs.iter().map(|(_, op, _)| Acc::new(*op)).collect(),
                window_start: None,
                max_ts: record.timestamp,
                rows: 0,
            };
            part.insert(key.clone(), state, None);
        }
        let Some(state) = part.get_mut(&key) else {
            return Err(StepError::Shape(format!("group {key} vanished")));
        };
        for (acc, x) in state.accs.iter_mut().zip(&inputs) {
            if retract {
                acc.retract(*x);
            } else {
                acc.add(*x);
            }
        }
        state.rows += if retract { -1 } else { 1 };
        state.max_ts = state.max_ts.max(record.timestamp);
        if more {
            return Ok(Vec::new());
        }
        let out_key = Some(output_key(&key, &group, false).into_bytes());
        let value = if state.rows > 0 {
            Payload::Json(output_value(&self.group_by, &self.aggs, None, state))
        } else {
            part.remove(&key);
            Payload::Absent
        };
        part.advance(record.timestamp);
        match self.emit {
            Emit::OnCommit => {
                self.pending
                    .entry(partition)
                    .or_default()
                    .insert(key, record);
                Ok(Vec::new())
            }
            _ => Ok(vec![Record {
                key: out_key,
                value,
                ..record
            }]),
        }
    }

    /// `emit: onCommit`: the latest value of every group updated since the last call,
    /// taken (in group key order per partition, so the output order is stable).
    pub fn take_pending(&mut self) -> Vec<Record> {
        let mut out = Vec::new();
        let windowed = self.window.is_some();
        for (p, pending) in &mut self.pending {
            let mut pending: Vec<(String, Record)> = pending.drain().collect();
            pending.sort_by(|a, b| a.0.cmp(&b.0));
            for (key, last) in pending {
                if let Some(state) = self.state.get(*p, &key) {
                    out.push(Record {
                        key: Some(output_key(&key, &state.group, windowed).into_bytes()),
                        value: Payload::Json(output_value(
                            &self.group_by,
                            &self.aggs,
                            self.window,
                            state,
                        )),
                        ..last
                    });
                } else if self.changes {
                    // The group's last row was taken out: it is deleted.
                    let group: Vec<serde_json::Value> =
                        serde_json::from_str(&key).unwrap_or_default();
                    out.push(Record {
                        key: Some(output_key(&key, &group, false).into_bytes()),
                        value: Payload::Absent,
                        ..last
                    });
                }
            }
        }
        out
    }

    /// Changelog records for the groups changed since the last call, per partition; `None`
    /// (a tombstone) for groups removed when their window closed.
    pub fn take_changes(&mut self) -> Vec<(i32, String, Option<Vec<u8>>)> {
        self.state.take_changes(|g| serde_json::to_vec(g).ok())
    }

    /// Applies one changelog record while restoring `partition`.
    pub fn restore(
        &mut self,
        partition: i32,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), RestoreError> {
        let key = String::from_utf8_lossy(key).into_owned();
        let Some(value) = value else {
            self.state.restore(partition, key, None);
            return Ok(());
        };
        let state: GroupState = serde_json::from_slice(value).map_err(|e| RestoreError {
            key: key.clone(),
            message: e.to_string(),
        })?;
        if state.accs.len() != self.aggs.len() || state.group.len() != self.group_by.len() {
            return Err(RestoreError {
                key,
                message: "the aggregations changed since it was written; use a new pipeline name to start over".to_string(),
            });
        }
        let deadline = self
            .window
            .zip(state.window_start)
            .map(|(w, start)| w.closes_at(w.span_at(start)));
        let max_ts = state.max_ts;
        self.state
            .restore(partition, key, Some((state, max_ts, deadline)));
        Ok(())
    }

    /// Forgets a partition (revoked, or about to be restored again).
    pub fn drop_partition(&mut self, partition: i32) {
        self.state.drop_partition(partition);
        self.pending.remove(&partition);
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.state.clear();
        self.pending.clear();
    }

    /// Partitions with state.
    pub fn partitions(&self) -> Vec<i32> {
        self.state.partitions()
    }

    /// Groups held.
    pub fn group_count(&self) -> usize {
        self.state.len()
    }

    /// The current aggregate of every group, as output values (for tests and inspection).
    pub fn snapshot(&self) -> HashMap<String, serde_json::Value> {
        self.state
            .entries()
            .map(|(k, s)| {
                (
                    k.clone(),
                    output_value(&self.group_by, &self.aggs, self.window, s),
                )
            })
            .collect()
    }
}

type AggSpec = (String, AggregateOp, Option<Expr>);

/// A row of a change, checked: its group key, group values and the aggregations' inputs.
type PreparedRow = (String, Vec<serde_json::Value>, Vec<Option<Number>>);

fn output_value(
    group_by: &[(String, Expr)],
    aggs: &[AggSpec],
    window: Option<Windowing>,
    state: &GroupState,
) -> serde_json::Value {
    let mut obj = serde_json::Map::with_capacity(group_by.len() + aggs.len() + 2);
    for ((field, _), v) in group_by.iter().zip(&state.group) {
        obj.insert(field.clone(), v.clone());
    }
    if let (Some(w), Some(start)) = (window, state.window_start) {
        obj.insert("windowStart".to_string(), serde_json::Value::from(start));
        obj.insert(
            "windowEnd".to_string(),
            serde_json::Value::from(w.span_at(start).end),
        );
    }
    for ((name, _, _), acc) in aggs.iter().zip(&state.accs) {
        obj.insert(name.clone(), acc.value());
    }
    serde_json::Value::Object(obj)
}

/// The state key of a group in the window starting at `start`: the group key's JSON
/// array with the start as its last element.
fn windowed_key(key: &str, start: i64) -> String {
    let mut k = String::with_capacity(key.len() + 21);
    k.push_str(key.strip_suffix(']').unwrap_or(key));
    k.push(',');
    k.push_str(&start.to_string());
    k.push(']');
    k
}

/// The output key: a single string group value as is (unwindowed), otherwise the JSON
/// array of the group values (and the window start).
fn output_key(key: &str, group: &[serde_json::Value], windowed: bool) -> String {
    match group {
        [serde_json::Value::String(s)] if !windowed => s.clone(),
        _ => key.to_string(),
    }
}

impl StateStep for Aggregate {
    fn key(&self, scope: &Scope<'_>) -> Result<String, StepError> {
        self.group_key(scope).map(|(k, _)| k)
    }

    fn update(
        &mut self,
        partition: i32,
        record: Record,
        scope: &Scope<'_>,
    ) -> Result<Vec<Record>, StepError> {
        Aggregate::update(self, partition, record, scope)
    }

    fn take_changes(&mut self) -> Vec<(i32, String, Option<Vec<u8>>)> {
        Aggregate::take_changes(self)
    }

    fn reads_changes(&self) -> bool {
        Aggregate::reads_changes(self)
    }

    fn check_change(
        &mut self,
        partition: i32,
        scope: &Scope<'_>,
        retract: bool,
    ) -> Result<String, StepError> {
        Aggregate::check_change(self, partition, scope, retract)
    }

    fn change(
        &mut self,
        partition: i32,
        record: Record,
        scope: &Scope<'_>,
        retract: bool,
        more: bool,
    ) -> Result<Vec<Record>, StepError> {
        Aggregate::change(self, partition, record, scope, retract, more)
    }

    fn take_pending(&mut self) -> Vec<Record> {
        Aggregate::take_pending(self)
    }

    fn restore(
        &mut self,
        partition: i32,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), RestoreError> {
        Aggregate::restore(self, partition, key, value)
    }

    fn drop_partition(&mut self, partition: i32) {
        Aggregate::drop_partition(self, partition);
    }

    fn clear(&mut self) {
        Aggregate::clear(self);
    }

    fn group_count(&self) -> usize {
        Aggregate::group_count(self)
    }

    fn partitions(&self) -> Vec<i32> {
        Aggregate::partitions(self)
    }
}

#[cfg(test)]
mod tests;
