//! The truth of native players' logged requests: the request-mode metrics (SPEC §3c) of
//! every acknowledged copy, by their definitions, independently of the aggregator's rule.

use super::{RowKey, Truth};
use crate::native::LoggedRequest;
use qoe_schemas::metrics::{Bucket, RM_BUFFER_BUCKETS, RM_TTFB_BUCKETS};

impl Truth {
    /// Adds one acknowledged copy of a native player's logged request: the request-mode
    /// metrics (SPEC §3c) by their definitions, written here independently of the
    /// aggregator's rule; a copy of a request counted before is a duplicate.
    pub fn record_request(&mut self, r: &LoggedRequest) {
        let window = r.time.div_euclid(self.window_ms) * self.window_ms;
        let key: RowKey = (
            (window / 1000) as u32,
            r.region.to_owned(),
            r.cdn.to_owned(),
            if r.st == "v" { "vod" } else { "live" }.to_owned(),
            r.platform.to_owned(),
            r.cid.clone(),
        );
        let (row, _) = self.rows.entry(key).or_default();
        if !self.seen_requests.insert(r.request_id.clone()) {
            row.bump("rm_duplicate_requests", 1);
            return;
        }
        row.bump("rm_requests", 1);
        row.bump("rm_request_errors", u64::from(r.status >= 400));
        if r.ot == "v" {
            row.bump("rm_media_requests", 1);
            row.bump("rm_starvations", u64::from(r.bs));
            if let (Some(br), Some(d)) = (r.br, r.d) {
                row.bump("rm_bitrate_kbps_ms", u64::from(br) * u64::from(d));
                row.bump("rm_media_ms", u64::from(d));
            }
        }
        row.bump("rm_startup_requests", u64::from(r.su));
        row.bump("rm_ttfb_ms_sum", u64::from(r.ttfb_ms));
        row.bump(bucket_column(RM_TTFB_BUCKETS, r.ttfb_ms), 1);
        if let Some(mtp) = r.mtp {
            row.bump("rm_throughput_kbps_sum", u64::from(mtp));
            row.bump("rm_throughput_samples", 1);
        }
        if let Some(bl) = r.bl {
            row.bump(bucket_column(RM_BUFFER_BUCKETS, bl), 1);
        }
    }
}

/// The column of the bucket (inclusive upper bounds, the last unbounded) `value` falls in.
fn bucket_column(buckets: &[Bucket], value: u32) -> &'static str {
    buckets
        .iter()
        .find(|b| b.le.is_none_or(|le| value <= le))
        .expect("the last bucket is unbounded")
        .column
}
