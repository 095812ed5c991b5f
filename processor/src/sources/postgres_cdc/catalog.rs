//! What the change stream needs from the database besides the stream: the publication
//! and the slot, each table's columns and key, and the initial snapshot's rows.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::sinks::pg_connect::message;

/// Why a catalog step failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The database answered with an error, or the connection failed.
    #[error("{what}: {message}")]
    Sql {
        /// The step.
        what: String,
        /// The database's message.
        message: String,
    },
    /// A table cannot be captured as asked.
    #[error("{0}")]
    Table(String),
}

fn sql(what: &str) -> impl Fn(tokio_postgres::Error) -> CatalogError + '_ {
    move |e| CatalogError::Sql {
        what: what.to_string(),
        message: message(&e),
    }
}

/// An identifier quoted for SQL.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A literal quoted for SQL.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A captured table.
#[derive(Debug, Clone)]
pub struct Table {
    /// Its schema.
    pub schema: Arc<str>,
    /// Its name.
    pub name: Arc<str>,
    /// The topic its changes go to.
    pub topic: Arc<str>,
    /// Its columns with their type OIDs, in order.
    pub columns: Vec<(String, u32)>,
    /// The columns that key its changes (the primary key, or the replica identity index).
    pub key: Vec<String>,
}

impl Table {
    /// `schema.name`, quoted.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// The type OID of `column`.
    pub fn type_of(&self, column: &str) -> Option<u32> {
        self.columns
            .iter()
            .find(|(name, _)| name == column)
            .map(|(_, t)| *t)
    }
}

/// `schema.table` (or `table`, in `public`) as schema and table.
pub fn split_name(qualified: &str) -> (String, String) {
    match qualified.split_once('.') {
        Some((schema, table)) => (schema.to_string(), table.to_string()),
        None => ("public".to_string(), qualified.to_string()),
    }
}

/// Reads `schema.table`'s columns and key; a table that does not exist or whose changes
/// could not be keyed is refused with what to do.
pub async fn table(
    client: &Client,
    schema: &str,
    name: &str,
    topic: &str,
) -> Result<Table, CatalogError> {
    let row = client
        .query_opt(
            "SELECT c.oid::int8, c.relreplident::text, \
               (SELECT array_agg(a.attname::text ORDER BY array_position(i.indkey::int2[], a.attnum)) \
                  FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                 WHERE i.indrelid = c.oid \
                   AND CASE WHEN c.relreplident = 'i' THEN i.indisreplident ELSE i.indisprimary END) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&schema, &name],
        )
        .await
        .map_err(sql("cannot read the table from the catalog"))?
        .ok_or_else(|| {
            CatalogError::Table(format!(
                "table {schema}.{name} does not exist (spec.postgresCdc.tables)"
            ))
        })?;
    let oid: i64 = row.get(0);
    let identity: String = row.get(1);
    let key: Option<Vec<String>> = row.get(2);
    let key = key.unwrap_or_default();
    if identity == "n" {
        return Err(CatalogError::Table(format!(
            "table {schema}.{name} has REPLICA IDENTITY NOTHING: its updates and deletes cannot be captured; ALTER TABLE ... REPLICA IDENTITY DEFAULT (with a primary key) or FULL"
        )));
    }
    if key.is_empty() {
        return Err(CatalogError::Table(format!(
            "table {schema}.{name} has no primary key: its changes could not be keyed (Debezium would key them by nothing); add a primary key, or a unique index with ALTER TABLE ... REPLICA IDENTITY USING INDEX"
        )));
    }
    let oid = u32::try_from(oid).unwrap_or_default();
    let columns = client
        .query(
            "SELECT attname::text, atttypid::int8 FROM pg_attribute \
             WHERE attrelid = $1::int8::oid AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&i64::from(oid)],
        )
        .await
        .map_err(sql("cannot read the table's columns"))?
        .iter()
        .map(|r| {
            let t: i64 = r.get(1);
            (r.get::<_, String>(0), u32::try_from(t).unwrap_or_default())
        })
        .collect();
    Ok(Table {
        schema: Arc::from(schema),
        name: Arc::from(name),
        topic: Arc::from(topic),
        columns,
        key,
    })
}

