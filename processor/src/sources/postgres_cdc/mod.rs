//! PostgreSQL change data capture as a [`Source`] of the runtime: pgoutput over the
//! streaming replication protocol (`pg_walstream`, on libpq), an initial snapshot on the
//! slot's exported snapshot, and Debezium's change events ([`envelope`]).
//!
//! The source is one partition, named after the slot. A [`worker`] thread talks to
//! PostgreSQL and numbers the records it reads; this side keeps the records not yet
//! committed, so a batch the Kafka sink aborts is handed over again without asking the
//! server. The position stored with each committed batch ([`position`]) says where the
//! stream continues after a restart; the worker confirms an LSN to the server only once
//! Kafka holds everything before it.

pub mod catalog;
pub mod envelope;
pub mod position;
pub mod worker;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use position::Position;
use worker::{Shared, Worker, WorkerError};

use crate::runtime::ledger::Offsets;
use crate::runtime::sink::{SourcePosition, SourceRecord};
use crate::runtime::source::{Partitions, Source, SourceError};
use crate::sinks::pg_connect::Credentials;

/// Records the worker may read ahead of the pump.
const CHANNEL_RECORDS: usize = 4096;
/// The first wait before a worker that failed is started again; it doubles up to
/// [`MAX_RESTART_WAIT`].
const FIRST_RESTART_WAIT: Duration = Duration::from_millis(500);
const MAX_RESTART_WAIT: Duration = Duration::from_secs(30);

/// What the change stream captures, and how it reaches the database.
#[derive(Debug, Clone)]
pub struct CdcSettings {
    /// The Connector (`namespace/name`), for `application_name` and logs.
    pub connector: String,
    /// Tables, `schema.table`.
    pub tables: Vec<String>,
    /// The replication slot.
    pub slot: String,
    /// The publication.
    pub publication: String,
    /// Records go to `<topic_prefix>.<schema>.<table>`.
    pub topic_prefix: String,
    /// Read the tables before streaming (when no position is stored).
    pub snapshot: bool,
    /// How often the slot is advanced while the tables are idle.
    pub heartbeat: Duration,
    /// Where to connect.
    pub credentials: Credentials,
    /// Where the Secret's files are (`sslrootcert`).
    pub credentials_dir: PathBuf,
    /// The confirmed LSN and the slot's lag.
    pub metrics: crate::metrics::CdcMetrics,
}

impl CdcSettings {
    /// The topic of `schema.table`'s changes.
    pub fn topic(&self, qualified: &str) -> String {
        let (schema, table) = catalog::split_name(qualified);
        format!("{}.{schema}.{table}", self.topic_prefix)
    }
}

/// What the worker hands over.
pub enum Message {
    /// A record, numbered.
    Record(SourceRecord),
}

/// A running worker.
struct Running {
    shared: Arc<Shared>,
    records: Receiver<Message>,
    thread: JoinHandle<WorkerError>,
}

impl Running {
    /// Stops the worker and waits for it.
    fn stop(self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        drop(self.records);
        if self.thread.join().is_err() {
            tracing::error!("the change stream's thread panicked");
        }
    }
}

/// The change stream of a PostgreSQL database.
pub struct CdcSource {
    settings: Arc<CdcSettings>,
    partition: Arc<str>,
    /// Assignments to tell the pump, oldest first: the partition at the start; after a
    /// failure, none and then the partition again.
    announce: VecDeque<Partitions>,
    /// Whether the partition is assigned, as the pump was last told.
    assigned: bool,
    running: Option<Running>,
    /// The offset the next worker numbers from (what the sink holds).
    next: i64,
    /// Records handed over and not committed, from the oldest.
    uncommitted: VecDeque<SourceRecord>,
    /// How many of `uncommitted` are handed over since the last rewind.
    handed: usize,
    /// Why the stream cannot run.
    fatal: Option<String>,
    restart_wait: Duration,
    restarts: u32,
}

