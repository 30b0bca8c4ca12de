//! What a `-- qoe:generate WHAT ARGS` line of a migration file stands for, so that no column
//! list is written twice in the migrations: the window columns, tables and views come from the
//! metric catalogue ([`crate::window_sql`]), `qoe_views` and its experience score
//! from [`crate::score`], and roll-up views from the table they roll up, created
//! earlier in the same file.
//!
//! | line | stands for |
//! | --- | --- |
//! | `window-key-columns` | `window_start` and the slice dimensions, one `name Type,` a line |
//! | `window-columns THROUGH` | the window columns through `THROUGH`, one `name Type,` a line |
//! | `window-table THROUGH` | the base window table with those columns |
//! | `window-views THROUGH` | the three window materialized views over those columns |
//! | `add-window-columns AFTER THROUGH` | a metric migration ([`crate::window_sql::add_columns_statements`]) |
//! | `distinct-at-base-grain TABLE COLUMN KIND` | a base-grain table of `uniqExact` states of `view_id` per window and slice, and the view that fills it from staged rows of `KIND` |
//! | `views-view` | `qoe_views`: one row per view, from `qoe_view_partials` |
//! | `view-score` | `qoe_views` again, with the experience score and its parts |
//! | `rollup-views KIND TABLE:SECONDS...` | a view per table summing staged rows of `KIND` per its window; dimensions and sums are those of the first table's `CREATE TABLE` in this file |

use crate::metrics::{Metric, WINDOW_METRICS};
use crate::window_sql;

/// Why a `-- qoe:generate` line could not be expanded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{line}`: {why}")]
pub struct TemplateError {
    pub line: String,
    pub why: String,
}

