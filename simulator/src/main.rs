//! `simulator`: viewers watching live and VOD streams, posting beacons to a collector the
//! way player SDKs do, with optional incidents; prints progress while it runs and a summary
//! at the end, and can write the ground truth of everything the collector acknowledged.
//!
//! The simulation itself is pure (see the library); this binary paces its ticks against the
//! wall clock (`--speed`), posts each tick's beacons concurrently, retries 429/503 with
//! backoff, and waits for every beacon of a tick before starting the next, which keeps every
//! event within one flush interval of the newest one sent.

use anyhow::{bail, Context};
use clap::Parser;
use qoe_simulator::delivery::{LogOutcome, Outcome, Sender};
use qoe_simulator::incident::{parse_duration_ms, Incident};
use qoe_simulator::offline::{self, SliceRows};
use qoe_simulator::simulation::{Audience, Settings, Simulation, TICK_MS};
use qoe_simulator::truth::{Truth, TruthFile, METRIC_COLUMNS};
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;

#[derive(Parser, Debug)]
#[command(
    name = "simulator",
    version,
    about = "Simulated viewers posting QoE beacons to the collector, with optional incidents",
    long_about = "Simulates viewers watching live and VOD streams across regions, CDNs and \
platforms. Each view behaves like a player SDK (startup, heartbeats, stalls, ABR switches, \
errors, exits) and posts batched beacons to the collector, retrying 429 and 503 with backoff. \
Simulated time can run faster than wall time (--speed); event times stay in the past, so the \
collector accepts them. Deterministic for a given --seed.\n\nExample: 20 minutes of viewing \
in 2 minutes, with a CDN incident:\n  simulator --duration 20m --speed 10 \\\n    --incident \
region=eu-west,cdn=cdn-b,start=8m,duration=3m,stalls=5,startup=3,start_failures=0.25"
)]
struct Args {
    /// Collector base URL.
    #[arg(
        long,
        env = "QOE_COLLECTOR_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    url: String,
    /// Ingest key sent with every beacon, if the collector requires one.
    #[arg(long, env = "QOE_INGEST_KEY")]
    ingest_key: Option<String>,
    /// Random seed: the same seed and settings give the same beacons.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Error codes the aggregator counts as business errors (its --business-error-codes, same
    /// variable): the ground truth leaves them out of start and playback failures (see
    /// --business-refusal-rate).
    #[arg(
        long,
        env = "QOE_BUSINESS_ERROR_CODES",
        value_name = "CODES",
        default_value = ""
    )]
    business_error_codes: String,
    /// Prefix of every view_id (default: sim<seed>-<start time>), so runs never share views.
    #[arg(long)]
    run_id: Option<String>,
    /// Target number of concurrent viewers.
    #[arg(long, default_value_t = 2000)]
    viewers: usize,
    /// Simulated duration (e.g. 90s, 20m, 2h).
    #[arg(long, default_value = "20m", value_parser = duration_arg)]
    duration: i64,
    /// Simulated seconds per wall-clock second (time compression); 0 runs as fast as the
    /// collector answers.
    #[arg(long, default_value_t = 10.0)]
    speed: f64,
    /// Simulated start time, ms since the epoch (default: so that the run ends now + its wall
    /// time, i.e. event times never lie in the future).
    #[arg(long)]
    start_ms: Option<i64>,
    /// SDK flush interval in simulated seconds (beacons also flush at once on start, first
    /// frame, errors and end).
    #[arg(long, default_value_t = 15)]
    flush_secs: u32,
    /// How long the audience takes to build up, simulated.
    #[arg(long, default_value = "60s", value_parser = duration_arg)]
    ramp: i64,
    /// Inject an incident into one region x CDN slice (repeatable), e.g.
    /// region=eu-west,cdn=cdn-b,start=8m,duration=3m,stalls=5,startup=3,start_failures=0.25
    #[arg(long = "incident")]
    incidents: Vec<Incident>,
    /// Share of beacons sent twice (a client retrying after a lost response).
    #[arg(long, default_value_t = 0.02)]
    duplicate_rate: f64,
    /// Share of beacons with two neighbouring events swapped.
    #[arg(long, default_value_t = 0.05)]
    reorder_rate: f64,
    /// Share of small beacons sent again 30-80 simulated seconds later with their original
    /// sent_at (an offline queue that missed the acknowledgement): the collector moves their
    /// events into a later window, and they must still count once.
    #[arg(long, default_value_t = 0.01)]
    resend_rate: f64,
    /// Share of departures after playback that send nothing more (closed tab, crashed app):
    /// no view_end; the aggregator ends such views by timeout.
    #[arg(long, default_value_t = 0.05)]
    silent_exit_rate: f64,
    /// Share of starts the service refuses on purpose with a business error
    /// (ENTITLEMENT_DENIED, GEO_BLOCKED, CONCURRENT_STREAM_LIMIT), in every slice alike; about
    /// 0.006 on a real service. Count them apart with --business-error-codes here and on the
    /// aggregator.
    #[arg(long, default_value_t = 0.0)]
    business_refusal_rate: f64,
    /// Share of Android and iOS views that are native apps (Media3, AVPlayer): they send no
    /// beacons; their CDN logs their requests with CMCD v1 keys and a log stream posts the
    /// lines to the collector's POST /v1/cdn-logs (request-mode metrics, rm_*).
    #[arg(long, default_value_t = 0.0)]
    native_share: f64,
    /// Most requests in flight at once.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Attempts per beacon before giving up (429, 503, timeouts and connection errors retry).
    #[arg(long, default_value_t = 8)]
    max_attempts: u32,
    /// Window length the ground truth is computed at (the aggregator's --window-secs).
    #[arg(long, default_value_t = 10)]
    window_secs: u32,
    /// The aggregator's allowed lateness: the flush interval must stay below it, or events
    /// could arrive late and the ground truth would not be exact.
    #[arg(long, default_value_t = 30)]
    allowed_lateness_secs: u32,
    /// The collector's maximum event age: the simulated start may not be older.
    #[arg(long, default_value_t = 3600)]
    max_event_age_secs: u64,
    /// Write the ground truth (expected rows of every window and slice, JSON) to this file;
    /// `-` for standard output.
    #[arg(long)]
    truth_out: Option<String>,
    /// How the audience size moves: `flat` (--viewers all along) or `diurnal` (--viewers at
    /// --peak-hour, --trough of that twelve hours away, a cosine in between, with busier
    /// networks at peak: --congestion).
    #[arg(long, value_enum, default_value_t = AudienceShape::Flat)]
    audience: AudienceShape,
    /// Diurnal audience: the night trough as a share of the peak.
    #[arg(long, default_value_t = 0.1)]
    trough: f64,
    /// Diurnal audience: the UTC hour (of simulated time) of the peak.
    #[arg(long, default_value_t = 20.0)]
    peak_hour: f64,
    /// Diurnal audience: at peak every slice stalls this much more often (0.3: +30 %) and
    /// starts half that much slower; none at the trough.
    #[arg(long, default_value_t = 0.3)]
    congestion: f64,
    /// Add small regions (af-south, me-central) whose slices hold a few viewers each.
    #[arg(long)]
    long_tail: bool,
    /// Run without a collector: every generated event counts once (there is no network, so
    /// no duplicates or late re-sends), summed per --window-secs window and region x CDN, and
    /// written to this file (`-`: standard output) as ClickHouse JSONEachRow rows of the
    /// `qoe_window_*` tables (other dimensions empty). Simulated time runs flat out and may
    /// lie anywhere (--start-ms). For evaluating alert rules over a simulated day.
    #[arg(long, value_name = "FILE")]
    offline_rows: Option<String>,
    /// Seconds between progress lines on standard error (0: none).
    #[arg(long, default_value_t = 5)]
    progress_secs: u64,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum AudienceShape {
    Flat,
    Diurnal,
}

