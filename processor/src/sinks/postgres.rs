//! The PostgreSQL sink: top-level JSON fields into the columns of the same name.
//!
//! Rows go in one statement per run of records with the same fields: the batch is sent
//! as one JSON array and `json_populate_recordset` gives each value the column's type,
//! so PostgreSQL's own input functions convert (and refuse) values. When a statement
//! fails for the data, the run is written again record by record, each under a
//! savepoint, and the records PostgreSQL refuses are answered as refused (they go to the
//! dead-letter topic with the database's message) while the rest are written.
//!
//! Exactly once: the consumed positions are stored in `sluice_offsets` in the same
//! transaction as the rows, with a compare-and-set on the position this replica read,
//! so a replica that lost its partitions to another cannot write over it.

use std::collections::HashMap;
use std::sync::Arc;

use sluice_crds::plugins::{PostgresSink as PostgresSpec, PostgresWriteMode};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Statement};

use super::pg_batch::{Op, last_per_key, run_length, statement};
pub use super::pg_connect::Credentials;
use super::pg_connect::message;
use crate::runtime::ledger::Offsets;
use crate::runtime::sink::{Promise, Refused, Sink, SinkError, SourceRecord};

/// The table that holds the consumed positions.
const OFFSETS_TABLE: &str = "sluice_offsets";

/// What the sink is asked to do.
#[derive(Debug, Clone)]
pub struct PostgresSinkConfig {
    /// The connector, as it is named in `sluice_offsets` (`<namespace>/<name>`).
    pub connector: String,
    /// The `postgres` block of the Connector.
    pub spec: PostgresSpec,
    /// Store the positions with the rows (exactly once).
    pub exactly_once: bool,
    /// Where to connect.
    pub credentials: Credentials,
}

/// The table as the catalog describes it.
#[derive(Debug)]
struct Table {
    /// Its name as PostgreSQL prints it (quoted where needed, schema-qualified where the
    /// search path needs it).
    name: String,
    /// Column names.
    columns: Vec<String>,
}

/// A PostgreSQL table as a [`Sink`].
pub struct PostgresSink {
    config: PostgresSinkConfig,
    client: Option<Client>,
    table: Option<Table>,
    in_transaction: bool,
    /// The position read (or last written) per partition: the compare-and-set's base.
    expected: HashMap<(Arc<str>, i32), i64>,
    /// Statements prepared on this connection, by their text.
    prepared: HashMap<String, Statement>,
}

/// Most statements kept prepared (one per set of fields a batch's records have).
const MOST_PREPARED: usize = 64;

/// `sql` prepared on `client`, from `cache` when it was before.
async fn prepared(
    client: &Client,
    cache: &mut HashMap<String, Statement>,
    sql: String,
) -> Result<Statement, tokio_postgres::Error> {
    if let Some(statement) = cache.get(&sql) {
        return Ok(statement.clone());
    }
    let statement = client.prepare(&sql).await?;
    if cache.len() >= MOST_PREPARED {
        cache.clear();
    }
    cache.insert(sql, statement.clone());
    Ok(statement)
}

/// Whether an error is the connection's (or passing), so the batch is tried again.
fn passing(e: &tokio_postgres::Error) -> bool {
    let Some(code) = e.code() else {
        return true;
    };
    let class = &code.code()[..2];
    matches!(class, "08" | "53" | "57" | "40")
}

/// Whether an error is about the data of the statement (a value, a constraint), so a
/// record is to blame rather than the sink.
fn data_error(e: &tokio_postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| matches!(&c.code()[..2], "22" | "23") || *c == SqlState::DATATYPE_MISMATCH)
}

impl PostgresSink {
    /// A sink for `config`; it connects on first use.
    pub fn new(config: PostgresSinkConfig) -> PostgresSink {
        PostgresSink {
            config,
            client: None,
            table: None,
            in_transaction: false,
            expected: HashMap::new(),
            prepared: HashMap::new(),
        }
    }

