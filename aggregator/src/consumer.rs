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

use crate::names;
use crate::source::{self, Backoff, FetchFrom, ResumePlan, Route};
use crate::window::{Batch, Checkpoint, Outcome, PartitionState, WindowConfig};
use crate::writer::{WriteError, Writer};
use qoe_schemas::MessageRef;
use qoe_telemetry::process::Shutdown;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::message::{Headers, Message};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tracing::Instrument;

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub kafka: crate::kafka_check::KafkaAccess,
    pub group: String,
    pub topic: String,
    pub window: WindowConfig,
    pub flush_interval: Duration,
    /// How often a partition's checkpoint carries its state snapshot.
    pub snapshot_interval: Duration,
    pub max_batch_rows: usize,
    pub start_from_latest: bool,
}

struct Slot {
    state: PartitionState,
    /// Which offsets are skipped, only rebuild state, or are aggregated.
    plan: ResumePlan,
    /// Distinct trace contexts of the pending batch's first traced messages (at most
    /// [`MAX_TRACE_LINKS`]); its write span continues them.
    traceparents: Vec<String>,
    /// A batch whose write failed, with the id of its last attempt: retried as is (after
    /// checking whether that attempt committed after all) before anything newer is written.
    unacked: Option<(Batch, Checkpoint, u64)>,
    /// When the last checkpoint with a state snapshot was taken (none yet: the next one).
    last_snapshot: Option<Instant>,
    /// The partition's write running in the background, if any (at most one).
    in_flight: Option<tokio::task::JoinHandle<Written>>,
}

/// A background write's outcome: the offset now committed, or the error with the batch to
/// retry as is (none after fencing: that batch is dropped).
struct Written {
    result: Result<Option<i64>, WriteError>,
    unacked: Option<(Batch, Checkpoint, u64)>,
}

/// State shared between the loop and the rebalance callback (both run on the loop thread).
pub struct Shared {
    config: ConsumerConfig,
    writer: Writer,
    runtime: tokio::runtime::Handle,
    slots: Mutex<HashMap<i32, Slot>>,
    /// Whether the last write succeeded (readiness).
    pub healthy: AtomicBool,
    /// The process's shutdown: ends the wait for ClickHouse when a partition is opened.
    shutdown: Shutdown,
}

