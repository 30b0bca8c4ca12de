//! Reading from Kafka: where to resume a partition.
//!
//! Some Kafka-protocol brokers (tansu 0.6 among them) answer a fetch that starts inside a
//! record batch with the *next* batch, silently skipping the rest of the current one; Apache
//! Kafka returns the whole batch and the client drops what precedes the requested offset.
//! To be correct on both, a resuming consumer fetches from [`resume_fetch_offset`] and drops
//! every message below the offset it meant to resume at. The rewind covers one producer batch
//! (librdkafka's `batch.num.messages` is 10,000 by default and the collector keeps it there).

/// How far before the resume offset fetching starts, in messages.
pub const RESUME_REWIND: i64 = 10_000;

/// The offset to fetch from in order to resume at `resume_at`.
pub fn resume_fetch_offset(resume_at: i64) -> i64 {
    resume_at.saturating_sub(RESUME_REWIND).max(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewinds_but_not_below_zero() {
        assert_eq!(resume_fetch_offset(0), 0);
        assert_eq!(resume_fetch_offset(25), 0);
        assert_eq!(resume_fetch_offset(50_000), 40_000);
    }
}