    /// Classifies an error, dropping the connection when it is the connection's.
    fn failure(&mut self, what: &str, e: &tokio_postgres::Error) -> SinkError {
        let text = format!("{what}: {}", message(e));
        if passing(e) {
            self.client = None;
            self.in_transaction = false;
            SinkError::Unavailable(text)
        } else {
            SinkError::Fatal(text)
        }
    }

    /// The connection, opened (with the table read from the catalog) when there is none.
    async fn connect(&mut self) -> Result<(), SinkError> {
        if self.client.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(());
        }
        self.in_transaction = false;
        let client = self
            .config
            .credentials
            .connect(&format!("sluice {}", self.config.connector))
            .await?;
        if self.table.is_none() {
            self.table = Some(read_table(&client, &self.config.spec).await.map_err(
                |e| match e {
                    TableError::Sql(e) => {
                        self.failure("cannot read the table from the catalog", &e)
                    }
                    TableError::Shape(text) => SinkError::Fatal(text),
                },
            )?);
        }
        if self.config.exactly_once {
            let created = client
                .batch_execute(&format!(
                    "CREATE TABLE IF NOT EXISTS {OFFSETS_TABLE} (connector text NOT NULL, topic text NOT NULL, \
                     partition integer NOT NULL, next_offset bigint NOT NULL, \
                     PRIMARY KEY (connector, topic, partition))"
                ))
                .await;
            match created {
                Ok(()) => {}
                // Another sink created it at the same moment: IF NOT EXISTS does not
                // cover that race, but the table is there.
                Err(e)
                    if e.code() == Some(&SqlState::UNIQUE_VIOLATION)
                        || e.code() == Some(&SqlState::DUPLICATE_TABLE) => {}
                Err(e) => return Err(self.failure(&format!("cannot create {OFFSETS_TABLE}"), &e)),
            }
        }
        tracing::info!(host = %self.config.credentials.host, dbname = %self.config.credentials.dbname, table = %self.config.spec.table, "connected to PostgreSQL");
        self.client = Some(client);
        self.prepared.clear();
        Ok(())
    }

    async fn begin(&mut self) -> Result<(), SinkError> {
        self.connect().await?;
        if self.in_transaction {
            return Ok(());
        }
        let Some(client) = self.client.as_ref() else {
            return Err(SinkError::Unavailable("not connected".into()));
        };
        if let Err(e) = client.batch_execute("BEGIN").await {
            return Err(self.failure("cannot begin a transaction", &e));
        }
        self.in_transaction = true;
        Ok(())
    }

    /// Writes `ops`, one statement per run of the same kind and fields. When a statement
    /// fails for its data, the transaction is rolled back and the batch written again
    /// carefully ([`Self::write_carefully`]). Answers the refused records.
    async fn write_ops(&mut self, ops: &[Op<'_>]) -> Result<Vec<Refused>, SinkError> {
        let mut start = 0;
        let mut runs_written = 0;
        let mut failed = None;
        while start < ops.len() {
            let end = start + run_length(&ops[start..]);
            if let Err(e) = self.execute(&ops[start..end]).await {
                failed = Some(e);
                break;
            }
            runs_written += 1;
            start = end;
        }
        match failed {
            None => return Ok(Vec::new()),
            Some(e) if data_error(&e) => tracing::info!(
                error = %message(&e),
                records = ops.len(),
                runs_written,
                "a statement failed for its data: the batch is written again run by run"
            ),
            Some(e) => return Err(self.failure("cannot write", &e)),
        }
        if let Some(client) = self.client.as_ref()
            && let Err(e) = client.batch_execute("ROLLBACK").await
        {
            return Err(self.failure("cannot roll back", &e));
        }
        self.in_transaction = false;
        self.begin().await?;
        self.write_carefully(ops).await
    }

    /// Writes `ops` run by run under a savepoint each; a run that fails for its data is
    /// written again record by record, and the records PostgreSQL refuses are answered.
    async fn write_carefully(&mut self, ops: &[Op<'_>]) -> Result<Vec<Refused>, SinkError> {
        let mut refused = Vec::new();
        let mut start = 0;
        while start < ops.len() {
            let end = start + run_length(&ops[start..]);
            let run = &ops[start..end];
            match self.execute_under_savepoint(run, "run").await {
                Ok(()) => {}
                Err(e) if data_error(&e) && run.len() > 1 => {
                    for op in run {
                        if let Err(e) = self
                            .execute_under_savepoint(std::slice::from_ref(op), "one")
                            .await
                        {
                            if !data_error(&e) {
                                return Err(self.failure("cannot write", &e));
                            }
                            refused.push(Refused {
                                index: op.index(),
                                error: message(&e),
                            });
                        }
                    }
                }
                Err(e) if data_error(&e) => refused.push(Refused {
                    index: run[0].index(),
                    error: message(&e),
                }),
                Err(e) => return Err(self.failure("cannot write", &e)),
            }
            start = end;
        }
        Ok(refused)
    }

    /// Runs the statement for `run` (prepared once per connection).
    async fn execute(&mut self, run: &[Op<'_>]) -> Result<(), tokio_postgres::Error> {
        let (Some(client), Some(table)) = (self.client.as_ref(), self.table.as_ref()) else {
            return Ok(());
        };
        let (sql, rows) = statement(&table.name, &table.columns, &self.config.spec, run);
        let Some(sql) = sql else {
            return Ok(());
        };
        let statement = prepared(client, &mut self.prepared, sql).await?;
        client.execute(&statement, &[&rows]).await.map(|_| ())
    }

    /// Runs the statement for `run` under a savepoint (rolled back to on failure).
    async fn execute_under_savepoint(
        &mut self,
        run: &[Op<'_>],
        savepoint: &str,
    ) -> Result<(), tokio_postgres::Error> {
        let Some(client) = self.client.as_ref() else {
            return Ok(());
        };
        client
            .batch_execute(&format!("SAVEPOINT {savepoint}"))
            .await?;
        let result = self.execute(run).await;
        let Some(client) = self.client.as_ref() else {
            return result;
        };
        match result {
            Ok(()) => {
                client
                    .batch_execute(&format!("RELEASE SAVEPOINT {savepoint}"))
                    .await
            }
            Err(e) => {
                client
                    .batch_execute(&format!("ROLLBACK TO SAVEPOINT {savepoint}"))
                    .await?;
                Err(e)
            }
        }
    }

    /// Stores the positions, each only if it is still where this replica read it.
    async fn store_positions(&mut self, positions: &Offsets) -> Result<(), SinkError> {
        let Some(client) = self.client.as_ref() else {
            return Err(SinkError::Unavailable("not connected".into()));
        };
        let connector = &self.config.connector;
        for (topic, partition, next) in positions {
            let base = self.expected.get(&(topic.clone(), *partition)).copied();
            let stored = match base {
                Some(base) => {
                    client
                        .execute(
                            &format!(
                                "UPDATE {OFFSETS_TABLE} SET next_offset = $4 WHERE connector = $1 \
                                 AND topic = $2 AND partition = $3 AND next_offset = $5"
                            ),
                            &[connector, &topic.as_ref(), partition, next, &base],
                        )
                        .await
                }
                None => {
                    client
                        .execute(
                            &format!(
                                "INSERT INTO {OFFSETS_TABLE} (connector, topic, partition, next_offset) \
                                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING"
                            ),
                            &[connector, &topic.as_ref(), partition, next],
                        )
                        .await
                }
            };
            match stored {
                Ok(1) => {}
                Ok(_) => {
                    return Err(SinkError::Fenced(format!(
                        "the stored position of {topic}/{partition} moved from {} (another replica writes this partition now): the batch is dropped and the positions read again",
                        base.map_or("none".to_string(), |b| b.to_string())
                    )));
                }
                Err(e) => return Err(self.failure("cannot store the positions", &e)),
            }
        }
        Ok(())
    }
}

/// Why the table cannot be used.
enum TableError {
    Sql(tokio_postgres::Error),
    Shape(String),
}

/// Reads the table's name and columns from the catalog, and checks the key columns.
async fn read_table(client: &Client, spec: &PostgresSpec) -> Result<Table, TableError> {
    let rows = client
        .query(
            "SELECT c.oid::regclass::text, a.attname FROM pg_attribute a \
             JOIN pg_class c ON c.oid = a.attrelid \
             WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&spec.table],
        )
        .await
        .map_err(TableError::Sql)?;
    let Some(first) = rows.first() else {
        return Err(TableError::Shape(format!(
            "table {} has no columns",
            spec.table
        )));
    };
    let name: String = first.get(0);
    let columns: Vec<String> = rows.iter().map(|r| r.get(1)).collect();
    if let Some(missing) = spec.key.iter().find(|k| !columns.contains(k)) {
        return Err(TableError::Shape(format!(
            "postgres.key names {missing}, which is not a column of {name} (columns: {})",
            columns.join(", ")
        )));
    }
    Ok(Table { name, columns })
}

impl Sink for PostgresSink {
    fn promise(&self) -> Promise {
        if self.config.exactly_once {
            Promise::Transactional
        } else if self.config.spec.mode == PostgresWriteMode::Upsert {
            Promise::Idempotent
        } else {
            Promise::AtLeastOnce
        }
    }

    async fn positions(&mut self, partitions: &[(Arc<str>, i32)]) -> Result<Offsets, SinkError> {
        if !self.config.exactly_once {
            return Ok(Offsets::new());
        }
        self.connect().await?;
        let Some(client) = self.client.as_ref() else {
            return Err(SinkError::Unavailable("not connected".into()));
        };
        let rows = match client
            .query(
                &format!(
                    "SELECT topic, partition, next_offset FROM {OFFSETS_TABLE} WHERE connector = $1"
                ),
                &[&self.config.connector],
            )
            .await
        {
            Ok(rows) => rows,
            Err(e) => return Err(self.failure("cannot read the stored positions", &e)),
        };
        let mut found = Offsets::new();
        for (topic, partition) in partitions {
            self.expected.remove(&(topic.clone(), *partition));
            let stored = rows.iter().find(|r| {
                r.get::<_, &str>(0) == topic.as_ref() && r.get::<_, i32>(1) == *partition
            });
            if let Some(row) = stored {
                let next: i64 = row.get(2);
                self.expected.insert((topic.clone(), *partition), next);
                found.push((topic.clone(), *partition, next));
            }
        }
        Ok(found)
    }

    async fn write(&mut self, batch: &[SourceRecord]) -> Result<Vec<Refused>, SinkError> {
        self.begin().await?;
        let mut refused = Vec::new();
        let mut ops = Vec::with_capacity(batch.len());
        for (i, record) in batch.iter().enumerate() {
            match super::pg_batch::op(i, record, &self.config.spec) {
                Ok(Some(op)) => ops.push(op),
                Ok(None) => {}
                Err(error) => refused.push(Refused { index: i, error }),
            }
        }
        if self.config.spec.mode == PostgresWriteMode::Upsert {
            ops = last_per_key(ops);
        }
        refused.extend(self.write_ops(&ops).await?);
        refused.sort_by_key(|r| r.index);
        Ok(refused)
    }

    async fn commit(&mut self, positions: &Offsets) -> Result<(), SinkError> {
        self.begin().await?;
        if self.config.exactly_once {
            self.store_positions(positions).await?;
        }
        let Some(client) = self.client.as_ref() else {
            return Err(SinkError::Unavailable("not connected".into()));
        };
        if let Err(e) = client.batch_execute("COMMIT").await {
            return Err(self.failure("cannot commit", &e));
        }
        self.in_transaction = false;
        for (t, p, next) in positions {
            self.expected.insert((t.clone(), *p), *next);
        }
        Ok(())
    }

    async fn abort(&mut self) {
        if !self.in_transaction {
            return;
        }
        self.in_transaction = false;
        if let Some(client) = self.client.as_ref()
            && client.batch_execute("ROLLBACK").await.is_err()
        {
            self.client = None;
        }
    }
}
