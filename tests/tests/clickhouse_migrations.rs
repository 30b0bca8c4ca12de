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
