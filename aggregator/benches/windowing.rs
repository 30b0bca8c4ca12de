//! Throughput of the windowing core alone (no I/O), and its memory per active view.
//!
//! `cargo bench -p qoe-aggregator --bench windowing` prints:
//! - events/s applying already-decoded events (one core),
//! - events/s decoding JSON message bytes and applying them (one core), one event per
//!   message and one beacon (2 events) per message,
//! - heap bytes held per active view (duplicate-tracking state of open windows).
//!
//! With `QOE_BENCH_SCALING=1` it also prints how the per-event cost and the memory grow with
//! the number of active views (1k to 1M) and of distinct slices (region x CDN x stream, 10 to
//! 100k): the scaling curves of BENCHMARKS.md.

use qoe_aggregator::window::{PartitionState, WindowConfig};
use qoe_schemas::{EventRef, EventType, MessageEncoder, MessageRef, QoeEvent, StreamType};
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Live-like traffic: `views` views, each sending a heartbeat every 10 s, over `secs` seconds.
fn events(views: usize, secs: i64) -> Vec<QoeEvent> {
    events_in_slices(views, secs, None)
}

/// The same, spread over exactly `slices` distinct region x CDN x stream slices when given
/// (otherwise 4 regions x 3 CDNs x 50 streams, as the views fall).
fn events_in_slices(views: usize, secs: i64, slices: Option<usize>) -> Vec<QoeEvent> {
    let regions = ["eu-west", "us-east", "ap-south", "sa-east"];
    let cdns = ["cdn-a", "cdn-b", "cdn-c"];
    let mut out = Vec::new();
    let t0 = 1_763_721_600_000i64;
    for tick in 0..secs {
        for v in 0..views {
            if (v as i64 + tick) % 10 != 0 {
                continue;
            }
            let seq = (tick / 10) as u32;
            let t = t0 + tick * 1000;
            let (region, cdn, stream) = match slices {
                None => (regions[v % 4], cdns[v % 3], v % 50),
                Some(n) => {
                    let s = v % n;
                    (regions[s % 4], cdns[(s / 4) % 3], s)
                }
            };
            out.push(QoeEvent {
                v: 1,
                view_id: format!("view-{v:08}"),
                stream_id: format!("channel-{stream}"),
                stream_type: StreamType::Live,
                cdn: cdn.into(),
                platform: "web".into(),
                player: "p".into(),
                protocol: "hls".into(),
                region: region.into(),
                custom: Default::default(),
                seq,
                kind: if seq == 0 {
                    EventType::ViewStart
                } else {
                    EventType::Heartbeat
                },
                ts: t,
                event_time: t,
                received_at: t + 150,
                started: Some(true),
                playing_ms: Some(10_000),
                stall_ms: Some(0),
                bitrate_kbps: Some(2500),
                prev_bitrate_kbps: None,
                startup_ms: None,
                latency_ms: Some(4000),
                dropped_frames: Some(1),
                code: None,
                fatal: None,
                reason: None,
            });
        }
    }
    out
}

/// The same events as messages of the per-beacon format, `per_beacon` events of a view in
/// each (a view's beacon is sent with its last event); returns the messages and their events.
fn beacon_messages(evs: &[QoeEvent], per_beacon: usize) -> (Vec<Vec<u8>>, usize) {
    let mut pending: HashMap<&str, Vec<&QoeEvent>> = HashMap::new();
    let (mut out, mut events) = (Vec::new(), 0);
    for e in evs {
        let held = pending.entry(e.view_id.as_str()).or_default();
        held.push(e);
        if held.len() == per_beacon {
            let (context, _) = e.parts();
            let fields: Vec<_> = held.drain(..).map(|e| e.parts().1).collect();
            events += fields.len();
            out.extend(MessageEncoder::for_beacon(&context).encode_beacon(&fields, 1 << 20));
        }
    }
    (out, events)
}

