//! The same migrations, for a ClickHouse cluster: the statements of `clickhouse/*.sql`
//! rewritten, never a second hand-kept copy of the schema.
//!
//! What the rewrite does to each statement (see `schemas/CLUSTER.md`):
//! - every object is qualified with the database and gets `ON CLUSTER`, so it exists on every
//!   replica of every shard; so do the tables it reads from or writes `TO` (a distributed DDL
//!   runs on each host in that host's default database, so unqualified names would miss);
//! - `MergeTree`-family engines become their `Replicated` forms, at the ZooKeeper path
//!   `/clickhouse/tables/{shard}/<database>/<table>` with the `{shard}` and `{replica}` macros
//!   of each server's config; a `CREATE TABLE x AS y` gets `y`'s engine at `x`'s own path;
//! - ClickHouse 18.16 refuses `ALTER ... ON CLUSTER` on a table that is not replicated in a
//!   cluster whose shards are. The one such table the migrations alter, the `Null` fan-out
//!   table `qoe_ingest`, is a copy of `qoe_staging` holding no data, so its `ALTER` becomes
//!   "drop it and copy `qoe_staging` again" (materialized views keep reading it by name);
//! - `qoe_staging` is replicated too, although the aggregator stages and moves a batch on the
//!   same server: ClickHouse 18.16 refuses `ALTER ... ON CLUSTER` on a non-replicated table of
//!   a cluster with replicated shards, and later migrations alter it.
//!
//! Reading goes through a second database of `Distributed` tables with the same names
//! ([`distributed_layer`]), so dashboards and alerts run their unchanged SQL against it.
//! Only the statement forms the migrations use are accepted; anything else is an error that
//! names the statement, so a new migration cannot silently skip the cluster.

use crate::migrations::{MigrationError, MIGRATIONS};
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClusterError {
    #[error(transparent)]
    Parse(#[from] MigrationError),
    #[error("statement cannot be run on a cluster (supported: CREATE TABLE/VIEW/MATERIALIZED VIEW IF NOT EXISTS, DROP TABLE IF EXISTS, ALTER TABLE): {0}")]
    Unsupported(String),
    #[error("CREATE TABLE {table} AS {from}: the engine of {from} is unknown")]
    UnknownSource { table: String, from: String },
    #[error("invalid cluster or database name {0:?} (letters, digits and _ only)")]
    BadName(String),
}

/// What the migrations create: every object's name and, for tables, the engine clause (the
/// text after `ENGINE =`, with its `PARTITION BY` / `ORDER BY`).
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub engines: BTreeMap<String, String>,
    pub objects: Vec<String>,
    /// The last `CREATE VIEW` (plain view) of each view, in the migrations' own form.
    pub views: BTreeMap<String, String>,
    /// `CREATE TABLE x AS y`: x -> y.
    pub copies: BTreeMap<String, String>,
}

fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit()
}

/// The statement's first words, upper-cased, for matching its form.
fn head(sql: &str, n: usize) -> Vec<String> {
    sql.split_whitespace()
        .take(n)
        .map(|w| w.to_ascii_uppercase())
        .collect()
}

/// The statement form, and the index (in words) of the object's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    CreateTable,
    CreateMaterializedView,
    CreateView,
    DropTable,
    AlterTable,
}

fn form(sql: &str) -> Option<(Form, usize)> {
    let h = head(sql, 6);
    let h: Vec<&str> = h.iter().map(String::as_str).collect();
    match h.as_slice() {
        ["CREATE", "TABLE", "IF", "NOT", "EXISTS", ..] => Some((Form::CreateTable, 5)),
        ["CREATE", "MATERIALIZED", "VIEW", "IF", "NOT", "EXISTS"] => {
            Some((Form::CreateMaterializedView, 6))
        }
        ["CREATE", "VIEW", "IF", "NOT", "EXISTS", ..] => Some((Form::CreateView, 5)),
        ["DROP", "TABLE", "IF", "EXISTS", ..] => Some((Form::DropTable, 4)),
        ["ALTER", "TABLE", ..] => Some((Form::AlterTable, 2)),
        _ => None,
    }
}

