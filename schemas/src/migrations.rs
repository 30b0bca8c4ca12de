//! The ClickHouse schema as versioned migrations (`schemas/clickhouse/NNNN_name.sql`).
//!
//! The SQL files are embedded at build time. This module only parses them into statements
//! and decides which apply to a given server version; applying them is I/O and lives in the
//! aggregator's `migrate` command.
//!
//! File format: statements end with `;` at the end of a line. A comment line
//! `-- qoe:min-version X.Y` directly before a statement makes it apply only to servers of at
//! least that version (features such as TTL that old servers lack). Every statement must be
//! idempotent (`IF NOT EXISTS`, `IF EXISTS`, `MODIFY`), so a migration interrupted half-way can
//! be re-run. ClickHouse 18.16 has no `ADD COLUMN IF NOT EXISTS`: a plain
//! `ALTER TABLE t ADD COLUMN c ...` is recognised ([`Statement::added_column`]) and skipped by
//! the migrator when the column is already there.

/// One migration file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// All migrations, in order. A test checks this list against the files on disk.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_core.sql",
        sql: include_str!("../clickhouse/0001_core.sql"),
    },
    Migration {
        version: 2,
        name: "0002_seeks.sql",
        sql: include_str!("../clickhouse/0002_seeks.sql"),
    },
    Migration {
        version: 3,
        name: "0003_startup_unknown.sql",
        sql: include_str!("../clickhouse/0003_startup_unknown.sql"),
    },
    Migration {
        version: 4,
        name: "0004_cmcd_sessions.sql",
        sql: include_str!("../clickhouse/0004_cmcd_sessions.sql"),
    },
    Migration {
        version: 5,
        name: "0005_request_metrics.sql",
        sql: include_str!("../clickhouse/0005_request_metrics.sql"),
    },
    Migration {
        version: 6,
        name: "0006_partition_state.sql",
        sql: include_str!("../clickhouse/0006_partition_state.sql"),
    },
    Migration {
        version: 7,
        name: "0007_view_score.sql",
        sql: include_str!("../clickhouse/0007_view_score.sql"),
    },
    Migration {
        version: 8,
        name: "0008_switches_and_losses.sql",
        sql: include_str!("../clickhouse/0008_switches_and_losses.sql"),
    },
    Migration {
        version: 9,
        name: "0009_error_codes.sql",
        sql: include_str!("../clickhouse/0009_error_codes.sql"),
    },
];

/// A ClickHouse server version, as `SELECT version()` reports it (`18.16.1`, `25.3.2.39`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion {
    pub major: u32,
    pub minor: u32,
}

impl ServerVersion {
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(ServerVersion { major, minor })
    }

    /// Servers before 20.1 mis-handle parts of the HTTP client protocol's defaults (schema
    /// validation settings, compressed responses), so the client must use its legacy mode.
    pub fn is_legacy(self) -> bool {
        self < ServerVersion {
            major: 20,
            minor: 1,
        }
    }
}

impl std::fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// One SQL statement of a migration, with the minimum server version it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub sql: String,
    pub min_version: Option<ServerVersion>,
}

impl Statement {
    /// For an [`Self::added_column`] statement, the text after `ALTER TABLE table`
    /// (`ADD COLUMN c ...`), so that several can be applied as one `ALTER`.
    pub fn alter_clause(&self) -> Option<&str> {
        self.added_column()?;
        let mut rest = self.sql.trim_start();
        for _ in 0..3 {
            let end = rest.find(char::is_whitespace)?;
            rest = rest[end..].trim_start();
        }
        Some(rest)
    }

    /// `(table, column)` when the statement is `ALTER TABLE table ADD COLUMN column ...`
    /// (one column, no `IF NOT EXISTS`), so that the migrator can skip it when the column exists.
    pub fn added_column(&self) -> Option<(String, String)> {
        let words: Vec<&str> = self.sql.split_whitespace().take(7).collect();
        let is = |i: usize, w: &str| words.get(i).is_some_and(|x| x.eq_ignore_ascii_case(w));
        if !(is(0, "ALTER") && is(1, "TABLE") && is(3, "ADD") && is(4, "COLUMN")) || is(5, "IF") {
            return None;
        }
        let ident =
            |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        let (table, column) = (*words.get(2)?, *words.get(5)?);
        (ident(table) && ident(column) && !self.sql.contains(','))
            .then(|| (table.to_owned(), column.to_owned()))
    }
}

