//! The schema against the real ClickHouse server: migrations apply, re-apply as a no-op,
//! and rows go in and come out through the `clickhouse` crate in the mode chosen for the
//! server's version.

use clickhouse::Row;
use qoe_aggregator::migrate;
use qoe_aggregator::store::{Store, StoreConfig};
use qoe_schemas::migrations::MIGRATIONS;
use qoe_tests::{clickhouse_url, unique};
use serde::{Deserialize, Serialize};

fn config(database: &str) -> StoreConfig {
    StoreConfig {
        url: clickhouse_url(),
        database: database.to_owned(),
        user: String::new(),
        password: String::new(),
    }
}

#[derive(Debug, Row, Serialize, Deserialize, PartialEq)]
struct Checkpoint {
    topic: String,
    partition: u32,
    from_offset: u64,
    next_offset: u64,
    state_offset: u64,
    max_event_time: i64,
    batch_id: u64,
    written_at: u32,
}

#[tokio::test]
async fn migrations_are_idempotent_and_rows_round_trip() {
    let db = unique("qoe_test_migrate");
    let store = Store::connect(config(&db), true)
        .await
        .expect("ClickHouse reachable (start the stack: scripts/stack.sh start)");

    let first = migrate::run(&store).await.unwrap();
    assert_eq!(first.applied.len(), MIGRATIONS.len());
    assert!(first.already_applied.is_empty());

    let second = migrate::run(&store).await.unwrap();
    assert!(second.applied.is_empty(), "second run must be a no-op");
    assert_eq!(second.already_applied.len(), MIGRATIONS.len());

    let tables: Vec<String> = store
        .client
        .query("SELECT name FROM system.tables WHERE database = ? ORDER BY name")
        .bind(&db)
        .fetch_all()
        .await
        .unwrap();
    for expected in [
        "qoe_active_views_10s",
        "qoe_checkpoints",
        "qoe_ingest",
        "qoe_staging",
        "qoe_view_partials",
        "qoe_views",
        "qoe_window_10s",
        "qoe_window_1h",
        "qoe_window_1m",
        "schema_migrations",
    ] {
        assert!(
            tables.iter().any(|t| t == expected),
            "missing table {expected}: {tables:?}"
        );
    }
    let ledger: u64 = store
        .client
        .query("SELECT count() FROM schema_migrations")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        ledger as usize,
        MIGRATIONS.len(),
        "each version recorded once"
    );

    let rows = vec![
        Checkpoint {
            topic: "qoe.events".into(),
            partition: 3,
            from_offset: 10,
            next_offset: 42,
            state_offset: 7,
            max_event_time: 1_763_721_600_123,
            batch_id: u64::MAX - 1,
            written_at: 1_763_721_600,
        },
        Checkpoint {
            topic: "qoe.events".into(),
            partition: 0,
            from_offset: 0,
            next_offset: 1,
            state_offset: 0,
            max_event_time: -5,
            batch_id: 1,
            written_at: 1_763_721_601,
        },
    ];
    let mut insert = store
        .client
        .insert::<Checkpoint>("qoe_checkpoints")
        .await
        .unwrap();
    for r in &rows {
        insert.write(r).await.unwrap();
    }
    insert.end().await.unwrap();
    let back: Vec<Checkpoint> = store
        .client
        .query("SELECT ?fields FROM qoe_checkpoints ORDER BY partition DESC")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(back, rows);

    store
        .client
        .query(&format!("DROP DATABASE {db}"))
        .execute()
        .await
        .unwrap();
}

#[tokio::test]
async fn bad_database_names_are_refused_before_any_query() {
    let err = Store::connect(config("x; DROP TABLE y"), true).await;
    assert!(err.is_err());
}

/// `(name, type)` of every column of a table, in table order (`system.columns` lists a
/// table's columns in order; 18.16 has no `position` column to sort by).
async fn columns(database: &str, table: &str) -> Vec<(String, String)> {
    qoe_tests::clickhouse_query(
        database,
        &format!(
            "SELECT name, type FROM system.columns WHERE database = '{database}' \
             AND table = '{table}'"
        ),
    )
    .await
    .expect("system.columns")
    .into_iter()
    .map(|r| (r[0].clone(), r[1].clone()))
    .collect()
}

