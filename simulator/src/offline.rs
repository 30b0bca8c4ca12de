//! Offline runs: the simulation without a collector, for questions about the metrics rather
//! than the pipeline (how alert rules behave over a simulated day). Every generated event
//! counts once, as each acknowledged event does in a delivered run (the end-to-end tests
//! prove the pipeline's rows equal that truth exactly), and is summed per window and region x
//! CDN, the grain alert rules group by. Rows are handed out as soon as their window can no
//! longer change, so memory stays bounded however long the simulated run.

use crate::truth::{add_event, Metrics, METRIC_COLUMNS};
use qoe_schemas::QoeEvent;
use std::collections::BTreeMap;
use std::fmt::Write;

/// (window start in seconds, region, cdn).
type SliceKey = (i64, String, String);

/// Window rows per region x CDN, filled event by event.
pub struct SliceRows {
    window_ms: i64,
    /// By window start (s): the window's slices, a few dozen, searched in place so that an
    /// event allocates nothing.
    open: BTreeMap<i64, Vec<(String, String, Metrics)>>,
}

impl SliceRows {
    pub fn new(window_ms: i64) -> Self {
        SliceRows {
            window_ms: window_ms.max(1),
            open: BTreeMap::new(),
        }
    }

    /// Counts one event in its window and slice.
    pub fn record(&mut self, e: &QoeEvent) {
        let window = e.event_time.div_euclid(self.window_ms) * self.window_ms / 1000;
        let slices = self.open.entry(window).or_default();
        let i = match slices
            .iter()
            .position(|(r, c, _)| *r == e.region && *c == e.cdn)
        {
            Some(i) => i,
            None => {
                slices.push((e.region.clone(), e.cdn.clone(), Metrics::default()));
                slices.len() - 1
            }
        };
        add_event(&mut slices[i].2, e);
    }

    fn rows(windows: BTreeMap<i64, Vec<(String, String, Metrics)>>) -> Vec<(SliceKey, Metrics)> {
        let mut rows: Vec<_> = windows
            .into_iter()
            .flat_map(|(w, slices)| slices.into_iter().map(move |(r, c, m)| ((w, r, c), m)))
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    }

    /// Removes and returns the rows of windows that end at or before `t` (ms), in window order.
    pub fn take_closed(&mut self, t: i64) -> Vec<(SliceKey, Metrics)> {
        // The first window still open starts at or before t.
        let first_open = t.div_euclid(self.window_ms) * self.window_ms / 1000;
        let still_open = self.open.split_off(&first_open);
        Self::rows(std::mem::replace(&mut self.open, still_open))
    }

    /// Every row left, at the end of a run.
    pub fn take_all(&mut self) -> Vec<(SliceKey, Metrics)> {
        Self::rows(std::mem::take(&mut self.open))
    }
}

/// One row as a line of ClickHouse `JSONEachRow` for the `qoe_window_*` tables: the window
/// start as `YYYY-MM-DD hh:mm:ss` (UTC), the slice, the other dimensions empty (all viewers of
/// the slice in one row), and every metric column of the catalogue.
pub fn json_row(key: &SliceKey, m: &Metrics) -> String {
    let (window_s, region, cdn) = key;
    let mut line = format!(
        "{{\"window_start\":\"{}\",\"region\":{},\"cdn\":{},\"stream_type\":\"\",\"platform\":\"\",\"stream_id\":\"\"",
        datetime(*window_s),
        json_string(region),
        json_string(cdn)
    );
    for (column, value) in METRIC_COLUMNS.iter().zip(m.values()) {
        // Writing to a String cannot fail.
        let _ = write!(line, ",\"{column}\":{value}");
    }
    line.push('}');
    line
}

fn json_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// `YYYY-MM-DD hh:mm:ss` of seconds since the epoch, UTC (days to civil date after
/// H. Hinnant's algorithm).
pub fn datetime(secs: i64) -> String {
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use qoe_schemas::EventType;

    fn event(t: i64, region: &str, kind: EventType) -> QoeEvent {
        let mut e = QoeEvent::blank("v", 0, kind, t);
        e.region = region.into();
        e.cdn = "cdn-a".into();
        e
    }

    #[test]
    fn civil_dates() {
        assert_eq!(datetime(0), "1970-01-01 00:00:00");
        assert_eq!(datetime(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(datetime(1_767_225_599), "2025-12-31 23:59:59");
        assert_eq!(datetime(1_795_996_800 + 3_723), "2026-11-30 01:02:03");
    }

    #[test]
    fn rows_close_with_their_window_and_carry_every_column() {
        let mut rows = SliceRows::new(60_000);
        rows.record(&event(60_000, "eu-west", EventType::ViewStart));
        rows.record(&event(119_999, "eu-west", EventType::ViewStart));
        rows.record(&event(119_000, "us-east", EventType::StallStart));
        rows.record(&event(120_000, "eu-west", EventType::ViewStart));
        assert!(
            rows.take_closed(119_999).is_empty(),
            "window 60-120 s still open"
        );
        let closed = rows.take_closed(120_000);
        assert_eq!(closed.len(), 2);
        assert_eq!(closed[0].0, (60, "eu-west".to_owned(), "cdn-a".to_owned()));
        assert_eq!(closed[0].1.get("attempts"), 2);
        assert_eq!(closed[1].1.get("stalls"), 1);
        let line = json_row(&closed[0].0, &closed[0].1);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["window_start"], "1970-01-01 00:01:00");
        assert_eq!(v["attempts"], 2);
        assert_eq!(v["platform"], "");
        assert_eq!(v.as_object().unwrap().len(), 6 + METRIC_COLUMNS.len());
        let rest = rows.take_all();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].0 .0, 120);
    }
}
