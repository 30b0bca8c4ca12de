//! The collector's per-request CPU without I/O: the same 20 events as one beacon
//! (`ingest::process`, then each event's Kafka message) and as 20 CMCD v2 lines
//! (`cmcd::process`, which builds each report's Kafka message).
//!
//! `cargo bench -p qoe-collector --bench ingest` prints ns per event for both, and their ratio.

use qoe_collector::cmcd::{self, CdnHostMap, ClientDefaults};
use qoe_collector::ingest;
use qoe_schemas::{Limits, MessageEncoder};
use std::hint::black_box;
use std::time::Instant;

const EVENTS: usize = 20;

fn main() {
    let now = qoe_telemetry::process::now_ms();
    let limits = Limits::default();
    let mut beacon_events = Vec::new();
    let mut cmcd_lines = String::new();
    for i in 0..EVENTS {
        let ts = now - 1000 + i as i64;
        let (event, line) = match i {
            0 => (
                format!(r#"{{"seq":{i},"type":"view_start","ts":{ts}}}"#),
                "e=ps,sta=s".to_owned(),
            ),
            1 => (
                format!(
                    r#"{{"seq":{i},"type":"first_frame","ts":{ts},"startup_ms":900,"bitrate_kbps":2500}}"#
                ),
                "e=ps,sta=p,br=(2500)".to_owned(),
            ),
            _ => (
                format!(
                    r#"{{"seq":{i},"type":"heartbeat","ts":{ts},"playing_ms":10000,"stall_ms":0,"bitrate_kbps":2500,"latency_ms":4000,"dropped_frames":1,"started":true}}"#
                ),
                "e=t,br=(2500),ltc=4000".to_owned(),
            ),
        };
        beacon_events.push(event);
        cmcd_lines.push_str(&format!(
            "{line},cid=\"channel-7\",sf=h,sid=\"lg-123456-7\",sn={i},st=l,ts={ts},v=2\n"
        ));
    }
    let beacon = format!(
        r#"{{"sent_at":{now},"view":{{"view_id":"lg-123456-7","stream_id":"channel-7","stream_type":"live","cdn":"cdn-a","platform":"web","player":"loadgen/1","protocol":"hls","region":"eu-west"}},"events":[{}]}}"#,
        beacon_events.join(",")
    );
    let defaults = ClientDefaults::new(None, None, None, None, &limits);
    let hosts = CdnHostMap::default();

    let rounds = 20_000;
    let mut best = (f64::MAX, f64::MAX);
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..rounds {
            let a = ingest::process(beacon.as_bytes(), now, None, &limits).expect("valid beacon");
            let encoder = MessageEncoder::new(&a.context);
            for e in &a.events {
                black_box(encoder.encode(e));
            }
        }
        let beacons = t.elapsed().as_nanos() as f64 / (rounds * EVENTS) as f64;
        let t = Instant::now();
        for _ in 0..rounds {
            let batch = cmcd::process(
                cmcd_lines.as_bytes(),
                now,
                "eu-west",
                &defaults,
                &hosts,
                &limits,
            );
            assert_eq!(batch.messages.len(), EVENTS);
            black_box(batch);
        }
        let reports = t.elapsed().as_nanos() as f64 / (rounds * EVENTS) as f64;
        best = (best.0.min(beacons), best.1.min(reports));
    }
    println!(
        "per event, best of 5 x {rounds} requests of {EVENTS}: beacon {:.0} ns, CMCD {:.0} ns, CMCD/beacon {:.2}",
        best.0,
        best.1,
        best.1 / best.0
    );
}
