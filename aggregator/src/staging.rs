//! The rows of `qoe_staging` and their encoding: the column list (fixed columns around the
//! metric columns of the catalogue) and ClickHouse's RowBinary format, which has no names, so
//! the values are written in exactly the order of [`COLUMNS`]. Pure: the writer sends the bytes.
//!
//! Metric columns come from [`qoe_schemas::metrics::WINDOW_COLUMNS`] in a loop, so a metric
//! added to the catalogue is staged and moved without touching this file.

use crate::context::Slice;
use qoe_schemas::metrics::{WindowMetrics, WINDOW_COLUMNS, WINDOW_COLUMN_COUNT};
use std::sync::LazyLock;

/// Which materialized view a staged row feeds.
#[repr(i8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Window = 1,
    Presence = 2,
    View = 3,
    Checkpoint = 4,
    /// Errors by code (migration 0008).
    ErrorCode = 5,
    /// A session with a logged request in a window (request mode, migration 0010).
    RequestSession = 6,
}

/// Columns before the metric columns.
const HEAD: [&str; 10] = [
    "batch_id",
    "staged_at",
    "kind",
    "window_start",
    "region",
    "cdn",
    "stream_type",
    "platform",
    "stream_id",
    "view_id",
];

/// Columns after the metric columns.
const TAIL: [&str; 21] = [
    "player",
    "protocol",
    "first_event_time",
    "last_event_time",
    "started",
    "startup_ms",
    "error_code",
    "error_time",
    "end_reason",
    "end_time",
    "topic",
    "partition",
    "from_offset",
    "next_offset",
    "state_offset",
    "max_event_time",
    "sessions",
    "snapshot_offset",
    "state",
    "fatal",
    "business",
];

/// Every column of `qoe_staging` (and of `qoe_ingest`) that the pipeline writes, in the
/// order [`StagingRow::encode`] writes them.
pub static COLUMNS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    HEAD.iter()
        .chain(WINDOW_COLUMNS.iter())
        .chain(TAIL.iter())
        .copied()
        .collect()
});

/// The column list for SQL: `a, b, c`.
pub fn column_list() -> &'static str {
    static LIST: LazyLock<String> = LazyLock::new(|| COLUMNS.join(", "));
    &LIST
}

/// One row of `qoe_staging`. Unset fields are stored as zero / empty.
#[derive(Debug, Clone)]
pub struct StagingRow<'a> {
    pub batch_id: u64,
    pub staged_at: u32,
    pub kind: Kind,
    pub window_start: u32,
    pub region: &'a str,
    pub cdn: &'a str,
    pub stream_type: &'a str,
    pub platform: &'a str,
    pub stream_id: &'a str,
    pub view_id: &'a str,
    /// The metric columns (a view row carries its per-view totals here).
    pub metrics: Option<&'a WindowMetrics>,
    pub player: &'a str,
    pub protocol: &'a str,
    pub first_event_time: u32,
    pub last_event_time: u32,
    pub started: u8,
    pub startup_ms: u32,
    pub error_code: &'a str,
    pub error_time: u64,
    pub end_reason: &'a str,
    pub end_time: u64,
    pub topic: &'a str,
    pub partition: u32,
    pub from_offset: u64,
    pub next_offset: u64,
    pub state_offset: u64,
    pub max_event_time: i64,
    /// Legacy column, written empty: the CMCD sessions travel in `state`.
    pub sessions: &'a str,
    /// `next_offset` of the latest checkpoint carrying a state snapshot (checkpoint rows).
    pub snapshot_offset: u64,
    /// The partition's state snapshot, or empty (checkpoint rows only).
    pub state: &'a str,
    /// Error-code rows: whether the errors were fatal, and business errors.
    pub fatal: u8,
    pub business: u8,
}

impl<'a> StagingRow<'a> {
    pub fn empty(batch_id: u64, staged_at: u32, kind: Kind) -> Self {
        StagingRow {
            batch_id,
            staged_at,
            kind,
            window_start: 0,
            region: "",
            cdn: "",
            stream_type: "",
            platform: "",
            stream_id: "",
            view_id: "",
            metrics: None,
            player: "",
            protocol: "",
            first_event_time: 0,
            last_event_time: 0,
            started: 0,
            startup_ms: 0,
            error_code: "",
            error_time: 0,
            end_reason: "",
            end_time: 0,
            topic: "",
            partition: 0,
            from_offset: 0,
            next_offset: 0,
            state_offset: 0,
            max_event_time: 0,
            sessions: "",
            snapshot_offset: 0,
            state: "",
            fatal: 0,
            business: 0,
        }
    }

    /// Sets the window and the slice's dimensions.
    pub fn at(mut self, window_start: i64, slice: &'a Slice) -> Self {
        self.window_start = secs(window_start);
        self.region = &slice.region;
        self.cdn = &slice.cdn;
        self.stream_type = &slice.stream_type;
        self.platform = &slice.platform;
        self.stream_id = &slice.stream_id;
        self
    }