fn offset(f: FetchFrom) -> Offset {
    match f {
        FetchFrom::Offset(o) => Offset::Offset(o),
        FetchFrom::Beginning => Offset::Beginning,
        FetchFrom::End => Offset::End,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub fn new(
        config: ConsumerConfig,
        writer: Writer,
        runtime: tokio::runtime::Handle,
        shutdown: Shutdown,
    ) -> Arc<Self> {
        Arc::new(Shared {
            config,
            writer,
            runtime,
            slots: Mutex::new(HashMap::new()),
            healthy: AtomicBool::new(false),
            shutdown,
        })
    }

    /// Drops staged batches older than [`STAGING_RETENTION`] every [`STAGING_PRUNE_EVERY`],
    /// until the process ends (a task of its own: never in the way of consumption).
    pub async fn prune_staging(&self) {
        let mut every = tokio::time::interval(STAGING_PRUNE_EVERY);
        loop {
            every.tick().await;
            match self.writer.drop_old_staging(STAGING_RETENTION).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(hours = n, "dropped old staged batches"),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot drop old staged batches; retrying later")
                }
            }
        }
    }

    /// The latest checkpoint of a partition and the one holding the state it resumes from.
    async fn resume_points(
        &self,
        partition: i32,
    ) -> Result<Option<(Checkpoint, Checkpoint)>, WriteError> {
        let Some(latest) = self.writer.checkpoint(partition).await? else {
            return Ok(None);
        };
        // 0: written before snapshots were named; resume from the latest as it is.
        if latest.snapshot_offset == latest.next_offset || latest.snapshot_offset == 0 {
            return Ok(Some((latest.clone(), latest)));
        }
        let read = self.writer.checkpoint_at(partition, latest.snapshot_offset);
        let base = tokio::time::timeout(WRITE_TIMEOUT, read)
            .await
            .unwrap_or(Err(WriteError::Timeout(WRITE_TIMEOUT)))?;
        Ok(Some(match base {
            Some(base) => (latest, base),
            None => {
                tracing::error!(
                    partition,
                    snapshot_offset = latest.snapshot_offset,
                    "the checkpoint holding the partition's state is missing: views and CMCD sessions start afresh"
                );
                (latest.clone(), latest)
            }
        }))
    }

    /// Builds a partition's slot from its checkpoints; returns it with the offset to fetch
    /// from. Retries while ClickHouse cannot answer; `None` when shutdown comes first.
    fn open_partition(&self, partition: i32) -> Option<(Slot, Offset)> {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let points = loop {
            let read = self.runtime.block_on(async {
                tokio::select! {
                    read = self.resume_points(partition) => Some(read),
                    _ = self.shutdown.cancelled() => None,
                }
            })?;
            match read {
                Ok(c) => break c,
                Err(e) => {
                    let wait = backoff.failed(Instant::now());
                    metrics::counter!(names::OPEN_RETRIES).increment(1);
                    tracing::warn!(partition, error = %e, retry_in = ?wait, "cannot read checkpoint; retrying");
                    let stopped = self.runtime.block_on(async {
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => false,
                            _ = self.shutdown.cancelled() => true,
                        }
                    });
                    if stopped {
                        tracing::info!(
                            partition,
                            "shutdown while opening the partition: not opened"
                        );
                        return None;
                    }
                }
            }
        };
        let plan = source::resume_plan(
            points.as_ref().map(|(_, base)| base),
            self.config.start_from_latest,
        );
        let state = match points {
            Some((latest, base)) => {
                tracing::info!(
                    partition,
                    next_offset = latest.next_offset,
                    snapshot_offset = base.next_offset,
                    state_offset = base.state_offset,
                    "resuming partition from checkpoint"
                );
                let discard_until = latest.next_offset;
                PartitionState::new(self.config.window.clone(), Some(base))
                    .discarding_until(discard_until)
            }
            None => {
                tracing::info!(partition, from = ?plan.fetch, "no checkpoint: starting partition");
                PartitionState::new(self.config.window.clone(), None)
            }
        };
        let slot = Slot {
            state,
            plan,
            traceparents: Vec::new(),
            unacked: None,
            last_snapshot: None,
            in_flight: None,
        };
        Some((slot, offset(plan.fetch)))
    }

    /// Starts writing the partition in the background: its unacknowledged batch if it has one
    /// (the pending batch waits for the retry), else its pending batch if not empty.
    fn start_flush(self: &Arc<Self>, partition: i32, slot: &mut Slot) {
        debug_assert!(
            slot.in_flight.is_none(),
            "one write in flight per partition"
        );
        let shared = Arc::clone(self);
        let write = if let Some((batch, checkpoint, last_id)) = slot.unacked.take() {
            self.runtime
                .spawn(async move { shared.retry(partition, batch, checkpoint, last_id).await })
        } else if slot.state.pending().is_empty() {
            return;
        } else {
            let with_snapshot = slot
                .last_snapshot
                .is_none_or(|at| at.elapsed() >= self.config.snapshot_interval);
            let (batch, checkpoint) = slot.state.take_batch(with_snapshot);
            if with_snapshot {
                slot.last_snapshot = Some(Instant::now());
                metrics::histogram!(names::STATE_SNAPSHOT_BYTES)
                    .record(checkpoint.state.len() as f64);
            }
            let traceparents = std::mem::take(&mut slot.traceparents);
            self.runtime.spawn(async move {
                shared
                    .write_batch(partition, batch, checkpoint, &traceparents)
                    .await
            })
        };
        slot.in_flight = Some(write);
    }

    /// Waits for the partition's write in flight, if any; a failed batch goes back to the slot
    /// for the next retry. Returns the offset now committed.
    fn finish_flush(&self, slot: &mut Slot) -> Result<Option<i64>, WriteError> {
        let Some(write) = slot.in_flight.take() else {
            return Ok(None);
        };
        // A panic in the write is a bug: crash, and the restart replays from the checkpoint.
        let written = self
            .runtime
            .block_on(write)
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        if written.unacked.is_some() {
            slot.unacked = written.unacked;
        }
        written.result
    }

    /// Writes the partition now and waits: the write in flight, an unacknowledged batch, then
    /// the pending batch. Returns the offset now committed.
    fn write_now(
        self: &Arc<Self>,
        partition: i32,
        slot: &mut Slot,
    ) -> Result<Option<i64>, WriteError> {
        let mut committed = self.finish_flush(slot)?;
        // At most twice: a retried batch, then the pending one.
        for _ in 0..2 {
            self.start_flush(partition, slot);
            if slot.in_flight.is_none() {
                break;
            }
            committed = self.finish_flush(slot)?.or(committed);
        }
        Ok(committed)
    }

    /// Retries a batch whose last write failed: the last attempt may have committed although
    /// its answer was lost, so that is asked first.
    async fn retry(
        &self,
        partition: i32,
        batch: Batch,
        checkpoint: Checkpoint,
        last_id: u64,
    ) -> Written {
        let done = tokio::time::timeout(WRITE_TIMEOUT, self.writer.committed(partition, last_id))
            .await
            .unwrap_or(Err(WriteError::Timeout(WRITE_TIMEOUT)));
        match done {
            Ok(true) => Written {
                result: Ok(Some(checkpoint.next_offset)),
                unacked: None,
            },
            Ok(false) => self.write_batch(partition, batch, checkpoint, &[]).await,
            Err(e) => Written {
                result: Err(e),
                unacked: Some((batch, checkpoint, last_id)),
            },
        }
    }

    async fn write_batch(
        &self,
        partition: i32,
        batch: Batch,
        checkpoint: Checkpoint,
        traceparents: &[String],
    ) -> Written {
        let span = tracing::info_span!(
            "write_batch",
            partition,
            rows = batch.rows(),
            messages = batch.messages
        );
        qoe_telemetry::continue_batch(&span, traceparents);
        let started = Instant::now();
        let batch_id = Writer::new_batch_id();
        let written = self
            .writer
            .write(partition, &batch, &checkpoint, batch_id, WRITE_TIMEOUT)
            .instrument(span)
            .await;
        match written {
            Ok(()) => {
                metrics::histogram!(names::INSERT_SECONDS).record(started.elapsed().as_secs_f64());
                metrics::counter!(names::BATCHES_WRITTEN).increment(1);
                metrics::counter!(names::ROWS_WRITTEN).increment(batch.rows() as u64);
                Written {
                    result: Ok(Some(checkpoint.next_offset)),
                    unacked: None,
                }
            }
            Err(e) => {
                metrics::counter!(names::WRITE_FAILURES).increment(1);
                let unacked = (!matches!(e, WriteError::Fenced { .. }))
                    .then_some((batch, checkpoint, batch_id));
                Written {
                    result: Err(e),
                    unacked,
                }
            }
        }
    }
}

