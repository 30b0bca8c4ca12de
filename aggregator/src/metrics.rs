//! The aggregator's rules for the per-window QoE metrics of the spec: how one accepted event
//! adds to the additive counters of its window ([`WindowMetrics`], generated from the metric
//! catalogue in `qoe-schemas`). Pure: no I/O, no clocks.

use qoe_schemas::cdn_log::CdnRequest;
use qoe_schemas::metrics::{
    bucket_index, RM_BUFFER_BUCKETS, RM_TTFB_BUCKETS, STARTUP_BUCKETS, TTFB_BUCKETS,
};
use qoe_schemas::{EndReason, EventRef, EventType};

pub use qoe_schemas::metrics::WindowMetrics;

/// The aggregator's rule for each catalogue metric: how one accepted event adds to a window's
/// [`WindowMetrics`]. `late_events` and `duplicate_events` are not set here: the window logic
/// counts them for events it does not accept.
pub trait AddEvent {
    /// Adds an event whose code is not a business error.
    fn add(&mut self, e: &EventRef<'_>) {
        self.add_classified(e, false);
    }

    /// Adds an event; `business` says its error code is a business error
    /// ([`qoe_schemas::errors`]): an error, but no failure.
    fn add_classified(&mut self, e: &EventRef<'_>, business: bool);
}

/// What one event adds to the time sums a window and a view both keep: time playing, the
/// playing-time weighted bitrate, time rebuffering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeSums {
    pub playing_ms: u64,
    pub bitrate_kbps_ms: u64,
    pub stall_ms: u64,
}

impl TimeSums {
    pub fn of(e: &EventRef<'_>) -> TimeSums {
        let playing_ms = u64::from(e.playing_ms.unwrap_or(0));
        TimeSums {
            playing_ms,
            bitrate_kbps_ms: e.bitrate_kbps.map_or(0, |b| u64::from(b) * playing_ms),
            stall_ms: u64::from(e.stall_ms.unwrap_or(0)),
        }
    }
}

impl AddEvent for WindowMetrics {
    /// Adds one accepted event, exactly as the spec defines each metric.
    fn add_classified(&mut self, e: &EventRef<'_>, business: bool) {
        self.events += 1;
        match e.kind {
            EventType::ViewStart => self.attempts += 1,
            EventType::FirstFrame => {
                self.plays += 1;
                match e.startup_ms {
                    Some(s) => {
                        self.startup_ms_sum += u64::from(s);
                        self.startup_hist[bucket_index(STARTUP_BUCKETS, s)] += 1;
                    }
                    None => self.startup_unknown += 1,
                }
            }
            EventType::Error => {
                self.errors += 1;
                if e.fatal == Some(true) && !business {
                    match e.started {
                        Some(true) => self.vpf += 1,
                        Some(false) => self.vsf += 1,
                        None => {}
                    }
                }
            }
            // The end of a view whose last error turned out to be its failure (CMCD: a view
            // that never started and went silent or left after an error): the failure counts,
            // the error was counted when it came.
            EventType::ViewEnd if e.fatal == Some(true) && business => {}
            EventType::ViewEnd if e.fatal == Some(true) => match e.started {
                Some(true) => self.vpf += 1,
                Some(false) => self.vsf += 1,
                None => {}
            },
            EventType::ViewEnd
                if e.started == Some(false) && e.reason != Some(EndReason::Error) =>
            {
                self.ebvs += 1
            }
            EventType::StallStart => self.stalls += 1,
            EventType::Seek => self.seeks += 1,
            EventType::BitrateChange => {
                if let (Some(now), Some(prev)) = (e.bitrate_kbps, e.prev_bitrate_kbps) {
                    if now > prev {
                        self.upswitches += 1;
                    } else if now < prev {
                        self.downswitches += 1;
                    }
                }
            }
            _ => {}
        }
        let time = TimeSums::of(e);
        self.playing_ms += time.playing_ms;
        self.bitrate_kbps_ms += time.bitrate_kbps_ms;
        self.stall_ms += time.stall_ms;
        if let Some(l) = e.latency_ms {
            self.latency_ms_sum += u64::from(l);
            self.latency_samples += 1;
        }
        if let Some(d) = e.dropped_frames {
            self.dropped_frames += u64::from(d);
        }
    }
}

/// The aggregator's rule for the request metrics: one CDN request reported by a player (CMCD
/// `rr`), with its response status (`0`: none) and time to first byte when reported.
pub fn add_request(m: &mut WindowMetrics, status: Option<u32>, ttfb_ms: Option<u32>) {
    m.cdn_requests += 1;
    if status.is_some_and(|rc| rc == 0 || rc >= 400) {
        m.cdn_request_errors += 1;
    }
    if let Some(t) = ttfb_ms {
        m.ttfb_ms_sum += u64::from(t);
        m.ttfb_hist[bucket_index(TTFB_BUCKETS, t)] += 1;
    }
}

