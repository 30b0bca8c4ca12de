//! The consumer loop's decisions, pure (time is passed in) so they are unit-tested without
//! Kafka: when to consume, when to flush, when a failed write pauses consumption and a
//! successful one resumes it, and when a requested stop may end the loop.
//!
//! - Flushes run every `flush_interval`, or sooner when a partition's batch is full, and
//!   never before the retry backoff of a failed write allows.
//! - A failed write pauses consumption (memory stays bounded: nothing new is read while a
//!   batch waits); the first successful flush after it resumes.
//! - After a stop request nothing new is consumed; the loop ends once every batch is
//!   written, or after `stop_grace` of failing writes (the checkpoints make giving up safe).

use crate::source::Backoff;
use std::time::{Duration, Instant};

/// What the loop does after a flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFlush {
    /// Carry on consuming.
    Continue,
    /// The write failed: pause consumption, retry after this long.
    Pause { retry_in: Duration },
    /// The write failed again while paused.
    StillFailing { retry_in: Duration },
    /// Writes succeed again: reposition and resume consumption.
    Resume,
    /// Stop requested and everything written (or the grace period over): leave the group.
    Stop,
}

#[derive(Debug)]
pub struct LoopState {
    flush_interval: Duration,
    stop_grace: Duration,
    last_flush: Instant,
    backoff: Backoff,
    paused: bool,
    stop_requested: Option<Instant>,
}

impl LoopState {
    pub fn new(flush_interval: Duration, stop_grace: Duration, now: Instant) -> Self {
        LoopState {
            flush_interval,
            stop_grace,
            last_flush: now,
            backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
            paused: false,
            stop_requested: None,
        }
    }

    /// Records a stop request (the first one counts for the grace period).
    pub fn request_stop(&mut self, now: Instant) {
        self.stop_requested.get_or_insert(now);
    }

    pub fn stopping(&self) -> bool {
        self.stop_requested.is_some()
    }

    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Whether the loop reads new messages (else it only polls to keep group membership).
    pub fn consuming(&self) -> bool {
        !self.paused && !self.stopping()
    }

    /// Whether to flush now; `batch_full`: some partition's batch reached the row bound.
    pub fn flush_due(&self, now: Instant, batch_full: bool) -> bool {
        let due = batch_full
            || self.stopping()
            || now.duration_since(self.last_flush) >= self.flush_interval;
        due && self.backoff.ready(now)
    }

    /// Records a flush's result at `now`; says what the loop does next.
    pub fn flushed(&mut self, ok: bool, now: Instant) -> AfterFlush {
        self.last_flush = now;
        let step = if ok {
            self.backoff.reset();
            if std::mem::replace(&mut self.paused, false) {
                AfterFlush::Resume
            } else {
                AfterFlush::Continue
            }
        } else {
            let retry_in = self.backoff.failed(now);
            if std::mem::replace(&mut self.paused, true) {
                AfterFlush::StillFailing { retry_in }
            } else {
                AfterFlush::Pause { retry_in }
            }
        };
        let gave_up = self
            .stop_requested
            .is_some_and(|at| now.duration_since(at) > self.stop_grace);
        if self.stopping() && (ok || gave_up) {
            return AfterFlush::Stop;
        }
        step
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLUSH: Duration = Duration::from_secs(1);
    const GRACE: Duration = Duration::from_secs(20);

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn flushes_every_interval_or_when_a_batch_is_full() {
        let t0 = Instant::now();
        let s = LoopState::new(FLUSH, GRACE, t0);
        assert!(!s.flush_due(at(t0, 999), false));
        assert!(s.flush_due(at(t0, 1000), false));
        assert!(s.flush_due(at(t0, 10), true));
    }

    #[test]
    fn a_failed_write_pauses_until_a_retry_succeeds() {
        let t0 = Instant::now();
        let mut s = LoopState::new(FLUSH, GRACE, t0);
        let t1 = at(t0, 1000);
        let AfterFlush::Pause { retry_in } = s.flushed(false, t1) else {
            panic!("a failed write pauses")
        };
        assert!(!s.consuming(), "nothing is read while a batch waits");
        assert!(
            !s.flush_due(t1 + retry_in / 2, true),
            "no retry before the backoff"
        );
        let t2 = t1 + retry_in.max(FLUSH);
        assert!(s.flush_due(t2, false));
        let AfterFlush::StillFailing { retry_in: longer } = s.flushed(false, t2) else {
            panic!("still failing")
        };
        assert!(longer > retry_in, "the backoff grows");
        assert_eq!(s.flushed(true, t2 + longer), AfterFlush::Resume);
        assert!(s.consuming());
        assert_eq!(s.flushed(true, t2 + longer + FLUSH), AfterFlush::Continue);
    }

    #[test]
    fn a_stop_waits_for_the_writes_within_its_grace() {
        let t0 = Instant::now();
        let mut s = LoopState::new(FLUSH, GRACE, t0);
        s.request_stop(at(t0, 100));
        assert!(!s.consuming());
        assert!(s.flush_due(at(t0, 100), false), "a stop flushes at once");
        assert!(matches!(
            s.flushed(false, at(t0, 100)),
            AfterFlush::Pause { .. }
        ));
        s.request_stop(at(t0, 5000)); // a second signal does not restart the grace period
        assert!(matches!(
            s.flushed(false, at(t0, 10_000)),
            AfterFlush::StillFailing { .. }
        ));
        assert_eq!(s.flushed(true, at(t0, 12_000)), AfterFlush::Stop);
    }

    #[test]
    fn a_stop_gives_up_after_its_grace() {
        let t0 = Instant::now();
        let mut s = LoopState::new(FLUSH, GRACE, t0);
        s.request_stop(t0);
        s.flushed(false, at(t0, 1));
        assert_eq!(s.flushed(false, t0 + GRACE + FLUSH), AfterFlush::Stop);
    }
}
