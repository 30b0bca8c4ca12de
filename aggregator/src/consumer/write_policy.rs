//! Which batch of a partition is written next, and what a failed write leaves behind. Pure
//! (time is passed in), unit-tested without ClickHouse; the writes themselves run in
//! [`super::partitions`].
//!
//! - A batch whose write failed is retried as is, before anything newer: batches land in
//!   offset order. A retry first asks whether the failed attempt committed after all (its
//!   answer may have been lost).
//! - A fenced write (another instance wrote the partition further) is dropped, not retried:
//!   the partition reloads from its checkpoint.
//! - Every `snapshot_interval` a batch's checkpoint carries the partition's state snapshot;
//!   in between checkpoints are small.

use crate::batch::Batch;
use crate::checkpoint::Checkpoint;
use crate::window::PartitionState;
use crate::writer::WriteError;
use std::time::{Duration, Instant};

/// A batch whose last write failed, with that attempt's id.
#[derive(Debug)]
pub struct Unacked {
    pub batch: Batch,
    pub checkpoint: Checkpoint,
    pub last_id: u64,
}

/// The next write of a partition.
#[derive(Debug)]
pub enum WriteJob {
    /// A batch whose last attempt failed.
    Retry(Unacked),
    /// The pending batch, with the trace contexts its write span continues.
    Fresh {
        batch: Batch,
        checkpoint: Checkpoint,
        traceparents: Vec<String>,
    },
}

/// A partition's writes: the failed batch waiting for its retry, when the last state
/// snapshot was taken, and the traces of the pending batch.
#[derive(Debug, Default)]
pub struct WriteQueue {
    /// Distinct trace contexts of the pending batch's first traced messages.
    pub traceparents: Vec<String>,
    unacked: Option<Unacked>,
    /// When the last checkpoint with a state snapshot was taken (none yet: the next one).
    last_snapshot: Option<Instant>,
}

impl WriteQueue {
    pub fn has_unacked(&self) -> bool {
        self.unacked.is_some()
    }

    /// The next write: the failed batch if there is one, else the pending batch if not
    /// empty (taken from `state`, with a snapshot when one is due).
    pub fn next(
        &mut self,
        state: &mut PartitionState,
        now: Instant,
        snapshot_interval: Duration,
    ) -> Option<WriteJob> {
        if let Some(unacked) = self.unacked.take() {
            return Some(WriteJob::Retry(unacked));
        }
        if state.pending().is_empty() {
            return None;
        }
        let with_snapshot = self
            .last_snapshot
            .is_none_or(|at| now.duration_since(at) >= snapshot_interval);
        if with_snapshot {
            self.last_snapshot = Some(now);
        }
        let (batch, checkpoint) = state.take_batch(with_snapshot);
        Some(WriteJob::Fresh {
            batch,
            checkpoint,
            traceparents: std::mem::take(&mut self.traceparents),
        })
    }

    /// Puts back a batch whose write failed, for the next retry.
    pub fn put_back(&mut self, unacked: Unacked) {
        self.unacked = Some(unacked);
    }
}

/// Whether a batch whose write failed with `e` is retried (a fenced one is not: someone
/// else wrote the partition further, and it reloads from its checkpoint).
pub fn keeps_for_retry(e: &WriteError) -> bool {
    !matches!(e, WriteError::Fenced { .. })
}

/// Whether a flush writes the partition and waits for it, rather than collecting the write in
/// flight and starting the next in the background: when stopping (everything is written
/// before leaving) and when a failed batch waits (consumption stays paused until it lands).
pub fn write_and_wait(stopping: bool, has_unacked: bool) -> bool {
    stopping || has_unacked
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::WindowConfig;
    use qoe_schemas::{EventType, QoeEvent};

    const SNAPSHOTS: Duration = Duration::from_secs(5);

    fn with_one_event(state: &mut PartitionState, offset: i64) {
        let e = QoeEvent {
            received_at: 1_700_000_000_000,
            ..QoeEvent::blank("v", offset as u32, EventType::Heartbeat, 1_700_000_000_000)
        };
        state.apply(offset, &e.borrowed());
    }

    fn fresh(job: Option<WriteJob>) -> (Batch, Checkpoint) {
        match job {
            Some(WriteJob::Fresh {
                batch, checkpoint, ..
            }) => (batch, checkpoint),
            other => panic!("expected the pending batch, got {other:?}"),
        }
    }

    #[test]
    fn nothing_to_write_without_messages() {
        let mut state = PartitionState::new(WindowConfig::default(), None);
        let mut q = WriteQueue::default();
        assert!(q.next(&mut state, Instant::now(), SNAPSHOTS).is_none());
    }

    #[test]
    fn a_failed_batch_is_retried_before_the_pending_one() {
        let mut state = PartitionState::new(WindowConfig::default(), None);
        let mut q = WriteQueue::default();
        let t0 = Instant::now();
        with_one_event(&mut state, 0);
        let (batch, checkpoint) = fresh(q.next(&mut state, t0, SNAPSHOTS));
        assert_eq!(checkpoint.next_offset, 1);
        with_one_event(&mut state, 1);
        q.put_back(Unacked {
            batch,
            checkpoint,
            last_id: 7,
        });
        match q.next(&mut state, t0, SNAPSHOTS) {
            Some(WriteJob::Retry(u)) => {
                assert_eq!((u.checkpoint.next_offset, u.last_id), (1, 7));
            }
            other => panic!("expected the retry, got {other:?}"),
        }
        let (_, checkpoint) = fresh(q.next(&mut state, t0, SNAPSHOTS));
        assert_eq!(checkpoint.from_offset, 1, "the pending batch comes after");
        assert_eq!(checkpoint.next_offset, 2);
    }

    #[test]
    fn state_snapshots_ride_with_a_batch_every_interval() {
        let mut state = PartitionState::new(WindowConfig::default(), None);
        let mut q = WriteQueue::default();
        let t0 = Instant::now();
        let mut snapshots = Vec::new();
        for (i, secs) in [0, 1, 4, 5, 6, 11].into_iter().enumerate() {
            with_one_event(&mut state, i as i64);
            let at = t0 + Duration::from_secs(secs);
            let (_, checkpoint) = fresh(q.next(&mut state, at, SNAPSHOTS));
            snapshots.push(checkpoint.has_snapshot());
        }
        assert_eq!(snapshots, [true, false, false, true, false, true]);
    }

    #[test]
    fn fenced_batches_are_dropped_and_others_retried() {
        assert!(!keeps_for_retry(&WriteError::Fenced {
            partition: 0,
            from: 10,
        }));
        assert!(keeps_for_retry(&WriteError::Timeout(Duration::from_secs(
            1
        ))));
        assert!(write_and_wait(true, false));
        assert!(write_and_wait(false, true));
        assert!(!write_and_wait(false, false));
    }
}
