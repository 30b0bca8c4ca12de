use super::*;
use crate::metrics::{Input, Rollup, WINDOW_METRICS};
use crate::migrations::{steps, Migration, Step, MIGRATIONS};

fn migration(name: &str) -> &'static Migration {
    MIGRATIONS
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("no migration {name}"))
}

fn statements(m: &Migration) -> Vec<String> {
    m.statements()
        .unwrap()
        .into_iter()
        .map(|s| tokens(&s.sql))
        .collect()
}

/// The catalogue's window columns up to and including `last`.
fn columns_through(last: &str) -> Vec<(&'static str, &'static str)> {
    let all = window_columns(WINDOW_METRICS);
    let i = all.iter().position(|(c, _)| *c == last).unwrap();
    all[..=i].to_vec()
}

/// The window metric columns the migrations give `qoe_window_10s`, in order: those of its
/// `CREATE TABLE`, then every `ADD COLUMN` to it.
fn migrated_window_columns() -> Vec<String> {
    let base = WINDOW_TABLES[0].0;
    let mut out = Vec::new();
    for m in MIGRATIONS {
        for s in m.statements().unwrap() {
            if let Some((table, column)) = s.added_column() {
                if table == base {
                    out.push(column);
                }
            } else if s
                .sql
                .starts_with(&format!("CREATE TABLE IF NOT EXISTS {base}\n"))
            {
                let body = &s.sql[s.sql.find("\n(\n").unwrap() + 3..s.sql.find("\n)\n").unwrap()];
                out.extend(
                    body.split(',')
                        .filter_map(|c| c.split_whitespace().next())
                        .filter(|c| *c != "window_start" && !DIMENSIONS.contains(c))
                        .map(str::to_owned),
                );
            }
        }
    }
    out
}

#[test]
fn the_core_migration_holds_the_generated_window_table_and_views() {
    let columns = columns_through("duplicate_events");
    let names: Vec<&str> = columns.iter().map(|(c, _)| *c).collect();
    let core = statements(migration("0001_core.sql"));
    let mut want = vec![tokens(&base_window_table(&columns))];
    want.extend(
        WINDOW_TABLES
            .iter()
            .map(|(t, s)| tokens(&window_view(t, *s, &names))),
    );
    for w in &want {
        assert!(core.contains(w), "0001_core.sql has no statement\n{w}");
    }
    // Staging carries the same columns, in the same order, among its own.
    let staging = core
        .iter()
        .find(|s| s.starts_with("CREATE TABLE IF NOT EXISTS qoe_staging "))
        .unwrap();
    let typed: Vec<String> = columns.iter().map(|(c, t)| format!("{c} {t}")).collect();
    assert!(staging.contains(&typed.join(", ")), "{staging}");
}

#[test]
fn released_metric_migrations_are_what_the_catalogue_generates() {
    // (file, the last column before it, its last column)
    let released = [
        ("0002_seeks.sql", "duplicate_events", "seeks"),
        ("0003_startup_unknown.sql", "seeks", "startup_unknown"),
        ("0005_request_metrics.sql", "startup_unknown", "ttfb_le_inf"),
        (
            "0008_switches_and_losses.sql",
            "ttfb_le_inf",
            "reports_lost",
        ),
    ];
    for (file, before, last) in released {
        let want: Vec<String> = add_columns_statements(&columns_through(last), before)
            .unwrap()
            .iter()
            .map(|s| tokens(s))
            .collect();
        let got = statements(migration(file));
        assert_eq!(got.len(), want.len(), "{file}: statement count");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g, w, "{file}");
        }
    }
}

/// Adding a metric to the catalogue: this test fails, naming the command that writes its
/// migration (`QOE_BLESS=1`), which is then listed in `MIGRATIONS`.
#[test]
fn every_catalogue_column_is_in_a_migration() {
    let migrated = migrated_window_columns();
    let catalogue = window_columns(WINDOW_METRICS);
    let names: Vec<&str> = catalogue.iter().map(|(c, _)| *c).collect();
    let prefix = names
        .iter()
        .zip(&migrated)
        .take_while(|(a, b)| **a == b.as_str())
        .count();
    assert_eq!(
        prefix,
        migrated.len(),
        "the migrations have window columns {:?} where the catalogue has {:?}: a released \
         metric's columns must stay where they are (new metrics go at the end of the catalogue)",
        &migrated[prefix..],
        &names[prefix..migrated.len().min(names.len())],
    );
    if prefix == names.len() {
        return;
    }
    let sql = add_columns_migration(WINDOW_METRICS, names[prefix - 1]).unwrap();
    let next = MIGRATIONS.last().map_or(1, |m| m.version + 1);
    let first = WINDOW_METRICS
        .iter()
        .find(|m| m.columns().contains(&names[prefix]))
        .map_or(names[prefix], |m| m.name);
    let file = format!("{next:04}_{first}.sql");
    if std::env::var_os("QOE_BLESS").is_some() {
        let path = format!("{}/clickhouse/{file}", env!("CARGO_MANIFEST_DIR"));
        std::fs::write(&path, &sql).unwrap();
        panic!("wrote {path}: add it to MIGRATIONS in schemas/src/migrations.rs");
    }
    panic!(
        "catalogue columns {:?} are in no migration: `QOE_BLESS=1 cargo test -p qoe-schemas \
         --lib window_sql` writes schemas/clickhouse/{file}:\n{sql}",
        &names[prefix..]
    );
}