fn duration_arg(s: &str) -> Result<i64, String> {
    parse_duration_ms(s).ok_or_else(|| format!("{s:?} is not a duration like 90s, 20m or 2h"))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn clock(ms: i64) -> String {
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

#[derive(Default)]
struct Totals {
    beacons: u64,
    resent: u64,
    late_copies: u64,
    acked: u64,
    unacked: u64,
    uncertain: u64,
    requests: u64,
    retries: u64,
    statuses: BTreeMap<u16, u64>,
    last_error: Option<String>,
    /// Native players' logged requests acknowledged (copies included).
    requests_acked: u64,
}

impl Totals {
    fn add_logs(&mut self, o: &LogOutcome) {
        self.requests_acked += o.acked.len() as u64;
        self.unacked += o.unacked;
        self.uncertain += o.uncertain;
        if o.error.is_some() {
            self.last_error.clone_from(&o.error);
        }
    }

    fn add(&mut self, o: &Outcome) {
        self.acked += o.acked.len() as u64;
        self.unacked += o.unacked;
        self.uncertain += o.uncertain;
        self.retries += o.retries;
        for (s, n) in &o.statuses {
            *self.statuses.entry(*s).or_default() += n;
            self.requests += n;
        }
        if o.error.is_some() {
            self.last_error.clone_from(&o.error);
        }
    }
}

fn settings(args: &Args) -> anyhow::Result<Settings> {
    if args.viewers == 0 {
        bail!("--viewers must be at least 1");
    }
    if args.duration < TICK_MS {
        bail!("--duration must be at least 1s");
    }
    if [
        args.duplicate_rate,
        args.reorder_rate,
        args.resend_rate,
        args.silent_exit_rate,
        args.business_refusal_rate,
        args.native_share,
    ]
    .iter()
    .any(|r| !(0.0..=1.0).contains(r))
    {
        bail!("--duplicate-rate, --reorder-rate, --resend-rate, --silent-exit-rate, --business-refusal-rate and --native-share are shares between 0 and 1");
    }
    if !(args.speed >= 0.0 && args.speed.is_finite()) {
        bail!("--speed must be 0 (flat out) or a positive number");
    }
    if args.window_secs == 0 {
        bail!("--window-secs must be at least 1");
    }
    if args.flush_secs == 0 || args.flush_secs + 2 >= args.allowed_lateness_secs {
        bail!(
            "--flush-secs ({}) must be between 1 and the allowed lateness minus 2 s ({} s): \
             a view's events wait up to one flush interval, and must not arrive late",
            args.flush_secs,
            args.allowed_lateness_secs.saturating_sub(3)
        );
    }
    if !(0.0 < args.trough && args.trough <= 1.0) {
        bail!("--trough must be a share of the peak in (0, 1]");
    }
    if !(0.0..24.0).contains(&args.peak_hour) {
        bail!("--peak-hour must be an hour of the day, 0 to 24");
    }
    if !(0.0..=10.0).contains(&args.congestion) {
        bail!("--congestion must be between 0 and 10");
    }
    let audience = match args.audience {
        AudienceShape::Flat => Audience::Flat,
        AudienceShape::Diurnal => Audience::Diurnal {
            trough: args.trough,
            peak_hour: args.peak_hour,
            congestion: args.congestion,
        },
    };
    let offline = args.offline_rows.is_some();
    let wall_ms = if args.speed > 0.0 && !offline {
        (args.duration as f64 / args.speed) as i64
    } else {
        0
    };
    let start_ms = args
        .start_ms
        .unwrap_or_else(|| now_ms() + wall_ms - args.duration);
    let oldest_allowed = now_ms() - (args.max_event_age_secs as i64) * 1000 + 60_000;
    if start_ms < oldest_allowed && !offline {
        bail!(
            "the simulated run would start {} ago, older than the collector's maximum event age \
             ({} s, with a minute to spare): shorten --duration, raise --speed less, or start the \
             collector with a larger --max-event-age-secs and pass it here",
            clock(now_ms() - start_ms),
            args.max_event_age_secs
        );
    }
    if start_ms + args.duration > now_ms() + wall_ms + 60_000 && !offline {
        bail!("--start-ms puts simulated events in the future; the collector would reject them");
    }
    let run_id = args
        .run_id
        .clone()
        .unwrap_or_else(|| format!("sim{}-{}", args.seed, start_ms / 1000));
    if !qoe_schemas::validate::is_valid_view_id(&format!("{run_id}-18446744073709551615")) {
        bail!("--run-id must be a short string of [A-Za-z0-9_.:-]");
    }
    Ok(Settings {
        seed: args.seed,
        run_id,
        viewers: args.viewers,
        start_ms,
        span_ms: args.duration,
        flush_ms: i64::from(args.flush_secs) * 1000,
        ramp_ms: args.ramp.max(1),
        incidents: args.incidents.clone(),
        // Offline there is no network to lose a response or hold a batch back.
        duplicate_rate: if offline { 0.0 } else { args.duplicate_rate },
        reorder_rate: args.reorder_rate,
        resend_rate: if offline { 0.0 } else { args.resend_rate },
        silent_exit_rate: args.silent_exit_rate,
        business_refusal_rate: args.business_refusal_rate,
        window_ms: i64::from(args.window_secs) * 1000,
        audience,
        long_tail: args.long_tail,
        // Offline rows are beacon rows: native viewers need a collector's log endpoint.
        native_share: if offline { 0.0 } else { args.native_share },
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings = settings(&args)?;
    if let Some(path) = &args.offline_rows {
        return run_offline(&args, settings, path);
    }
    let sender = Arc::new(Sender {
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(args.connections)
            .timeout(Duration::from_secs(30))
            .build()
            .context("building the HTTP client")?,
        url: format!("{}/v1/beacons", args.url.trim_end_matches('/')),
        ingest_key: args.ingest_key.clone(),
        max_attempts: args.max_attempts.max(1),
    });
    let limit = Arc::new(Semaphore::new(args.connections.max(1)));
    let business = qoe_schemas::errors::BusinessCodes::parse(&args.business_error_codes)
        .context("--business-error-codes")?;
    let mut truth = Truth::new(i64::from(args.window_secs) * 1000).with_business(business);
    let mut native_log = qoe_simulator::native::NativeLog::default();
    let mut totals = Totals::default();
    let mut sim = Simulation::new(settings.clone());
    eprintln!(
        "[sim] {} viewers, {} simulated at {}x, seed {}, views {}-*, posting to {}",
        args.viewers,
        clock(args.duration),
        args.speed,
        args.seed,
        settings.run_id,
        args.url
    );
    for inc in &settings.incidents {
        eprintln!("[sim] incident: {inc}");
    }
    let wall_start = Instant::now();
    let mut next_progress = Duration::from_secs(args.progress_secs);
    let mut ticks: u64 = 0;
    while !sim.finished() {
        let beacons = sim.tick();
        ticks += 1;
        let mut tasks = tokio::task::JoinSet::new();
        let (native, beacons): (Vec<_>, Vec<_>) = beacons.into_iter().partition(|b| b.native);
        let mut log_tasks = tokio::task::JoinSet::new();
        for (i, b) in native.into_iter().enumerate() {
            let requests = native_log.requests(&b.ctx, &b.events);
            let (sender, limit) = (sender.clone(), limit.clone());
            log_tasks.spawn(async move {
                let _permit = limit.acquire_owned().await;
                (i, sender.deliver_logs(requests, b.copies).await)
            });
        }
        for (i, b) in beacons.into_iter().enumerate() {
            totals.beacons += 1;
            totals.resent += u64::from(b.copies.saturating_sub(1));
            totals.late_copies += u64::from(b.shift_ms > 0);
            let (sender, limit) = (sender.clone(), limit.clone());
            tasks.spawn(async move {
                let _permit = limit.acquire_owned().await;
                (i, sender.deliver(b).await)
            });
        }
        let mut log_outcomes: Vec<(usize, LogOutcome)> = log_tasks.join_all().await;
        log_outcomes.sort_by_key(|(i, _)| *i);
        for (_, o) in &log_outcomes {
            totals.add_logs(o);
            for r in &o.acked {
                truth.record_request(r);
            }
        }
        let mut outcomes: Vec<(usize, Outcome)> = tasks.join_all().await;
        // Record in a fixed order, so the truth never depends on which request finished first.
        outcomes.sort_by_key(|(i, _)| *i);
        for (_, o) in &outcomes {
            totals.add(o);
            for e in &o.acked {
                truth.record(e);
            }
        }
        if args.speed > 0.0 {
            let due = Duration::from_secs_f64(ticks as f64 * TICK_MS as f64 / 1000.0 / args.speed);
            if let Some(wait) = due.checked_sub(wall_start.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        if args.progress_secs > 0 && wall_start.elapsed() >= next_progress {
            next_progress += Duration::from_secs(args.progress_secs);
            progress(&sim, &totals, wall_start.elapsed(), args.duration);
        }
    }
    progress(&sim, &totals, wall_start.elapsed(), args.duration);
    summary(&truth, &totals, &sim, wall_start.elapsed());

    if let Some(path) = &args.truth_out {
        let file = TruthFile {
            window_secs: args.window_secs,
            columns: METRIC_COLUMNS.iter().map(|c| c.to_string()).collect(),
            rows: truth.rows(),
            views: truth.views() as u64,
            acknowledged_events: totals.acked,
            acknowledged_requests: totals.requests_acked,
            late_copies: totals.late_copies,
            unended_views: truth.unended_views(),
            unacknowledged_events: totals.unacked,
            uncertain_events: totals.uncertain,
            error_codes: truth.error_code_rows(),
        };
        let json = serde_json::to_vec(&file).context("encoding the ground truth")?;
        if path == "-" {
            std::io::stdout().write_all(&json)?;
            println!();
        } else {
            std::fs::write(path, json).with_context(|| format!("writing {path}"))?;
            eprintln!("[sim] ground truth written to {path}");
        }
    }
    if totals.acked == 0 {
        bail!(
            "the collector acknowledged no events (last error: {})",
            totals.last_error.as_deref().unwrap_or("none")
        );
    }
    Ok(())
}

/// `--offline-rows`: the simulation flat out, its rows written as their windows close.
fn run_offline(args: &Args, settings: Settings, path: &str) -> anyhow::Result<()> {
    let mut out: Box<dyn Write> = if path == "-" {
        Box::new(std::io::BufWriter::new(std::io::stdout().lock()))
    } else {
        Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {path}"))?,
        ))
    };
    eprintln!(
        "[sim] offline: {} viewers ({:?}), {} simulated from {} UTC, seed {}, rows per {} s x region x CDN to {path}",
        args.viewers,
        settings.audience,
        clock(args.duration),
        qoe_simulator::offline::datetime(settings.start_ms.div_euclid(1000)),
        args.seed,
        args.window_secs
    );
    for inc in &settings.incidents {
        eprintln!("[sim] incident: {inc}");
    }
    let wall_start = Instant::now();
    let mut rows = SliceRows::new(settings.window_ms);
    let mut sim = Simulation::new(settings.clone());
    let (mut events, mut written) = (0u64, 0u64);
    let mut write = |rows: Vec<_>, out: &mut Box<dyn Write>| -> anyhow::Result<()> {
        for (key, m) in rows {
            writeln!(out, "{}", offline::json_row(&key, &m)).context("writing rows")?;
            written += 1;
        }
        Ok(())
    };
    let mut next_progress = Duration::from_secs(args.progress_secs);
    while !sim.finished() {
        for b in sim.tick() {
            for e in &b.events {
                rows.record(e);
                events += 1;
            }
        }
        // A beacon holds events at most one flush interval old.
        write(
            rows.take_closed(sim.now() - settings.flush_ms - 2 * TICK_MS),
            &mut out,
        )?;
        if args.progress_secs > 0 && wall_start.elapsed() >= next_progress {
            next_progress += Duration::from_secs(args.progress_secs);
            eprintln!(
                "[sim] {} / {} simulated | wall {:>4.0}s | {:>5} viewers | {} events",
                clock(sim.elapsed_ms()),
                clock(args.duration),
                wall_start.elapsed().as_secs_f64(),
                sim.active_views(),
                events
            );
        }
    }
    write(rows.take_all(), &mut out)?;
    out.flush().context("writing rows")?;
    eprintln!(
        "[sim] offline: {} views, {events} events, {written} rows in {:.1} s",
        sim.views_started(),
        wall_start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn progress(sim: &Simulation, t: &Totals, wall: Duration, span_ms: i64) {
    let incidents: Vec<String> = sim
        .active_incidents()
        .map(|i| format!("{} x {}", i.region, i.cdn))
        .collect();
    eprintln!(
        "[sim] {} / {} simulated | wall {:>4.0}s | {:>5} viewers | {:>9} events acked ({:.0}/s) | {} requests, {} retries{}{}",
        clock(sim.elapsed_ms()),
        clock(span_ms),
        wall.as_secs_f64(),
        sim.active_views(),
        t.acked,
        t.acked as f64 / wall.as_secs_f64().max(0.001),
        t.requests,
        t.retries,
        if t.unacked > 0 { format!(", {} events NOT acknowledged", t.unacked) } else { String::new() },
        if incidents.is_empty() { String::new() } else { format!(" | INCIDENT ACTIVE: {}", incidents.join(", ")) },
    );
}

fn summary(truth: &Truth, t: &Totals, sim: &Simulation, wall: Duration) {
    println!();
    println!(
        "Simulated {} of viewing in {:.0} s: {} views, {} beacons ({} sent twice on purpose, {} late copies with their original sent_at), {} requests, {} retries, statuses {:?}",
        clock(sim.elapsed_ms()),
        wall.as_secs_f64(),
        sim.views_started(),
        t.beacons,
        t.resent,
        t.late_copies,
        t.requests,
        t.retries,
        t.statuses
    );
    println!(
        "Events acknowledged: {} (copies included); native players' logged requests acknowledged: {}; not acknowledged: {}; outcome unknown: {}",
        t.acked, t.requests_acked, t.unacked, t.uncertain
    );
    if let Some(e) = &t.last_error {
        println!("Last error: {e}");
    }
    println!();
    println!("Expected QoE by region x CDN (ground truth of the acknowledged events):");
    println!(
        "{:<10} {:<6} {:>8} {:>8} {:>10} {:>7} {:>11}",
        "region", "cdn", "attempts", "plays", "start_fail%", "ebvs%", "rebuffer%"
    );
    let pct = |a: u64, b: u64| 100.0 * a as f64 / b.max(1) as f64;
    for ((region, cdn), m) in truth.by_region_cdn() {
        println!(
            "{:<10} {:<6} {:>8} {:>8} {:>10.2} {:>7.2} {:>11.2}",
            region,
            cdn,
            m.get("attempts"),
            m.get("plays"),
            pct(m.get("vsf"), m.get("attempts")),
            pct(m.get("ebvs"), m.get("attempts")),
            pct(m.get("stall_ms"), m.get("playing_ms") + m.get("stall_ms")),
        );
    }
}
