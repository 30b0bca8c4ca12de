//! Ground truth: the per-window, per-slice metrics that the acknowledged events must produce,
//! computed by a plain reading of the spec's definitions (section 4), independently of the
//! aggregator's code.
//!
//! The simulator keeps every event within the aggregator's allowed lateness of the newest
//! event it has sent, so no acknowledged event is late and the truth does not depend on the
//! order events take through Kafka partitions: the first copy of `(view_id, seq)` counts, every
//! further acknowledged copy is a duplicate, in the window and slice of the copy's own time (a
//! late re-send's time is moved by its delay), for the whole life of the view.

use qoe_schemas::errors::BusinessCodes;
use qoe_schemas::metrics::{column_index, STARTUP_BUCKETS, WINDOW_COLUMNS, WINDOW_COLUMN_COUNT};
use qoe_schemas::{EndReason, EventType, QoeEvent};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

mod requests;

/// The metric columns of a window row: the catalogue's, in its order.
pub const METRIC_COLUMNS: [&str; WINDOW_COLUMN_COUNT] = WINDOW_COLUMNS;

/// The metric values of one row, one per catalogue column, read and written by column name.
#[derive(Clone, PartialEq, Eq)]
pub struct Metrics([u64; WINDOW_COLUMN_COUNT]);

impl Default for Metrics {
    fn default() -> Self {
        Metrics([0; WINDOW_COLUMN_COUNT])
    }
}

impl Metrics {
    /// Values in the order of [`METRIC_COLUMNS`] (as stored in a truth file or read back).
    pub fn from_values(values: &[u64]) -> Self {
        let mut m = Metrics::default();
        assert_eq!(
            values.len(),
            WINDOW_COLUMN_COUNT,
            "one value per metric column"
        );
        m.0.copy_from_slice(values);
        m
    }

    pub fn values(&self) -> &[u64] {
        &self.0
    }

    fn index(column: &str) -> usize {
        column_index(column)
            .unwrap_or_else(|| panic!("the metric catalogue has no column {column:?}"))
    }

    /// The value of a catalogue column; panics on a name the catalogue does not have.
    pub fn get(&self, column: &str) -> u64 {
        self.0[Self::index(column)]
    }

    /// Adds to a catalogue column; panics on a name the catalogue does not have.
    pub fn bump(&mut self, column: &str, by: u64) {
        self.0[Self::index(column)] += by;
    }

    /// Adds another row, column by column.
    pub fn add(&mut self, other: &Metrics) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a += b;
        }
    }
}

impl std::fmt::Debug for Metrics {
    /// Only the non-zero columns, by name: readable in a test's diff.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(
                METRIC_COLUMNS
                    .iter()
                    .zip(self.0.iter())
                    .filter(|(_, v)| **v != 0),
            )
            .finish()
    }
}

/// Key of a base-grain row: (window_start in seconds, region, cdn, stream_type, platform,
/// stream_id).
pub type RowKey = (u32, String, String, String, String, String);

/// Adds one counted event (neither late nor a duplicate) to a row: the spec's definition of
/// each metric, written here independently of the aggregator's rules.
pub fn add_event(row: &mut Metrics, e: &QoeEvent) {
    add_classified(row, e, false)
}