/// The migrated schema holds exactly the metric catalogue: every window table has the
/// catalogue's columns (in order, with their types), staging and the fan-out table have the
/// writer's columns in the writer's order, every materialized view carries every metric to
/// its table, and the per-view summary has the per-view metrics. A migration that forgets a
/// column, or a view that forgets to carry one, fails here.
#[tokio::test]
async fn schema_matches_the_metric_catalogue() {
    use qoe_schemas::metrics::{self, WINDOW_COLUMNS, WINDOW_METRICS, WINDOW_TABLES};
    let db = unique("qoe_test_catalogue");
    let store = Store::connect(config(&db), true)
        .await
        .expect("ClickHouse reachable");
    migrate::run(&store).await.unwrap();

    for (table, _) in WINDOW_TABLES {
        let cols = columns(&db, table).await;
        let keys: Vec<&str> = cols.iter().take(6).map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            keys,
            [
                "window_start",
                "region",
                "cdn",
                "stream_type",
                "platform",
                "stream_id"
            ]
        );
        let metric_cols: Vec<(String, String)> = cols[6..].to_vec();
        let want: Vec<(String, String)> = WINDOW_METRICS
            .iter()
            .flat_map(|m| {
                m.columns()
                    .into_iter()
                    .map(|c| (c.to_owned(), m.clickhouse_type.to_owned()))
            })
            .collect();
        assert_eq!(
            metric_cols, want,
            "{table}: metric columns differ from the catalogue"
        );
    }
    let staging = columns(&db, "qoe_staging").await;
    let names: Vec<&str> = staging.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        qoe_aggregator::staging::COLUMNS.as_slice(),
        "qoe_staging's columns differ from what the writer stages"
    );
    assert_eq!(
        columns(&db, "qoe_ingest").await,
        staging,
        "qoe_ingest must mirror qoe_staging"
    );
    let active = columns(&db, metrics::ACTIVE_VIEWS_TABLE).await;
    assert_eq!(
        active.last().map(|(_, t)| t.as_str()),
        Some(metrics::ACTIVE_VIEWS.clickhouse_type)
    );

    // One window row through the fan-out with a distinct value in every metric column: each
    // window table must hold exactly those values.
    let values: Vec<String> = (1..=WINDOW_COLUMNS.len())
        .map(|i| (i * 1000 + 7).to_string())
        .collect();
    qoe_tests::clickhouse_query(
        &db,
        &format!(
            "INSERT INTO qoe_ingest (kind, window_start, region, {}) SELECT 'window', \
             toDateTime(1763721600, 'UTC'), 'eu-west', {}",
            WINDOW_COLUMNS.join(", "),
            values.join(", ")
        ),
    )
    .await
    .unwrap();
    for (table, _) in WINDOW_TABLES {
        let sums: Vec<String> = WINDOW_COLUMNS.iter().map(|c| format!("sum({c})")).collect();
        let got =
            qoe_tests::clickhouse_query(&db, &format!("SELECT {} FROM {table}", sums.join(", ")))
                .await
                .unwrap();
        let diffs: Vec<String> = WINDOW_COLUMNS
            .iter()
            .zip(&values)
            .zip(&got[0])
            .filter(|((_, want), have)| want != have)
            .map(|((c, want), have)| format!("{c}: expected {want}, got {have}"))
            .collect();
        assert!(
            diffs.is_empty(),
            "{table}: its materialized view drops metrics: {diffs:?}"
        );
    }

    let views: Vec<String> = columns(&db, "qoe_views")
        .await
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    for m in WINDOW_METRICS.iter().filter(|m| m.per_view) {
        assert!(
            views.iter().any(|v| v == m.name),
            "qoe_views lacks per-view metric {}",
            m.name
        );
    }

    // A migration interrupted half-way is re-run from its start: columns it already added are
    // skipped, the rest still applies.
    let last = MIGRATIONS.last().unwrap();
    qoe_tests::clickhouse_query(
        &db,
        &format!(
            "ALTER TABLE schema_migrations DELETE WHERE version = {}",
            last.version
        ),
    )
    .await
    .unwrap();
    for _ in 0..100 {
        let n = qoe_tests::clickhouse_query(&db, "SELECT count() FROM schema_migrations")
            .await
            .unwrap();
        if n[0][0] == (MIGRATIONS.len() - 1).to_string() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let rerun = migrate::run(&store)
        .await
        .expect("re-running a migration succeeds");
    assert_eq!(rerun.applied, vec![last.name.to_owned()]);
    assert_eq!(columns(&db, "qoe_staging").await, staging);

    store
        .client
        .query(&format!("DROP DATABASE {db}"))
        .execute()
        .await
        .unwrap();
}

/// Aggregators starting at the same moment on a fresh database all apply the migrations
/// without failing: a column another migrator added in between is not an error.
#[tokio::test]
async fn concurrent_migrators_all_succeed() {
    let db = unique("qoe_test_concurrent_migrate");
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(
            Store::connect(config(&db), true)
                .await
                .expect("ClickHouse reachable"),
        );
    }
    // Polled together, so their statements interleave.
    let results = futures_util::future::join_all(stores.iter().map(migrate::run)).await;
    for (i, r) in results.iter().enumerate() {
        assert!(r.is_ok(), "migrator {i} failed: {:?}", r.as_ref().err());
    }
    let staging = columns(&db, "qoe_staging").await;
    let names: Vec<&str> = staging.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, qoe_aggregator::staging::COLUMNS.as_slice());
    stores[0]
        .client
        .query(&format!("DROP DATABASE {db}"))
        .execute()
        .await
        .unwrap();
}