fn main() {
    let config = WindowConfig::default();
    let evs = events(20_000, 60);
    let bytes: Vec<Vec<u8>> = evs.iter().map(|e| e.encode()).collect();
    let (beacons, beacon_events) = beacon_messages(&evs, 2);
    let refs: Vec<EventRef<'_>> = evs.iter().map(QoeEvent::borrowed).collect();
    let n = evs.len() as f64;

    // Batches are taken every 50k events, as a flush would.
    let mut best_decoded = 0.0f64;
    let mut best_json = 0.0f64;
    let mut best_decode_only = 0.0f64;
    let (mut best_beacons, mut best_beacon_decode) = (0.0f64, 0.0f64);
    for _ in 0..3 {
        let t = Instant::now();
        for b in &beacons {
            std::hint::black_box(MessageRef::decode(b).expect("decodes"));
        }
        best_beacon_decode =
            best_beacon_decode.max(beacon_events as f64 / t.elapsed().as_secs_f64());

        let mut p = PartitionState::new(config.clone(), None);
        let t = Instant::now();
        for (o, b) in beacons.iter().enumerate() {
            MessageRef::decode(b).expect("decodes").for_each_event(|e| {
                p.apply(o as i64, e);
            });
            if o % 25_000 == 24_999 {
                std::hint::black_box(p.take_batch(false));
            }
        }
        best_beacons = best_beacons.max(beacon_events as f64 / t.elapsed().as_secs_f64());

        let t = Instant::now();
        for b in &bytes {
            std::hint::black_box(EventRef::decode(b).expect("decodes"));
        }
        best_decode_only = best_decode_only.max(n / t.elapsed().as_secs_f64());

        let mut p = PartitionState::new(config.clone(), None);
        let t = Instant::now();
        for (o, e) in refs.iter().enumerate() {
            p.apply(o as i64, e);
            if o % 50_000 == 49_999 {
                std::hint::black_box(p.take_batch(false));
            }
        }
        best_decoded = best_decoded.max(n / t.elapsed().as_secs_f64());

        let mut p = PartitionState::new(config.clone(), None);
        let t = Instant::now();
        for (o, b) in bytes.iter().enumerate() {
            let e = EventRef::decode(b).expect("decodes");
            p.apply(o as i64, &e);
            if o % 50_000 == 49_999 {
                std::hint::black_box(p.take_batch(false));
            }
        }
        best_json = best_json.max(n / t.elapsed().as_secs_f64());
    }
    println!("windowing core, one core, {} events:", evs.len());
    println!("  decoded events:      {:>12.0} events/s", best_decoded);
    println!("  from JSON bytes:     {:>12.0} events/s", best_json);
    println!(
        "  JSON decode alone:   {:>12.0} events/s (the ceiling of the line above)",
        best_decode_only
    );
    println!(
        "  from beacon messages:{:>12.0} events/s (2 events per message; decode alone {:.0})",
        best_beacons, best_beacon_decode
    );

    // Memory per active view: state held between batches (each view's counted sequence
    // numbers and context, CMCD tracking of open windows) once 100k views are active and
    // batches have been written; and the size of the state snapshot stored with a checkpoint.
    let views = 100_000;
    let evs = events(views, 40);
    let before = LIVE.load(Ordering::Relaxed);
    let mut p = PartitionState::new(config.clone(), None);
    for (o, e) in evs.iter().enumerate() {
        p.apply(o as i64, &e.borrowed());
        if o % 50_000 == 49_999 {
            drop(p.take_batch(false));
        }
    }
    drop(p.take_batch(false));
    let held = LIVE.load(Ordering::Relaxed) - before;
    println!(
        "  state after batches: {} bytes for {} active views = {:.0} bytes/view ({} views held)",
        held,
        views,
        held as f64 / views as f64,
        p.views(),
    );
    let t = Instant::now();
    let snapshot = p.snapshot();
    println!(
        "  state snapshot:      {} bytes = {:.0} bytes/view, written in {:.0} ms",
        snapshot.len(),
        snapshot.len() as f64 / views as f64,
        t.elapsed().as_secs_f64() * 1000.0
    );

    if std::env::var("QOE_BENCH_SCALING").is_ok_and(|v| v == "1") {
        scaling(config);
    }
}

/// One configuration's figures: events/s from JSON bytes (decode + apply, a batch taken every
/// 50,000 events, the best of 2), heap bytes held per active view once the batches are taken,
/// and the window rows written per 1,000 events.
fn measure(config: WindowConfig, evs: &[QoeEvent], views: usize) -> (f64, f64, f64) {
    let bytes: Vec<Vec<u8>> = evs.iter().map(|e| e.encode()).collect();
    let n = evs.len() as f64;
    let mut best = 0.0f64;
    let mut held = 0isize;
    let mut rows = 0;
    for _ in 0..2 {
        let before = LIVE.load(Ordering::Relaxed);
        let mut p = PartitionState::new(config.clone(), None);
        rows = 0;
        let t = Instant::now();
        for (o, b) in bytes.iter().enumerate() {
            let e = EventRef::decode(b).expect("decodes");
            p.apply(o as i64, &e);
            if o % 50_000 == 49_999 {
                rows += p.take_batch(false).0.window_rows().count();
            }
        }
        rows += p.take_batch(false).0.window_rows().count();
        best = best.max(n / t.elapsed().as_secs_f64());
        held = LIVE.load(Ordering::Relaxed) - before;
    }
    (best, held as f64 / views as f64, rows as f64 * 1000.0 / n)
}

fn scaling(config: WindowConfig) {
    println!("\nscaling, one core, from JSON bytes (30 s of heartbeats: 3 events per view):");
    println!("  active views | events/s | ns/event | bytes held/view");
    for views in [1_000, 10_000, 100_000, 1_000_000] {
        let evs = events(views, 30);
        let (rate, per_view, _) = measure(config.clone(), &evs, views);
        println!(
            "  {views:>12} | {rate:>8.0} | {:>8.0} | {per_view:>15.0}",
            1e9 / rate
        );
    }
    println!("  distinct slices (100,000 views) | events/s | ns/event | bytes held/view | window rows per 1,000 events");
    for slices in [10, 100, 1_000, 10_000, 100_000] {
        let evs = events_in_slices(100_000, 30, Some(slices));
        let (rate, per_view, rows) = measure(config.clone(), &evs, 100_000);
        println!(
            "  {slices:>31} | {rate:>8.0} | {:>8.0} | {per_view:>15.0} | {rows:>8.1}",
            1e9 / rate
        );
    }
}