/// The aggregator's rule for the request-mode metrics: one request from a CDN or origin log.
/// Media requests (`ot` of `a`, `v`, `av`) carry starvation and the delivered bitrate; every
/// request its status, time to first byte, throughput, startup flag and buffer length.
pub fn add_log_request(m: &mut WindowMetrics, r: &CdnRequest) {
    let c = &r.cmcd;
    m.rm_requests += 1;
    if r.status == 0 || r.status >= 400 {
        m.rm_request_errors += 1;
    }
    if matches!(c.ot.as_deref(), Some("a" | "v" | "av")) {
        m.rm_media_requests += 1;
        m.rm_starvations += u64::from(c.bs);
        if let (Some(br), Some(d)) = (c.br, c.d) {
            m.rm_bitrate_kbps_ms += u64::from(br) * u64::from(d);
            m.rm_media_ms += u64::from(d);
        }
    }
    m.rm_startup_requests += u64::from(c.su);
    if let Some(t) = r.ttfb {
        m.rm_ttfb_ms_sum += u64::from(t);
        m.rm_ttfb_hist[bucket_index(RM_TTFB_BUCKETS, t)] += 1;
    }
    if let Some(mtp) = c.mtp {
        m.rm_throughput_kbps_sum += u64::from(mtp);
        m.rm_throughput_samples += 1;
    }
    if let Some(bl) = c.bl {
        m.rm_buffer_hist[bucket_index(RM_BUFFER_BUCKETS, bl)] += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qoe_schemas::QoeEvent;

    fn event(kind: EventType) -> QoeEvent {
        QoeEvent::blank("v", 0, kind, 0)
    }

    #[test]
    fn failure_classes() {
        let mut m = WindowMetrics::default();
        let mut e = event(EventType::Error);
        e.fatal = Some(true);
        e.started = Some(false);
        m.add(&e.borrowed());
        e.started = Some(true);
        m.add(&e.borrowed());
        e.fatal = Some(false);
        m.add(&e.borrowed());
        let mut end = event(EventType::ViewEnd);
        end.started = Some(false);
        end.reason = Some(EndReason::Exit);
        m.add(&end.borrowed());
        end.reason = Some(EndReason::Error);
        m.add(&end.borrowed());
        end.started = Some(true);
        end.reason = Some(EndReason::Exit);
        m.add(&end.borrowed());
        assert_eq!((m.vsf, m.vpf, m.errors, m.ebvs, m.events), (1, 1, 3, 1, 6));
        // A CMCD view that failed to start after an error already counted: its end counts the
        // start failure, not another error, and is no exit before start.
        end.started = Some(false);
        end.reason = Some(EndReason::Error);
        end.fatal = Some(true);
        m.add(&end.borrowed());
        assert_eq!((m.vsf, m.vpf, m.errors, m.ebvs), (2, 1, 3, 1));
    }

    #[test]
    fn business_errors_are_errors_but_no_failures() {
        let mut m = WindowMetrics::default();
        let mut e = event(EventType::Error);
        e.fatal = Some(true);
        e.started = Some(false);
        e.code = Some("GEO_BLOCKED".into());
        m.add_classified(&e.borrowed(), true);
        let mut end = event(EventType::ViewEnd);
        end.started = Some(false);
        end.reason = Some(EndReason::Error);
        end.fatal = Some(true);
        m.add_classified(&end.borrowed(), true);
        assert_eq!((m.errors, m.vsf, m.vpf, m.ebvs, m.events), (1, 0, 0, 0, 2));
        m.add_classified(&e.borrowed(), false);
        assert_eq!((m.errors, m.vsf), (2, 1));
    }

    #[test]
    fn requests() {
        let mut m = WindowMetrics::default();
        add_request(&mut m, Some(200), Some(40));
        add_request(&mut m, Some(404), Some(3));
        add_request(&mut m, Some(0), None);
        add_request(&mut m, None, Some(5000));
        assert_eq!(
            (m.cdn_requests, m.cdn_request_errors, m.ttfb_ms_sum),
            (4, 2, 5043)
        );
        assert_eq!(m.ttfb_hist, [2, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(m.events, 0, "a request is not a QoE event");
    }

    #[test]
    fn playback_sums() {
        let mut m = WindowMetrics::default();
        let mut hb = event(EventType::Heartbeat);
        hb.playing_ms = Some(8000);
        hb.stall_ms = Some(500);
        hb.bitrate_kbps = Some(2500);
        hb.latency_ms = Some(4000);
        hb.dropped_frames = Some(3);
        m.add(&hb.borrowed());
        let mut sw = event(EventType::BitrateChange);
        sw.bitrate_kbps = Some(1200);
        sw.prev_bitrate_kbps = Some(2500);
        m.add(&sw.borrowed());
        sw.bitrate_kbps = Some(5000);
        m.add(&sw.borrowed());
        let mut ff = event(EventType::FirstFrame);
        ff.startup_ms = Some(1200);
        m.add(&ff.borrowed());
        assert_eq!(m.playing_ms, 8000);
        assert_eq!(m.stall_ms, 500);
        assert_eq!(m.bitrate_kbps_ms, 20_000_000);
        assert_eq!((m.latency_ms_sum, m.latency_samples), (4000, 1));
        assert_eq!((m.upswitches, m.downswitches), (1, 1));
        assert_eq!((m.plays, m.startup_ms_sum, m.startup_hist[3]), (1, 1200, 1));
        m.add(&event(EventType::Seek).borrowed());
        assert_eq!((m.seeks, m.events), (1, 5));
        m.add(&event(EventType::FirstFrame).borrowed());
        assert_eq!((m.plays, m.startup_unknown, m.startup_ms_sum), (2, 1, 1200));
    }
}
