//! The partitions this instance owns: each one's state and its writes to ClickHouse.
//!
//! - A partition is opened from its ClickHouse checkpoints ([`Shared::open_partition`]),
//!   retrying while ClickHouse cannot answer (until shutdown).
//! - Its batches are written in the background, at most one write in flight per partition;
//!   which batch goes next is [`super::write_policy`]'s decision. A failed write keeps its
//!   batch for a retry that first asks whether the failed attempt committed after all.

use super::write_policy::{self, Unacked, WriteJob, WriteQueue};
use crate::checkpoint::Checkpoint;
use crate::names;
use crate::source::{self, Backoff, FetchFrom, ResumePlan};
use crate::window::{PartitionState, WindowConfig};
use crate::writer::{WriteError, Writer};
use qoe_telemetry::process::Shutdown;
use rdkafka::Offset;
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
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

/// Upper bound of one batch write (all its ClickHouse requests).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long staged batches are kept: far beyond [`WRITE_TIMEOUT`], so clock differences
/// between the aggregator and ClickHouse (which dates the rows) cannot matter.
const STAGING_RETENTION: Duration = Duration::from_secs(2 * 3600);
const STAGING_PRUNE_EVERY: Duration = Duration::from_secs(600);

/// One owned partition.
pub(super) struct Slot {
    pub(super) state: PartitionState,
    /// Which offsets are skipped, only rebuild state, or are aggregated.
    pub(super) plan: ResumePlan,
    pub(super) writes: WriteQueue,
    /// The partition's write running in the background, if any (at most one).
    in_flight: Option<tokio::task::JoinHandle<Written>>,
}

/// A background write's outcome: the offset now committed, or the error with the batch to
/// retry as is (none after fencing: that batch is dropped).
struct Written {
    result: Result<Option<i64>, WriteError>,
    unacked: Option<Unacked>,
}

/// State shared between the loop and the rebalance callback (both run on the loop thread).
pub struct Shared {
    pub(super) config: ConsumerConfig,
    writer: Writer,
    runtime: tokio::runtime::Handle,
    pub(super) slots: Mutex<HashMap<i32, Slot>>,
    /// Whether the last write succeeded (readiness).
    pub healthy: AtomicBool,
    /// The process's shutdown: ends the wait for ClickHouse when a partition is opened.
    shutdown: Shutdown,
}

pub(super) fn offset(f: FetchFrom) -> Offset {
    match f {
        FetchFrom::Offset(o) => Offset::Offset(o),
        FetchFrom::Beginning => Offset::Beginning,
        FetchFrom::End => Offset::End,
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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
    pub(super) fn open_partition(&self, partition: i32) -> Option<(Slot, Offset)> {
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
            writes: WriteQueue::default(),
            in_flight: None,
        };
        Some((slot, offset(plan.fetch)))
    }

    /// Starts the partition's next write in the background, if it has anything to write.
    pub(super) fn start_flush(self: &Arc<Self>, partition: i32, slot: &mut Slot) {
        debug_assert!(
            slot.in_flight.is_none(),
            "one write in flight per partition"
        );
        let job = slot.writes.next(
            &mut slot.state,
            Instant::now(),
            self.config.snapshot_interval,
        );
        let shared = Arc::clone(self);
        let write = match job {
            None => return,
            Some(WriteJob::Retry(unacked)) => self
                .runtime
                .spawn(async move { shared.retry(partition, unacked).await }),
            Some(WriteJob::Fresh {
                batch,
                checkpoint,
                traceparents,
            }) => {
                if checkpoint.has_snapshot() {
                    metrics::histogram!(names::STATE_SNAPSHOT_BYTES)
                        .record(checkpoint.state.len() as f64);
                }
                self.runtime.spawn(async move {
                    shared
                        .write_batch(partition, batch, checkpoint, &traceparents)
                        .await
                })
            }
        };
        slot.in_flight = Some(write);
    }

    /// Waits for the partition's write in flight, if any; a failed batch goes back to the slot
    /// for the next retry. Returns the offset now committed.
    pub(super) fn finish_flush(&self, slot: &mut Slot) -> Result<Option<i64>, WriteError> {
        let Some(write) = slot.in_flight.take() else {
            return Ok(None);
        };
        // A panic in the write is a bug: crash, and the restart replays from the checkpoint.
        let written = self
            .runtime
            .block_on(write)
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        if let Some(unacked) = written.unacked {
            slot.writes.put_back(unacked);
        }
        written.result
    }

    /// Writes the partition now and waits: the write in flight, an unacknowledged batch, then
    /// the pending batch. Returns the offset now committed.
    pub(super) fn write_now(
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
    async fn retry(&self, partition: i32, unacked: Unacked) -> Written {
        let asked = self.writer.committed(partition, unacked.last_id);
        let done = tokio::time::timeout(WRITE_TIMEOUT, asked)
            .await
            .unwrap_or(Err(WriteError::Timeout(WRITE_TIMEOUT)));
        match done {
            Ok(true) => Written {
                result: Ok(Some(unacked.checkpoint.next_offset)),
                unacked: None,
            },
            Ok(false) => {
                self.write_batch(partition, unacked.batch, unacked.checkpoint, &[])
                    .await
            }
            Err(e) => Written {
                result: Err(e),
                unacked: Some(unacked),
            },
        }
    }

    async fn write_batch(
        &self,
        partition: i32,
        batch: crate::batch::Batch,
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
                let unacked = write_policy::keeps_for_retry(&e).then_some(Unacked {
                    batch,
                    checkpoint,
                    last_id: batch_id,
                });
                Written {
                    result: Err(e),
                    unacked,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resume_plans_fetch_position_is_the_same_kafka_offset() {
        assert_eq!(offset(FetchFrom::Offset(42)), Offset::Offset(42));
        assert_eq!(offset(FetchFrom::Beginning), Offset::Beginning);
        assert_eq!(offset(FetchFrom::End), Offset::End);
    }

    /// A write task that panicked while holding the partitions' lock must not stop the
    /// consumer loop: the lock is still taken, with the state as the task left it.
    #[test]
    fn a_lock_poisoned_by_a_panic_is_still_taken() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let held = m.clone();
        let _ = std::thread::spawn(move || {
            let _guard = held.lock().unwrap();
            panic!("a write task panics while holding the lock");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }
}