/// Splits `sql` into the text up to the `index`-th word, that word, and the rest.
fn split_at_word(sql: &str, index: usize) -> Option<(&str, &str, &str)> {
    let mut seen = 0;
    let mut pos = 0;
    let bytes = sql.as_bytes();
    while pos < bytes.len() {
        while pos < bytes.len() && bytes[pos].is_ascii_whitespace() {
            pos += 1;
        }
        let start = pos;
        while pos < bytes.len() && !bytes[pos].is_ascii_whitespace() && bytes[pos] != b'(' {
            pos += 1;
        }
        if start == pos {
            return None;
        }
        if seen == index {
            return Some((&sql[..start], &sql[start..pos], &sql[pos..]));
        }
        seen += 1;
    }
    None
}

/// The engine clause after `ENGINE =`, if the statement has one.
fn engine_clause(sql: &str) -> Option<&str> {
    let upper = sql.to_ascii_uppercase();
    let at = upper.find("ENGINE")?;
    let rest = sql[at + "ENGINE".len()..].trim_start();
    Some(rest.strip_prefix('=')?.trim())
}

/// `CREATE TABLE x AS y`: the `y`.
fn as_source(sql: &str) -> Option<String> {
    let words: Vec<&str> = sql.split_whitespace().collect();
    (words.len() > 7 && words[6].eq_ignore_ascii_case("AS") && is_ident(words[7]))
        .then(|| words[7].to_owned())
}

impl Catalog {
    /// Reads every statement of every migration.
    pub fn of_migrations() -> Result<Catalog, ClusterError> {
        let mut catalog = Catalog::default();
        for migration in MIGRATIONS {
            for statement in migration.statements()? {
                catalog.learn(&statement.sql)?;
            }
        }
        Ok(catalog)
    }

    fn learn(&mut self, sql: &str) -> Result<(), ClusterError> {
        let Some((form, at)) = form(sql) else {
            return Err(ClusterError::Unsupported(sql.to_owned()));
        };
        let Some((_, name, _)) = split_at_word(sql, at) else {
            return Err(ClusterError::Unsupported(sql.to_owned()));
        };
        if !is_ident(name) {
            return Err(ClusterError::Unsupported(sql.to_owned()));
        }
        match form {
            Form::CreateTable => {
                if let Some(source) = as_source(sql) {
                    self.copies.insert(name.to_owned(), source);
                }
                let engine =
                    match (engine_clause(sql), as_source(sql)) {
                        (Some(engine), _) => engine.to_owned(),
                        (None, Some(source)) => self.engines.get(&source).cloned().ok_or(
                            ClusterError::UnknownSource {
                                table: name.to_owned(),
                                from: source,
                            },
                        )?,
                        (None, None) => return Err(ClusterError::Unsupported(sql.to_owned())),
                    };
                self.engines.insert(name.to_owned(), engine);
            }
            Form::CreateView => {
                self.views.insert(name.to_owned(), sql.to_owned());
            }
            _ => {}
        }
        if matches!(
            form,
            Form::CreateTable | Form::CreateView | Form::CreateMaterializedView
        ) && !self.objects.iter().any(|o| o == name)
        {
            self.objects.push(name.to_owned());
        }
        Ok(())
    }

    /// How many objects the reading layer holds: a `Distributed` table per replicated table
    /// and every plain view.
    pub fn read_objects(&self) -> usize {
        self.replicated_tables().len() + self.views.len()
    }

    /// Tables that get a `Distributed` twin for reading: the replicated ones but staging.
    pub fn replicated_tables(&self) -> Vec<&str> {
        self.engines
            .iter()
            .filter(|(name, engine)| {
                name.as_str() != "qoe_staging" && replicated_engine(engine).is_some()
            })
            .map(|(name, _)| name.as_str())
            .collect()
    }
}

/// `SummingMergeTree ...` -> `("Summing", "...")` for MergeTree-family engines.
fn replicated_engine(clause: &str) -> Option<(&str, &str)> {
    let name_end = clause
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(clause.len());
    let family = clause[..name_end].strip_suffix("MergeTree")?;
    if family.starts_with("Replicated") {
        return None;
    }
    let mut rest = clause[name_end..].trim_start();
    if let Some(r) = rest.strip_prefix("()") {
        rest = r;
    } else if rest.starts_with('(') {
        // Engine parameters (old syntax, or a version column) are not used by the migrations.
        return None;
    }
    Some((family, rest))
}

