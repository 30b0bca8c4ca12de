//! Throughput of the windowing core alone (no I/O), and its memory per active view.
//!
//! `cargo bench -p qoe-aggregator --bench windowing` prints:
//! - events/s applying already-decoded events (one core),
//! - events/s decoding JSON message bytes and applying them (one core),
//! - heap bytes held per active view (duplicate-tracking state of open windows).

use qoe_aggregator::window::{PartitionState, WindowConfig};
use qoe_schemas::{EventRef, EventType, QoeEvent, StreamType};
use std::alloc::{GlobalAlloc, Layout, System};
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
            out.push(QoeEvent {
                v: 1,
                view_id: format!("view-{v:08}"),
                stream_id: format!("channel-{}", v % 50),
                stream_type: StreamType::Live,
                cdn: cdns[v % 3].into(),
                platform: "web".into(),
                player: "p".into(),
                protocol: "hls".into(),
                region: regions[v % 4].into(),
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

fn main() {
    let config = WindowConfig::default();
    let evs = events(20_000, 60);
    let bytes: Vec<Vec<u8>> = evs.iter().map(|e| e.encode()).collect();
    let refs: Vec<EventRef<'_>> = evs.iter().map(QoeEvent::borrowed).collect();
    let n = evs.len() as f64;

    // Batches are taken every 50k events, as a flush would.
    let mut best_decoded = 0.0f64;
    let mut best_json = 0.0f64;
    let mut best_decode_only = 0.0f64;
    for _ in 0..3 {
        let t = Instant::now();
        for b in &bytes {
            std::hint::black_box(EventRef::decode(b).expect("decodes"));
        }
        best_decode_only = best_decode_only.max(n / t.elapsed().as_secs_f64());

        let mut p = PartitionState::new(config, None);
        let t = Instant::now();
        for (o, e) in refs.iter().enumerate() {
            p.apply(o as i64, e);
            if o % 50_000 == 49_999 {
                std::hint::black_box(p.take_batch(false));
            }
        }
        best_decoded = best_decoded.max(n / t.elapsed().as_secs_f64());

        let mut p = PartitionState::new(config, None);
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

    // Memory per active view: state held between batches (each view's counted sequence
    // numbers and context, CMCD tracking of open windows) once 100k views are active and
    // batches have been written; and the size of the state snapshot stored with a checkpoint.
    let views = 100_000;
    let evs = events(views, 40);
    let before = LIVE.load(Ordering::Relaxed);
    let mut p = PartitionState::new(config, None);
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
}
