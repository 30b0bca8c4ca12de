//! The metric catalogue: the one definition of every windowed QoE metric the pipeline stores.
//!
//! Each entry names a metric, says how it rolls up from the base grain to coarser ones (a plain
//! sum, a histogram whose bucket bounds are written here and nowhere else, or a distinct count
//! that only exists at the base grain), whether the per-view summary carries it too, its unit
//! and its doc line. From the one list below come:
//!
//! - [`WindowMetrics`], the additive counters of one window and slice (the aggregator adds
//!   events to it with its own rule, in `qoe-aggregator`'s `metrics` module);
//! - [`WINDOW_COLUMNS`], the ClickHouse columns of every window table, in order, which the
//!   aggregator's writer loops over ([`WindowMetrics::values`] yields them in the same order);
//! - [`catalogue_json`], the machine-readable form committed as `schemas/metrics.json`, read by
//!   the dashboards' generator, the demo report and the Python tests.
//!
//! - the window tables' SQL and a new metric's migration (`crate::window_sql`).
//!
//! Tests check the migrations' columns against this list on ClickHouse 18.16 and on a current
//! ClickHouse, and every oracle must have a rule for every column. The recipe for adding a
//! metric is in ARCHITECTURE.md ("Adding a metric").

/// How a metric's values combine across windows and aggregator instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rollup {
    /// A counter or a sum: partial rows add up at every grain.
    Sum,
    /// Counts per bucket, one column per bucket; each bucket adds up like a sum.
    Histogram(&'static [Bucket]),
    /// A distinct count: exact at the base grain only (it does not add up across windows).
    DistinctAtBaseGrain,
}

/// One bucket of a histogram metric: its column and inclusive upper bound (`None`: +inf).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    pub column: &'static str,
    pub le: Option<u32>,
}

/// What feeds a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// QoE events (beacons, and CMCD reports turned into events).
    Events,
    /// Per-request reports (CMCD `rr`: response received), which beacons do not carry.
    Requests,
    /// Requests from CDN and origin logs (CMCD v1 request mode, `POST /v1/cdn-logs`): an
    /// approximation of QoE from what players send with each request, kept apart from the
    /// view metrics (README.md, "Request mode").
    LogRequests,
}

impl Input {
    pub fn as_str(self) -> &'static str {
        match self {
            Input::Events => "events",
            Input::Requests => "requests",
            Input::LogRequests => "logs",
        }
    }
}

/// One catalogue entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    pub name: &'static str,
    pub input: Input,
    /// ClickHouse type of each of its columns.
    pub clickhouse_type: &'static str,
    pub rollup: Rollup,
    /// The per-view summary (`qoe_views`) has a column of the same name with the view's total.
    pub per_view: bool,
    pub unit: &'static str,
    pub doc: &'static str,
}

impl Metric {
    /// The metric's columns in a window table: its name, or one per histogram bucket.
    pub fn columns(&self) -> Vec<&'static str> {
        match self.rollup {
            Rollup::Histogram(buckets) => buckets.iter().map(|b| b.column).collect(),
            Rollup::Sum | Rollup::DistinctAtBaseGrain => vec![self.name],
        }
    }
}

/// Index of the bucket a value falls in: the first whose inclusive bound is >= it (the last
/// bucket, +inf, takes the rest).
pub fn bucket_index(buckets: &[Bucket], value: u32) -> usize {
    buckets
        .iter()
        .position(|b| b.le.is_none_or(|le| value <= le))
        .unwrap_or(buckets.len() - 1)
}

/// Per-field storage of a catalogue entry in [`WindowMetrics`]: one value or one per bucket.
pub trait MetricValue: Default {
    /// Appends the field's column values to `out`.
    fn push_values(&self, out: &mut Vec<u64>);
    /// Adds another partial value.
    fn add(&mut self, other: &Self);
}

impl MetricValue for u64 {
    fn push_values(&self, out: &mut Vec<u64>) {
        out.push(*self);
    }
    fn add(&mut self, other: &Self) {
        *self += other;
    }
}

impl<const N: usize> MetricValue for [u64; N]
where
    [u64; N]: Default,
{
    fn push_values(&self, out: &mut Vec<u64>) {
        out.extend_from_slice(self);
    }
    fn add(&mut self, other: &Self) {
        for (a, b) in self.iter_mut().zip(other) {
            *a += b;
        }
    }
}

macro_rules! count {
    () => { 0usize };
    ($head:tt $($tail:tt)*) => { 1usize + count!($($tail)*) };
}

macro_rules! bound {
    (inf) => {
        None
    };
    ($n:literal) => {
        Some($n)
    };
}

