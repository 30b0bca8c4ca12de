//! Applies the ClickHouse migrations of `qoe-schemas` in order, recording each applied
//! version in `schema_migrations`. Re-running is a no-op; statements a server is too old for
//! are skipped by the migration's own `-- qoe:min-version` directives, and an
//! `ALTER TABLE t ADD COLUMN c` whose column exists already (a re-run after a failure half-way)
//! is skipped too.
//!
//! On a cluster ([`run_cluster`]) the same files are applied in the form
//! [`qoe_schemas::cluster`] rewrites them to (`ON CLUSTER`, replicated engines), through one
//! server; the ledger is a table replicated to every server, and a lock held in ZooKeeper
//! keeps two migrators from applying a step at the same time. The reading layer (a second
//! database of `Distributed` tables and views over them) is re-created after any step.

use crate::store::{Store, StoreError};
use clickhouse::Row;
use qoe_schemas::cluster::{Catalog, ClusterError, ClusterTarget};
use qoe_schemas::migrations::{steps, MigrationError, Step, MIGRATIONS};
use serde::{Deserialize, Serialize};
use std::time::Duration;

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
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("another migrator holds the lock of database {database} on cluster {cluster} (for {waited:?}); if none runs, a previous one died holding it: DROP TABLE {database}.schema_migrations_lock on the server it used")]
    Locked {
        database: String,
        cluster: String,
        waited: Duration,
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

/// Every statement of every migration, in order, as a current single server is given them
/// (what `aggregator migrate --print` shows without a cluster).
pub fn single_server_statements() -> Result<Vec<String>, MigrationError> {
    let mut out = Vec::new();
    for m in MIGRATIONS {
        out.extend(m.statements()?.into_iter().map(|s| s.sql));
    }
    Ok(out)
}

pub async fn run(store: &Store) -> Result<MigrationReport, MigrateError> {
    let client = &store.client;
    client
        .query(LEDGER_DDL)
        .execute()
        .await
        .map_err(StoreError::from)?;
    apply(store, |sql| Ok(vec![sql.to_owned()])).await
}

/// Applies the migrations not yet in the ledger, each statement in the form `form` gives it.
async fn apply(
    store: &Store,
    form: impl Fn(&str) -> Result<Vec<String>, MigrateError>,
) -> Result<MigrationReport, MigrateError> {
    let client = &store.client;
    let applied: Vec<AppliedMigration> = client
        .query("SELECT ?fields FROM schema_migrations ORDER BY version")
        .fetch_all()
        .await
        .map_err(StoreError::from)?;

    let mut report = MigrationReport::default();
    for migration in MIGRATIONS {
        if let Some(done) = applied.iter().find(|a| a.version == migration.version) {
            let current = migration.checksum()?;
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
        for step in steps(&statements) {
            let (index, sql, columns) = match step {
                Step::Statement { index, sql } => (index, sql.to_owned(), Vec::new()),
                Step::AddColumns {
                    index,
                    table,
                    columns,
                } => {
                    let mut missing = Vec::new();
                    let mut clauses = Vec::new();
                    for (column, clause) in columns {
                        if !column_exists(store, &table, &column).await? {
                            clauses.push(clause);
                            missing.push((table.clone(), column));
                        }
                    }
                    if clauses.is_empty() {
                        continue;
                    }
                    let sql = format!("ALTER TABLE {table} {}", clauses.join(", "));
                    (index, sql, missing)
                }
            };
            let mut applied = Ok(());
            let mut sent = String::new();
            for one in form(&sql)? {
                sent = one;
                applied = client.query(&sent).execute().await;
                if applied.is_err() {
                    break;
                }
            }
            if let Err(source) = applied {
                // Another migrator (an aggregator starting at the same moment) may have added
                // the columns between the check above and this statement: that is success.
                let mut added_meanwhile = !columns.is_empty();
                for (table, column) in &columns {
                    added_meanwhile &= column_exists(store, table, column).await?;
                }
                if !added_meanwhile {
                    return Err(MigrateError::Statement {
                        name: migration.name.to_owned(),
                        index,
                        sql: sent,
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
                checksum: migration.checksum()?,
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

/// How long a cluster migrator waits for another one to finish.
const LOCK_WAIT: Duration = Duration::from_secs(300);

/// Applies the migrations to the cluster `target.cluster` through the server of `store`
/// (whose database is `target.database`), then re-creates the reading layer if a step was
/// applied or it is incomplete. Every server of the cluster must be up.
pub async fn run_cluster(
    store: &Store,
    target: &ClusterTarget,
) -> Result<MigrationReport, MigrateError> {
    let catalog = Catalog::of_migrations()?;
    let (db, cluster) = (&target.database, &target.cluster);
    let read = target.read_database();
    // Up to date already: no distributed DDL, which would wait for every server, so an
    // aggregator restarting while a server is down starts at once.
    if let Some(report) = up_to_date(store, target, &catalog).await {
        return Ok(report);
    }
    let ddl = |sql: String| async move {
        store
            .client
            .query(&sql)
            .execute()
            .await
            .map_err(|source| MigrateError::Statement {
                name: "cluster setup".into(),
                index: 0,
                sql,
                source,
            })
    };
    ddl(format!(
        "CREATE DATABASE IF NOT EXISTS {db} ON CLUSTER {cluster}"
    ))
    .await?;
    ddl(format!(
        "CREATE DATABASE IF NOT EXISTS {read} ON CLUSTER {cluster}"
    ))
    .await?;

    lock(store, target).await?;
    let result = async {
        // One ledger for the whole cluster: every server is a replica of it.
        ddl(format!(
            "CREATE TABLE IF NOT EXISTS {db}.schema_migrations ON CLUSTER {cluster} \
             (version UInt32, name String, checksum String, applied_at DateTime('UTC')) \
             ENGINE = ReplicatedMergeTree('/clickhouse/tables/all/{db}/schema_migrations', '{{replica}}') \
             ORDER BY version"
        ))
        .await?;
        ddl(format!("SYSTEM SYNC REPLICA {db}.schema_migrations")).await?;
        let report = apply(store, |sql| Ok(target.rewrite(&catalog, sql)?)).await?;
        let recreate = !report.applied.is_empty();
        if recreate || !read_layer_complete(store, target, &catalog).await? {
            for sql in target.distributed_layer(&catalog)? {
                // With no schema change under it, only what is missing is created: dropping
                // would take the layer away from its readers, and from an aggregator started
                // beside this one whose `ON CLUSTER` statements this server has not run yet.
                if !recreate && sql.starts_with("DROP ") {
                    continue;
                }
                ddl(sql).await?;
            }
            tracing::info!(database = %read, objects = catalog.read_objects(), "reading layer (Distributed tables) re-created");
        }
        Ok(report)
    }
    .await;
    unlock(store, target).await;
    result
}

/// The report of a run that has nothing to do, when the ledger lists every migration (with
/// its checksum) and the reading layer is complete; `None` otherwise or when unsure.
async fn up_to_date(
    store: &Store,
    target: &ClusterTarget,
    catalog: &Catalog,
) -> Option<MigrationReport> {
    let applied: Vec<AppliedMigration> = store
        .client
        .query(&format!(
            "SELECT ?fields FROM {}.schema_migrations ORDER BY version",
            target.database
        ))
        .fetch_all()
        .await
        .ok()?;
    let all_there = MIGRATIONS.iter().all(|m| {
        applied
            .iter()
            .any(|a| a.version == m.version && m.checksum().is_ok_and(|c| c == a.checksum))
    });
    let complete = read_layer_complete(store, target, catalog).await.ok()?;
    (all_there && complete).then(|| MigrationReport {
        applied: Vec::new(),
        already_applied: MIGRATIONS.iter().map(|m| m.name.to_owned()).collect(),
        skipped_statements: 0,
    })
}

/// Whether the reading layer database holds all of its objects.
async fn read_layer_complete(
    store: &Store,
    target: &ClusterTarget,
    catalog: &Catalog,
) -> Result<bool, StoreError> {
    let present: u64 = store
        .client
        .query("SELECT count() FROM system.tables WHERE database = ?")
        .bind(target.read_database())
        .fetch_one()
        .await?;
    Ok(present as usize >= catalog.read_objects())
}

/// The lock: a replicated table whose one replica name can exist once in ZooKeeper, so
/// creating it succeeds for one migrator at a time, whichever server each one uses.
async fn lock(store: &Store, target: &ClusterTarget) -> Result<(), MigrateError> {
    let db = &target.database;
    let sql = format!(
        "CREATE TABLE {db}.schema_migrations_lock (held_since DateTime) \
         ENGINE = ReplicatedMergeTree('/clickhouse/qoe/{db}/migration_lock', 'holder') \
         ORDER BY held_since"
    );
    let started = std::time::Instant::now();
    loop {
        match store.client.query(&sql).execute().await {
            Ok(()) => return Ok(()),
            // 57: the table exists on this server; 253: the replica exists (on another one).
            Err(e) if is_code(&e, 57) || is_code(&e, 253) => {
                if started.elapsed() >= LOCK_WAIT {
                    return Err(MigrateError::Locked {
                        database: db.clone(),
                        cluster: target.cluster.clone(),
                        waited: started.elapsed(),
                    });
                }
                tracing::info!(database = %db, "another migrator is applying migrations; waiting");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(StoreError::from(e).into()),
        }
    }
}

async fn unlock(store: &Store, target: &ClusterTarget) {
    let sql = format!(
        "DROP TABLE IF EXISTS {}.schema_migrations_lock",
        target.database
    );
    if let Err(e) = store.client.query(&sql).execute().await {
        tracing::error!(error = %e, "could not release the migration lock; drop {}.schema_migrations_lock by hand", target.database);
    }
}

fn is_code(e: &clickhouse::error::Error, code: u32) -> bool {
    let text = e.to_string();
    text.contains(&format!("Code: {code},")) || text.contains(&format!("Code: {code}."))
}