/// Creates the publication for `tables` when missing, and adds those it lacks.
pub async fn ensure_publication(
    client: &Client,
    publication: &str,
    tables: &[Table],
) -> Result<(), CatalogError> {
    let published: Vec<(String, String)> = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(sql("cannot read the publication"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(sql("cannot read the publication"))?
        .is_some();
    let missing: Vec<String> = tables
        .iter()
        .filter(|t| {
            !published
                .iter()
                .any(|(s, n)| **s == *t.schema && **n == *t.name)
        })
        .map(Table::quoted)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let statement = if exists {
        format!(
            "ALTER PUBLICATION {} ADD TABLE {}",
            quote_ident(publication),
            missing.join(", ")
        )
    } else {
        format!(
            "CREATE PUBLICATION {} FOR TABLE {}",
            quote_ident(publication),
            missing.join(", ")
        )
    };
    tracing::info!(%statement, "publishing the captured tables");
    client
        .batch_execute(&statement)
        .await
        .map_err(sql("cannot create the publication"))
}

/// Whether the replication slot exists.
pub async fn slot_exists(client: &Client, slot: &str) -> Result<bool, CatalogError> {
    Ok(client
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(sql("cannot read the replication slots"))?
        .is_some())
}

/// Drops the replication slot (waiting for a previous replica's connection to it to go).
pub async fn drop_slot(client: &Client, slot: &str) -> Result<(), CatalogError> {
    client
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(sql("cannot drop the replication slot"))?;
    Ok(())
}

/// A transaction on the slot's exported snapshot, reading each table once.
pub struct SnapshotReader<'c> {
    client: &'c Client,
}

/// One row of the snapshot: each column's text (`None`: NULL).
pub type Row = Vec<(String, Option<String>)>;

impl<'c> SnapshotReader<'c> {
    /// Opens a repeatable-read transaction on the exported snapshot `name`.
    pub async fn open(client: &'c Client, name: &str) -> Result<SnapshotReader<'c>, CatalogError> {
        client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
                quote_literal(name)
            ))
            .await
            .map_err(sql("cannot open the exported snapshot"))?;
        Ok(SnapshotReader { client })
    }

    /// The slot's consistent point: where the stream starts after the snapshot.
    pub async fn consistent_point(&self, slot: &str) -> Result<u64, CatalogError> {
        let row = self
            .client
            .query_one(
                "SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::int8 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(sql("cannot read the slot's consistent point"))?;
        let lsn: Option<i64> = row.get(0);
        Ok(lsn.and_then(|l| u64::try_from(l).ok()).unwrap_or_default())
    }

    /// Starts reading `table` (its rows in pages of [`SnapshotReader::page`]).
    pub async fn declare(&self, table: &Table) -> Result<(), CatalogError> {
        let columns: Vec<String> = table.columns.iter().map(|(n, _)| quote_ident(n)).collect();
        self.client
            .batch_execute(&format!(
                "DECLARE sluice_snapshot NO SCROLL CURSOR FOR SELECT {} FROM {}",
                columns.join(", "),
                table.quoted()
            ))
            .await
            .map_err(sql("cannot read the table"))
    }

    /// The next `rows` rows of the table declared last (none: it is read; the cursor is
    /// closed).
    pub async fn page(&self, rows: usize) -> Result<Vec<Row>, CatalogError> {
        let messages = self
            .client
            .simple_query(&format!("FETCH {rows} FROM sluice_snapshot"))
            .await
            .map_err(sql("cannot read the table"))?;
        let mut out = Vec::new();
        for m in messages {
            if let SimpleQueryMessage::Row(row) = m {
                let mut cells = Vec::with_capacity(row.len());
                for (i, column) in row.columns().iter().enumerate() {
                    cells.push((column.name().to_string(), row.get(i).map(str::to_string)));
                }
                out.push(cells);
            }
        }
        if out.is_empty() {
            self.client
                .batch_execute("CLOSE sluice_snapshot")
                .await
                .map_err(sql("cannot close the snapshot's cursor"))?;
        }
        Ok(out)
    }

    /// Ends the snapshot's transaction.
    pub async fn close(self) -> Result<(), CatalogError> {
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(sql("cannot end the snapshot"))
    }
}

/// The type OIDs of tables by their relation OID, kept from the stream's relation
/// messages (schema changes arrive there).
pub type RelationTypes = HashMap<u32, HashMap<String, u32>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_split_and_quoted() {
        assert_eq!(
            split_name("sales.orders"),
            ("sales".to_string(), "orders".to_string())
        );
        assert_eq!(
            split_name("orders"),
            ("public".to_string(), "orders".to_string())
        );
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