impl CdcSource {
    /// A source for `settings`; it starts streaming once the pump has read the stored
    /// position ([`Source::resume`]).
    pub fn new(settings: CdcSettings) -> CdcSource {
        let partition: Arc<str> = Arc::from(settings.slot.as_str());
        CdcSource {
            settings: Arc::new(settings),
            announce: VecDeque::from([vec![(partition.clone(), 0)]]),
            partition,
            assigned: false,
            running: None,
            next: 0,
            uncommitted: VecDeque::new(),
            handed: 0,
            fatal: None,
            restart_wait: FIRST_RESTART_WAIT,
            restarts: 0,
        }
    }

    /// Starts a worker numbering from `self.next`, continuing from `position`.
    fn start(&mut self, position: Option<Position>) {
        if let Some(running) = self.running.take() {
            running.stop();
        }
        self.uncommitted.clear();
        self.handed = 0;
        let shared = Arc::new(Shared::default());
        shared.committed.store(self.next, Ordering::Release);
        let (tx, rx) = sync_channel(CHANNEL_RECORDS);
        let settings = self.settings.clone();
        let worker_shared = shared.clone();
        let next = self.next;
        let wait = if self.restarts > 0 {
            self.restart_wait
        } else {
            Duration::ZERO
        };
        let thread = std::thread::Builder::new()
            .name("postgres-cdc".to_string())
            .spawn(move || {
                std::thread::sleep(wait);
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => return WorkerError::Fatal(format!("cannot start a runtime: {e}")),
                };
                let mut worker = Worker::new(settings, worker_shared, tx, next);
                match runtime.block_on(worker.run(position)) {
                    Ok(()) => WorkerError::Stopped,
                    Err(e) => e,
                }
            });
        match thread {
            Ok(thread) => {
                self.running = Some(Running {
                    shared,
                    records: rx,
                    thread,
                })
            }
            Err(e) => self.fatal = Some(format!("cannot start the change stream's thread: {e}")),
        }
    }

    /// The worker ended: a fatal error stops the pump; anything else makes the pump give
    /// the partition up and take it back, so it drops what it holds uncommitted and the
    /// next worker starts from the last commit.
    fn ended(&mut self) {
        let Some(running) = self.running.take() else {
            return;
        };
        let error = running.thread.join().unwrap_or_else(|_| {
            WorkerError::Transient("the change stream's thread panicked".to_string())
        });
        match error {
            WorkerError::Fatal(message) => {
                tracing::error!(error = %message, "the change stream cannot run");
                self.fatal = Some(message);
            }
            other => {
                tracing::warn!(error = %other, wait_ms = self.restart_wait.as_millis() as u64, "the change stream stopped: starting again from the last commit");
                self.restarts += 1;
                self.restart_wait = (self.restart_wait * 2).min(MAX_RESTART_WAIT);
                self.announce.push_back(Vec::new());
                self.announce.push_back(vec![(self.partition.clone(), 0)]);
            }
        }
    }
}

impl Drop for CdcSource {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop();
        }
    }
}