/// What the migrator applies: one statement, or a run of consecutive `ADD COLUMN`s to one
/// table, applied as one `ALTER` (on a cluster every statement is a distributed DDL that waits
/// for every server) after dropping the columns that exist already.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<'a> {
    Statement {
        index: usize,
        sql: &'a str,
    },
    AddColumns {
        index: usize,
        table: String,
        /// `(column, clause)`: the clause is the text after `ALTER TABLE table`.
        columns: Vec<(String, &'a str)>,
    },
}

/// The statements grouped into [`Step`]s, in order; `index` is the first statement's.
pub fn steps(statements: &[Statement]) -> Vec<Step<'_>> {
    let mut out: Vec<Step<'_>> = Vec::new();
    for (index, statement) in statements.iter().enumerate() {
        let added = statement.added_column().zip(statement.alter_clause());
        match (added, out.last_mut()) {
            (Some(((t, column), clause)), Some(Step::AddColumns { table, columns, .. }))
                if *table == t =>
            {
                columns.push((column, clause));
            }
            (Some(((table, column), clause)), _) => out.push(Step::AddColumns {
                index,
                table,
                columns: vec![(column, clause)],
            }),
            (None, _) => out.push(Step::Statement {
                index,
                sql: &statement.sql,
            }),
        }
    }
    out
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MigrationError {
    #[error("{file}: bad directive {line:?} (expected `-- qoe:min-version X.Y`)")]
    BadDirective { file: String, line: String },
    #[error("{file}: text after the last `;`")]
    Unterminated { file: String },
}

impl Migration {
    /// Splits the file into statements, dropping comment lines.
    pub fn statements(&self) -> Result<Vec<Statement>, MigrationError> {
        let mut out = Vec::new();
        let mut current = String::new();
        let mut min_version = None;
        for line in self.sql.lines() {
            let trimmed = line.trim();
            if let Some(rest) = trimmed.strip_prefix("-- qoe:") {
                let version = rest
                    .strip_prefix("min-version ")
                    .and_then(ServerVersion::parse)
                    .ok_or_else(|| MigrationError::BadDirective {
                        file: self.name.to_owned(),
                        line: trimmed.to_owned(),
                    })?;
                min_version = Some(version);
                continue;
            }
            if trimmed.starts_with("--") || (trimmed.is_empty() && current.is_empty()) {
                continue;
            }
            current.push_str(line);
            current.push('\n');
            if trimmed.ends_with(';') {
                let sql = current.trim().trim_end_matches(';').trim().to_owned();
                out.push(Statement { sql, min_version });
                current.clear();
                min_version = None;
            }
        }
        if !current.trim().is_empty() {
            return Err(MigrationError::Unterminated {
                file: self.name.to_owned(),
            });
        }
        Ok(out)
    }

    /// The statements that apply to a server of the given version.
    pub fn statements_for(&self, server: ServerVersion) -> Result<Vec<Statement>, MigrationError> {
        Ok(self
            .statements()?
            .into_iter()
            .filter(|s| s.min_version.is_none_or(|min| server >= min))
            .collect())
    }

