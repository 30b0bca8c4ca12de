//! The window tables' SQL, generated from the metric catalogue ([`crate::metrics`]): the base
//! window table's columns, the materialized views that roll staged rows up into the 10 s, 1 m
//! and 1 h tables, and the migration that adds catalogue metrics wherever window metrics travel
//! (staging, the Null fan-out table, the three window tables, the views).
//!
//! A new metric is a catalogue entry; its migration is generated (`QOE_BLESS=1 cargo test -p
//! qoe-schemas --lib window_sql` writes it when a catalogue column is in no migration). The
//! migration files say where their SQL is generated with `-- qoe:generate` lines
//! (`migrations/templates.rs`); those released before carry the checksum servers recorded
//! then, and a test holds their statements, token for token, to what was released.

use crate::metrics::{Metric, DIMENSIONS, WINDOW_TABLES};

/// The table the aggregator stages a batch's rows in, and the Null table the batch is moved
/// through; both carry every window column, in catalogue order.
pub const STAGING_TABLES: [&str; 2] = ["qoe_staging", "qoe_ingest"];

/// `(column, ClickHouse type)` of every window metric column of `catalogue`, in table order.
pub fn window_columns(catalogue: &[Metric]) -> Vec<(&'static str, &'static str)> {
    catalogue
        .iter()
        .flat_map(|m| m.columns().into_iter().map(|c| (c, m.clickhouse_type)))
        .collect()
}

/// `CREATE TABLE` of the base window table (the coarser ones are created `AS` it) with the
/// given metric columns.
pub fn base_window_table(columns: &[(&str, &str)]) -> String {
    let (table, _) = WINDOW_TABLES[0];
    let lines: Vec<String> = std::iter::once(("window_start", "DateTime('UTC')"))
        .chain(DIMENSIONS.iter().map(|d| (*d, "String")))
        .chain(columns.iter().copied())
        .map(|(c, t)| format!("    {c} {t}"))
        .collect();
    format!(
        "CREATE TABLE IF NOT EXISTS {table}\n(\n{}\n)\nENGINE = SummingMergeTree\n\
         PARTITION BY toYYYYMMDD(window_start)\nORDER BY (window_start, {})",
        lines.join(",\n"),
        DIMENSIONS.join(", ")
    )
}

/// The materialized view that feeds one window table from the staged window rows: the base
/// grain copies them, coarser grains sum them per their window.
pub fn window_view(table: &str, seconds: u32, columns: &[&str]) -> String {
    let base = WINDOW_TABLES[0].0 == table;
    let dims = DIMENSIONS.join(", ");
    let (start, metrics, group) = if base {
        ("window_start".to_owned(), wrap(columns, 6), String::new())
    } else {
        let sums: Vec<String> = columns.iter().map(|c| format!("sum({c}) AS {c}")).collect();
        (
            format!("toDateTime(intDiv(toUInt32(window_start), {seconds}) * {seconds}, 'UTC') AS window_start"),
            sums.join(",\n    "),
            format!("\nGROUP BY window_start, {dims}"),
        )
    };
    let sep = if base { " " } else { "\n    " };
    format!(
        "CREATE MATERIALIZED VIEW IF NOT EXISTS {table}_mv TO {table} AS\nSELECT\n    \
         {start},{sep}{dims},\n    {metrics}\nFROM qoe_ingest\nWHERE kind = 'window'{group}"
    )
}

/// Columns joined by `, `, `per_line` to a line.
fn wrap(columns: &[&str], per_line: usize) -> String {
    columns
        .chunks(per_line)
        .map(|c| c.join(", "))
        .collect::<Vec<_>>()
        .join(",\n    ")
}

/// What is wrong with a request for a migration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GenerateError {
    #[error("column {0:?} is not in the catalogue")]
    UnknownColumn(String),
    #[error("every catalogue column after {0:?} is migrated already: nothing to add")]
    NothingToAdd(String),
}

/// The statements of a migration that adds every column of `columns` (the catalogue's window
/// columns, in order) after `existing_through`, the last column the migrations have so far:
/// `ADD COLUMN` to the staging tables (in catalogue position) and to the window tables, then
/// each window view dropped and created again with all of `columns`.
pub fn add_columns_statements(
    columns: &[(&str, &str)],
    existing_through: &str,
) -> Result<Vec<String>, GenerateError> {
    let last = columns
        .iter()
        .position(|(c, _)| *c == existing_through)
        .ok_or_else(|| GenerateError::UnknownColumn(existing_through.to_owned()))?;
    let new = &columns[last + 1..];
    if new.is_empty() {
        return Err(GenerateError::NothingToAdd(existing_through.to_owned()));
    }
    let mut out = Vec::new();
    for table in STAGING_TABLES {
        let mut after = existing_through;
        for (c, t) in new {
            out.push(format!(
                "ALTER TABLE {table} ADD COLUMN {c} {t} AFTER {after}"
            ));
            after = c;
        }
    }
    for (table, _) in WINDOW_TABLES {
        out.extend(
            new.iter()
                .map(|(c, t)| format!("ALTER TABLE {table} ADD COLUMN {c} {t}")),
        );
    }
    let names: Vec<&str> = columns.iter().map(|(c, _)| *c).collect();
    out.extend(recreated_views(&names));
    Ok(out)
}

/// Each window view dropped and created again over `columns` (a batch moved in between would
/// miss that view: such migrations are applied with the aggregators stopped).
pub fn recreated_views(columns: &[&str]) -> Vec<String> {
    WINDOW_TABLES
        .iter()
        .flat_map(|(table, seconds)| {
            [
                format!("DROP TABLE IF EXISTS {table}_mv"),
                window_view(table, *seconds, columns),
            ]
        })
        .collect()
}

/// The migration file that adds `catalogue`'s window columns after `existing_through`: a header
/// that names the metrics it adds and says how to apply it, and the `-- qoe:generate` line
/// that stands for its statements ([`add_columns_statements`]).
pub fn add_columns_migration(
    catalogue: &[Metric],
    existing_through: &str,
) -> Result<String, GenerateError> {
    let columns = window_columns(catalogue);
    add_columns_statements(&columns, existing_through)?;
    let from = columns
        .iter()
        .position(|(c, _)| *c == existing_through)
        .map_or(0, |i| i + 1);
    let mut metrics: Vec<&str> = Vec::new();
    for (c, _) in &columns[from..] {
        if let Some(m) = catalogue.iter().find(|m| m.columns().contains(c)) {
            if !metrics.contains(&m.name) {
                metrics.push(m.name);
            }
        }
    }
    let last = columns.last().map_or("", |(c, _)| *c);
    Ok(format!(
        "-- Generated from the metric catalogue (schemas/src/metrics.rs) by schemas/src/window_sql.rs.\n\
         -- Adds {} wherever window metrics travel and re-creates the window\n\
         -- materialized views with them. Apply with the aggregators stopped (a batch moved while a\n\
         -- view is re-created would miss it); every statement can be re-run.\n\n\
         -- qoe:generate add-window-columns {existing_through} {last}\n",
        metrics.join(", ")
    ))
}

/// A statement's tokens, one space apart: two statements that differ only in layout are equal.
pub fn tokens(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests;