/// Staged batches are needed only while their write runs: hours of `qoe_staging` older than
/// the retention are dropped, recent ones are kept.
#[tokio::test]
async fn old_staged_batches_are_dropped_and_recent_ones_kept() {
    let db = unique("qoe_test_staging");
    let store = Store::connect(config(&db), true)
        .await
        .expect("ClickHouse reachable (start the stack: scripts/stack.sh start)");
    migrate::run(&store).await.unwrap();
    for (batch_id, age_secs) in [(1, 3 * 3600), (2, 0)] {
        store
            .client
            .query(&format!(
                "INSERT INTO qoe_staging (batch_id, staged_at) \
                 SELECT {batch_id}, toDateTime(now() - {age_secs}, 'UTC')"
            ))
            .execute()
            .await
            .unwrap();
    }
    let writer = qoe_aggregator::writer::Writer::new(store.clone(), "t").unwrap();
    let dropped = writer
        .drop_old_staging(std::time::Duration::from_secs(2 * 3600))
        .await
        .unwrap();
    assert_eq!(dropped, 1, "the hour of the 3-hour-old batch");
    let left: Vec<u64> = store
        .client
        .query("SELECT batch_id FROM qoe_staging ORDER BY batch_id")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(left, vec![2]);
    // Nothing more to drop: a second pass is a no-op.
    assert_eq!(
        writer
            .drop_old_staging(std::time::Duration::from_secs(2 * 3600))
            .await
            .unwrap(),
        0
    );
    store
        .client
        .query(&format!("DROP DATABASE {db}"))
        .execute()
        .await
        .unwrap();
}

/// A metric added to the catalogue (here a sum and a histogram, in a copy of it): the migration
/// generated for it (`qoe_schemas::window_sql`) applies on top of the released ones, and a
/// staged batch's values of the new columns reach the 10 s table as staged and add up in the
/// 1 m and 1 h tables.
#[tokio::test]
async fn a_metric_added_to_the_catalogue_migrates_and_rolls_up() {
    use qoe_schemas::metrics::{Bucket, Input, Metric, Rollup, WINDOW_COLUMNS, WINDOW_METRICS};
    use qoe_schemas::window_sql::{add_columns_statements, window_columns};
    const BUCKETS: &[Bucket] = &[
        Bucket {
            column: "probe_le_10",
            le: Some(10),
        },
        Bucket {
            column: "probe_le_inf",
            le: None,
        },
    ];
    let mut catalogue = WINDOW_METRICS.to_vec();
    for (name, rollup) in [
        ("probe_total", Rollup::Sum),
        ("probe", Rollup::Histogram(BUCKETS)),
    ] {
        catalogue.push(Metric {
            name,
            input: Input::Events,
            clickhouse_type: "UInt64",
            rollup,
            per_view: false,
            unit: "probes",
            doc: "A metric added by a test.",
        });
    }
    let db = unique("qoe_test_new_metric");
    let store = Store::connect(config(&db), true)
        .await
        .expect("ClickHouse reachable");
    migrate::run(&store).await.unwrap();
    let last = WINDOW_COLUMNS[WINDOW_COLUMNS.len() - 1];
    for statement in add_columns_statements(&window_columns(&catalogue), last).unwrap() {
        store
            .client
            .query(&statement)
            .execute()
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    // Two base windows of one minute and one slice, staged as one batch and moved.
    store
        .client
        .query(
            "INSERT INTO qoe_staging (batch_id, staged_at, kind, window_start, region, events, \
             probe_total, probe_le_10, probe_le_inf) VALUES \
             (7, now(), 'window', toDateTime('2026-12-06 10:00:10', 'UTC'), 'eu', 3, 5, 1, 2), \
             (7, now(), 'window', toDateTime('2026-12-06 10:00:40', 'UTC'), 'eu', 4, 6, 0, 4)",
        )
        .execute()
        .await
        .unwrap();
    store
        .client
        .query("INSERT INTO qoe_ingest SELECT * FROM qoe_staging WHERE batch_id = 7")
        .execute()
        .await
        .unwrap();
    for (table, want) in [
        ("qoe_window_10s", vec!["3 5 1 2", "4 6 0 4"]),
        ("qoe_window_1m", vec!["7 11 1 6"]),
        ("qoe_window_1h", vec!["7 11 1 6"]),
    ] {
        let rows = qoe_tests::clickhouse_query(
            &db,
            &format!(
                "SELECT sum(events), sum(probe_total), sum(probe_le_10), sum(probe_le_inf) \
                 FROM {table} WHERE region = 'eu' GROUP BY window_start ORDER BY window_start"
            ),
        )
        .await
        .unwrap();
        let got: Vec<String> = rows.iter().map(|r| r.join(" ")).collect();
        assert_eq!(got, want, "{table}");
    }
}