/// [`add_event`] for an event whose code may be a business error: such an error is an error
/// but neither a start nor a playback failure (SPEC section 4, errors by code).
pub fn add_classified(row: &mut Metrics, e: &QoeEvent, business: bool) {
    row.bump("events", 1);
    match e.kind {
        EventType::ViewStart => row.bump("attempts", 1),
        EventType::FirstFrame => {
            row.bump("plays", 1);
            match e.startup_ms {
                Some(s) => {
                    row.bump("startup_ms_sum", u64::from(s));
                    let bucket = STARTUP_BUCKETS
                        .iter()
                        .find(|b| b.le.is_none_or(|le| s <= le))
                        .expect("the last startup bucket is unbounded");
                    row.bump(bucket.column, 1);
                }
                None => row.bump("startup_unknown", 1),
            }
        }
        EventType::Error => {
            row.bump("errors", 1);
            match (e.fatal, e.started) {
                (Some(true), Some(false)) if !business => row.bump("vsf", 1),
                (Some(true), Some(true)) if !business => row.bump("vpf", 1),
                _ => {}
            }
        }
        EventType::ViewEnd if e.started == Some(false) && e.reason != Some(EndReason::Error) => {
            row.bump("ebvs", 1)
        }
        EventType::StallStart => row.bump("stalls", 1),
        EventType::Seek => row.bump("seeks", 1),
        EventType::BitrateChange => match (e.bitrate_kbps, e.prev_bitrate_kbps) {
            (Some(b), Some(p)) if b > p => row.bump("upswitches", 1),
            (Some(b), Some(p)) if b < p => row.bump("downswitches", 1),
            _ => {}
        },
        _ => {}
    }
    row.bump("playing_ms", u64::from(e.playing_ms.unwrap_or(0)));
    row.bump("stall_ms", u64::from(e.stall_ms.unwrap_or(0)));
    if let (Some(b), Some(p)) = (e.bitrate_kbps, e.playing_ms) {
        row.bump("bitrate_kbps_ms", u64::from(b) * u64::from(p));
    }
    if let Some(l) = e.latency_ms {
        row.bump("latency_ms_sum", u64::from(l));
        row.bump("latency_samples", 1);
    }
    row.bump("dropped_frames", u64::from(e.dropped_frames.unwrap_or(0)));
}

/// The row key of an event at the given window length, with every dimension grouped.
pub fn row_key(e: &QoeEvent, window_ms: i64) -> RowKey {
    let window = e.event_time.div_euclid(window_ms) * window_ms;
    (
        (window / 1000) as u32,
        e.region.clone(),
        e.cdn.clone(),
        e.stream_type.as_str().to_owned(),
        e.platform.clone(),
        e.stream_id.clone(),
    )
}

/// Key of an errors-by-code row: (minute in seconds, region, cdn, stream_type, platform,
/// player, code, fatal, started, business).
pub type ErrorCodeKey = (
    u32,
    String,
    String,
    String,
    String,
    String,
    String,
    bool,
    bool,
    bool,
);

/// One expected row of `qoe_error_codes_1m`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCodeRow {
    pub minute: u32,
    pub region: String,
    pub cdn: String,
    pub stream_type: String,
    pub platform: String,
    pub player: String,
    pub code: String,
    pub fatal: bool,
    pub started: bool,
    pub business: bool,
    pub errors: u64,
    /// Attempts of the slice and player (on the row of the empty code, flags false).
    pub attempts: u64,
}

impl ErrorCodeRow {
    pub fn key(&self) -> ErrorCodeKey {
        (
            self.minute,
            self.region.clone(),
            self.cdn.clone(),
            self.stream_type.clone(),
            self.platform.clone(),
            self.player.clone(),
            self.code.clone(),
            self.fatal,
            self.started,
            self.business,
        )
    }
}

/// Accumulates acknowledged events.
pub struct Truth {
    window_ms: i64,
    business: BusinessCodes,
    /// Per key: errors, attempts.
    error_codes: BTreeMap<ErrorCodeKey, (u64, u64)>,
    rows: BTreeMap<RowKey, (Metrics, HashSet<String>)>,
    seen: HashSet<(String, u32)>,
    /// Request ids of native players' logged requests counted so far.
    seen_requests: HashSet<String>,
    views: HashSet<String>,
    /// Per view: the time of its latest counted event and whether a `view_end` counted.
    lives: BTreeMap<String, (i64, bool)>,
    /// Per view: the row key of its latest counted event (at no particular window), how
    /// many sequence numbers counted and the highest (`events_lost`).
    sequences: BTreeMap<String, (RowKey, u64, u32)>,
}

impl Truth {
    pub fn new(window_ms: i64) -> Self {
        Truth {
            window_ms,
            business: BusinessCodes::default(),
            error_codes: BTreeMap::new(),
            rows: BTreeMap::new(),
            seen: HashSet::new(),
            seen_requests: HashSet::new(),
            views: HashSet::new(),
            lives: BTreeMap::new(),
            sequences: BTreeMap::new(),
        }
    }

    /// Counts these codes as business errors (the aggregator's --business-error-codes).
    pub fn with_business(mut self, codes: BusinessCodes) -> Self {
        self.business = codes;
        self
    }

