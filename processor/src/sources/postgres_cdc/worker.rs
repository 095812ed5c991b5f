//! The thread that talks to PostgreSQL: it sets up the publication and the slot, reads
//! the initial snapshot on the slot's exported snapshot, then follows the replication
//! stream, turning each change into Debezium's event. It numbers the records it hands
//! over (their offsets), and confirms an LSN to the server only once the Kafka
//! transaction holding every record before it has committed ([`Shared::committed`]); on
//! idle tables it confirms the server's position so the slot keeps advancing.
//!
//! Any failure ends the thread; the source starts a new one from the last committed
//! position, so nothing sent but uncommitted is counted on.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{Duration, Instant};

use pg_walstream::{
    CancellationToken, ColumnValue, EventType, LogicalReplicationStream, ReplicationSlotOptions,
    ReplicationStreamConfig, RowData,
};
use serde_json::{Map, Value};

use super::catalog::{self, CatalogError, RelationTypes, SnapshotReader, Table};
use super::envelope::{self, Cell, Op, Origin};
use super::position::{Position, Skip};
use super::{CdcSettings, Message};
use crate::runtime::ledger::Origin as RecordOrigin;
use crate::runtime::sink::SourceRecord;

/// Rows read from a table at a time in the snapshot.
const SNAPSHOT_PAGE: usize = 1000;
/// How often the worker looks at what Kafka committed when the stream is quiet.
const TICK: Duration = Duration::from_millis(200);
/// How often a busy stream confirms what Kafka committed.
const CONFIRM_UNDER_LOAD: Duration = Duration::from_secs(1);
/// How long a full channel is waited on between looks at the stop flag and feedback.
const FULL_WAIT: Duration = Duration::from_millis(5);
/// How often the server hears from a worker waiting on a full channel.
const FEEDBACK_WHILE_WAITING: Duration = Duration::from_secs(10);

/// What the worker and the source share.
#[derive(Default)]
pub struct Shared {
    /// The next offset Kafka holds: every record below it is committed.
    pub committed: AtomicI64,
    /// Set by the source: stop.
    pub stop: AtomicBool,
}

/// Why the worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Worth trying again (the server restarted, the connection dropped).
    #[error("{0}")]
    Transient(String),
    /// Not worth trying again until the Connector changes (a table without a key, a
    /// refused login).
    #[error("{0}")]
    Fatal(String),
    /// Told to stop.
    #[error("stopped")]
    Stopped,
}

impl From<CatalogError> for WorkerError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::Table(m) => WorkerError::Fatal(m),
            other => WorkerError::Transient(other.to_string()),
        }
    }
}

impl From<crate::runtime::sink::SinkError> for WorkerError {
    fn from(e: crate::runtime::sink::SinkError) -> Self {
        match e {
            crate::runtime::sink::SinkError::Fatal(m) => WorkerError::Fatal(m),
            other => WorkerError::Transient(other.to_string()),
        }
    }
}

fn replication(e: pg_walstream::ReplicationError) -> WorkerError {
    if e.is_permanent() {
        WorkerError::Fatal(format!("replication: {e}"))
    } else {
        WorkerError::Transient(format!("replication: {e}"))
    }
}

/// The transaction being streamed.
struct Transaction {
    xid: u32,
    commit: u64,
    ts_ms: i64,
    /// Records of it handed over (or skipped as written before).
    seq: u64,
}

/// The worker's state.
pub struct Worker {
    settings: Arc<CdcSettings>,
    shared: Arc<Shared>,
    out: SyncSender<Message>,
    /// The offset of the next record.
    next: i64,
    tables: HashMap<(Arc<str>, Arc<str>), Arc<Table>>,
    /// The connector's logical name and database, for each event's `source` block.
    name: Arc<str>,
    db: Arc<str>,
    relations: RelationTypes,
    partition: Arc<str>,
    /// Transactions handed over whose end is not confirmed yet: (the offset after their
    /// last record, their end LSN).
    unconfirmed: VecDeque<(i64, u64)>,
    confirmed: u64,
    last_feedback: Instant,
}

impl Worker {
    /// A worker numbering its records from `next`.
    pub fn new(
        settings: Arc<CdcSettings>,
        shared: Arc<Shared>,
        out: SyncSender<Message>,
        next: i64,
    ) -> Worker {
        let partition = Arc::from(settings.slot.as_str());
        Worker {
            shared,
            out,
            next,
            tables: HashMap::new(),
            name: Arc::from(settings.topic_prefix.as_str()),
            db: Arc::from(settings.credentials.dbname.as_str()),
            settings,
            relations: RelationTypes::new(),
            partition,
            unconfirmed: VecDeque::new(),
            confirmed: 0,
            last_feedback: Instant::now(),
        }
    }

