//! The aggregator's cost of a CDN log request against a beacon event's, without I/O: 100,000
//! message values of each (20,000 sessions or views, 5 each), decoded and applied to one
//! partition's state, a batch taken every 25,000, on one core.
//!
//! `cargo bench -p qoe-aggregator --bench requests` prints messages/s for both and the ratio.

use qoe_aggregator::window::{PartitionState, WindowConfig};
use qoe_schemas::cdn_log::{parse_json_line, RequestMessage};
use qoe_schemas::{EventType, MessageRef, QoeEvent};
use std::time::Instant;

const MESSAGES: usize = 100_000;

fn main() {
    let t0 = qoe_telemetry::process::now_ms() - 120_000;
    let mut requests = Vec::with_capacity(MESSAGES);
    let mut events = Vec::with_capacity(MESSAGES);
    for i in 0..MESSAGES {
        let (session, n, t) = (i % 20_000, i / 20_000, t0 + (i as i64) / 20);
        let line = format!(
            "{{\"ts\":{t},\"status\":200,\"ttfb_ms\":21,\"url\":\"/l/seg-{n}.m4s\",\"cmcd\":\"br=5000,bl=9000,d=2002,mtp=41000,ot=v,sf=d,sid=\\\"s-{session}\\\",st=l,cid=\\\"ch{}\\\"\"}}",
            session % 20
        );
        let req = parse_json_line(&line).expect("line").request;
        let message = RequestMessage {
            received_at: t + 2_000,
            region: ["eu-west", "us-east", "ap-south"][session % 3].into(),
            cdn: ["cdn-a", "cdn-b"][session % 2].into(),
            platform: "android".into(),
            player: "media3".into(),
            req,
        };
        requests.push(message.encode());
        let mut e = QoeEvent::blank(&format!("v-{session}"), n as u32, EventType::Heartbeat, t);
        (e.region, e.cdn, e.stream_id) = (
            ["eu-west", "us-east", "ap-south"][session % 3].into(),
            ["cdn-a", "cdn-b"][session % 2].into(),
            format!("ch{}", session % 20),
        );
        (e.received_at, e.playing_ms, e.bitrate_kbps) = (t + 2_000, Some(10_000), Some(5000));
        events.push(e.encode());
    }
    let mut best = (0.0f64, 0.0f64);
    for _ in 0..3 {
        let mut p = PartitionState::new(WindowConfig::default(), None);
        let t = Instant::now();
        for (o, bytes) in events.iter().enumerate() {
            MessageRef::decode(bytes)
                .expect("decodes")
                .for_each_event(|e| {
                    p.apply(o as i64, e);
                });
            if o % 25_000 == 24_999 {
                std::hint::black_box(p.take_batch(false));
            }
        }
        let beacon = MESSAGES as f64 / t.elapsed().as_secs_f64();
        let mut p = PartitionState::new(WindowConfig::default(), None);
        let t = Instant::now();
        for (o, bytes) in requests.iter().enumerate() {
            let m = RequestMessage::decode(bytes).expect("decodes");
            p.apply_request(o as i64, &m);
            if o % 25_000 == 24_999 {
                std::hint::black_box(p.take_batch(false));
            }
        }
        let request = MESSAGES as f64 / t.elapsed().as_secs_f64();
        best = (best.0.max(beacon), best.1.max(request));
    }
    println!(
        "best of 3 x {MESSAGES} messages, decoded and applied on one core: beacon events {:.0}/s, \
         CDN log requests {:.0}/s, requests/events {:.2}",
        best.0,
        best.1,
        best.1 / best.0
    );
}