    /// Records one acknowledged copy of an event.
    pub fn record(&mut self, e: &QoeEvent) {
        let (row, views) = self.rows.entry(row_key(e, self.window_ms)).or_default();
        if !self.seen.insert((e.view_id.clone(), e.seq)) {
            row.bump("duplicate_events", 1);
            return;
        }
        let business = matches!(e.kind, EventType::Error | EventType::ViewEnd)
            && self.business.contains(e.code.as_deref());
        add_classified(row, e, business);
        if matches!(e.kind, EventType::Error | EventType::ViewStart) {
            let error = e.kind == EventType::Error;
            let key = (
                (e.event_time.div_euclid(60_000) * 60) as u32,
                e.region.clone(),
                e.cdn.clone(),
                e.stream_type.as_str().to_owned(),
                e.platform.clone(),
                e.player.clone(),
                e.code.clone().filter(|_| error).unwrap_or_default(),
                error && e.fatal == Some(true),
                error && e.started == Some(true),
                business,
            );
            let counts = self.error_codes.entry(key).or_default();
            if error {
                counts.0 += 1;
            } else {
                counts.1 += 1;
            }
        }
        views.insert(e.view_id.clone());
        self.views.insert(e.view_id.clone());
        let life = self
            .lives
            .entry(e.view_id.clone())
            .or_insert((e.event_time, false));
        life.0 = life.0.max(e.event_time);
        life.1 |= e.kind == EventType::ViewEnd;
        let seqs = self
            .sequences
            .entry(e.view_id.clone())
            .or_insert_with(|| (row_key(e, self.window_ms), 0, 0));
        seqs.0 = row_key(e, self.window_ms);
        seqs.1 += 1;
        seqs.2 = seqs.2.max(e.seq);
    }

    /// Views without a counted `view_end`, with the time of their latest counted event: the
    /// aggregator ends each with reason `timeout` once its watermark is the view timeout past
    /// that time (views still playing when the run stops are among them).
    pub fn unended_views(&self) -> Vec<(String, i64)> {
        self.lives
            .iter()
            .filter(|(_, (_, ended))| !ended)
            .map(|(id, (last, _))| (id.clone(), *last))
            .collect()
    }

    /// Distinct views with at least one acknowledged event.
    pub fn views(&self) -> usize {
        self.views.len()
    }

    /// The expected rows, for output. `events_lost`: each view's sequence numbers below its
    /// highest that never counted, in the window of its last event and the slice of its
    /// latest. The aggregator counts them when it forgets the view (its timeout after its last
    /// event); the simulator's exact runs lose nothing, so views still held when a run ends
    /// make no difference there.
    pub fn rows(&self) -> Vec<TruthRow> {
        let mut rows = self.rows.clone();
        for (view, (latest, counted, max_seq)) in &self.sequences {
            let lost = (u64::from(*max_seq) + 1).saturating_sub(*counted);
            if lost == 0 {
                continue;
            }
            let last = self.lives.get(view).map_or(0, |l| l.0);
            let window = last.div_euclid(self.window_ms) * self.window_ms;
            let key = (
                (window / 1000) as u32,
                latest.1.clone(),
                latest.2.clone(),
                latest.3.clone(),
                latest.4.clone(),
                latest.5.clone(),
            );
            rows.entry(key).or_default().0.bump("events_lost", lost);
        }
        rows.iter()
            .map(|(k, (m, views))| TruthRow {
                window_start: k.0,
                region: k.1.clone(),
                cdn: k.2.clone(),
                stream_type: k.3.clone(),
                platform: k.4.clone(),
                stream_id: k.5.clone(),
                metrics: m.values().to_vec(),
                active_views: views.len() as u64,
            })
            .collect()
    }

    /// The expected rows of errors by code, per minute.
    pub fn error_code_rows(&self) -> Vec<ErrorCodeRow> {
        self.error_codes
            .iter()
            .map(|(k, &(errors, attempts))| ErrorCodeRow {
                minute: k.0,
                region: k.1.clone(),
                cdn: k.2.clone(),
                stream_type: k.3.clone(),
                platform: k.4.clone(),
                player: k.5.clone(),
                code: k.6.clone(),
                fatal: k.7,
                started: k.8,
                business: k.9,
                errors,
                attempts,
            })
            .collect()
    }

    /// Totals per region x CDN over the whole run, for the summary.
    pub fn by_region_cdn(&self) -> BTreeMap<(String, String), Metrics> {
        let mut out: BTreeMap<(String, String), Metrics> = BTreeMap::new();
        for (k, (m, _)) in &self.rows {
            out.entry((k.1.clone(), k.2.clone())).or_default().add(m);
        }
        out
    }
}