/// Where a cluster's objects go.
#[derive(Debug, Clone)]
pub struct ClusterTarget {
    pub cluster: String,
    pub database: String,
}

impl ClusterTarget {
    pub fn new(cluster: &str, database: &str) -> Result<ClusterTarget, ClusterError> {
        for n in [cluster, database] {
            if !is_ident(n) || n.len() > 64 {
                return Err(ClusterError::BadName(n.to_owned()));
            }
        }
        Ok(ClusterTarget {
            cluster: cluster.to_owned(),
            database: database.to_owned(),
        })
    }

    /// The database of the `Distributed` tables dashboards read: `<database>_all`.
    pub fn read_database(&self) -> String {
        format!("{}_all", self.database)
    }

    /// The replicated engine clause of `table` at its own ZooKeeper path.
    fn replicated(&self, table: &str, clause: &str) -> String {
        match replicated_engine(clause) {
            Some((family, rest)) => format!(
                "Replicated{family}MergeTree('/clickhouse/tables/{{shard}}/{db}/{table}', '{{replica}}'){sep}{rest}",
                db = self.database,
                sep = if rest.is_empty() { "" } else { "\n" },
            ),
            _ => clause.to_owned(),
        }
    }

    /// One migration statement in its cluster form (one or two statements).
    pub fn rewrite(&self, catalog: &Catalog, sql: &str) -> Result<Vec<String>, ClusterError> {
        if let Some((Form::AlterTable, at)) = form(sql) {
            let name = split_at_word(sql, at)
                .map(|(_, n, _)| n)
                .unwrap_or_default();
            let engine = catalog.engines.get(name);
            if engine.is_some_and(|e| replicated_engine(e).is_none()) {
                let (Some(engine), Some(source)) = (engine, catalog.copies.get(name)) else {
                    return Err(ClusterError::Unsupported(sql.to_owned()));
                };
                let (db, cluster) = (&self.database, &self.cluster);
                return Ok(vec![
                    format!("DROP TABLE IF EXISTS {db}.{name} ON CLUSTER {cluster}"),
                    format!(
                        "CREATE TABLE IF NOT EXISTS {db}.{name} ON CLUSTER {cluster} AS {db}.{source} ENGINE = {engine}"
                    ),
                ]);
            }
        }
        Ok(vec![self.rewrite_into(
            catalog,
            sql,
            &self.database,
            &self.database,
        )?])
    }

    /// `sql` with the object created in `database` and the tables it reads qualified with
    /// `reads_from`.
    fn rewrite_into(
        &self,
        catalog: &Catalog,
        sql: &str,
        database: &str,
        reads_from: &str,
    ) -> Result<String, ClusterError> {
        let unsupported = || ClusterError::Unsupported(sql.to_owned());
        let (form, at) = form(sql).ok_or_else(unsupported)?;
        let (before, name, after) = split_at_word(sql, at).ok_or_else(unsupported)?;
        if !is_ident(name) {
            return Err(unsupported());
        }
        let mut after = qualify(after, &catalog.objects, reads_from);
        if form == Form::CreateTable {
            match (engine_clause(sql), as_source(sql)) {
                (Some(clause), _) => {
                    let replaced = self.replicated(name, clause);
                    let at = after.len() - engine_clause(&after).map_or(0, str::len);
                    after.replace_range(at.., &replaced);
                }
                (None, Some(source)) => {
                    let clause = catalog.engines.get(&source).ok_or_else(|| {
                        ClusterError::UnknownSource {
                            table: name.to_owned(),
                            from: source.clone(),
                        }
                    })?;
                    after = format!("{after} ENGINE = {}", self.replicated(name, clause));
                }
                (None, None) => return Err(unsupported()),
            }
        }
        Ok(format!(
            "{before}{database}.{name} ON CLUSTER {cluster}{after}",
            cluster = self.cluster
        ))
    }