impl Source for CdcSource {
    fn next(&mut self, timeout: Duration) -> Option<Result<SourceRecord, SourceError>> {
        if let Some(record) = self.uncommitted.get(self.handed) {
            self.handed += 1;
            return Some(Ok(record.clone()));
        }
        let running = self.running.as_ref()?;
        match running.records.recv_timeout(timeout) {
            Ok(Message::Record(record)) => {
                self.restart_wait = FIRST_RESTART_WAIT;
                self.uncommitted.push_back(record.clone());
                self.handed = self.uncommitted.len();
                Some(Ok(record))
            }
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                self.ended();
                None
            }
        }
    }

    fn assignment_changed(&mut self) -> Result<Option<Partitions>, SourceError> {
        if let Some(message) = &self.fatal {
            return Err(SourceError(format!(
                "the PostgreSQL change stream: {message}"
            )));
        }
        let next = self.announce.pop_front();
        if let Some(partitions) = &next {
            self.assigned = !partitions.is_empty();
        }
        Ok(next)
    }

    fn seek(&mut self, positions: &Offsets) -> Result<(), SourceError> {
        if !self.assigned {
            return Ok(());
        }
        self.next = positions
            .iter()
            .find(|(t, p, _)| *t == self.partition && *p == 0)
            .map_or(0, |(_, _, next)| *next);
        Ok(())
    }

    fn resume(&mut self, positions: &[SourcePosition]) -> Result<(), SourceError> {
        if !self.assigned {
            return Ok(());
        }
        let stored = match positions
            .iter()
            .find(|p| p.topic == self.partition && p.partition == 0)
            .map(|p| Position::parse(&p.position))
            .transpose()
        {
            Ok(stored) => stored,
            Err(message) => {
                // Reading it again would not mend it: the connector stops and says so.
                self.fatal = Some(format!(
                    "the stored position cannot be read ({message}): delete the Connector's positions topic to start again with a snapshot"
                ));
                return Ok(());
            }
        };
        let alive = self
            .running
            .as_ref()
            .is_some_and(|r| !r.thread.is_finished());
        let front = self.uncommitted.front().map(|r| r.origin.offset);
        if alive && front.is_none_or(|f| f == self.next) {
            // The same worker goes on: what it handed over since the commit is handed
            // over again.
            self.handed = 0;
            return Ok(());
        }
        tracing::info!(next = self.next, position = ?stored, "starting the change stream");
        self.start(stored);
        Ok(())
    }

    fn rewind(&mut self) -> Result<(), SourceError> {
        self.handed = 0;
        Ok(())
    }

    fn commit(&mut self, offsets: &Offsets, _wait: bool) -> Result<(), SourceError> {
        let Some(&(_, _, next)) = offsets
            .iter()
            .find(|(t, p, _)| *t == self.partition && *p == 0)
        else {
            return Ok(());
        };
        while self
            .uncommitted
            .front()
            .is_some_and(|r| r.origin.offset < next)
        {
            self.uncommitted.pop_front();
            self.handed = self.handed.saturating_sub(1);
        }
        if let Some(running) = &self.running {
            running.shared.committed.store(next, Ordering::Release);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> CdcSource {
        CdcSource::new(CdcSettings {
            connector: "shop/orders-cdc".into(),
            tables: vec!["public.orders".into()],
            slot: "orders".into(),
            publication: "orders".into(),
            topic_prefix: "sales".into(),
            snapshot: true,
            heartbeat: Duration::from_secs(10),
            credentials: Credentials {
                host: "db".into(),
                port: 5432,
                dbname: "shop".into(),
                user: "cdc".into(),
                password: None,
                sslmode: crate::sinks::pg_connect::SslMode::Disable,
                root_cert: None,
            },
            credentials_dir: PathBuf::from("/nonexistent"),
            metrics: crate::metrics::CdcMetrics::default(),
        })
    }

    #[test]
    fn the_slot_is_the_one_partition_and_a_position_that_does_not_read_stops_the_source() {
        let mut s = source();
        assert_eq!(
            s.assignment_changed().unwrap(),
            Some(vec![(Arc::from("orders"), 0)])
        );
        assert_eq!(s.assignment_changed().unwrap(), None);
        s.seek(&vec![(Arc::from("orders"), 0, 42)]).unwrap();
        s.resume(&[SourcePosition {
            topic: Arc::from("orders"),
            partition: 0,
            position: Arc::from("{\"phase\":\"sideways\"}"),
        }])
        .unwrap();
        assert!(
            s.running.is_none(),
            "no stream starts from a position it cannot read"
        );
        let err = s.assignment_changed().unwrap_err().to_string();
        assert!(err.contains("positions topic"), "{err}");
    }
}