const EXTRA_BUCKETS: &[crate::metrics::Bucket] = &[
    crate::metrics::Bucket {
        column: "probe_le_10",
        le: Some(10),
    },
    crate::metrics::Bucket {
        column: "probe_le_inf",
        le: None,
    },
];

/// The catalogue with two more metrics, a sum and a histogram, as a newcomer would add them.
fn catalogue_with_new_metrics() -> Vec<Metric> {
    let mut catalogue = WINDOW_METRICS.to_vec();
    catalogue.push(Metric {
        name: "probe_total",
        input: Input::Events,
        clickhouse_type: "UInt64",
        rollup: Rollup::Sum,
        per_view: false,
        unit: "probes",
        doc: "A metric added in a test.",
    });
    catalogue.push(Metric {
        name: "probe",
        input: Input::Events,
        clickhouse_type: "UInt64",
        rollup: Rollup::Histogram(EXTRA_BUCKETS),
        per_view: false,
        unit: "probes",
        doc: "A histogram added in a test.",
    });
    catalogue
}

#[test]
fn a_new_metric_gets_a_migration_that_adds_it_everywhere_and_sums_it_up() {
    let catalogue = catalogue_with_new_metrics();
    let last = crate::metrics::WINDOW_COLUMNS[crate::metrics::WINDOW_COLUMNS.len() - 1];
    let file = add_columns_migration(&catalogue, last).unwrap();
    assert!(
        file.ends_with(&format!(
            "\n-- qoe:generate add-window-columns {last} probe_le_inf\n"
        )),
        "{file}"
    );
    let sql = crate::migrations::expand(&file, &catalogue).unwrap();
    let m = Migration {
        version: 99,
        name: "0099_probe_total.sql",
        sql: Box::leak(sql.clone().into_boxed_str()),
        released: None,
    };
    let parsed = m.statements().unwrap();
    assert!(sql.starts_with("-- Generated"), "{sql}");
    assert!(sql.contains("Adds probe_total, probe "), "{sql}");
    // Staging and the Null table: in catalogue order after the last column; the migrator sees
    // each as one skippable `ADD COLUMN`, grouped per table.
    let adds: Vec<(String, String)> = parsed.iter().filter_map(|s| s.added_column()).collect();
    let mut want = Vec::new();
    for table in STAGING_TABLES
        .iter()
        .chain(WINDOW_TABLES.iter().map(|(t, _)| t))
    {
        for c in ["probe_total", "probe_le_10", "probe_le_inf"] {
            want.push((table.to_string(), c.to_string()));
        }
    }
    assert_eq!(adds, want);
    assert!(parsed
        .iter()
        .any(|s| s.sql
            == format!("ALTER TABLE qoe_staging ADD COLUMN probe_total UInt64 AFTER {last}")));
    assert!(parsed.iter().any(
        |s| s.sql == "ALTER TABLE qoe_ingest ADD COLUMN probe_le_inf UInt64 AFTER probe_le_10"
    ));
    let groups = steps(&parsed)
        .iter()
        .filter(|s| matches!(s, Step::AddColumns { columns, .. } if columns.len() == 3))
        .count();
    assert_eq!(groups, 5);
    // Every view is dropped and created again, copying or summing every column.
    for (table, seconds) in WINDOW_TABLES {
        let view = parsed
            .iter()
            .position(|s| {
                s.sql.starts_with(&format!(
                    "CREATE MATERIALIZED VIEW IF NOT EXISTS {table}_mv "
                ))
            })
            .unwrap();
        assert_eq!(
            parsed[view - 1].sql,
            format!("DROP TABLE IF EXISTS {table}_mv")
        );
        let body = &parsed[view].sql;
        for c in window_columns(&catalogue).iter().map(|(c, _)| *c) {
            let want = if seconds == 10 {
                format!(" {c},")
            } else {
                format!("sum({c}) AS {c}")
            };
            let want = if seconds == 10 && c == "probe_le_inf" {
                " probe_le_inf\nFROM".to_owned()
            } else {
                want
            };
            assert!(body.contains(&want), "{table}: no {want:?} in\n{body}");
        }
    }
    // A second run has nothing left to add.
    assert_eq!(
        add_columns_migration(&catalogue, "probe_le_inf"),
        Err(GenerateError::NothingToAdd("probe_le_inf".into()))
    );
    assert_eq!(
        add_columns_migration(&catalogue, "nope"),
        Err(GenerateError::UnknownColumn("nope".into()))
    );
}