/// Traces a batch's write span continues: the first as parent, the others as links. Bounded
/// because a batch holds up to hundreds of thousands of messages.
const MAX_TRACE_LINKS: usize = 32;

/// Upper bound of one batch write (all its ClickHouse requests).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long staged batches are kept: far beyond [`WRITE_TIMEOUT`], so clock differences
/// between the aggregator and ClickHouse (which dates the rows) cannot matter.
const STAGING_RETENTION: Duration = Duration::from_secs(2 * 3600);
const STAGING_PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Rebalance handling: eager protocol; offsets come from ClickHouse checkpoints.
pub struct AggregatorContext {
    shared: Arc<Shared>,
}

impl ClientContext for AggregatorContext {
    /// librdkafka's statistics (every `statistics.interval.ms`) carry the consumer lag.
    fn stats(&self, statistics: rdkafka::Statistics) {
        for topic in statistics.topics.values() {
            for (id, p) in &topic.partitions {
                if *id >= 0 && p.consumer_lag >= 0 {
                    metrics::gauge!(names::CONSUMER_LAG, "partition" => id.to_string())
                        .set(p.consumer_lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for AggregatorContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let mut slots = lock(&self.shared.slots);
                let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                for p in partitions {
                    let Some((slot, offset)) = self.shared.open_partition(p) else {
                        // Shutting down: take nothing, the loop ends without having read.
                        slots.clear();
                        let _ = consumer.assign(&TopicPartitionList::new());
                        return;
                    };
                    slots.insert(p, slot);
                    if let Err(e) = tpl.set_partition_offset(&self.shared.config.topic, p, offset) {
                        tracing::error!(partition = p, error = %e, "cannot set start offset");
                    }
                }
                tracing::info!(partitions = ?slots.keys().collect::<Vec<_>>(), "partitions assigned");
                if let Err(e) = consumer.assign(tpl) {
                    tracing::error!(error = %e, "assign failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let mut slots = lock(&self.shared.slots);
                for elem in tpl.elements() {
                    if let Some(mut slot) = slots.remove(&elem.partition()) {
                        // Best effort: the next owner replays from the checkpoint anyway.
                        let flushed = self.shared.write_now(elem.partition(), &mut slot);
                        if let Err(e) = flushed {
                            tracing::warn!(partition = elem.partition(), error = %e, "revoked partition's batch not written; its next owner replays it");
                        }
                    }
                }
                tracing::info!("partitions revoked");
                let _ = consumer.unassign();
            }
            other => {
                tracing::error!(error = ?other, "rebalance error");
                let _ = consumer.unassign();
                lock(&self.shared.slots).clear();
            }
        }
    }
}

pub fn create_consumer(
    shared: &Arc<Shared>,
) -> Result<BaseConsumer<AggregatorContext>, rdkafka::error::KafkaError> {
    let c = &shared.config;
    let config = c.kafka.client_config(&[
        ("group.id", &c.group),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("partition.assignment.strategy", "range"),
        (
            "auto.offset.reset",
            if c.start_from_latest {
                "latest"
            } else {
                "earliest"
            },
        ),
        ("session.timeout.ms", "10000"),
        ("queued.max.messages.kbytes", "32768"),
        ("statistics.interval.ms", "5000"),
    ]);
    let consumer: BaseConsumer<AggregatorContext> =
        config.create_with_context(AggregatorContext {
            shared: shared.clone(),
        })?;
    consumer.subscribe(&[&c.topic])?;
    Ok(consumer)
}

/// Shutdown waits for ClickHouse at most this long; the checkpoint makes it safe to give up.
const STOP_GRACE: Duration = Duration::from_secs(20);

/// Runs until `shutdown` is triggered; then writes what it holds (for at most [`STOP_GRACE`]
/// while ClickHouse fails) and leaves the group.
pub fn run(shared: Arc<Shared>, consumer: BaseConsumer<AggregatorContext>, shutdown: Shutdown) {
    let mut last_flush = Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut paused = false;
    let mut last_stats = Instant::now();
    let mut stop_requested: Option<Instant> = None;
    loop {
        if stop_requested.is_none() && shutdown.is_cancelled() {
            stop_requested = Some(Instant::now());
        }
        let stopping = stop_requested.is_some();
        if !paused && !stopping {
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

        let due = last_flush.elapsed() >= shared.config.flush_interval
            || lock(&shared.slots)
                .values()
                .any(|s| s.state.pending().rows() >= shared.config.max_batch_rows);
        if (due || stopping) && backoff.ready(Instant::now()) {
            match flush_all(&shared, &consumer, stopping) {
                Ok(()) => {
                    shared.healthy.store(true, Ordering::Relaxed);
                    backoff.reset();
                    if paused {
                        reposition(&shared, &consumer);
                        paused = false;
                        tracing::info!("ClickHouse takes writes again: consumption resumed");
                    }
                }
                Err(e) => {
                    shared.healthy.store(false, Ordering::Relaxed);
                    let wait = backoff.failed(Instant::now());
                    tracing::warn!(error = %e, retry_in = ?wait, "write failed: pausing consumption and retrying");
                    if !paused {
                        if let Ok(assignment) = consumer.assignment() {
                            let _ = consumer.pause(&assignment);
                        }
                        paused = true;
                    }
                }
            }
            last_flush = Instant::now();
            let gave_up = stop_requested.is_some_and(|at| at.elapsed() > STOP_GRACE);
            if stopping && (!backoff.failing() || gave_up) {
                break;
            }
        }
        metrics::gauge!(names::PAUSED).set(if paused { 1.0 } else { 0.0 });
        if last_stats.elapsed() >= Duration::from_secs(5) {
            report_stats(&shared);
            last_stats = Instant::now();
        }
    }
    consumer.unsubscribe();
    tracing::info!("consumer stopped");
}

fn handle_message(shared: &Shared, m: &rdkafka::message::BorrowedMessage<'_>) {
    let mut slots = lock(&shared.slots);
    let Some(slot) = slots.get_mut(&m.partition()) else {
        return;
    };
    let offset = m.offset();
    let route = source::route(offset, &slot.plan, slot.state.next_offset());
    if matches!(route, Route::Ignore | Route::AlreadyProcessed) {
        return;
    }
    // Re-processed after a restart to rebuild state: counted before, not again.
    let count = !slot.state.replaying();
    if let Some(payload) = m
        .payload()
        .filter(|p| p.starts_with(qoe_schemas::cmcd::CMCD_MESSAGE_PREFIX))
    {
        let outcome = match qoe_schemas::cmcd::CmcdMessage::decode(payload) {
            // Sessions come from the checkpoint's snapshot; the replay rebuilds duplicate
            // tracking only.
            Ok(report) if route == Route::Restore => {
                slot.state.restore_cmcd(offset, &report);
                return;
            }
            Ok(report) => slot.state.apply_cmcd(offset, &report),
            Err(_) if !count => {
                slot.state.skip(offset);
                return;
            }
            Err(_) if route == Route::Restore => return,
            Err(e) => {
                tracing::warn!(partition = m.partition(), offset, error = %e, "skipping CMCD message that cannot be read");
                metrics::counter!(names::EVENTS, "outcome" => "invalid").increment(1);
                slot.state.skip(offset);
                return;
            }
        };
        if !count {
            return;
        }
        metrics::counter!(names::CMCD_REPORTS, "outcome" => match outcome {
            Outcome::Accepted => "accepted",
            Outcome::Late => "late",
            Outcome::Duplicate => "duplicate",
        })
        .increment(1);
        return;
    }
    if route == Route::Restore {
        // Beacon views come whole from the snapshot; only CMCD tracking is rebuilt, so a
        // beacon message here is not even decoded.
        return;
    }
    let message = match m.payload().map(MessageRef::decode) {
        Some(Ok(message)) => Some(message),
        Some(Err(e)) => {
            tracing::warn!(partition = m.partition(), offset, error = %e, "skipping message that is not a QoE event");
            None
        }
        None => None,
    };
    let Some(message) = message else {
        if count {
            metrics::counter!(names::EVENTS, "outcome" => "invalid").increment(1);
        }
        slot.state.skip(offset);
        return;
    };
    if slot.traceparents.len() < MAX_TRACE_LINKS {
        let traceparent = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "traceparent"))
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok());
        if let Some(tp) = traceparent {
            // Events of one request share its traceparent: keep each once.
            if !slot.traceparents.iter().any(|t| t == tp) {
                slot.traceparents.push(tp.to_owned());
            }
        }
    }
    if message.is_empty() {
        // A beacon message without events still moves the partition forward.
        slot.state.skip(offset);
        return;
    }
    // A beacon message's events are applied in order at the message's offset: the message
    // is consumed whole within one batch, so offsets stay exact.
    message.for_each_event(|event| {
        let outcome = slot.state.apply(offset, event);
        if count {
            metrics::counter!(names::EVENTS, "outcome" => match outcome {
                Outcome::Accepted => "accepted",
                Outcome::Late => "late",
                Outcome::Duplicate => "duplicate",
            })
            .increment(1);
        }
    });
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
            let result = if stopping || slot.unacked.is_some() {
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