macro_rules! field_type {
    (sum) => { u64 };
    (histogram $($col:ident)+) => { [u64; count!($($col)+)] };
}

macro_rules! input {
    () => {
        Input::Events
    };
    (requests) => {
        Input::Requests
    };
    (logs) => {
        Input::LogRequests
    };
}

macro_rules! rollup {
    (sum) => {
        Rollup::Sum
    };
    (histogram $buckets:ident) => {
        Rollup::Histogram($buckets)
    };
}

macro_rules! bucket_consts {
    (sum) => {};
    (histogram $field:ident $buckets:ident $($col:ident = $le:tt)+) => {
        #[doc = concat!("Buckets of the `", stringify!($field), "` histogram (inclusive upper bounds).")]
        pub const $buckets: &[Bucket] = &[$(Bucket { column: stringify!($col), le: bound!($le) }),+];
    };
}

/// Generates the catalogue constant and [`WindowMetrics`] from one list.
macro_rules! window_metrics {
    ($(
        $(#[doc = $doc:literal])+
        $field:ident: $rollup:ident $($buckets:ident [$($col:ident = $le:tt),+ $(,)?])?,
            unit = $unit:literal, per_view = $per_view:literal $(, input = $input:ident)?;
    )+) => {
        $(bucket_consts!($rollup $($field $buckets $($col = $le)+)?);)+

        /// Every window metric, in the column order of the window tables.
        pub const WINDOW_METRICS: &[Metric] = &[$(Metric {
            name: stringify!($field),
            input: input!($($input)?),
            clickhouse_type: "UInt64",
            rollup: rollup!($rollup $($buckets)?),
            per_view: $per_view,
            unit: $unit,
            doc: concat!($($doc),+),
        }),+];

        /// Additive metrics of one window and slice, one field per catalogue entry. Partial
        /// values from many batches and many aggregator instances add up to the same totals.
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct WindowMetrics {
            $($(#[doc = $doc])+ pub $field: field_type!($rollup $($($col)+)?),)+
        }

        impl WindowMetrics {
            /// The values of [`WINDOW_COLUMNS`], in that order.
            pub fn values(&self) -> Vec<u64> {
                let mut out = Vec::with_capacity(WINDOW_COLUMN_COUNT);
                $(MetricValue::push_values(&self.$field, &mut out);)+
                out
            }

            /// Adds another partial row of the same window and slice.
            pub fn merge(&mut self, other: &WindowMetrics) {
                $(MetricValue::add(&mut self.$field, &other.$field);)+
            }
        }
    };
}

// The catalogue. Order = column order of the window tables (new metrics go last, where
// `ALTER TABLE ... ADD COLUMN` puts them).
window_metrics! {
    /// Events counted in the metrics below (accepted: neither late nor duplicate).
    events: sum, unit = "events", per_view = false;
    /// Play attempts: `view_start` events.
    attempts: sum, unit = "views", per_view = false;
    /// Successful starts: `first_frame` events.
    plays: sum, unit = "views", per_view = false;
    /// Sum of `startup_ms` over `first_frame` events.
    startup_ms_sum: sum, unit = "ms", per_view = false;
    /// `first_frame` events per startup-time bucket (inclusive upper bounds in ms).
    startup_hist: histogram STARTUP_BUCKETS [
        startup_le_250 = 250, startup_le_500 = 500, startup_le_1000 = 1000,
        startup_le_2000 = 2000, startup_le_3000 = 3000, startup_le_5000 = 5000,
        startup_le_8000 = 8000, startup_le_15000 = 15000, startup_le_inf = inf,
    ], unit = "views", per_view = false;
    /// Video start failures: fatal `error` events before the first frame.
    vsf: sum, unit = "views", per_view = false;
    /// Video playback failures: fatal `error` events after the first frame.
    vpf: sum, unit = "views", per_view = false;
    /// Exits before video start: `view_end` before the first frame, not by error.
    ebvs: sum, unit = "views", per_view = false;
    /// All `error` events.
    errors: sum, unit = "events", per_view = true;
    /// Time spent playing.
    playing_ms: sum, unit = "ms", per_view = true;
    /// Time spent rebuffering (not startup, not seeking).
    stall_ms: sum, unit = "ms", per_view = true;
    /// Rebuffering episodes: `stall_start` events.
    stalls: sum, unit = "events", per_view = true;
    /// Sum of `bitrate_kbps * playing_ms` (playing-time weighted bitrate).
    bitrate_kbps_ms: sum, unit = "kbps*ms", per_view = true;
    /// `bitrate_change` events to a higher bitrate.
    upswitches: sum, unit = "events", per_view = false;
    /// `bitrate_change` events to a lower bitrate.
    downswitches: sum, unit = "events", per_view = false;
    /// Sum of reported live-edge latencies.
    latency_ms_sum: sum, unit = "ms", per_view = false;
    /// Events carrying a live-edge latency.
    latency_samples: sum, unit = "events", per_view = false;
    /// Frames dropped.
    dropped_frames: sum, unit = "frames", per_view = false;
    /// Events that arrived after their window was final (data quality).
    late_events: sum, unit = "events", per_view = false;
    /// Repeated copies of an already counted event (data quality).
    duplicate_events: sum, unit = "events", per_view = false;
    /// Viewer seeks: `seek` events.
    seeks: sum, unit = "events", per_view = false;
    /// Plays whose startup time is unknown (`first_frame` without `startup_ms`): counted in
    /// `plays`, left out of `startup_ms_sum` and the startup histogram.
    startup_unknown: sum, unit = "views", per_view = false;
    /// CDN requests reported by players (CMCD `rr`: manifests and segments).
    cdn_requests: sum, unit = "requests", per_view = false, input = requests;
    /// CDN requests that failed: a response status of 400 or more, or none (`rc` 0).
    cdn_request_errors: sum, unit = "requests", per_view = false, input = requests;
    /// Sum of the time to first byte of requests that report one.
    ttfb_ms_sum: sum, unit = "ms", per_view = false, input = requests;
    /// Requests per time-to-first-byte bucket (inclusive upper bounds in ms).
    ttfb_hist: histogram TTFB_BUCKETS [
        ttfb_le_50 = 50, ttfb_le_100 = 100, ttfb_le_200 = 200, ttfb_le_400 = 400,
        ttfb_le_800 = 800, ttfb_le_1600 = 1600, ttfb_le_3200 = 3200, ttfb_le_inf = inf,
    ], unit = "requests", per_view = false, input = requests;
    /// Mid-view CDN switches reported by CMCD players: a view's requests served by another
    /// CDN than before, named by a source as strong as before (README, CMCD's CDN rule);
    /// counted in the new CDN's slice, where the view's later time goes.
    cdn_switches: sum, unit = "switches", per_view = false, input = requests;
    /// Beacon events a view never had counted: the gaps in its `seq` (0 up to the highest
    /// counted), once the view is forgotten (its timeout after its last event, so that
    /// retries and reordered bodies are in). Lost on the way, or too late to count (those
    /// are in `late_events` too). In the window and slice of the view's last event.
    events_lost: sum, unit = "events", per_view = false;
    /// CMCD reports a session never delivered: the gaps in its `sn` (a run restarting at 0,
    /// a new source, is no gap), once the session is forgotten. In the window and slice of its
    /// last report.
    reports_lost: sum, unit = "reports", per_view = false, input = requests;
    /// Request mode (CDN logs): requests logged with CMCD data or without.
    rm_requests: sum, unit = "requests", per_view = false, input = logs;
    /// Request mode: logged requests that failed (status 400 or more, or none sent).
    rm_request_errors: sum, unit = "requests", per_view = false, input = logs;
    /// Request mode: media requests (CMCD `ot` of `a`, `v` or `av`).
    rm_media_requests: sum, unit = "requests", per_view = false, input = logs;
    /// Request mode: media requests whose player reported buffer starvation since its
    /// previous request (`bs`); per 100 media requests it is the starvation rate.
    rm_starvations: sum, unit = "requests", per_view = false, input = logs;
    /// Request mode: requests made for startup or recovery (`su`).
    rm_startup_requests: sum, unit = "requests", per_view = false, input = logs;
    /// Request mode: sum of the logged time to first byte.
    rm_ttfb_ms_sum: sum, unit = "ms", per_view = false, input = logs;
    /// Request mode: requests per logged time-to-first-byte bucket (inclusive, ms).
    rm_ttfb_hist: histogram RM_TTFB_BUCKETS [
        rm_ttfb_le_50 = 50, rm_ttfb_le_100 = 100, rm_ttfb_le_200 = 200, rm_ttfb_le_400 = 400,
        rm_ttfb_le_800 = 800, rm_ttfb_le_1600 = 1600, rm_ttfb_le_3200 = 3200, rm_ttfb_le_inf = inf,
    ], unit = "requests", per_view = false, input = logs;
    /// Request mode: sum of the throughput players measured (`mtp`, kbps) ...
    rm_throughput_kbps_sum: sum, unit = "kbps", per_view = false, input = logs;
    /// ... over this many requests that reported it.
    rm_throughput_samples: sum, unit = "requests", per_view = false, input = logs;
    /// Request mode: encoded bitrate times object duration (`br` x `d`, kbps x ms) of media
    /// requests with both ...
    rm_bitrate_kbps_ms: sum, unit = "kbps*ms", per_view = false, input = logs;
    /// ... and their duration: the delivered bitrate is the ratio.
    rm_media_ms: sum, unit = "ms", per_view = false, input = logs;
    /// Request mode: requests per buffer length the player reported (`bl`, inclusive, ms).
    rm_buffer_hist: histogram RM_BUFFER_BUCKETS [
        rm_bl_le_1000 = 1000, rm_bl_le_2000 = 2000, rm_bl_le_5000 = 5000, rm_bl_le_10000 = 10000,
        rm_bl_le_20000 = 20000, rm_bl_le_30000 = 30000, rm_bl_le_inf = inf,
    ], unit = "requests", per_view = false, input = logs;
    /// Request mode: log lines sent again (a shipper's retry), counted once.
    rm_duplicate_requests: sum, unit = "requests", per_view = false, input = logs;
    /// Request mode: requests logged after their window was final, not counted.
    rm_late_requests: sum, unit = "requests", per_view = false, input = logs;
}

/// Number of columns of [`WINDOW_COLUMNS`].
pub const WINDOW_COLUMN_COUNT: usize = {
    let mut n = 0;
    let mut i = 0;
    while i < WINDOW_METRICS.len() {
        n += match WINDOW_METRICS[i].rollup {
            Rollup::Histogram(buckets) => buckets.len(),
            Rollup::Sum | Rollup::DistinctAtBaseGrain => 1,
        };
        i += 1;
    }
    n
};

/// The metric columns of every window table, in table order.
pub const WINDOW_COLUMNS: [&str; WINDOW_COLUMN_COUNT] = {
    let mut out = [""; WINDOW_COLUMN_COUNT];
    let (mut n, mut i) = (0, 0);
    while i < WINDOW_METRICS.len() {
        match WINDOW_METRICS[i].rollup {
            Rollup::Histogram(buckets) => {
                let mut b = 0;
                while b < buckets.len() {
                    out[n] = buckets[b].column;
                    n += 1;
                    b += 1;
                }
            }
            Rollup::Sum | Rollup::DistinctAtBaseGrain => {
                out[n] = WINDOW_METRICS[i].name;
                n += 1;
            }
        }
        i += 1;
    }
    out
};

/// Distinct views with at least one event in a base window and slice, stored as `uniqExact`
/// states in [`ACTIVE_VIEWS_TABLE`].
pub const ACTIVE_VIEWS: Metric = Metric {
    name: "active_views",
    input: Input::Events,
    clickhouse_type: "AggregateFunction(uniqExact, String)",
    rollup: Rollup::DistinctAtBaseGrain,
    per_view: false,
    unit: "views",
    doc: "Distinct views with at least one counted event in the window.",
};
pub const ACTIVE_VIEWS_TABLE: &str = "qoe_active_views_10s";

/// Request mode (CDN logs): distinct CMCD sessions (`sid`) with a logged request in a base
/// window and slice, stored as `uniqExact` states in [`REQUEST_SESSIONS_TABLE`].
pub const REQUEST_SESSIONS: Metric = Metric {
    name: "rm_sessions",
    input: Input::LogRequests,
    clickhouse_type: "AggregateFunction(uniqExact, String)",
    rollup: Rollup::DistinctAtBaseGrain,
    per_view: false,
    unit: "sessions",
    doc: "Request mode: distinct sessions (sid) with a logged request in the window.",
};
pub const REQUEST_SESSIONS_TABLE: &str = "qoe_request_sessions_10s";

/// The window tables, base grain first; each holds [`WINDOW_COLUMNS`].
pub const WINDOW_TABLES: [(&str, u32); 3] = [
    ("qoe_window_10s", 10),
    ("qoe_window_1m", 60),
    ("qoe_window_1h", 3600),
];

/// The slice dimensions of every window row, in key order.
pub const DIMENSIONS: [&str; 5] = ["region", "cdn", "stream_type", "platform", "stream_id"];

/// The catalogue entry a window column belongs to (a histogram's bucket columns belong to it).
pub fn metric_of_column(column: &str) -> Option<&'static Metric> {
    WINDOW_METRICS
        .iter()
        .find(|m| m.columns().contains(&column))
}

/// Position of a column in [`WINDOW_COLUMNS`].
pub fn column_index(column: &str) -> Option<usize> {
    WINDOW_COLUMNS.iter().position(|c| *c == column)
}

/// The catalogue as JSON, exactly as committed in `schemas/metrics.json`.
pub fn catalogue_json() -> String {
    use serde_json::{json, Value};
    let entry = |m: &Metric, table: Value| {
        let mut v = json!({
            "name": m.name,
            "clickhouse_type": m.clickhouse_type,
            "rollup": match m.rollup {
                Rollup::Sum => "sum",
                Rollup::Histogram(_) => "histogram",
                Rollup::DistinctAtBaseGrain => "distinct_base_grain",
            },
            "per_view": m.per_view,
            "input": m.input.as_str(),
            "unit": m.unit,
            "doc": m.doc.trim(),
            "columns": m.columns(),
            "tables": table,
        });
        if let Rollup::Histogram(buckets) = m.rollup {
            v["buckets"] = buckets
                .iter()
                .map(|b| json!({"column": b.column, "le": b.le}))
                .collect();
        }
        v
    };
    let window_tables: Vec<&str> = WINDOW_TABLES.iter().map(|(t, _)| *t).collect();
    let metrics: Vec<Value> = WINDOW_METRICS
        .iter()
        .map(|m| entry(m, json!(window_tables)))
        .chain(std::iter::once(entry(
            &ACTIVE_VIEWS,
            json!([ACTIVE_VIEWS_TABLE]),
        )))
        .chain(std::iter::once(entry(
            &REQUEST_SESSIONS,
            json!([REQUEST_SESSIONS_TABLE]),
        )))
        .collect();
    let doc = json!({
        "about": "Generated from schemas/src/metrics.rs (the metric catalogue); do not edit. \
                  Regenerate with: make metrics-json",
        "dimensions": DIMENSIONS,
        "window_tables": WINDOW_TABLES.iter().map(|(t, s)| json!({"table": t, "grain_s": s})).collect::<Vec<_>>(),
        "window_columns": WINDOW_COLUMNS.as_slice(),
        "metrics": metrics,
        "score": {
            "about": "The experience score (schemas/src/score.rs): SQL over additive totals, \
                      with placeholders for the totals' expressions and the top rendition's kbps",
            "default_top_kbps": crate::score::DEFAULT_TOP_KBPS,
            "sql": crate::score::sql_templates().into_iter().map(|(n, e)| json!({"name": n, "sql": e})).collect::<Vec<_>>(),
        },
    });
    let mut s = serde_json::to_string_pretty(&doc).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_unique_and_values_line_up() {
        let mut seen = std::collections::HashSet::new();
        for c in WINDOW_COLUMNS {
            assert!(!c.is_empty());
            assert!(seen.insert(c), "column {c} appears twice");
        }
        let mut m = WindowMetrics {
            attempts: 3,
            seeks: 7,
            ..Default::default()
        };
        m.startup_hist[8] = 5;
        let v = m.values();
        assert_eq!(v.len(), WINDOW_COLUMN_COUNT);
        assert_eq!(v[column_index("attempts").unwrap()], 3);
        assert_eq!(v[column_index("seeks").unwrap()], 7);
        assert_eq!(v[column_index("startup_le_inf").unwrap()], 5);
        assert_eq!(v.iter().sum::<u64>(), 15);
    }

    #[test]
    fn merge_adds_every_column() {
        let mut a = WindowMetrics::default();
        let mut b = WindowMetrics::default();
        b.startup_hist[2] = 1;
        b.duplicate_events = 2;
        b.seeks = 4;
        a.merge(&b);
        a.merge(&b);
        assert_eq!(a.values().iter().sum::<u64>(), 14);
    }

    #[test]
    fn startup_bucket_bounds_are_inclusive() {
        let b = STARTUP_BUCKETS;
        assert_eq!(b.len(), 9);
        assert_eq!(bucket_index(b, 0), 0);
        assert_eq!(bucket_index(b, 250), 0);
        assert_eq!(bucket_index(b, 251), 1);
        assert_eq!(bucket_index(b, 15000), 7);
        assert_eq!(bucket_index(b, 15001), 8);
        assert_eq!(bucket_index(b, u32::MAX), 8);
    }

    #[test]
    fn committed_json_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/metrics.json");
        let want = catalogue_json();
        if std::env::var_os("QOE_BLESS").is_some() {
            std::fs::write(path, &want).expect("write schemas/metrics.json");
        }
        let have = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            have == want,
            "schemas/metrics.json is out of date with the catalogue: run `make metrics-json`"
        );
    }
}
