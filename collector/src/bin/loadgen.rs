//! `loadgen`: posts realistic batched beacons to a collector over keep-alive connections, at a
//! target rate or flat out, and reports events/s, requests/s and latency percentiles.
//!
//! Each simulated view goes view_start -> first_frame -> heartbeats (with the occasional
//! stall and bitrate switch) -> view_end, with its own seq numbers, spread over regions,
//! CDNs and platforms. Deterministic for a given --seed.
//!
//! Latency is per request. Flat out it counts from sending; at a target rate it counts from
//! when the request was due, so time spent waiting behind a slow response is included.

use clap::Parser;
use qoe_schemas::RawEvent;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "loadgen",
    version,
    about = "Load generator for the QoE beacon collector"
)]
struct Args {
    /// Collector base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Target events per second across all connections (0: as fast as possible). Latency is
    /// then measured from each request's scheduled time.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// How long to run.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Events per request.
    #[arg(long, default_value_t = 20)]
    batch: u32,
    /// Concurrent connections (each sends one request at a time).
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Simulated views per connection, cycled through.
    #[arg(long, default_value_t = 50)]
    views_per_connection: usize,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// What to post: `beacons` (one beacon of `--batch` events per request to /v1/beacons) or
    /// `cmcd` (the same events as CMCD v2 reports, one line each, to /v1/cmcd).
    #[arg(long, value_enum, default_value_t = Protocol::Beacons)]
    protocol: Protocol,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq)]
enum Protocol {
    Beacons,
    Cmcd,
}

struct ViewSim {
    id: String,
    region: &'static str,
    cdn: &'static str,
    platform: &'static str,
    stream: String,
    seq: u32,
    bitrate: u32,
    started: bool,
    heartbeats_left: u32,
}

const REGIONS: [&str; 4] = ["eu-west", "us-east", "ap-south", "sa-east"];
const CDNS: [&str; 3] = ["cdn-a", "cdn-b", "cdn-c"];
const PLATFORMS: [&str; 3] = ["web", "ios", "android"];

impl ViewSim {
    fn new(rng: &mut StdRng, n: u64) -> Self {
        ViewSim {
            id: format!("lg-{}-{n}", rng.random::<u32>()),
            region: REGIONS[rng.random_range(0..REGIONS.len())],
            cdn: CDNS[rng.random_range(0..CDNS.len())],
            platform: PLATFORMS[rng.random_range(0..PLATFORMS.len())],
            stream: format!("channel-{}", rng.random_range(0..20)),
            seq: 0,
            bitrate: 2500,
            started: false,
            heartbeats_left: rng.random_range(5..200),
        }
    }

    /// Next `n` events of this view; returns true when the view ended.
    fn events(&mut self, rng: &mut StdRng, n: u32, out: &mut Vec<RawEvent<'static>>) -> bool {
        let now = qoe_telemetry::process::now_ms();
        for _ in 0..n {
            let seq = self.seq;
            self.seq += 1;
            let ts = now - 1000 + i64::from(seq % 1000);
            let e = if seq == 0 {
                RawEvent::new(seq, "view_start", ts)
            } else if !self.started {
                self.started = true;
                RawEvent {
                    startup_ms: Some(rng.random_range(300..4000)),
                    bitrate_kbps: Some(self.bitrate),
                    ..RawEvent::new(seq, "first_frame", ts)
                }
            } else if self.heartbeats_left == 0 {
                out.push(RawEvent {
                    reason: Some("exit".into()),
                    started: Some(true),
                    ..RawEvent::new(seq, "view_end", ts)
                });
                return true;
            } else {
                self.heartbeats_left -= 1;
                let r: f64 = rng.random();
                if r < 0.05 {
                    RawEvent {
                        playing_ms: Some(4000),
                        bitrate_kbps: Some(self.bitrate),
                        ..RawEvent::new(seq, "stall_start", ts)
                    }
                } else if r < 0.1 {
                    let prev = self.bitrate;
                    self.bitrate = [800, 1500, 2500, 4500][rng.random_range(0..4)];
                    RawEvent {
                        bitrate_kbps: Some(self.bitrate),
                        prev_bitrate_kbps: Some(prev),
                        playing_ms: Some(2000),
                        ..RawEvent::new(seq, "bitrate_change", ts)
                    }
                } else {
                    RawEvent {
                        playing_ms: Some(10000),
                        stall_ms: Some(if r < 0.15 { 700 } else { 0 }),
                        bitrate_kbps: Some(self.bitrate),
                        latency_ms: Some(4000),
                        dropped_frames: Some(1),
                        started: Some(true),
                        ..RawEvent::new(seq, "heartbeat", ts)
                    }
                }
            };
            out.push(e);
        }
        false
    }

    fn beacon<'a>(&'a self, events: &'a [RawEvent<'static>]) -> Beacon<'a> {
        Beacon {
            sent_at: qoe_telemetry::process::now_ms(),
            view: View {
                view_id: &self.id,
                stream_id: &self.stream,
                stream_type: "live",
                cdn: self.cdn,
                platform: self.platform,
                player: "loadgen/1",
                protocol: "hls",
                region: self.region,
            },
            events,
        }
    }
}