/// `text` with every `-- qoe:generate` line replaced by what it stands for, window columns
/// taken from `catalogue`.
pub fn expand(text: &str, catalogue: &[Metric]) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(text.len() * 2);
    for line in text.lines() {
        match line.trim().strip_prefix("-- qoe:generate ") {
            Some(rest) => {
                let words: Vec<&str> = rest.split_whitespace().collect();
                let generated = generate(&words, text, catalogue).map_err(|why| TemplateError {
                    line: line.trim().to_owned(),
                    why,
                })?;
                out.push_str(&generated);
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    Ok(out)
}

/// [`expand`] with the real catalogue.
pub fn expand_released(text: &str) -> Result<String, TemplateError> {
    expand(text, WINDOW_METRICS)
}

fn generate(words: &[&str], file: &str, catalogue: &[Metric]) -> Result<String, String> {
    let columns = window_sql::window_columns(catalogue);
    let through = |last: &str| -> Result<Vec<(&'static str, &'static str)>, String> {
        let i = columns
            .iter()
            .position(|(c, _)| *c == last)
            .ok_or_else(|| format!("{last:?} is not a window column of the catalogue"))?;
        Ok(columns[..=i].to_vec())
    };
    let statements = |s: Vec<String>| s.iter().map(|s| format!("{s};\n\n")).collect::<String>();
    match words {
        ["window-key-columns"] => Ok(window_key_columns()),
        ["window-columns", last] => Ok(through(last)?
            .iter()
            .map(|(c, t)| format!("    {c} {t},\n"))
            .collect()),
        ["window-table", last] => Ok(statements(vec![window_sql::base_window_table(&through(
            last,
        )?)])),
        ["window-views", last] => {
            let names: Vec<&str> = through(last)?.iter().map(|(c, _)| *c).collect();
            Ok(statements(
                crate::metrics::WINDOW_TABLES
                    .iter()
                    .map(|(t, s)| window_sql::window_view(t, *s, &names))
                    .collect(),
            ))
        }
        ["add-window-columns", after, last] => {
            let statements_sql = window_sql::add_columns_statements(&through(last)?, after)
                .map_err(|e| e.to_string())?;
            Ok(statements(statements_sql))
        }
        ["distinct-at-base-grain", table, column, kind] => {
            let dims = crate::metrics::DIMENSIONS.join(", ");
            let keys = window_key_columns();
            Ok(statements(vec![
                format!(
                    "CREATE TABLE IF NOT EXISTS {table}\n(\n{keys}    {column} AggregateFunction(uniqExact, String)\n)\n\
                     ENGINE = AggregatingMergeTree\nPARTITION BY toYYYYMMDD(window_start)\n\
                     ORDER BY (window_start, {dims})"
                ),
                format!(
                    "CREATE MATERIALIZED VIEW IF NOT EXISTS {table}_mv TO {table} AS\n\
                     SELECT window_start, {dims}, uniqExactState(view_id) AS {column}\n\
                     FROM qoe_ingest\nWHERE kind = '{kind}'\nGROUP BY window_start, {dims}"
                ),
            ]))
        }
        ["views-view"] => Ok(format!(
            "CREATE VIEW IF NOT EXISTS qoe_views AS\n{};\n",
            crate::score::VIEW_TOTALS
        )),
        ["view-score"] => Ok(crate::score::view_score_sql()),
        ["rollup-views", kind, tables @ ..] if !tables.is_empty() => {
            let mut targets = Vec::new();
            for t in tables {
                let (table, seconds) = t
                    .split_once(':')
                    .and_then(|(t, s)| Some((t, s.parse::<u32>().ok()?)))
                    .ok_or_else(|| format!("{t:?} is not TABLE:SECONDS"))?;
                targets.push((table, seconds));
            }
            let (dims, sums) = table_shape(file, targets[0].0)?;
            Ok(statements(
                targets
                    .iter()
                    .map(|(table, seconds)| rollup_view(table, *seconds, kind, &dims, &sums))
                    .collect(),
            ))
        }
        _ => Err(
            "unknown generator or wrong arguments (see schemas/src/migrations/templates.rs)".into(),
        ),
    }
}

/// `window_start` and the slice dimensions, one `name Type,` a line.
fn window_key_columns() -> String {
    std::iter::once("window_start DateTime('UTC')".to_owned())
        .chain(
            crate::metrics::DIMENSIONS
                .iter()
                .map(|d| format!("{d} String")),
        )
        .map(|c| format!("    {c},\n"))
        .collect()
}

/// The dimensions (its `ORDER BY` key but `window_start`) and the other columns of a table
/// created in `file` as `CREATE TABLE IF NOT EXISTS table\n(\n...\n)\n...ORDER BY (...)`.
fn table_shape(file: &str, table: &str) -> Result<(Vec<String>, Vec<String>), String> {
    let head = format!("CREATE TABLE IF NOT EXISTS {table}\n(\n");
    let start = file
        .find(&head)
        .ok_or_else(|| format!("no `CREATE TABLE IF NOT EXISTS {table}` in the file"))?
        + head.len();
    let rest = &file[start..];
    let end = rest
        .find("\n)\n")
        .ok_or("its CREATE TABLE has no `)` line")?;
    let columns: Vec<&str> = rest[..end]
        .split(',')
        .filter_map(|c| c.split_whitespace().next())
        .collect();
    let key_start = rest
        .find("ORDER BY (")
        .ok_or("its CREATE TABLE has no ORDER BY (...)")?
        + "ORDER BY (".len();
    let key_end = rest[key_start..].find(')').ok_or("ORDER BY ( without )")? + key_start;
    let dims: Vec<String> = rest[key_start..key_end]
        .split(',')
        .map(|d| d.trim().to_owned())
        .filter(|d| d != "window_start")
        .collect();
    let sums = columns
        .iter()
        .filter(|c| **c != "window_start" && !dims.iter().any(|d| d == *c))
        .map(|c| (*c).to_owned())
        .collect();
    Ok((dims, sums))
}

/// A materialized view summing the staged rows of `kind` into `table` per `seconds`.
fn rollup_view(table: &str, seconds: u32, kind: &str, dims: &[String], sums: &[String]) -> String {
    let dims = dims.join(", ");
    let sums: Vec<String> = sums
        .iter()
        .map(|c| format!("    sum({c}) AS {c}"))
        .collect();
    format!(
        "CREATE MATERIALIZED VIEW IF NOT EXISTS {table}_mv TO {table} AS\nSELECT\n    \
         toDateTime(intDiv(toUInt32(window_start), {seconds}) * {seconds}, 'UTC') AS window_start,\n    \
         {dims},\n{}\nFROM qoe_ingest\nWHERE kind = '{kind}'\nGROUP BY window_start, {dims}",
        sums.join(",\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_lines_and_arguments_are_errors_that_name_the_line() {
        let e = expand("-- qoe:generate window-table nope\n", WINDOW_METRICS).unwrap_err();
        assert_eq!(e.line, "-- qoe:generate window-table nope");
        assert!(e.why.contains("\"nope\" is not a window column"), "{e}");
        let e = expand("-- qoe:generate teapot\n", WINDOW_METRICS).unwrap_err();
        assert!(e.why.contains("unknown generator"), "{e}");
        let e = expand(
            "-- qoe:generate rollup-views error_code t:60\n",
            WINDOW_METRICS,
        )
        .unwrap_err();
        assert!(
            e.why
                .contains("no `CREATE TABLE IF NOT EXISTS t` in the file"),
            "{e}"
        );
        let e = expand(
            "-- qoe:generate rollup-views error_code t:sixty\n",
            WINDOW_METRICS,
        )
        .unwrap_err();
        assert!(e.why.contains("not TABLE:SECONDS"), "{e}");
    }

    #[test]
    fn rollup_views_take_dimensions_and_sums_from_the_table() {
        let file = "CREATE TABLE IF NOT EXISTS t_1m\n(\n    window_start DateTime('UTC'),\n    \
                    region String,\n    code String,\n    n UInt64,\n    m UInt64\n)\n\
                    ENGINE = SummingMergeTree\nORDER BY (window_start, region, code);\n\
                    -- qoe:generate rollup-views k t_1m:60 t_1h:3600\n";
        let out = expand(file, WINDOW_METRICS).unwrap();
        assert!(
            out.contains(
                "CREATE MATERIALIZED VIEW IF NOT EXISTS t_1h_mv TO t_1h AS\nSELECT\n    \
             toDateTime(intDiv(toUInt32(window_start), 3600) * 3600, 'UTC') AS window_start,\n    \
             region, code,\n    sum(n) AS n,\n    sum(m) AS m\nFROM qoe_ingest\nWHERE kind = 'k'\n\
             GROUP BY window_start, region, code;\n"
            ),
            "{out}"
        );
        assert_eq!(out.matches("CREATE MATERIALIZED VIEW").count(), 2);
    }

    #[test]
    fn lines_that_are_not_generate_lines_stay_as_they_are() {
        let text = "-- a comment\n-- qoe:min-version 19.6\nSELECT 1;\n";
        assert_eq!(expand(text, WINDOW_METRICS).unwrap(), text);
    }
}
