//! The aggregator's rows against the oracle, without servers: the pure core that the consumer
//! drives (`PartitionState`: windows, lateness, duplicates, view timeouts, the per-event rule
//! of every catalogue metric) fed a generated event set with late, duplicate and lost events,
//! partition by partition, gives per window and slice exactly the oracle's base-grain rows
//! (`qoe_tests::truth::expected`, built on the simulator's independent rules), for every
//! column of the catalogue. The end-to-end tests show the same through Kafka and ClickHouse;
//! this one runs in a second, so a metric's rule can be checked the moment it is written
//! (`tests/add-metric/run.sh` does).

use qoe_aggregator::window::{PartitionState, WindowConfig};
use qoe_schemas::metrics::WINDOW_COLUMNS;
use qoe_schemas::{EventRef, QoeEvent};
use qoe_tests::truth::{expected, generate, RowKey, METRIC_COLUMNS};
use std::collections::BTreeMap;

const T0: i64 = 1_763_721_600_000;
const PARTITIONS: u64 = 4;

/// A stable partition per view, as the message key (the view id) gives on Kafka.
fn partition_of(view_id: &str) -> i32 {
    let h = view_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (h % PARTITIONS) as i32
}

#[test]
fn the_aggregators_rows_equal_the_oracles_for_every_catalogue_column() {
    assert_eq!(
        METRIC_COLUMNS, WINDOW_COLUMNS,
        "the oracle's columns are the catalogue's"
    );
    let mut ordered: BTreeMap<i32, Vec<QoeEvent>> = BTreeMap::new();
    for e in generate(11, 600, T0) {
        ordered.entry(partition_of(&e.view_id)).or_default().push(e);
    }
    assert_eq!(ordered.len() as u64, PARTITIONS);
    let (want, _) = expected(&ordered);

    let mut got: BTreeMap<RowKey, Vec<u64>> = BTreeMap::new();
    for events in ordered.values() {
        let mut state = PartitionState::new(WindowConfig::default(), None);
        for (offset, e) in events.iter().enumerate() {
            let bytes = e.encode();
            let event = EventRef::decode(&bytes).expect("an event decodes");
            state.apply(offset as i64, &event);
            // The consumer writes a batch now and then; rows of one window and slice written
            // in several batches add up in ClickHouse, as they do here.
            if offset % 97 == 0 {
                add_batch(&mut got, &mut state);
            }
        }
        add_batch(&mut got, &mut state);
    }

    let mut totals = vec![0u64; WINDOW_COLUMNS.len()];
    for (key, row) in &want {
        let values = got
            .remove(key)
            .unwrap_or_else(|| vec![0; WINDOW_COLUMNS.len()]);
        for (i, column) in WINDOW_COLUMNS.iter().enumerate() {
            assert_eq!(
                values[i],
                row.get(column),
                "{column} at {key:?}: the aggregator's row {values:?}, the oracle's {row:?}"
            );
            totals[i] += values[i];
        }
    }
    for (key, values) in &got {
        assert!(
            values.iter().all(|v| *v == 0),
            "a row the oracle does not have: {key:?} {values:?}"
        );
    }
    // Columns that no event in this set can move (CMCD request reports' and CDN logs'
    // metrics; lateness is in).
    for (i, column) in WINDOW_COLUMNS.iter().enumerate() {
        let from_requests = qoe_schemas::metrics::metric_of_column(column)
            .is_some_and(|m| m.input != qoe_schemas::metrics::Input::Events);
        if !from_requests {
            assert!(totals[i] > 0, "{column}: the event set never moves it");
        }
    }
}

fn add_batch(got: &mut BTreeMap<RowKey, Vec<u64>>, state: &mut PartitionState) {
    let (batch, _) = state.take_batch(false);
    for (window_start, slice, metrics) in batch.window_rows() {
        let key: RowKey = (
            (window_start / 1000) as u32,
            slice.region.clone(),
            slice.cdn.clone(),
            slice.stream_type.clone(),
            slice.platform.clone(),
            slice.stream_id.clone(),
        );
        let values = metrics.values();
        let row = got.entry(key).or_insert_with(|| vec![0; values.len()]);
        for (a, b) in row.iter_mut().zip(values) {
            *a += b;
        }
    }
}