    /// Runs from `position` (what Kafka holds) until stopped or failed.
    pub async fn run(&mut self, position: Option<Position>) -> Result<(), WorkerError> {
        let client = self
            .settings
            .credentials
            .connect(&format!("sluice {}", self.settings.connector))
            .await?;
        for qualified in &self.settings.tables {
            let (schema, name) = catalog::split_name(qualified);
            let topic = format!("{}.{schema}.{name}", self.settings.topic_prefix);
            let table = catalog::table(&client, &schema, &name, &topic).await?;
            self.tables
                .insert((table.schema.clone(), table.name.clone()), Arc::new(table));
        }
        let tables: Vec<Table> = self.tables.values().map(|t| Table::clone(t)).collect();
        catalog::ensure_publication(&client, &self.settings.publication, &tables).await?;
        let exists = catalog::slot_exists(&client, &self.settings.slot).await?;
        let streaming = matches!(position, Some(Position::Stream { .. }));
        let skip = match position {
            Some(p @ Position::Stream { .. }) => Skip::after(p),
            _ => Skip::default(),
        };
        let stream = if streaming {
            if !exists {
                return Err(WorkerError::Fatal(format!(
                    "the replication slot {} is gone, but Kafka holds a position in its stream: changes since then are lost to this connector; delete the Connector's positions topic to start again with a snapshot",
                    self.settings.slot
                )));
            }
            self.connect(false).await?
        } else if self.settings.snapshot {
            if exists {
                tracing::info!(slot = %self.settings.slot, "the snapshot did not finish before: the slot is made again and the tables are read again");
                catalog::drop_slot(&client, &self.settings.slot).await?;
            }
            let mut stream = self.connect(true).await?;
            stream
                .ensure_replication_slot()
                .await
                .map_err(replication)?;
            let name = stream
                .exported_snapshot_name()
                .map(str::to_string)
                .ok_or_else(|| {
                    WorkerError::Transient("the new slot exported no snapshot".to_string())
                })?;
            self.snapshot(&client, &name).await?;
            stream
        } else {
            let mut stream = self.connect(false).await?;
            if !exists {
                stream
                    .ensure_replication_slot()
                    .await
                    .map_err(replication)?;
            }
            stream
        };
        self.stream(stream, skip, &client).await
    }

    /// A replication connection; `export`: the slot it creates exports its snapshot.
    async fn connect(&self, export: bool) -> Result<LogicalReplicationStream, WorkerError> {
        let s = &self.settings;
        let conninfo = s.credentials.conninfo(
            &format!("sluice {}", s.connector),
            &s.credentials_dir,
            "replication=database",
        );
        let config = ReplicationStreamConfig::builder(s.slot.clone(), s.publication.clone())
            .with_protocol_version(1)
            .with_slot_options(ReplicationSlotOptions {
                snapshot: Some(if export { "export" } else { "nothing" }.to_string()),
                ..Default::default()
            })
            .with_existing_slot_required(true)
            .with_feedback_interval(Duration::from_secs(3600));
        LogicalReplicationStream::new(&conninfo, config)
            .await
            .map_err(replication)
    }

    /// Reads every table on the exported snapshot `name` as `r` events. The very last
    /// row says the stream starts at the slot's own position (so a restart after it
    /// streams rather than reading again).
    async fn snapshot(
        &mut self,
        client: &tokio_postgres::Client,
        name: &str,
    ) -> Result<(), WorkerError> {
        let reader = SnapshotReader::open(client, name).await?;
        let lsn = reader.consistent_point(&self.settings.slot).await?;
        let started = now_ms();
        // Each row is handed over when the next is read, so the very last can be marked.
        let mut held: Option<(Map<String, Value>, Arc<Table>)> = None;
        let mut tables: Vec<Arc<Table>> = self.tables.values().cloned().collect();
        tables.sort_by(|a, b| (&a.schema, &a.name).cmp(&(&b.schema, &b.name)));
        let mut rows_read = 0u64;
        for table in &tables {
            reader.declare(table).await?;
            loop {
                let page = reader.page(SNAPSHOT_PAGE).await?;
                if page.is_empty() {
                    break;
                }
                for cells in page {
                    let row = envelope::row(
                        cells.iter().map(|(n, v)| {
                            (n.as_str(), v.as_deref().map_or(Cell::Null, Cell::Text))
                        }),
                        |c| table.type_of(c),
                    );
                    if let Some((row, table)) = held.take() {
                        let origin = self.origin(&table, started, "true", None, lsn);
                        let record = self.change(
                            &table,
                            Op::Read,
                            None,
                            Some(row),
                            &origin,
                            Position::Snapshot,
                        );
                        self.send(record).await?;
                    }
                    held = Some((row, table.clone()));
                    rows_read += 1;
                }
            }
        }
        if let Some((row, table)) = held.take() {
            let origin = self.origin(&table, started, "last", None, lsn);
            let start = Position::Stream {
                commit: None,
                seq: 0,
            };
            let record = self.change(&table, Op::Read, None, Some(row), &origin, start);
            self.send(record).await?;
        }
        reader.close().await?;
        tracing::info!(rows = rows_read, lsn = %lsn_text(lsn), "snapshot read");
        Ok(())
    }