/// One expected base-grain row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TruthRow {
    pub window_start: u32,
    pub region: String,
    pub cdn: String,
    pub stream_type: String,
    pub platform: String,
    pub stream_id: String,
    /// In the order of [`METRIC_COLUMNS`].
    pub metrics: Vec<u64>,
    pub active_views: u64,
}

impl TruthRow {
    pub fn key(&self) -> RowKey {
        (
            self.window_start,
            self.region.clone(),
            self.cdn.clone(),
            self.stream_type.clone(),
            self.platform.clone(),
            self.stream_id.clone(),
        )
    }
}

/// What `--truth-out` writes: the expected rows and how trustworthy they are.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TruthFile {
    pub window_secs: u32,
    pub columns: Vec<String>,
    pub rows: Vec<TruthRow>,
    /// Distinct views with at least one acknowledged event.
    pub views: u64,
    /// Acknowledged event copies (duplicates included).
    pub acknowledged_events: u64,
    /// Beacons re-sent late with their original `sent_at` (moved into later windows).
    #[serde(default)]
    pub late_copies: u64,
    /// Views without a counted `view_end`, with the time (ms) of their latest counted event.
    #[serde(default)]
    pub unended_views: Vec<(String, i64)>,
    /// Acknowledged copies of native players' logged requests (duplicates included).
    #[serde(default)]
    pub acknowledged_requests: u64,
    /// Events (and logged requests) the collector never acknowledged (given up after
    /// retries, or refused).
    pub unacknowledged_events: u64,
    /// Errors by code per minute (`qoe_error_codes_1m`).
    #[serde(default)]
    pub error_codes: Vec<ErrorCodeRow>,
    /// Events (and logged requests) sent in attempts whose outcome is unknown (a 503 or a
    /// broken connection): they may be in Kafka without an acknowledgement. The truth is exact
    /// only when this is 0.
    pub uncertain_events: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(view: &str, seq: u32, kind: EventType, t: i64) -> QoeEvent {
        QoeEvent::blank(view, seq, kind, t)
    }

    #[test]
    fn metric_definitions() {
        let mut row = Metrics::default();
        let mut ff = ev("v", 1, EventType::FirstFrame, 0);
        ff.startup_ms = Some(250);
        ff.bitrate_kbps = Some(2500);
        add_event(&mut row, &ff);
        let mut ff2 = ff.clone();
        ff2.startup_ms = Some(15_001);
        add_event(&mut row, &ff2);
        let mut vsf = ev("v", 2, EventType::Error, 0);
        (vsf.fatal, vsf.started) = (Some(true), Some(false));
        add_event(&mut row, &vsf);
        let mut vpf = ev("v", 3, EventType::Error, 0);
        (vpf.fatal, vpf.started) = (Some(true), Some(true));
        add_event(&mut row, &vpf);
        let mut soft = ev("v", 4, EventType::Error, 0);
        (soft.fatal, soft.started) = (Some(false), Some(false));
        add_event(&mut row, &soft);
        let mut ebvs = ev("v", 5, EventType::ViewEnd, 0);
        (ebvs.started, ebvs.reason) = (Some(false), Some(EndReason::Exit));
        add_event(&mut row, &ebvs);
        let mut failed_end = ebvs.clone();
        failed_end.reason = Some(EndReason::Error);
        add_event(&mut row, &failed_end);
        let mut hb = ev("v", 6, EventType::Heartbeat, 0);
        (hb.playing_ms, hb.stall_ms, hb.bitrate_kbps) = (Some(9000), Some(1000), Some(800));
        (hb.latency_ms, hb.dropped_frames) = (Some(4000), Some(3));
        add_event(&mut row, &hb);
        let mut up = ev("v", 7, EventType::BitrateChange, 0);
        (up.bitrate_kbps, up.prev_bitrate_kbps) = (Some(1500), Some(800));
        add_event(&mut row, &up);
        let mut down = up.clone();
        (down.bitrate_kbps, down.prev_bitrate_kbps) = (Some(400), Some(800));
        add_event(&mut row, &down);
        add_event(&mut row, &ev("v", 8, EventType::StallStart, 0));

        add_event(&mut row, &ev("v", 9, EventType::Seek, 0));
        let get = |name: &str| row.get(name);
        assert_eq!(get("events"), 12);
        assert_eq!(get("seeks"), 1);
        assert_eq!(get("plays"), 2);
        assert_eq!(get("startup_ms_sum"), 15_251);
        assert_eq!(get("startup_le_250"), 1, "bounds are inclusive");
        assert_eq!(get("startup_le_inf"), 1);
        assert_eq!((get("vsf"), get("vpf"), get("errors")), (1, 1, 3));
        assert_eq!(get("ebvs"), 1, "an end after a failed start is not an EBVS");
        assert_eq!((get("playing_ms"), get("stall_ms")), (9000, 1000));
        assert_eq!(get("bitrate_kbps_ms"), 800 * 9000);
        assert_eq!((get("upswitches"), get("downswitches")), (1, 1));
        assert_eq!((get("latency_ms_sum"), get("latency_samples")), (4000, 1));
        assert_eq!((get("dropped_frames"), get("stalls")), (3, 1));
    }

    /// Every catalogue column has a rule here: one event of each kind, with every field, and
    /// a repeated copy, leave no column at zero. `late_events` is the exception: the simulator
    /// never sends late events (see the module doc), so this oracle has no lateness rule; the
    /// tests' oracle, which replays lateness per partition, covers it.
    #[test]
    fn every_catalogue_column_has_a_rule() {
        let mut t = Truth::new(10_000);
        for (i, kind) in EventType::ALL.into_iter().enumerate() {
            for (fatal, started, startup, prev) in [
                (true, false, 100, 900),
                (true, true, 60_000, 100),
                (false, false, 3000, 300),
            ] {
                let mut e = ev(&format!("v{i}{started}{startup}"), i as u32, kind, 0);
                (e.fatal, e.started, e.startup_ms) = (Some(fatal), Some(started), Some(startup));
                if startup == 3000 {
                    e.startup_ms = None; // a play whose startup is unknown
                }
                (e.playing_ms, e.stall_ms, e.bitrate_kbps) = (Some(1), Some(1), Some(300));
                (e.prev_bitrate_kbps, e.latency_ms, e.dropped_frames) =
                    (Some(prev), Some(1), Some(1));
                e.reason = Some(EndReason::Exit);
                t.record(&e);
                t.record(&e);
            }
        }
        let rows = t.rows();
        let mut total = Metrics::default();
        for r in &rows {
            total.add(&Metrics::from_values(&r.metrics));
        }
        for (i, column) in METRIC_COLUMNS.iter().enumerate() {
            let is_histogram_bucket = column.starts_with("startup_le_");
            // Request metrics come from CMCD request reports and CDN logs, which beacons do not
            // carry: tests/tests/cmcd.rs and tests/tests/cdn_logs.rs check them exactly.
            let from_requests = qoe_schemas::metrics::metric_of_column(column)
                .is_some_and(|m| m.input != qoe_schemas::metrics::Input::Events);
            if *column == "late_events" || is_histogram_bucket || from_requests {
                continue;
            }
            assert!(
                total.values()[i] > 0,
                "the simulator's oracle has no rule for {column}"
            );
        }
        // Histogram buckets: the known startup times above land in their buckets.
        let buckets: u64 = METRIC_COLUMNS
            .iter()
            .filter(|c| c.starts_with("startup_le_"))
            .map(|c| total.get(c))
            .sum();
        assert_eq!(buckets, total.get("plays") - total.get("startup_unknown"));
        assert!(buckets > 0);
    }

    #[test]
    fn duplicates_count_once_and_views_are_distinct() {
        let mut t = Truth::new(10_000);
        let a = ev("a", 0, EventType::ViewStart, 12_000);
        t.record(&a);
        t.record(&a);
        t.record(&ev("a", 1, EventType::Heartbeat, 13_000));
        t.record(&ev("b", 0, EventType::ViewStart, 19_999));
        t.record(&ev("b", 1, EventType::Heartbeat, 20_000));
        let rows = t.rows();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].window_start, 10);
        let m = Metrics::from_values(&rows[0].metrics);
        assert_eq!(m.get("events"), 3);
        assert_eq!(m.get("attempts"), 2);
        assert_eq!(m.get("duplicate_events"), 1);
        assert_eq!(rows[0].active_views, 2);
        assert_eq!(rows[1].window_start, 20);
        assert_eq!(rows[1].active_views, 1);
        assert_eq!(t.views(), 2);
    }
}