    /// The statements that (re)create the reading layer in [`Self::read_database`]: one
    /// `Distributed` table per replicated table, and the plain views over them. Each pair of
    /// a `DROP` and a `CREATE` is safe to re-run, and holds no data.
    pub fn distributed_layer(&self, catalog: &Catalog) -> Result<Vec<String>, ClusterError> {
        let read = self.read_database();
        let cluster = &self.cluster;
        let db = &self.database;
        let mut out = Vec::new();
        for table in catalog.replicated_tables() {
            out.push(format!(
                "DROP TABLE IF EXISTS {read}.{table} ON CLUSTER {cluster}"
            ));
            out.push(format!(
                "CREATE TABLE IF NOT EXISTS {read}.{table} ON CLUSTER {cluster} AS {db}.{table} \
                 ENGINE = Distributed({cluster}, {db}, {table}, rand())"
            ));
        }
        for (view, sql) in &catalog.views {
            out.push(format!(
                "DROP TABLE IF EXISTS {read}.{view} ON CLUSTER {cluster}"
            ));
            out.push(self.rewrite_into(catalog, sql, &read, &read)?);
        }
        Ok(out)
    }
}

/// Qualifies the known object names that follow `FROM`, `JOIN`, `TO` or `AS` with `database`.
fn qualify(sql: &str, objects: &[String], database: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 64);
    let mut previous = String::new();
    let mut rest = sql;
    while !rest.is_empty() {
        let word_len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if word_len == 0 {
            let c = rest.chars().next().unwrap_or(' ');
            if !c.is_whitespace() {
                previous.clear();
            }
            out.push(c);
            rest = &rest[c.len_utf8()..];
            continue;
        }
        let word = &rest[..word_len];
        let next = rest[word_len..].chars().next();
        let reference = matches!(
            previous.to_ascii_uppercase().as_str(),
            "FROM" | "JOIN" | "TO" | "AS"
        ) && objects.iter().any(|o| o == word)
            && !matches!(next, Some('.') | Some('('));
        if reference {
            out.push_str(database);
            out.push('.');
        }
        out.push_str(word);
        previous = word.to_owned();
        rest = &rest[word_len..];
    }
    out
}