    /// Follows the replication stream from `skip`'s start until stopped or failed.
    async fn stream(
        &mut self,
        mut stream: LogicalReplicationStream,
        mut skip: Skip,
        client: &tokio_postgres::Client,
    ) -> Result<(), WorkerError> {
        stream.start(skip.start()).await.map_err(replication)?;
        tracing::info!(slot = %self.settings.slot, from = %skip.start().map_or("the slot's position".to_string(), lsn_text), "streaming");
        let cancel = CancellationToken::new();
        let mut tx: Option<Transaction> = None;
        let mut idle_since = Instant::now();
        let mut measured = Instant::now();
        loop {
            if measured.elapsed() >= self.settings.heartbeat {
                self.measure_lag(client).await;
                measured = Instant::now();
            }
            if self.shared.stop.load(Ordering::Relaxed) {
                self.confirm(&mut stream, tx.is_none()).await?;
                return Err(WorkerError::Stopped);
            }
            let event = match tokio::time::timeout(TICK, stream.next_event(&cancel)).await {
                Err(_) => {
                    let heartbeat = idle_since.elapsed() >= self.settings.heartbeat;
                    if self.confirm(&mut stream, tx.is_none() && heartbeat).await? {
                        idle_since = Instant::now();
                    }
                    continue;
                }
                Ok(event) => event.map_err(replication)?,
            };
            match event.event_type {
                EventType::Begin {
                    transaction_id,
                    final_lsn,
                    commit_timestamp,
                } => {
                    tx = Some(Transaction {
                        xid: transaction_id,
                        commit: final_lsn.0,
                        ts_ms: commit_timestamp.timestamp_millis(),
                        seq: 0,
                    });
                }
                EventType::Commit { end_lsn, .. } => {
                    tx = None;
                    self.unconfirmed.push_back((self.next, end_lsn.0));
                    if self.unconfirmed.len() > 64 {
                        self.confirm(&mut stream, false).await?;
                    }
                }
                EventType::Relation {
                    relation_id,
                    columns,
                    namespace,
                    relation_name,
                    ..
                } => {
                    tracing::debug!(table = %format!("{namespace}.{relation_name}"), "relation");
                    self.relations.insert(
                        relation_id,
                        columns
                            .iter()
                            .map(|c| (c.name.to_string(), c.type_id))
                            .collect(),
                    );
                }
                EventType::Insert {
                    schema,
                    table,
                    relation_oid,
                    data,
                } => {
                    let Some((t, tx)) = self.captured(&schema, &table, tx.as_mut()) else {
                        continue;
                    };
                    let after = self.row_of(relation_oid, &t, &data, None);
                    self.changed(
                        &t,
                        tx,
                        &mut skip,
                        Op::Create,
                        None,
                        Some(after),
                        event.lsn.0,
                    )
                    .await?;
                }
                EventType::Update {
                    schema,
                    table,
                    relation_oid,
                    old_data,
                    new_data,
                    ..
                } => {
                    let Some((t, tx)) = self.captured(&schema, &table, tx.as_mut()) else {
                        continue;
                    };
                    let before = old_data
                        .as_ref()
                        .map(|old| self.row_of(relation_oid, &t, old, None));
                    let after = self.row_of(relation_oid, &t, &new_data, old_data.as_ref());
                    let lsn = event.lsn.0;
                    let rekeyed = before
                        .as_ref()
                        .is_some_and(|b| envelope::key(&t.key, b) != envelope::key(&t.key, &after));
                    if rekeyed {
                        // As Debezium: the old key is deleted (with its tombstone) and the
                        // new one created, so keyed consumers drop the old row.
                        self.changed(&t, tx, &mut skip, Op::Delete, before, None, lsn)
                            .await?;
                        self.changed(&t, tx, &mut skip, Op::Create, None, Some(after), lsn)
                            .await?;
                    } else {
                        self.changed(&t, tx, &mut skip, Op::Update, before, Some(after), lsn)
                            .await?;
                    }
                }
                EventType::Delete {
                    schema,
                    table,
                    relation_oid,
                    old_data,
                    ..
                } => {
                    let Some((t, tx)) = self.captured(&schema, &table, tx.as_mut()) else {
                        continue;
                    };
                    let before = self.row_of(relation_oid, &t, &old_data, None);
                    self.changed(
                        &t,
                        tx,
                        &mut skip,
                        Op::Delete,
                        Some(before),
                        None,
                        event.lsn.0,
                    )
                    .await?;
                }
                EventType::Truncate { tables, .. } => {
                    tracing::warn!(tables = ?tables, "TRUNCATE is not captured (as Debezium by default): consumers keep the rows");
                }
                _ => {}
            }
            idle_since = Instant::now();
            if self.last_feedback.elapsed() >= CONFIRM_UNDER_LOAD {
                self.confirm(&mut stream, false).await?;
            }
        }
    }

