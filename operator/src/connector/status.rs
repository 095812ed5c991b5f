//! A Connector's status from what was found, pure: the state, the tasks, the topics and
//! offsets, and a `Ready` condition whose reason and message say what is wrong.

use sluice_crds::common::{READY, condition};
use sluice_crds::connector::{ConnectorOffset, ConnectorState, ConnectorTask};
use sluice_crds::{Connector, ConnectorStatus};

use super::connect::{ConnectorHealth, FieldError, Offset, first_line};
use super::native::Rollout;
use super::plan::{self, RestartDecision};
use crate::pods::PodTrouble;

/// Offsets kept in status at most.
pub const MAX_OFFSETS: usize = 20;
/// Longest error line kept in status.
const MAX_ERROR: usize = 400;

/// Condition: the topics a native connector writes to (a source) or reads (a sink) exist.
pub const TOPICS_READY: &str = "TopicsReady";

/// Whether the topics a native connector writes to or reads exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicsCheck {
    /// They all exist (or the connector is a sink, whose topics are its inputs).
    Present,
    /// These are not in Kafka: the connector waits at zero replicas.
    Missing(Vec<String>),
    /// Kafka did not answer.
    Unknown(String),
}

/// What one look at the Connect cluster found.
#[derive(Debug, Clone)]
pub enum Found {
    /// The cluster did not answer.
    Unavailable(String),
    /// Connect refused the config (validation or the write).
    InvalidConfig(Vec<FieldError>),
    /// A connector of that name exists and is not this resource's.
    NotOurs(String),
    /// The connector as it runs.
    ConnectObserved(ConnectObserved),
    /// A native plugin, which this operator does not run yet.
    NativeNotRunYet,
    /// A native connector as its Deployment, pods and Kafka show it.
    Native(NativeObserved),
    /// A native connector's children could not be written: objects with their names
    /// belong to something else.
    NativeConflict(String),
}

/// A native connector as its Deployment, pods and Kafka show it.
#[derive(Debug, Clone, PartialEq)]
pub struct NativeObserved {
    /// Its Deployment's rollout.
    pub rollout: Rollout,
    /// Whether its topics exist.
    pub topics: TopicsCheck,
    /// A sink: how far behind it is.
    pub progress: Option<SinkProgress>,
    /// Why its replicas do not run, when its pods say.
    pub trouble: Option<PodTrouble>,
}

/// How far a native sink is behind, and the autoscaler's latest change of its size.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkProgress {
    /// Records in its topics not yet loaded.
    pub lag: i64,
    /// The latest change of the replica count (sinks with `scaling`).
    pub last_scale: Option<sluice_crds::pipeline::ScaleDecision>,
}

/// A Kafka Connect connector as the Connect cluster reports it.
#[derive(Debug, Clone)]
pub struct ConnectObserved {
    /// Its status; `None` while Connect has not reported it.
    pub health: Option<ConnectorHealth>,
    /// Topics it has used; `None` when Connect did not say (the last ones stay).
    pub topics: Option<Vec<String>>,
    /// Offsets it reports; `None` when Connect did not say (the last ones stay).
    pub offsets: Option<Vec<Offset>>,
    /// The restart decision of this look.
    pub restart: RestartDecision,
}