/// Every migration statement in cluster form, for inspection (`aggregator migrate --print`)
/// and for checking that it parses on a current server.
pub fn all_statements(target: &ClusterTarget) -> Result<Vec<String>, ClusterError> {
    let catalog = Catalog::of_migrations()?;
    let mut out = Vec::new();
    for migration in MIGRATIONS {
        for statement in migration.statements()? {
            out.extend(target.rewrite(&catalog, &statement.sql)?);
        }
    }
    out.extend(target.distributed_layer(&catalog)?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> ClusterTarget {
        ClusterTarget::new("qoe", "qoe").unwrap()
    }

    #[test]
    fn every_migration_statement_has_a_cluster_form() {
        let all = all_statements(&target()).unwrap();
        let count: usize = MIGRATIONS
            .iter()
            .map(|m| m.statements().unwrap().len())
            .sum();
        assert!(all.len() > count);
        for sql in &all {
            assert!(sql.contains(" ON CLUSTER qoe"), "{sql}");
            // No MergeTree is left unreplicated.
            if sql.contains("MergeTree") {
                assert!(
                    sql.contains("ReplicatedSumming")
                        || sql.contains("ReplicatedAggregating")
                        || sql.contains("ReplicatedMergeTree"),
                    "{sql}"
                );
            }
        }
    }

    #[test]
    fn tables_get_replicated_engines_at_their_own_paths() {
        let catalog = Catalog::of_migrations().unwrap();
        let t = target();
        let sql = "CREATE TABLE IF NOT EXISTS qoe_window_1m AS qoe_window_10s";
        let out = t.rewrite(&catalog, sql).unwrap().remove(0);
        assert!(out.starts_with(
            "CREATE TABLE IF NOT EXISTS qoe.qoe_window_1m ON CLUSTER qoe AS qoe.qoe_window_10s ENGINE = \
             ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/qoe/qoe_window_1m', '{replica}')\n\
             PARTITION BY toYYYYMMDD(window_start)"
        ), "{out}");
        let checkpoints = MIGRATIONS[0]
            .statements()
            .unwrap()
            .into_iter()
            .find(|s| s.sql.contains("CREATE TABLE IF NOT EXISTS qoe_checkpoints"))
            .unwrap();
        let out = t.rewrite(&catalog, &checkpoints.sql).unwrap().remove(0);
        assert!(out.contains(
            "ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/qoe/qoe_checkpoints', '{replica}')\nORDER BY (topic, partition, next_offset)"
        ), "{out}");
        // The Null fan-out table stays Null.
        let out = t
            .rewrite(
                &catalog,
                "CREATE TABLE IF NOT EXISTS qoe_ingest AS qoe_staging ENGINE = Null",
            )
            .unwrap();
        assert_eq!(
            out,
            ["CREATE TABLE IF NOT EXISTS qoe.qoe_ingest ON CLUSTER qoe AS qoe.qoe_staging ENGINE = Null"]
        );
        // Altering it copies the (already altered) staging table again.
        let out = t
            .rewrite(
                &catalog,
                "ALTER TABLE qoe_ingest ADD COLUMN seeks UInt64 AFTER duplicate_events",
            )
            .unwrap();
        assert_eq!(
            out,
            [
                "DROP TABLE IF EXISTS qoe.qoe_ingest ON CLUSTER qoe",
                "CREATE TABLE IF NOT EXISTS qoe.qoe_ingest ON CLUSTER qoe AS qoe.qoe_staging ENGINE = Null"
            ]
        );
    }

    #[test]
    fn references_are_qualified_but_columns_and_functions_are_not() {
        let catalog = Catalog::of_migrations().unwrap();
        let t = ClusterTarget::new("c1", "db").unwrap();
        let out = t
            .rewrite(
                &catalog,
                "CREATE MATERIALIZED VIEW IF NOT EXISTS qoe_checkpoints_mv TO qoe_checkpoints AS\n\
                 SELECT topic, staged_at AS written_at FROM qoe_ingest WHERE kind = 'checkpoint'",
            )
            .unwrap()
            .remove(0);
        assert_eq!(
            out,
            "CREATE MATERIALIZED VIEW IF NOT EXISTS db.qoe_checkpoints_mv ON CLUSTER c1 TO db.qoe_checkpoints AS\n\
             SELECT topic, staged_at AS written_at FROM db.qoe_ingest WHERE kind = 'checkpoint'"
        );
        assert_eq!(
            t.rewrite(
                &catalog,
                "ALTER TABLE qoe_window_1m ADD COLUMN seeks UInt64"
            )
            .unwrap(),
            ["ALTER TABLE db.qoe_window_1m ON CLUSTER c1 ADD COLUMN seeks UInt64"]
        );
        assert_eq!(
            t.rewrite(&catalog, "DROP TABLE IF EXISTS qoe_views")
                .unwrap(),
            ["DROP TABLE IF EXISTS db.qoe_views ON CLUSTER c1"]
        );
    }

    #[test]
    fn reading_layer_is_distributed_and_its_views_read_it() {
        let catalog = Catalog::of_migrations().unwrap();
        let layer = target().distributed_layer(&catalog).unwrap();
        let tables = catalog.replicated_tables();
        for t in [
            "qoe_window_10s",
            "qoe_window_1m",
            "qoe_window_1h",
            "qoe_active_views_10s",
            "qoe_view_partials",
            "qoe_checkpoints",
        ] {
            assert!(tables.contains(&t), "{t}");
            assert!(layer.iter().any(|s| s.contains(&format!(
                "qoe_all.{t} ON CLUSTER qoe AS qoe.{t} ENGINE = Distributed(qoe, qoe, {t}, rand())"
            ))));
        }
        assert!(!tables.contains(&"qoe_staging"));
        assert!(!tables.contains(&"qoe_ingest"));
        let views = layer.iter().find(|s| s.starts_with("CREATE VIEW")).unwrap();
        assert!(views.starts_with("CREATE VIEW IF NOT EXISTS qoe_all.qoe_views ON CLUSTER qoe"));
        assert!(views.contains("FROM qoe_all.qoe_view_partials"), "{views}");
        assert!(!views.contains("FROM qoe.qoe_view_partials"));
    }

    #[test]
    fn unsupported_statements_and_names_are_refused() {
        let catalog = Catalog::of_migrations().unwrap();
        let t = target();
        assert!(matches!(
            t.rewrite(&catalog, "INSERT INTO qoe_checkpoints SELECT 1"),
            Err(ClusterError::Unsupported(_))
        ));
        assert!(matches!(
            t.rewrite(&catalog, "CREATE TABLE IF NOT EXISTS x AS nowhere"),
            Err(ClusterError::UnknownSource { .. })
        ));
        assert!(ClusterTarget::new("qoe; DROP", "qoe").is_err());
        assert!(ClusterTarget::new("qoe", "").is_err());
    }
}