    /// The captured table of a change, and its transaction; `None` for tables not asked
    /// for (a publication shared with others).
    fn captured<'t>(
        &self,
        schema: &Arc<str>,
        table: &Arc<str>,
        tx: Option<&'t mut Transaction>,
    ) -> Option<(Arc<Table>, &'t mut Transaction)> {
        let t = self.tables.get(&(schema.clone(), table.clone()))?.clone();
        match tx {
            Some(tx) => Some((t, tx)),
            None => {
                tracing::warn!(table = %format!("{schema}.{table}"), "a change outside a transaction: skipped");
                None
            }
        }
    }

    /// A row of a change as JSON, typed by the stream's relation message (or the
    /// catalog). Columns missing from an update's new row are unchanged TOAST values;
    /// `old` (the old row, when sent) fills them.
    fn row_of(
        &self,
        relation: u32,
        table: &Table,
        data: &RowData,
        old: Option<&RowData>,
    ) -> Map<String, Value> {
        let types = self.relations.get(&relation);
        let type_of = |c: &str| {
            types
                .and_then(|t| t.get(c).copied())
                .or_else(|| table.type_of(c))
        };
        fn cell(v: &ColumnValue) -> Cell<'_> {
            match v {
                ColumnValue::Null => Cell::Null,
                other => other.as_str().map_or(Cell::Unchanged, Cell::Text),
            }
        }
        let mut cells: Vec<(&str, Cell<'_>)> = data.iter().map(|(n, v)| (&**n, cell(v))).collect();
        let names: Vec<&str> = match types {
            Some(t) => t.keys().map(String::as_str).collect(),
            None => table.columns.iter().map(|(n, _)| n.as_str()).collect(),
        };
        for name in names {
            if !cells.iter().any(|(n, _)| *n == name) {
                let kept = old.and_then(|o| o.get(name)).map_or(Cell::Unchanged, cell);
                cells.push((name, kept));
            }
        }
        envelope::row(cells, type_of)
    }

    /// Hands over a change of `tx` (and a tombstone after a delete), unless `skip` says
    /// it was written before.
    #[allow(clippy::too_many_arguments)]
    async fn changed(
        &mut self,
        table: &Table,
        tx: &mut Transaction,
        skip: &mut Skip,
        op: Op,
        before: Option<Map<String, Value>>,
        after: Option<Map<String, Value>>,
        lsn: u64,
    ) -> Result<(), WorkerError> {
        let origin = self.origin(table, tx.ts_ms, "false", Some(tx.xid), lsn);
        let records = if op == Op::Delete { 2 } else { 1 };
        let key_row = after
            .as_ref()
            .or(before.as_ref())
            .cloned()
            .unwrap_or_default();
        for i in 0..records {
            tx.seq += 1;
            if skip.skips(tx.commit) {
                continue;
            }
            let position = Position::Stream {
                commit: Some(tx.commit),
                seq: tx.seq,
            };
            let record = if i == 0 {
                self.change(table, op, before.clone(), after.clone(), &origin, position)
            } else {
                self.tombstone(table, &key_row, tx.ts_ms, position)
            };
            self.send(record).await?;
        }
        Ok(())
    }

    fn origin(
        &self,
        table: &Table,
        ts_ms: i64,
        snapshot: &'static str,
        tx_id: Option<u32>,
        lsn: u64,
    ) -> Origin {
        Origin {
            name: self.name.clone(),
            db: self.db.clone(),
            schema: table.schema.clone(),
            table: table.name.clone(),
            ts_ms,
            snapshot,
            tx_id,
            lsn,
        }
    }

    /// The record of a change event, numbered.
    fn change(
        &mut self,
        table: &Table,
        op: Op,
        before: Option<Map<String, Value>>,
        after: Option<Map<String, Value>>,
        origin: &Origin,
        position: Position,
    ) -> SourceRecord {
        let key_row = after.as_ref().or(before.as_ref());
        let key = key_row
            .and_then(|r| envelope::key(&table.key, r))
            .map(|k| k.to_string().into_bytes());
        let value = envelope::value(op, before, after, origin, now_ms());
        self.record(
            table,
            key,
            Some(value.to_string().into_bytes()),
            origin.ts_ms,
            position,
        )
    }

    /// The tombstone after a delete: the key, no value (compaction drops the row).
    fn tombstone(
        &mut self,
        table: &Table,
        row: &Map<String, Value>,
        ts_ms: i64,
        position: Position,
    ) -> SourceRecord {
        let key = envelope::key(&table.key, row).map(|k| k.to_string().into_bytes());
        self.record(table, key, None, ts_ms, position)
    }

    fn record(
        &mut self,
        table: &Table,
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
        ts_ms: i64,
        position: Position,
    ) -> SourceRecord {
        let offset = self.next;
        self.next += 1;
        SourceRecord {
            origin: RecordOrigin {
                topic: self.partition.clone(),
                partition: 0,
                offset,
            },
            key,
            value,
            headers: Vec::new(),
            timestamp: Some(ts_ms),
            destination: Some(table.topic.clone()),
            position: Some(Arc::from(position.to_text())),
        }
    }

    /// Hands `record` to the source, waiting while it is full (the pump is behind).
    async fn send(&mut self, record: SourceRecord) -> Result<(), WorkerError> {
        let mut message = Message::Record(record);
        loop {
            if self.shared.stop.load(Ordering::Relaxed) {
                return Err(WorkerError::Stopped);
            }
            match self.out.try_send(message) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(back)) => {
                    message = back;
                    tokio::time::sleep(FULL_WAIT).await;
                }
                Err(TrySendError::Disconnected(_)) => return Err(WorkerError::Stopped),
            }
        }
    }

    /// Shows how much WAL the slot holds back: the server's position less the confirmed
    /// LSN (a failed look is only logged: the stream goes on).
    async fn measure_lag(&self, client: &tokio_postgres::Client) {
        match client
            .query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8", &[])
            .await
        {
            Ok(row) => {
                let end: i64 = row.get(0);
                let confirmed = i64::try_from(self.confirmed).unwrap_or(i64::MAX);
                self.settings
                    .metrics
                    .lag_bytes
                    .set(end.saturating_sub(confirmed).max(0));
            }
            Err(e) => {
                tracing::warn!(error = %crate::sinks::pg_connect::message(&e), "cannot read the server's WAL position")
            }
        }
    }

    /// Confirms to the server the end of every transaction Kafka holds all of; with
    /// `idle` (no transaction open, nothing of it uncommitted), the server's position
    /// too. Answers whether a position was confirmed.
    async fn confirm(
        &mut self,
        stream: &mut LogicalReplicationStream,
        idle: bool,
    ) -> Result<bool, WorkerError> {
        let committed = self.shared.committed.load(Ordering::Acquire);
        let mut lsn = self.confirmed;
        while let Some(&(after, end)) = self.unconfirmed.front() {
            if after > committed {
                break;
            }
            lsn = lsn.max(end);
            self.unconfirmed.pop_front();
        }
        if idle && self.unconfirmed.is_empty() && committed >= self.next {
            lsn = lsn.max(stream.current_lsn());
        }
        let due = self.last_feedback.elapsed() >= FEEDBACK_WHILE_WAITING;
        if lsn > self.confirmed || due {
            self.confirmed = lsn;
            if lsn > 0 {
                stream.shared_lsn_feedback.update_applied_lsn(lsn);
                self.settings
                    .metrics
                    .confirmed_lsn
                    .set(i64::try_from(lsn).unwrap_or(i64::MAX));
            }
            stream.send_feedback().await.map_err(replication)?;
            self.last_feedback = Instant::now();
            if lsn > 0 {
                tracing::debug!(lsn = %lsn_text(lsn), "confirmed");
            }
            return Ok(true);
        }
        Ok(false)
    }
}

/// An LSN as PostgreSQL writes it (`16/B374D848`).
pub fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_are_written_as_postgres_writes_them() {
        assert_eq!(lsn_text(0x16_B374_D848), "16/B374D848");
        assert_eq!(lsn_text(0), "0/0");
    }
}