/// The status to write for `connector` after finding `found`; `previous` is the status
/// last written.
pub fn compute(
    connector: &Connector,
    previous: Option<&ConnectorStatus>,
    found: &Found,
) -> ConnectorStatus {
    let previous = previous.cloned().unwrap_or_default();
    let generation = connector.metadata.generation;
    let wanted = connector.spec.state;
    let mut status = ConnectorStatus {
        observed_generation: generation,
        plugin: plugin(connector),
        connect_name: connector
            .spec
            .kafka_connect
            .as_ref()
            .map(|_| plan::connect_name(connector)),
        ..previous.clone()
    };
    let (ready, reason, message) = match found {
        Found::Unavailable(message) => (false, "ConnectUnavailable", message.clone()),
        Found::InvalidConfig(errors) => {
            let message = errors
                .iter()
                .map(|e| {
                    if e.field.is_empty() {
                        e.message.clone()
                    } else {
                        format!("{}: {}", e.field, e.message)
                    }
                })
                .collect::<Vec<_>>()
                .join("; ");
            status.last_error = Some(first_line(&message, MAX_ERROR));
            (
                false,
                "InvalidConfig",
                format!("Kafka Connect refused the config: {message}"),
            )
        }
        Found::NotOurs(name) => (
            false,
            "NameTaken",
            format!(
                "a connector named {name} exists on the Kafka Connect cluster and no Connector resource created it; it is left alone (delete or rename it there)"
            ),
        ),
        Found::NativeNotRunYet => {
            status.state = None;
            (
                false,
                "NotSupportedYet",
                format!(
                    "the {} plugin does not run natively in this release (the generator and the postgres, s3 and http sinks do): use spec.kafkaConnect with a Kafka Connect connector",
                    connector.spec.native_plugin().unwrap_or("none set")
                ),
            )
        }
        Found::ConnectObserved(observed) => {
            fill_observed(&mut status, observed);
            readiness(wanted, observed)
        }
        Found::NativeConflict(message) => (false, "ResourceConflict", message.clone()),
        Found::Native(NativeObserved {
            topics: TopicsCheck::Missing(topics),
            ..
        }) => {
            status.state = None;
            (
                false,
                "TopicMissing",
                format!(
                    "topic(s) the connector {} are not in Kafka: {} (it runs once they exist)",
                    if connector.spec.type_ == sluice_crds::connector::ConnectorType::Sink {
                        "reads"
                    } else {
                        "writes to"
                    },
                    topics.join(", ")
                ),
            )
        }
        Found::Native(NativeObserved {
            topics: TopicsCheck::Unknown(err),
            ..
        }) => (
            false,
            "KafkaUnavailable",
            format!("cannot read topic metadata from Kafka: {err}"),
        ),
        Found::Native(NativeObserved {
            rollout,
            topics: TopicsCheck::Present,
            trouble,
            ..
        }) => {
            let as_asked = rollout.outdated == 0
                && match wanted {
                    ConnectorState::Stopped => rollout.available == 0,
                    _ => rollout.available >= rollout.desired,
                };
            status.tasks_ready = Some(format!("{}/{}", rollout.available, rollout.desired));
            status.tasks = (0..rollout.available)
                .map(|id| ConnectorTask {
                    id,
                    state: plan::expected_state(wanted).to_string(),
                    worker: None,
                })
                .collect();
            status.state = as_asked.then(|| plan::expected_state(wanted).to_string());
            match trouble.as_ref().filter(|_| !as_asked) {
                Some(t) => {
                    status.last_error = Some(first_line(
                        t.message.as_deref().unwrap_or(&t.reason),
                        MAX_ERROR,
                    ));
                    (
                        false,
                        "ReplicasFailing",
                        format!("the connector's replicas do not run: {t}"),
                    )
                }
                None => native_readiness(wanted, rollout, as_asked),
            }
        }
    };
    let previous_conditions = previous.conditions;
    status.conditions = vec![condition(
        READY,
        ready,
        reason,
        message,
        generation,
        &previous_conditions,
    )];
    if let Found::Native(NativeObserved {
        progress: Some(progress),
        ..
    }) = found
    {
        status.lag = Some(progress.lag);
        status.position = Some(if progress.lag == 0 {
            "caught up".to_string()
        } else {
            format!("{} records behind", progress.lag)
        });
        if progress.last_scale.is_some() {
            status.last_scale.clone_from(&progress.last_scale);
        }
    }
    if let Found::Native(NativeObserved { topics, .. }) = found {
        let (ready, reason, message) = match topics {
            TopicsCheck::Present => (
                true,
                "TopicsFound",
                "every topic in spec.topics exists".to_string(),
            ),
            TopicsCheck::Missing(missing) => (
                false,
                "TopicMissing",
                format!("not in Kafka: {}", missing.join(", ")),
            ),
            TopicsCheck::Unknown(err) => (false, "KafkaUnavailable", err.clone()),
        };
        status.conditions.push(condition(
            TOPICS_READY,
            ready,
            reason,
            message,
            generation,
            &previous_conditions,
        ));
    }
    status
}

