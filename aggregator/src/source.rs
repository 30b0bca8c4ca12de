//! The rules of reading a partition, as pure functions the consumer loop follows (so they are
//! unit-tested without Kafka): where to resume a partition from its checkpoint, what to do
//! with each fetched message, where to restart fetching after a pause or a reload, and how long
//! to back off after a failure.
//!
//! Some Kafka-protocol brokers (tansu 0.6 among them) answer a fetch that starts inside a
//! record batch with the *next* batch, silently skipping the rest of the current one; Apache
//! Kafka returns the whole batch and the client drops what precedes the requested offset.
//! To be correct on both, a resuming consumer fetches from [`resume_fetch_offset`] and drops
//! every message below the offset it meant to resume at. The rewind covers one producer batch
//! (librdkafka's `batch.num.messages` is 10,000 by default and the collector keeps it there).

use crate::checkpoint::Checkpoint;
use std::time::{Duration, Instant};

/// How far before the resume offset fetching starts, in messages.
pub const RESUME_REWIND: i64 = 10_000;

/// The offset to fetch from in order to resume at `resume_at`.
pub fn resume_fetch_offset(resume_at: i64) -> i64 {
    resume_at.saturating_sub(RESUME_REWIND).max(0)
}

/// Where the consumer starts fetching a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchFrom {
    Offset(i64),
    Beginning,
    End,
}

/// How a partition is read after assignment: which offsets only rebuild state, and where
/// fetching starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumePlan {
    /// Messages below this offset are not ours to look at (rewind margin).
    pub skip_below: i64,
    /// Messages below this offset only rebuild duplicate-tracking state.
    pub restore_until: i64,
    pub fetch: FetchFrom,
}

/// The plan for a partition with this checkpoint: replay `[state_offset, next_offset)` to
/// rebuild state, aggregate from `next_offset`; without a checkpoint, start at the beginning
/// (or the end when so configured).
pub fn resume_plan(checkpoint: Option<&Checkpoint>, start_from_latest: bool) -> ResumePlan {
    match checkpoint {
        Some(c) => ResumePlan {
            skip_below: c.state_offset,
            restore_until: c.next_offset,
            fetch: FetchFrom::Offset(resume_fetch_offset(c.state_offset)),
        },
        None => ResumePlan {
            skip_below: 0,
            restore_until: 0,
            fetch: if start_from_latest {
                FetchFrom::End
            } else {
                FetchFrom::Beginning
            },
        },
    }
}

/// What to do with a fetched message at `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Below the plan's range (fetched because of the rewind margin).
    Ignore,
    /// Between the checkpoint's state and next offsets: rebuilds duplicate tracking only.
    Restore,
    /// Already aggregated (seen again after a rewind).
    AlreadyProcessed,
    /// New: aggregate it.
    Apply,
}

pub fn route(offset: i64, plan: &ResumePlan, next_offset: i64) -> Route {
    if offset < plan.skip_below {
        Route::Ignore
    } else if offset < plan.restore_until {
        Route::Restore
    } else if offset < next_offset {
        Route::AlreadyProcessed
    } else {
        Route::Apply
    }
}

/// Where to restart fetching a partition whose state expects `next_offset` next (after a
/// pause for a failed write, or a reload): still rebuilding state, replay it from the start
/// (harmless); otherwise from `next_offset`, with the rewind.
pub fn refetch_from(plan: &ResumePlan, next_offset: i64, start_from_latest: bool) -> FetchFrom {
    if next_offset == 0 && plan.restore_until == 0 && start_from_latest {
        return FetchFrom::End;
    }
    let from = if next_offset <= plan.restore_until {
        plan.skip_below
    } else {
        next_offset
    };
    FetchFrom::Offset(resume_fetch_offset(from))
}

/// Exponential backoff: `first`, doubling up to `max`, until [`Backoff::reset`].
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    /// When the next attempt may run and the delay that led there.
    next: Option<(Instant, Duration)>,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            next: None,
        }
    }

    /// Records a failure at `now`; returns how long to wait before the next attempt.
    pub fn failed(&mut self, now: Instant) -> Duration {
        let wait = self
            .next
            .map(|(_, d)| (d * 2).min(self.max))
            .unwrap_or(self.first);
        self.next = Some((now + wait, wait));
        wait
    }

    /// Whether an attempt may run at `now`.
    pub fn ready(&self, now: Instant) -> bool {
        self.next.is_none_or(|(at, _)| now >= at)
    }

    /// Whether the last attempt failed.
    pub fn failing(&self) -> bool {
        self.next.is_some()
    }

    pub fn reset(&mut self) {
        self.next = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(state_offset: i64, next_offset: i64) -> Checkpoint {
        Checkpoint {
            from_offset: 0,
            next_offset,
            state_offset,
            max_event_time: 0,
            snapshot_offset: next_offset,
            state: String::new(),
        }
    }

    #[test]
    fn rewinds_but_not_below_zero() {
        assert_eq!(resume_fetch_offset(0), 0);
        assert_eq!(resume_fetch_offset(25), 0);
        assert_eq!(resume_fetch_offset(50_000), 40_000);
    }

    #[test]
    fn a_checkpoint_replays_state_then_aggregates() {
        let plan = resume_plan(Some(&checkpoint(30_000, 45_000)), true);
        assert_eq!(plan.fetch, FetchFrom::Offset(20_000));
        assert_eq!(route(25_000, &plan, 0), Route::Ignore);
        assert_eq!(route(30_000, &plan, 0), Route::Restore);
        assert_eq!(route(44_999, &plan, 0), Route::Restore);
        assert_eq!(route(45_000, &plan, 45_000), Route::Apply);
        // After aggregating up to 50,000, a rewind shows earlier messages again.
        assert_eq!(route(49_999, &plan, 50_000), Route::AlreadyProcessed);
    }

    #[test]
    fn without_a_checkpoint_start_where_configured() {
        assert_eq!(resume_plan(None, false).fetch, FetchFrom::Beginning);
        let latest = resume_plan(None, true);
        assert_eq!(latest.fetch, FetchFrom::End);
        assert_eq!(route(0, &latest, 0), Route::Apply);
        assert_eq!(refetch_from(&latest, 0, true), FetchFrom::End);
        assert_eq!(refetch_from(&latest, 7, true), FetchFrom::Offset(0));
    }

    #[test]
    fn refetch_replays_state_while_still_rebuilding_it() {
        let plan = resume_plan(Some(&checkpoint(30_000, 45_000)), false);
        assert_eq!(
            refetch_from(&plan, 40_000, false),
            FetchFrom::Offset(20_000)
        );
        assert_eq!(
            refetch_from(&plan, 60_000, false),
            FetchFrom::Offset(50_000)
        );
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let t = Instant::now();
        assert!(b.ready(t) && !b.failing());
        assert_eq!(b.failed(t), Duration::from_millis(500));
        assert!(!b.ready(t));
        assert!(b.ready(t + Duration::from_millis(500)));
        let waits: Vec<Duration> = (0..8).map(|_| b.failed(t)).collect();
        assert_eq!(waits[0], Duration::from_secs(1));
        assert_eq!(*waits.last().unwrap(), Duration::from_secs(30));
        b.reset();
        assert!(b.ready(t) && !b.failing());
        assert_eq!(b.failed(t), Duration::from_millis(500));
    }
}
