//! The checkpoint: where a written batch leaves its partition. Stored with the batch in
//! the same ClickHouse transaction, read back when a partition is opened.

/// Where a written batch leaves the partition; stored with the batch, read back on restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// First offset of the batch (the previous checkpoint's `next_offset`).
    pub from_offset: i64,
    /// Offset of the next message to process.
    pub next_offset: i64,
    /// Replay from here to rebuild CMCD duplicate tracking (first offset of an open window).
    pub state_offset: i64,
    /// Watermark input: the largest clamped event time seen.
    pub max_event_time: i64,
    /// `next_offset` of the latest checkpoint that carries a state snapshot (this one's own
    /// when `state` is set).
    pub snapshot_offset: i64,
    /// The partition's state as of `next_offset` ([`crate::window::PartitionState::snapshot`]): beacon views
    /// and CMCD sessions. Written every few seconds, not with every batch; empty in between.
    pub state: String,
}

impl Checkpoint {
    pub fn has_snapshot(&self) -> bool {
        !self.state.is_empty()
    }
}