    /// Appends the row in RowBinary, in the order of [`COLUMNS`].
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.batch_id.to_le_bytes());
        out.extend_from_slice(&self.staged_at.to_le_bytes());
        out.push(self.kind as i8 as u8);
        out.extend_from_slice(&self.window_start.to_le_bytes());
        for s in [
            self.region,
            self.cdn,
            self.stream_type,
            self.platform,
            self.stream_id,
            self.view_id,
        ] {
            string(out, s);
        }
        match self.metrics {
            Some(m) => {
                let values = m.values();
                debug_assert_eq!(values.len(), WINDOW_COLUMN_COUNT);
                for v in values {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            None => out.resize(out.len() + 8 * WINDOW_COLUMN_COUNT, 0),
        }
        string(out, self.player);
        string(out, self.protocol);
        out.extend_from_slice(&self.first_event_time.to_le_bytes());
        out.extend_from_slice(&self.last_event_time.to_le_bytes());
        out.push(self.started);
        out.extend_from_slice(&self.startup_ms.to_le_bytes());
        string(out, self.error_code);
        out.extend_from_slice(&self.error_time.to_le_bytes());
        string(out, self.end_reason);
        out.extend_from_slice(&self.end_time.to_le_bytes());
        string(out, self.topic);
        out.extend_from_slice(&self.partition.to_le_bytes());
        out.extend_from_slice(&self.from_offset.to_le_bytes());
        out.extend_from_slice(&self.next_offset.to_le_bytes());
        out.extend_from_slice(&self.state_offset.to_le_bytes());
        out.extend_from_slice(&self.max_event_time.to_le_bytes());
        string(out, self.sessions);
        out.extend_from_slice(&self.snapshot_offset.to_le_bytes());
        string(out, self.state);
        out.push(self.fatal);
        out.push(self.business);
    }
}

/// A RowBinary `String`: LEB128 length, then the bytes.
fn string(out: &mut Vec<u8>, s: &str) {
    let mut n = s.len() as u64;
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(s.as_bytes());
}

/// Milliseconds since the epoch to a `DateTime` (seconds), clamped to its range.
pub fn secs(ms: i64) -> u32 {
    (ms.div_euclid(1000)).clamp(0, i64::from(u32::MAX)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_cover_head_metrics_and_tail_once() {
        assert_eq!(COLUMNS.len(), HEAD.len() + WINDOW_COLUMN_COUNT + TAIL.len());
        let unique: std::collections::HashSet<_> = COLUMNS.iter().collect();
        assert_eq!(unique.len(), COLUMNS.len());
        assert!(column_list().starts_with("batch_id, staged_at, kind,"));
    }

    #[test]
    fn encodes_every_column_in_order() {
        let m = WindowMetrics {
            events: 1,
            seeks: 2,
            ..Default::default()
        };
        let mut r = StagingRow::empty(7, 100, Kind::Window);
        r.region = "eu-west";
        r.metrics = Some(&m);
        r.max_event_time = -1;
        let mut out = Vec::new();
        r.encode(&mut out);
        // batch_id, staged_at, kind, window_start, then region's length and bytes.
        assert_eq!(&out[..8], &7u64.to_le_bytes());
        assert_eq!(&out[8..12], &100u32.to_le_bytes());
        assert_eq!(out[12], 1);
        assert_eq!(&out[17..25], b"\x07eu-west");
        let metrics_at = 25 + 5; // five empty strings follow region
        let events = u64::from_le_bytes(out[metrics_at..metrics_at + 8].try_into().unwrap());
        assert_eq!(events, 1);
        let seeks_at = metrics_at + 8 * WINDOW_COLUMNS.iter().position(|c| *c == "seeks").unwrap();
        assert_eq!(
            u64::from_le_bytes(out[seeks_at..seeks_at + 8].try_into().unwrap()),
            2
        );
        // max_event_time, the empty legacy sessions, snapshot_offset, the empty state, then
        // fatal and business.
        assert_eq!(&out[out.len() - 2..], &[0, 0]);
        let tail = out.len() - 2 - 1 - 8 - 1;
        assert_eq!(&out[tail - 8..tail], &(-1i64).to_le_bytes());
        assert_eq!(out[tail], 0);
        assert_eq!(out[out.len() - 3], 0);
        // Fixed sizes: 8+4+1+4 + 6 strings + metrics + 2 strings + 4+4+1+4 + string + 8
        // + string + 8 + string + 4 + 8*3 + 8 + string + 8 + string.
        let expected = 17
            + (8 + 5)
            + 8 * WINDOW_COLUMN_COUNT
            + 2
            + 13
            + 1
            + 8
            + 1
            + 8
            + 1
            + 4
            + 24
            + 8
            + 1
            + 8
            + 1
            + 2;
        assert_eq!(out.len(), expected);
    }

    #[test]
    fn long_strings_get_multi_byte_lengths() {
        let mut out = Vec::new();
        string(&mut out, &"x".repeat(300));
        assert_eq!(&out[..2], &[0xac, 0x02]);
        assert_eq!(out.len(), 302);
    }
}
