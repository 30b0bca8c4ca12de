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

mod templates;

pub use templates::{expand, TemplateError};

/// One migration file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    /// The file as written: SQL, `-- qoe:` directives and `-- qoe:generate` lines
    /// ([`templates`]).
    pub sql: &'static str,
    /// For a migration released before its file was written with `-- qoe:generate` lines:
    /// what it was then.
    pub released: Option<Released>,
}

/// A released migration as servers recorded it: the checksum of its file then, and the
/// [`statements_fingerprint`] of its statements, which its file must still expand to.
#[derive(Debug, Clone, Copy)]
pub struct Released {
    pub checksum: &'static str,
    pub fingerprint: &'static str,
}

/// All migrations, in order. A test checks this list against the files on disk.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_core.sql",
        released: Some(Released {
            checksum: "1667fe08fba07452",
            fingerprint: "9bb87afe6f991484",
        }),
        sql: include_str!("../clickhouse/0001_core.sql"),
    },
    Migration {
        version: 2,
        name: "0002_seeks.sql",
        released: Some(Released {
            checksum: "246eee74399d7621",
            fingerprint: "577729dab1922952",
        }),
        sql: include_str!("../clickhouse/0002_seeks.sql"),
    },
    Migration {
        version: 3,
        name: "0003_startup_unknown.sql",
        released: Some(Released {
            checksum: "27e1d32e890ccef8",
            fingerprint: "38226e44d04b0971",
        }),
        sql: include_str!("../clickhouse/0003_startup_unknown.sql"),
    },
    Migration {
        version: 4,
        name: "0004_cmcd_sessions.sql",
        released: None,
        sql: include_str!("../clickhouse/0004_cmcd_sessions.sql"),
    },
    Migration {
        version: 5,
        name: "0005_request_metrics.sql",
        released: Some(Released {
            checksum: "469a6d0e60e9227c",
            fingerprint: "f672be1fc1f297c9",
        }),
        sql: include_str!("../clickhouse/0005_request_metrics.sql"),
    },
    Migration {
        version: 6,
        name: "0006_partition_state.sql",
        released: None,
        sql: include_str!("../clickhouse/0006_partition_state.sql"),
    },
    Migration {
        version: 7,
        name: "0007_view_score.sql",
        released: Some(Released {
            checksum: "9b46968ea2793fe2",
            fingerprint: "0806520374d4830c",
        }),
        sql: include_str!("../clickhouse/0007_view_score.sql"),
    },
    Migration {
        version: 8,
        name: "0008_switches_and_losses.sql",
        released: Some(Released {
            checksum: "0c22a38a462283c8",
            fingerprint: "c17be91b4da02f66",
        }),
        sql: include_str!("../clickhouse/0008_switches_and_losses.sql"),
    },
    Migration {
        version: 9,
        name: "0009_error_codes.sql",
        released: Some(Released {
            checksum: "62665f7970cf743a",
            fingerprint: "1e9c9550cc57381b",
        }),
        sql: include_str!("../clickhouse/0009_error_codes.sql"),
    },
    Migration {
        version: 10,
        name: "0010_request_mode.sql",
        released: None,
        sql: include_str!("../clickhouse/0010_request_mode.sql"),
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

/// FNV-1a of the statements' tokens and minimum versions: equal for two migrations that differ
/// only in layout and comments.
pub fn statements_fingerprint(statements: &[Statement]) -> String {
    let text: Vec<String> = statements
        .iter()
        .map(|s| {
            let min = s.min_version.map(|v| v.to_string()).unwrap_or_default();
            format!("{min}|{}", crate::window_sql::tokens(&s.sql))
        })
        .collect();
    fnv1a(text.join(";\n").as_bytes())
}

fn fnv1a(bytes: &[u8]) -> String {
    format!("{:016x}", crate::fnv1a(bytes))
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
    #[error("{file}: {source}")]
    Template { file: String, source: TemplateError },
}

impl Migration {
    /// The file with its `-- qoe:generate` lines expanded: the SQL servers are given.
    pub fn text(&self) -> Result<String, MigrationError> {
        templates::expand_released(self.sql).map_err(|source| MigrationError::Template {
            file: self.name.to_owned(),
            source,
        })
    }

    /// Splits the expanded file into statements, dropping comment lines.
    pub fn statements(&self) -> Result<Vec<Statement>, MigrationError> {
        let text = self.text()?;
        let mut out = Vec::new();
        let mut current = String::new();
        let mut min_version = None;
        for line in text.lines() {
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

    /// Recorded when applied so that an edited migration is noticed: FNV-1a of the expanded
    /// file, or for a [`Released`] one the checksum its file had then (a test holds its
    /// statements to what they were).
    pub fn checksum(&self) -> Result<String, MigrationError> {
        Ok(match self.released {
            Some(r) => r.checksum.to_owned(),
            None => fnv1a(self.text()?.as_bytes()),
        })
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
    fn released_migrations_still_are_what_servers_applied() {
        let mut pinned = 0;
        for m in MIGRATIONS {
            if let Some(r) = m.released {
                let got = statements_fingerprint(&m.statements().unwrap());
                assert_eq!(
                    got, r.fingerprint,
                    "{}: its statements changed since release",
                    m.name
                );
                assert_eq!(m.checksum().unwrap(), r.checksum);
                pinned += 1;
            }
        }
        assert_eq!(pinned, 7);
    }

    #[test]
    fn a_migration_without_generated_lines_is_checksummed_as_written() {
        let m = MIGRATIONS[3];
        assert!(m.released.is_none());
        assert_eq!(m.text().unwrap(), m.sql);
        assert_eq!(m.checksum().unwrap(), fnv1a(m.sql.as_bytes()));
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
            released: None,
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
            released: None,
        };
        assert!(matches!(
            bad.statements(),
            Err(MigrationError::BadDirective { .. })
        ));
        let open = Migration {
            version: 9,
            name: "0009_x.sql",
            sql: "SELECT 1",
            released: None,
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
