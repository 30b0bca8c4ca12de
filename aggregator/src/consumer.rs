//! The consumer-group loop: one thread owns the Kafka consumer and every partition's state.
//!
//! - On assignment, each partition resumes from its ClickHouse checkpoint (not from Kafka's
//!   committed offsets, which are only advisory): the partition's state (views, CMCD
//!   sessions) comes from the latest checkpoint that carries a snapshot (written every
//!   `snapshot_interval`); messages between that checkpoint's `state_offset` and `next_offset`
//!   rebuild CMCD duplicate tracking, messages from there up to the latest checkpoint are
//!   processed again without output, later ones are aggregated. Without a checkpoint a
//!   partition starts at the beginning (or the end, if configured).
//! - Every `flush_interval` (or when a batch grows large) each partition's batch is written
//!   with its checkpoint ([`crate::writer`]), all partitions concurrently, in the background:
//!   consumption goes on while ClickHouse takes the batch. A partition has at most one write
//!   in flight: the next flush waits for it first (so batches land in order and at most two
//!   are held), then commits Kafka offsets (for lag monitoring only) and starts the next.
//! - A failed write keeps the batch, pauses consumption (bounded memory) and retries with
//!   exponential backoff, waiting for each retry; consumption resumes once ClickHouse takes
//!   writes again.
//! - On revocation and at shutdown, a partition's batch is written if possible (waiting for
//!   it) and its state dropped; the next owner resumes from the checkpoint either way.
//!
//! Files: [`dispatch`] (what one message does, pure), [`flow`] (the loop's pause, resume and
//! stop decisions, pure), [`write_policy`] (which batch is written next, pure),
//! `partitions` (owned partitions: opening and background writes), `rebalance` (group
//! membership); this file runs the loop.

pub mod dispatch;
pub mod flow;
mod partitions;
mod rebalance;
pub mod write_policy;

pub use partitions::{ConsumerConfig, Shared};
pub use rebalance::{create_consumer, AggregatorContext};

use crate::names;
use crate::source;
use crate::window::Outcome;
use crate::writer::WriteError;
use dispatch::{Dispatched, Fetched};
use flow::{AfterFlush, LoopState};
use partitions::{lock, offset};
use qoe_telemetry::process::Shutdown;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Shutdown waits for ClickHouse at most this long; the checkpoint makes it safe to give up.
const STOP_GRACE: Duration = Duration::from_secs(20);

/// Runs until `shutdown` is triggered; then writes what it holds (for at most [`STOP_GRACE`]
/// while ClickHouse fails) and leaves the group.
pub fn run(shared: Arc<Shared>, consumer: BaseConsumer<AggregatorContext>, shutdown: Shutdown) {
    let mut flow = LoopState::new(shared.config.flush_interval, STOP_GRACE, Instant::now());
    let mut last_stats = Instant::now();
    loop {
        if shutdown.is_cancelled() {
            flow.request_stop(Instant::now());
        }
        if flow.consuming() {
            if let Some(result) = consumer.poll(Duration::from_millis(100)) {
                match result {
                    Ok(m) => handle_message(&shared, &m),
                    Err(e) => tracing::warn!(error = %e, "consume error"),
                }
            }
        } else {
            // Keep serving group membership while paused.
            let _ = consumer.poll(Duration::from_millis(100));
        }

        let batch_full = lock(&shared.slots)
            .values()
            .any(|s| s.state.pending().rows() >= shared.config.max_batch_rows);
        if flow.flush_due(Instant::now(), batch_full) {
            let flushed = flush_all(&shared, &consumer, flow.stopping());
            shared.healthy.store(flushed.is_ok(), Ordering::Relaxed);
            match (flow.flushed(flushed.is_ok(), Instant::now()), flushed) {
                (AfterFlush::Stop, _) => break,
                (AfterFlush::Resume, _) => {
                    reposition(&shared, &consumer);
                    tracing::info!("ClickHouse takes writes again: consumption resumed");
                }
                (AfterFlush::Pause { retry_in }, Err(e)) => {
                    tracing::warn!(error = %e, ?retry_in, "write failed: pausing consumption and retrying");
                    if let Ok(assignment) = consumer.assignment() {
                        let _ = consumer.pause(&assignment);
                    }
                }
                (AfterFlush::StillFailing { retry_in }, Err(e)) => {
                    tracing::warn!(error = %e, ?retry_in, "write failed again: consumption stays paused");
                }
                _ => {}
            }
        }
        metrics::gauge!(names::PAUSED).set(if flow.paused() { 1.0 } else { 0.0 });
        if last_stats.elapsed() >= Duration::from_secs(5) {
            report_stats(&shared);
            last_stats = Instant::now();
        }
    }
    consumer.unsubscribe();
    tracing::info!("consumer stopped");
}

fn outcome_label(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Accepted => "accepted",
        Outcome::Late => "late",
        Outcome::Duplicate => "duplicate",
    }
}