impl ViewSim {
    /// The same events as CMCD v2 event-mode reports, one line each (what hls.js would send
    /// for them).
    fn cmcd_body(&self, events: &[RawEvent<'static>], out: &mut String) {
        use std::fmt::Write;
        out.clear();
        for e in events {
            let keys = match &*e.kind {
                "view_start" => "e=ps,sta=s".to_owned(),
                "first_frame" => format!("e=ps,sta=p,br=({})", e.bitrate_kbps.unwrap_or(0)),
                "stall_start" => "e=ps,sta=r".to_owned(),
                "bitrate_change" => format!("e=bc,br=({})", e.bitrate_kbps.unwrap_or(0)),
                "view_end" => "e=ps,sta=q".to_owned(),
                _ => format!(
                    "e=t,br=({}),ltc={}",
                    e.bitrate_kbps.unwrap_or(0),
                    e.latency_ms.unwrap_or(0)
                ),
            };
            let _ = writeln!(
                out,
                "{keys},cid=\"{}\",sf=h,sid=\"{}\",sn={},st=l,ts={},v=2",
                self.stream, self.id, e.seq, e.ts
            );
        }
    }
}

// Typed beacon structs rather than `serde_json::Value`: building a body costs the load
// generator a fraction of the CPU, which is left to the collector on a shared machine.
#[derive(Serialize)]
struct Beacon<'a> {
    sent_at: i64,
    view: View<'a>,
    events: &'a [RawEvent<'static>],
}

#[derive(Serialize)]
struct View<'a> {
    view_id: &'a str,
    stream_id: &'a str,
    stream_type: &'static str,
    cdn: &'static str,
    platform: &'static str,
    player: &'static str,
    protocol: &'static str,
    region: &'static str,
}

// The load generator shares the machine with what it measures: the cheaper its allocations,
// the more CPU is left to the collector.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections)
        .timeout(Duration::from_secs(30))
        .build()?;
    let (path, content_type) = match args.protocol {
        Protocol::Beacons => ("/v1/beacons", "text/plain"),
        Protocol::Cmcd => ("/v1/cmcd", "application/cmcd"),
    };
    let url = format!("{}{path}", args.url.trim_end_matches('/'));
    let deadline = Instant::now() + Duration::from_secs(args.duration_secs);
    let sent_events = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::<u32>::new()));
    let statuses = Arc::new(Mutex::new(std::collections::BTreeMap::<u16, u64>::new()));
    // Pacing is per event, not per request: a view's last request carries fewer than
    // `batch` events, and the target is events/s.
    let per_event_interval = (args.rate > 0)
        .then(|| Duration::from_secs_f64(args.connections as f64 / args.rate as f64));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        let (client, url) = (client.clone(), url.clone());
        let (sent_events, latencies, statuses) =
            (sent_events.clone(), latencies.clone(), statuses.clone());
        let args = args.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng =
                StdRng::seed_from_u64(args.seed.wrapping_mul(1000).wrapping_add(c as u64));
            let mut counter = 0u64;
            let mut views: Vec<ViewSim> = (0..args.views_per_connection)
                .map(|_| {
                    counter += 1;
                    ViewSim::new(&mut rng, counter)
                })
                .collect();
            let mut next_at = Instant::now();
            let mut lat = Vec::new();
            let mut events = Vec::with_capacity(args.batch as usize);
            let mut cmcd = String::new();
            let mut i = 0;
            while Instant::now() < deadline {
                // Paced: latency counts from when the request was due, so a collector that
                // falls behind shows up in the percentiles (no coordinated omission).
                let due = next_at;
                if per_event_interval.is_some() {
                    tokio::time::sleep_until(due.into()).await;
                }
                let v = i % views.len();
                i += 1;
                events.clear();
                let ended = views[v].events(&mut rng, args.batch, &mut events);
                let n = events.len() as u64;
                if let Some(interval) = per_event_interval {
                    next_at += interval * events.len() as u32;
                }
                let body = match args.protocol {
                    Protocol::Beacons => {
                        serde_json::to_vec(&views[v].beacon(&events)).unwrap_or_default()
                    }
                    Protocol::Cmcd => {
                        views[v].cmcd_body(&events, &mut cmcd);
                        cmcd.clone().into_bytes()
                    }
                };
                if ended {
                    counter += 1;
                    views[v] = ViewSim::new(&mut rng, counter);
                }
                let t = if per_event_interval.is_some() {
                    due
                } else {
                    Instant::now()
                };
                let status = match client
                    .post(&url)
                    .header("content-type", content_type)
                    .body(body)
                    .send()
                    .await
                {
                    Ok(r) => r.status().as_u16(),
                    Err(_) => 0,
                };
                lat.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                if status / 100 == 2 {
                    sent_events.fetch_add(n, Ordering::Relaxed);
                }
                *statuses
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(status)
                    .or_default() += 1;
            }
            latencies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(lat);
        }));
    }
    for t in tasks {
        t.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut lat = latencies.lock().unwrap_or_else(|p| p.into_inner()).clone();
    lat.sort_unstable();
    let pct = |q: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let idx = ((lat.len() as f64 - 1.0) * q).round() as usize;
        f64::from(lat[idx]) / 1000.0
    };
    let requests = lat.len() as f64;
    let events = sent_events.load(Ordering::Relaxed) as f64;
    println!(
        "requests/s {:.0}  accepted events/s {:.0}  latency ms p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}  statuses {:?}  ({:.1} s)",
        requests / elapsed,
        events / elapsed,
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0),
        statuses.lock().unwrap_or_else(|p| p.into_inner()),
        elapsed
    );
    Ok(())
}