fn native_readiness(
    wanted: ConnectorState,
    rollout: &Rollout,
    as_asked: bool,
) -> (bool, &'static str, String) {
    let expected = plan::expected_state(wanted);
    if as_asked {
        let reason = match wanted {
            ConnectorState::Running => "Running",
            ConnectorState::Paused => "Paused",
            ConnectorState::Stopped => "Stopped",
        };
        return (
            true,
            reason,
            format!(
                "the connector is {expected}: {} of {} replicas available",
                rollout.available, rollout.desired
            ),
        );
    }
    let reason = if rollout.available == 0 && wanted != ConnectorState::Stopped {
        "Starting"
    } else {
        "Transitioning"
    };
    (
        false,
        reason,
        format!(
            "asked for {expected}: {} of {} replicas available, {} still on the previous config",
            rollout.available, rollout.desired, rollout.outdated
        ),
    )
}

fn plugin(connector: &Connector) -> Option<String> {
    match &connector.spec.kafka_connect {
        Some(kc) => Some(kc.class.rsplit('.').next().unwrap_or(&kc.class).to_string()),
        None => connector.spec.native_plugin().map(str::to_string),
    }
}

fn fill_observed(status: &mut ConnectorStatus, observed: &ConnectObserved) {
    if let Some(topics) = &observed.topics {
        status.topics = topics.clone();
    }
    if let Some(offsets) = &observed.offsets {
        status.offsets = offsets
            .iter()
            .take(MAX_OFFSETS)
            .map(|o| ConnectorOffset {
                partition: o.partition.to_string(),
                offset: o.offset.to_string(),
            })
            .collect();
    }
    status.restarts = observed.restart.status.clone();
    let Some(health) = &observed.health else {
        status.state = None;
        status.tasks = Vec::new();
        status.tasks_ready = None;
        return;
    };
    status.state = Some(health.connector.state.clone());
    status.tasks = health
        .tasks
        .iter()
        .map(|t| ConnectorTask {
            id: t.id,
            state: t.health.state.clone(),
            worker: t.health.worker_id.clone(),
        })
        .collect();
    let running = health
        .tasks
        .iter()
        .filter(|t| t.health.state == "RUNNING")
        .count();
    status.tasks_ready = Some(format!("{running}/{}", health.tasks.len()));
    status.last_error = failure(health).map(|(_, line)| line);
}

/// The first failure: who failed and the first line of its trace.
fn failure(health: &ConnectorHealth) -> Option<(String, String)> {
    let line = |trace: &Option<String>| {
        trace
            .as_deref()
            .map(|t| first_line(t, MAX_ERROR))
            .unwrap_or_else(|| "no trace reported".to_string())
    };
    let on = |worker: &Option<String>| {
        worker
            .as_deref()
            .map(|w| format!(" on worker {w}"))
            .unwrap_or_default()
    };
    if health.connector.state == "FAILED" {
        return Some((
            format!("the connector failed{}", on(&health.connector.worker_id)),
            line(&health.connector.trace),
        ));
    }
    health
        .tasks
        .iter()
        .find(|t| t.health.state == "FAILED")
        .map(|t| {
            (
                format!("task {} failed{}", t.id, on(&t.health.worker_id)),
                line(&t.health.trace),
            )
        })
}