/// Applies a fetched message to its partition ([`dispatch`]) and counts what it did.
fn handle_message(shared: &Shared, m: &BorrowedMessage<'_>) {
    let mut slots = lock(&shared.slots);
    let Some(slot) = slots.get_mut(&m.partition()) else {
        return;
    };
    // Headers are only read while the batch still collects trace links (the hot path).
    let traceparent = m
        .headers()
        .filter(|_| slot.writes.traceparents.len() < dispatch::MAX_TRACE_LINKS)
        .and_then(|h| h.iter().find(|h| h.key == "traceparent"))
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok());
    let fetched = Fetched {
        offset: m.offset(),
        payload: m.payload(),
        traceparent,
    };
    let effect = dispatch::dispatch(
        &mut slot.state,
        &slot.plan,
        &mut slot.writes.traceparents,
        &fetched,
    );
    if !effect.counted {
        return;
    }
    match effect.dispatched {
        Dispatched::Invalid { cmcd, reason } => {
            let what = if cmcd {
                "CMCD message that cannot be read"
            } else {
                "message that is not a QoE event"
            };
            tracing::warn!(partition = m.partition(), offset = m.offset(), error = %reason, "skipping {what}");
            metrics::counter!(names::EVENTS, "outcome" => "invalid").increment(1);
        }
        Dispatched::Cmcd(outcome) => {
            metrics::counter!(names::CMCD_REPORTS, "outcome" => outcome_label(outcome))
                .increment(1);
        }
        Dispatched::Request(outcome) => {
            metrics::counter!(names::LOG_REQUESTS, "outcome" => outcome_label(outcome))
                .increment(1);
        }
        Dispatched::Events(counts) => {
            for (outcome, n) in [
                (Outcome::Accepted, counts.accepted),
                (Outcome::Late, counts.late),
                (Outcome::Duplicate, counts.duplicate),
            ] {
                if n > 0 {
                    metrics::counter!(names::EVENTS, "outcome" => outcome_label(outcome))
                        .increment(n);
                }
            }
        }
        Dispatched::Ignored | Dispatched::Restored | Dispatched::Empty => {}
    }
}

fn flush_all<C: ConsumerContext>(
    shared: &Arc<Shared>,
    consumer: &BaseConsumer<C>,
    stopping: bool,
) -> Result<(), WriteError> {
    let mut slots = lock(&shared.slots);
    let mut commits = TopicPartitionList::new();
    let mut first_error = None;
    let mut fenced = Vec::new();
    // The writes in flight run concurrently: waiting for each in turn costs the slowest.
    let results: Vec<(i32, Result<Option<i64>, WriteError>)> = slots
        .iter_mut()
        .map(|(&p, slot)| {
            let result = if write_policy::write_and_wait(stopping, slot.writes.has_unacked()) {
                shared.write_now(p, slot)
            } else {
                shared.finish_flush(slot)
            };
            (p, result)
        })
        .collect();
    for (p, result) in results {
        match result {
            Ok(Some(next)) => {
                let _ = commits.add_partition_offset(&shared.config.topic, p, Offset::Offset(next));
            }
            Ok(None) => {}
            Err(WriteError::Fenced { .. }) => fenced.push(p),
            Err(e) => {
                if first_error.is_none() {
                    first_error = Some(e);
                }
            }
        }
    }
    let reload = !fenced.is_empty();
    for p in fenced {
        // Someone else wrote beyond us: start over from the checkpoint.
        tracing::warn!(
            partition = p,
            "partition was written by another instance; reloading from its checkpoint"
        );
        if let Some((slot, _)) = shared.open_partition(p) {
            slots.insert(p, slot);
        }
    }
    if first_error.is_none() && !stopping {
        for (&p, slot) in slots.iter_mut() {
            shared.start_flush(p, slot);
        }
    }
    drop(slots);
    if reload {
        reposition(shared, consumer);
    }
    if commits.count() > 0 {
        let _ = consumer.commit(&commits, CommitMode::Async);
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Restarts fetching of every owned partition where its state needs the next message, with
/// the resume rewind (see [`crate::source`]). Used instead of pause/resume or a bare seek,
/// because resuming fetch at an offset inside a record batch loses the rest of the batch on
/// some brokers. Also unpauses.
fn reposition<C: ConsumerContext>(shared: &Shared, consumer: &BaseConsumer<C>) {
    let slots = lock(&shared.slots);
    let mut tpl = TopicPartitionList::new();
    for (&p, slot) in slots.iter() {
        let from = source::refetch_from(
            &slot.plan,
            slot.state.next_offset(),
            shared.config.start_from_latest,
        );
        if let Err(e) = tpl.add_partition_offset(&shared.config.topic, p, offset(from)) {
            tracing::error!(partition = p, error = %e, "cannot set fetch offset");
        }
    }
    if let Err(e) = consumer.assign(&tpl) {
        tracing::error!(error = %e, "re-assigning partitions failed");
    }
    // A partition's paused flag survives re-assignment.
    if let Err(e) = consumer.resume(&tpl) {
        tracing::error!(error = %e, "resuming partitions failed");
    }
}

fn report_stats(shared: &Shared) {
    let mut slots = lock(&shared.slots);
    let now_ms = qoe_telemetry::process::now_ms();
    let (mut open, mut tracked, mut sessions, mut views) = (0, 0, 0, 0);
    for (p, slot) in slots.iter_mut() {
        open += slot.state.open_windows();
        sessions += slot.state.sessions();
        tracked += slot.state.tracked_reports();
        views += slot.state.views();
        let evicted = slot.state.take_evicted_views();
        if evicted > 0 {
            tracing::warn!(partition = p, evicted, "views dropped at the per-partition bound (--max-views-per-partition): their later duplicates may count again");
            metrics::counter!(names::VIEWS_EVICTED).increment(evicted);
        }
        let wm = slot.state.watermark();
        if wm > 0 {
            metrics::gauge!(names::WATERMARK_DELAY, "partition" => p.to_string())
                .set((now_ms - wm) as f64 / 1000.0);
        }
    }
    metrics::gauge!(names::OPEN_WINDOWS).set(open as f64);
    metrics::gauge!(names::TRACKED_REPORTS).set(tracked as f64);
    metrics::gauge!(names::VIEWS_HELD).set(views as f64);
    metrics::gauge!(names::CMCD_SESSIONS).set(sessions as f64);
    metrics::gauge!(names::ASSIGNED_PARTITIONS).set(slots.len() as f64);
}
