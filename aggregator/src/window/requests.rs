//! CDN log requests (CMCD v1 request mode) in a partition: each is counted once in the window
//! of its logged time, in its own slice, into the request-mode metrics (`rm_*`); a line a
//! shipper sent again is a duplicate while its window is open, late after.

use super::{Outcome, PartitionState};
use crate::context::ContextRef;
use crate::metrics::add_log_request;
use qoe_schemas::cdn_log::RequestMessage;
use std::hash::BuildHasher;

impl<S: BuildHasher + Default> PartitionState<S> {
    /// Processes the logged request at `offset`.
    pub fn apply_request(&mut self, offset: i64, m: &RequestMessage) -> Outcome {
        self.next_offset = offset + 1;
        self.batch.messages += 1;
        let window = self.window_of(m.req.time);
        let outcome = if window + self.config.window_ms <= self.watermark() {
            Outcome::Late
        } else if self
            .reports
            .track_request(offset, window, &m.req.request_id, m.req.time)
        {
            Outcome::Accepted
        } else {
            Outcome::Duplicate
        };
        let (_, slice) = self
            .batch
            .intern_context(ContextRef::of_request(m), self.config.dimensions);
        let row = self.batch.window_row(window, slice);
        match outcome {
            Outcome::Accepted => {
                add_log_request(row, &m.req);
                if let Some(sid) = m.req.cmcd.sid.as_deref() {
                    self.batch.request_session(window, slice, sid);
                }
            }
            Outcome::Late => row.rm_late_requests += 1,
            Outcome::Duplicate => row.rm_duplicate_requests += 1,
        }
        self.advance(m.req.time, m.received_at);
        self.settle();
        outcome
    }

    /// Rebuilds duplicate tracking from a request between the checkpoint's `state_offset` and
    /// `next_offset`; emits nothing.
    pub fn restore_request(&mut self, offset: i64, m: &RequestMessage) {
        let window = self.window_of(m.req.time);
        if window + self.config.window_ms <= self.watermark() {
            return;
        }
        self.reports
            .track_request(offset, window, &m.req.request_id, m.req.time);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::WindowConfig;
    use qoe_schemas::cdn_log::{parse_json_line, RequestMessage};

    fn request(line: &str) -> RequestMessage {
        let req = parse_json_line(line).unwrap().request;
        RequestMessage {
            received_at: req.time + 5_000,
            req,
            region: "eu-west".into(),
            cdn: "cdn-a".into(),
            platform: "android".into(),
            player: "media3".into(),
        }
    }

    #[test]
    fn requests_count_once_in_their_window_and_slice() {
        let mut p = PartitionState::new(WindowConfig::default(), None);
        let video = request(
            r#"{"ts":1764500001.5,"status":200,"ttfb_ms":120,"url":"/v1.m4s","cmcd":"br=3000,d=4000,ot=v,bs,su,mtp=9000,bl=12000,sid=\"s\",cid=\"ch-1\",st=v,sf=d"}"#,
        );
        let manifest = request(
            r#"{"ts":1764500002,"status":503,"url":"/m.mpd","cmcd":"ot=m,sid=\"s\",cid=\"ch-1\",st=v,sf=d,bl=500"}"#,
        );
        assert_eq!(p.apply_request(0, &video), Outcome::Accepted);
        assert_eq!(p.apply_request(1, &manifest), Outcome::Accepted);
        // The shipper sends the video line again.
        assert_eq!(p.apply_request(2, &video), Outcome::Duplicate);
        // Much later traffic closes the window; a copy then is late.
        let later = request(r#"{"ts":1764503600,"status":200,"url":"/x"}"#);
        assert_eq!(p.apply_request(3, &later), Outcome::Accepted);
        assert_eq!(p.apply_request(4, &video), Outcome::Late);

        let (batch, checkpoint) = p.take_batch(false);
        assert_eq!(checkpoint.next_offset, 5);
        let rows: Vec<_> = batch.window_rows().collect();
        let (window, slice, m) = rows
            .iter()
            .find(|(w, _, _)| *w == 1_764_500_000_000)
            .expect("the first window's row");
        assert_eq!(*window, 1_764_500_000_000);
        assert_eq!(
            (
                slice.region.as_str(),
                slice.cdn.as_str(),
                slice.stream_type.as_str(),
                slice.platform.as_str(),
                slice.stream_id.as_str()
            ),
            ("eu-west", "cdn-a", "vod", "android", "ch-1")
        );
        assert_eq!(
            (m.rm_requests, m.rm_request_errors, m.rm_media_requests),
            (2, 1, 1)
        );
        assert_eq!((m.rm_starvations, m.rm_startup_requests), (1, 1));
        assert_eq!((m.rm_bitrate_kbps_ms, m.rm_media_ms), (12_000_000, 4000));
        assert_eq!(
            (m.rm_throughput_kbps_sum, m.rm_throughput_samples),
            (9000, 1)
        );
        assert_eq!(
            (m.rm_ttfb_ms_sum, m.rm_ttfb_hist.iter().sum::<u64>()),
            (120, 1)
        );
        assert_eq!(m.rm_ttfb_hist[2], 1, "120 ms is in the <= 200 ms bucket");
        assert_eq!(
            m.rm_buffer_hist[0] + m.rm_buffer_hist[4],
            2,
            "500 ms and 12 s"
        );
        assert_eq!((m.rm_duplicate_requests, m.rm_late_requests), (1, 1));
        let sessions: Vec<(i64, &str)> = batch
            .request_session_rows()
            .map(|(w, _, sid)| (w, sid))
            .collect();
        assert_eq!(sessions, [(1_764_500_000_000, "s")], "one session, once");
        // Request mode leaves the view metrics alone.
        assert_eq!(
            (
                m.events,
                m.attempts,
                m.cdn_requests,
                m.late_events,
                m.duplicate_events
            ),
            (0, 0, 0, 0, 0)
        );
    }

    #[test]
    fn a_restart_rebuilds_duplicate_tracking_from_the_replay() {
        let mut p = PartitionState::new(WindowConfig::default(), None);
        let line = request(r#"{"ts":1764500001,"status":200,"url":"/a","request_id":"r1"}"#);
        p.restore_request(0, &line);
        assert_eq!(p.apply_request(1, &line), Outcome::Duplicate);
    }
}