fn readiness(wanted: ConnectorState, observed: &ConnectObserved) -> (bool, &'static str, String) {
    let Some(health) = &observed.health else {
        return (
            false,
            "Starting",
            "the connector is created; Kafka Connect has not reported its state yet".into(),
        );
    };
    if let Some((who, line)) = failure(health) {
        let reason = if health.connector.state == "FAILED" {
            "ConnectorFailed"
        } else {
            "TaskFailed"
        };
        let restarts = observed.restart.status.as_ref().map_or(0, |r| r.count);
        if observed.restart.limit_reached {
            return (
                false,
                "RestartLimitReached",
                format!("{who}: {line}; restarted {restarts} times in a row, the limit"),
            );
        }
        let next = observed
            .restart
            .status
            .as_ref()
            .and_then(|r| r.next_restart_time.as_deref())
            .map(|t| format!("; next restart at {t}"))
            .unwrap_or_default();
        return (false, reason, format!("{who}: {line}{next}"));
    }
    let expected = plan::expected_state(wanted);
    let tasks = health
        .tasks
        .iter()
        .map(|t| format!("{} {}", t.id, t.health.state))
        .collect::<Vec<_>>();
    let tasks = if tasks.is_empty() {
        "no tasks".to_string()
    } else {
        format!("tasks {}", tasks.join(", "))
    };
    if plan::as_asked(wanted, health) {
        let reason = match wanted {
            ConnectorState::Running => "Running",
            ConnectorState::Paused => "Paused",
            ConnectorState::Stopped => "Stopped",
        };
        (
            true,
            reason,
            format!("the connector is {expected}, {tasks}"),
        )
    } else {
        (
            false,
            "Transitioning",
            format!(
                "asked for {expected}; the connector is {}, {tasks}",
                health.connector.state
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::connect::{Health, TaskHealth};
    use super::*;
    use serde_json::json;
    use sluice_crds::connector::RestartStatus;

    fn connector(state: &str) -> Connector {
        let mut c: Connector = serde_json::from_value(json!({
            "apiVersion": "sluice.dev/v1alpha1",
            "kind": "Connector",
            "metadata": {"name": "cdc", "namespace": "sales", "uid": "u1", "generation": 3},
            "spec": {
                "type": "source",
                "state": state,
                "kafkaConnect": {
                    "url": "http://connect:8083",
                    "class": "io.debezium.connector.postgresql.PostgresConnector"
                }
            }
        }))
        .unwrap();
        c.status = None;
        c
    }

    fn observed(connector: &str, tasks: &[(&str, Option<&str>)]) -> ConnectObserved {
        let h = |state: &str, trace: Option<&str>| Health {
            state: state.into(),
            worker_id: Some("10.0.0.1:8083".into()),
            trace: trace.map(str::to_string),
        };
        ConnectObserved {
            health: Some(ConnectorHealth {
                connector: h(connector, None),
                tasks: tasks
                    .iter()
                    .enumerate()
                    .map(|(id, (s, trace))| TaskHealth {
                        id: id as i32,
                        health: h(s, *trace),
                    })
                    .collect(),
            }),
            topics: Some(vec!["sales.public.orders".into()]),
            offsets: Some(vec![Offset {
                partition: json!({"server": "sales"}),
                offset: json!({"lsn": 42}),
            }]),
            restart: RestartDecision {
                restart_now: false,
                status: None,
                limit_reached: false,
                wake_in: None,
            },
        }
    }

    fn native(
        rollout: Rollout,
        topics: TopicsCheck,
        progress: Option<SinkProgress>,
    ) -> NativeObserved {
        NativeObserved {
            rollout,
            topics,
            progress,
            trouble: None,
        }
    }

    fn compute_for(c: &Connector, found: &Found) -> ConnectorStatus {
        compute(c, None, found)
    }

    fn ready(status: &ConnectorStatus) -> (&str, &str, &str) {
        let c = &status.conditions[0];
        (c.status.as_str(), c.reason.as_str(), c.message.as_str())
    }

    #[test]
    fn running_as_asked_is_ready_with_tasks_topics_and_offsets() {
        let s = compute_for(
            &connector("running"),
            &Found::ConnectObserved(observed("RUNNING", &[("RUNNING", None)])),
        );
        assert_eq!(ready(&s).0, "True");
        assert_eq!(ready(&s).1, "Running");
        assert_eq!(s.state.as_deref(), Some("RUNNING"));
        assert_eq!(s.tasks_ready.as_deref(), Some("1/1"));
        assert_eq!(s.plugin.as_deref(), Some("PostgresConnector"));
        assert_eq!(s.connect_name.as_deref(), Some("sales.cdc"));
        assert_eq!(s.topics, vec!["sales.public.orders".to_string()]);
        assert_eq!(s.offsets[0].partition, r#"{"server":"sales"}"#);
        assert_eq!(s.offsets[0].offset, r#"{"lsn":42}"#);
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(s.last_error, None);
    }

    #[test]
    fn a_failed_task_is_not_ready_and_names_the_task_and_the_first_line() {
        let trace = "org.apache.kafka.connect.errors.ConnectException: replication slot gone\n\tat io.debezium.X(X.java:1)\n\tat y";
        let mut found = observed("RUNNING", &[("RUNNING", None), ("FAILED", Some(trace))]);
        found.restart.status = Some(RestartStatus {
            count: 1,
            last_restart_time: Some("2027-01-15T08:00:00Z".into()),
            next_restart_time: Some("2027-01-15T08:00:02Z".into()),
        });
        let s = compute_for(&connector("running"), &Found::ConnectObserved(found));
        let (status, reason, message) = ready(&s);
        assert_eq!((status, reason), ("False", "TaskFailed"));
        assert!(message.starts_with("task 1 failed on worker 10.0.0.1:8083: org.apache.kafka.connect.errors.ConnectException: replication slot gone; next restart at 2027-01-15T08:00:02Z"), "{message}");
        assert!(!message.contains("\tat"));
        assert_eq!(
            s.last_error.as_deref(),
            Some("org.apache.kafka.connect.errors.ConnectException: replication slot gone")
        );
        assert_eq!(s.tasks_ready.as_deref(), Some("1/2"));
    }

    #[test]
    fn the_restart_limit_and_other_refusals_have_their_own_reasons() {
        let mut found = observed("FAILED", &[]);
        if let Some(h) = found.health.as_mut() {
            h.connector.trace = Some("boom\nat".into());
        }
        found.restart.limit_reached = true;
        found.restart.status = Some(RestartStatus {
            count: 3,
            ..Default::default()
        });
        let s = compute_for(&connector("running"), &Found::ConnectObserved(found));
        assert_eq!(ready(&s).1, "RestartLimitReached");
        assert!(ready(&s).2.contains("restarted 3 times"));

        let s = compute_for(
            &connector("running"),
            &Found::InvalidConfig(vec![FieldError {
                field: "database.dbname".into(),
                message: "FATAL: database \"nope\" does not exist".into(),
            }]),
        );
        assert_eq!(ready(&s).1, "InvalidConfig");
        assert!(
            ready(&s)
                .2
                .contains("database.dbname: FATAL: database \"nope\" does not exist")
        );

        let s = compute_for(
            &connector("running"),
            &Found::Unavailable("connection refused".into()),
        );
        assert_eq!(
            ready(&s),
            ("False", "ConnectUnavailable", "connection refused")
        );
        let s = compute_for(&connector("running"), &Found::NotOurs("sales.cdc".into()));
        assert_eq!(ready(&s).1, "NameTaken");
    }

    #[test]
    fn a_native_connector_is_ready_once_its_deployment_runs_as_asked() {
        let rolling = Rollout {
            desired: 1,
            available: 0,
            outdated: 0,
        };
        let s = compute_for(
            &connector("running"),
            &Found::Native(native(rolling.clone(), TopicsCheck::Present, None)),
        );
        assert_eq!(ready(&s).1, "Starting");
        assert_eq!(s.state, None);
        let up = Rollout {
            available: 1,
            ..rolling.clone()
        };
        let s = compute_for(
            &connector("running"),
            &Found::Native(native(up.clone(), TopicsCheck::Present, None)),
        );
        assert_eq!(
            ready(&s),
            (
                "True",
                "Running",
                "the connector is RUNNING: 1 of 1 replicas available"
            )
        );
        assert_eq!(s.tasks_ready.as_deref(), Some("1/1"));
        let changing = Rollout {
            outdated: 1,
            ..up.clone()
        };
        let s = compute_for(
            &connector("paused"),
            &Found::Native(native(changing, TopicsCheck::Present, None)),
        );
        assert_eq!(ready(&s).1, "Transitioning");
        let gone = Rollout {
            desired: 0,
            available: 0,
            outdated: 0,
        };
        let s = compute_for(
            &connector("stopped"),
            &Found::Native(native(gone, TopicsCheck::Present, None)),
        );
        assert_eq!(ready(&s).1, "Stopped");
        assert_eq!(s.state.as_deref(), Some("STOPPED"));
        let s = compute_for(
            &connector("running"),
            &Found::NativeConflict("ConfigMap x belongs to something else".into()),
        );
        assert_eq!(ready(&s).1, "ResourceConflict");
        let s = compute_for(
            &connector("running"),
            &Found::Native(native(
                up.clone(),
                TopicsCheck::Missing(vec!["orders".into()]),
                None,
            )),
        );
        assert_eq!(ready(&s).1, "TopicMissing");
        assert!(ready(&s).2.contains("orders"));
        let topics = s
            .conditions
            .iter()
            .find(|c| c.type_ == TOPICS_READY)
            .unwrap();
        assert_eq!(
            (topics.status.as_str(), topics.reason.as_str()),
            ("False", "TopicMissing")
        );
        let s = compute_for(
            &connector("running"),
            &Found::Native(native(up, TopicsCheck::Present, None)),
        );
        let topics = s
            .conditions
            .iter()
            .find(|c| c.type_ == TOPICS_READY)
            .unwrap();
        assert_eq!(topics.status, "True");
    }

    #[test]
    fn stopped_is_ready_once_stopped_and_transitions_say_where_they_stand() {
        let s = compute_for(
            &connector("stopped"),
            &Found::ConnectObserved(observed("STOPPED", &[])),
        );
        assert_eq!(
            ready(&s),
            ("True", "Stopped", "the connector is STOPPED, no tasks")
        );
        let s = compute_for(
            &connector("paused"),
            &Found::ConnectObserved(observed("RUNNING", &[("RUNNING", None)])),
        );
        assert_eq!(
            ready(&s),
            (
                "False",
                "Transitioning",
                "asked for PAUSED; the connector is RUNNING, tasks 0 RUNNING"
            )
        );
        let mut starting = observed("RUNNING", &[]);
        starting.health = None;
        let s = compute_for(&connector("running"), &Found::ConnectObserved(starting));
        assert_eq!(ready(&s).1, "Starting");
    }

    #[test]
    fn a_native_sink_reports_how_far_behind_it_is_and_its_last_scale() {
        let up = Rollout {
            desired: 2,
            available: 2,
            outdated: 0,
        };
        let decision = sluice_crds::pipeline::ScaleDecision {
            time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ),
            from: 1,
            to: 2,
            reason: "backlog".into(),
        };
        let behind = SinkProgress {
            lag: 1200,
            last_scale: Some(decision.clone()),
        };
        let s = compute_for(
            &connector("running"),
            &Found::Native(native(up.clone(), TopicsCheck::Present, Some(behind))),
        );
        assert_eq!(s.lag, Some(1200));
        assert_eq!(s.position.as_deref(), Some("1200 records behind"));
        assert_eq!(s.last_scale.as_ref(), Some(&decision));
        // Caught up; the last scale stays in status while nothing new was decided.
        let caught_up = SinkProgress {
            lag: 0,
            last_scale: None,
        };
        let s = compute(
            &connector("running"),
            Some(&s),
            &Found::Native(native(up, TopicsCheck::Present, Some(caught_up))),
        );
        assert_eq!(s.position.as_deref(), Some("caught up"));
        assert_eq!(s.last_scale, Some(decision));
    }
}