    /// FNV-1a of the file, recorded when applied so that an edited migration is noticed.
    pub fn checksum(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.sql.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{h:016x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_list_matches_files_on_disk() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/clickhouse");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<&str> = MIGRATIONS.iter().map(|m| m.name).collect();
        assert_eq!(files, listed, "MIGRATIONS must list every file, in order");
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1);
            assert!(m.name.starts_with(&format!("{:04}_", m.version)));
        }
    }

    #[test]
    fn every_migration_parses() {
        for m in MIGRATIONS {
            let stmts = m.statements().unwrap();
            assert!(!stmts.is_empty());
            for s in stmts {
                assert!(!s.sql.contains(";\n"), "{}: two statements in one", m.name);
            }
        }
    }

    #[test]
    fn directives_gate_statements() {
        let m = Migration {
            version: 9,
            name: "0009_x.sql",
            sql: "-- a comment\nCREATE TABLE a (x UInt8)\nENGINE = Memory;\n\n-- qoe:min-version 19.6\nALTER TABLE a MODIFY TTL x;\nSELECT 1;\n",
        };
        let old = ServerVersion::parse("18.16.1").unwrap();
        let new = ServerVersion::parse("25.3.2.1").unwrap();
        assert_eq!(m.statements_for(old).unwrap().len(), 2);
        let all = m.statements_for(new).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].sql, "CREATE TABLE a (x UInt8)\nENGINE = Memory");
        assert_eq!(all[1].min_version, ServerVersion::parse("19.6"));

        let bad = Migration {
            version: 9,
            name: "0009_x.sql",
            sql: "-- qoe:min-versoin 19\nSELECT 1;\n",
        };
        assert!(matches!(
            bad.statements(),
            Err(MigrationError::BadDirective { .. })
        ));
        let open = Migration {
            version: 9,
            name: "0009_x.sql",
            sql: "SELECT 1",
        };
        assert!(matches!(
            open.statements(),
            Err(MigrationError::Unterminated { .. })
        ));
    }

    #[test]
    fn added_columns_are_recognised() {
        let st = |sql: &str| Statement {
            sql: sql.to_owned(),
            min_version: None,
        };
        assert_eq!(
            st("ALTER TABLE qoe_window_1m ADD COLUMN seeks UInt64").added_column(),
            Some(("qoe_window_1m".into(), "seeks".into()))
        );
        assert_eq!(
            st("alter table t\n  add column c UInt64 AFTER b").added_column(),
            Some(("t".into(), "c".into()))
        );
        assert_eq!(
            st("ALTER TABLE t ADD COLUMN IF NOT EXISTS c UInt64").added_column(),
            None
        );
        assert_eq!(
            st("ALTER TABLE t ADD COLUMN c UInt64, ADD COLUMN d UInt64").added_column(),
            None
        );
        assert_eq!(st("ALTER TABLE t MODIFY TTL x").added_column(), None);
        assert_eq!(
            st("alter table t\n  add column c UInt64 AFTER b").alter_clause(),
            Some("add column c UInt64 AFTER b")
        );
        assert_eq!(st("ALTER TABLE t MODIFY TTL x").alter_clause(), None);
        let all = [
            st("ALTER TABLE a ADD COLUMN x UInt8"),
            st("ALTER TABLE a ADD COLUMN y UInt8 AFTER x"),
            st("ALTER TABLE b ADD COLUMN x UInt8"),
            st("DROP TABLE IF EXISTS v"),
            st("ALTER TABLE b ADD COLUMN z UInt8"),
        ];
        let grouped = steps(&all);
        assert_eq!(grouped.len(), 4);
        assert_eq!(
            grouped[0],
            Step::AddColumns {
                index: 0,
                table: "a".into(),
                columns: vec![
                    ("x".into(), "ADD COLUMN x UInt8"),
                    ("y".into(), "ADD COLUMN y UInt8 AFTER x")
                ]
            }
        );
        assert!(matches!(grouped[1], Step::AddColumns { index: 2, .. }));
        assert_eq!(
            grouped[2],
            Step::Statement {
                index: 3,
                sql: "DROP TABLE IF EXISTS v"
            }
        );
        assert!(matches!(grouped[3], Step::AddColumns { index: 4, .. }));
        assert_eq!(
            st("CREATE TABLE t (x UInt8) ENGINE = Memory").added_column(),
            None
        );
    }

    #[test]
    fn server_versions() {
        let v = ServerVersion::parse("18.16.1").unwrap();
        assert!(v.is_legacy());
        assert!(!ServerVersion::parse("24.8.1.1").unwrap().is_legacy());
        assert!(ServerVersion::parse("x.1").is_none());
        assert!(ServerVersion::parse("9.10").unwrap() < ServerVersion::parse("10.1").unwrap());
    }
}
