//! Applies the ClickHouse migrations of `qoe-schemas` in order, recording each applied
//! version in `schema_migrations`. Re-running is a no-op; statements a server is too old for
//! are skipped by the migration's own `-- qoe:min-version` directives, and an
//! `ALTER TABLE t ADD COLUMN c` whose column exists already (a re-run after a failure half-way)
//! is skipped too.

use crate::store::{Store, StoreError};
use clickhouse::Row;
use qoe_schemas::migrations::{MigrationError, MIGRATIONS};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Parse(#[from] MigrationError),
    #[error("migration {name} failed on statement {index}: {source}\n{sql}")]
    Statement {
        name: String,
        index: usize,
        sql: String,
        source: clickhouse::error::Error,
    },
    #[error("migration {name} was applied with checksum {applied} but the file now has {current}; migrations must not be edited once released, add a new one")]
    Edited {
        name: String,
        applied: String,
        current: String,
    },
}

#[derive(Debug, Row, Serialize, Deserialize)]
struct AppliedMigration {
    version: u32,
    name: String,
    checksum: String,
    applied_at: u32,
}

/// What a run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MigrationReport {
    pub applied: Vec<String>,
    pub already_applied: Vec<String>,
    pub skipped_statements: usize,
}

const LEDGER_DDL: &str = "CREATE TABLE IF NOT EXISTS schema_migrations \
    (version UInt32, name String, checksum String, applied_at DateTime('UTC')) \
    ENGINE = MergeTree ORDER BY version";

async fn column_exists(store: &Store, table: &str, column: &str) -> Result<bool, MigrateError> {
    let present: u64 = store
        .client
        .query(
            "SELECT count() FROM system.columns \
             WHERE database = currentDatabase() AND table = ? AND name = ?",
        )
        .bind(table)
        .bind(column)
        .fetch_one()
        .await
        .map_err(StoreError::from)?;
    Ok(present > 0)
}

pub async fn run(store: &Store) -> Result<MigrationReport, MigrateError> {
    let client = &store.client;
    client
        .query(LEDGER_DDL)
        .execute()
        .await
        .map_err(StoreError::from)?;
    let applied: Vec<AppliedMigration> = client
        .query("SELECT ?fields FROM schema_migrations ORDER BY version")
        .fetch_all()
        .await
        .map_err(StoreError::from)?;

    let mut report = MigrationReport::default();
    for migration in MIGRATIONS {
        if let Some(done) = applied.iter().find(|a| a.version == migration.version) {
            let current = migration.checksum();
            if done.checksum != current {
                return Err(MigrateError::Edited {
                    name: migration.name.to_owned(),
                    applied: done.checksum.clone(),
                    current,
                });
            }
            report.already_applied.push(migration.name.to_owned());
            continue;
        }
        let all = migration.statements()?;
        let statements = migration.statements_for(store.version)?;
        report.skipped_statements += all.len() - statements.len();
        for (index, statement) in statements.iter().enumerate() {
            if let Some((table, column)) = statement.added_column() {
                if column_exists(store, &table, &column).await? {
                    continue;
                }
            }
            let applied = client.query(&statement.sql).execute().await;
            if let Err(source) = applied {
                // Another migrator (an aggregator starting at the same moment) may have added
                // the column between the check above and this statement: that is success.
                let added_meanwhile = match statement.added_column() {
                    Some((table, column)) => column_exists(store, &table, &column).await?,
                    None => false,
                };
                if !added_meanwhile {
                    return Err(MigrateError::Statement {
                        name: migration.name.to_owned(),
                        index,
                        sql: statement.sql.clone(),
                        source,
                    });
                }
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(0);
        let mut insert = client
            .insert::<AppliedMigration>("schema_migrations")
            .await
            .map_err(StoreError::from)?;
        insert
            .write(&AppliedMigration {
                version: migration.version,
                name: migration.name.to_owned(),
                checksum: migration.checksum(),
                applied_at: now,
            })
            .await
            .map_err(StoreError::from)?;
        insert.end().await.map_err(StoreError::from)?;
        tracing::info!(migration = migration.name, "applied migration");
        report.applied.push(migration.name.to_owned());
    }
    Ok(report)
}
