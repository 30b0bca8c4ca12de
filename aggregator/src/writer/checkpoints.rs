//! Reading checkpoints back (the latest of a partition, the one holding its state snapshot,
//! whether a batch committed) and the topic-wide checkpoint maintenance (ends, deletion,
//! pruning of old staged batches).

use super::{WriteError, Writer};
use crate::checkpoint::Checkpoint;
use crate::store::Store;
use clickhouse::Row;
use serde::Deserialize;
use std::time::Duration;

/// Checkpoint as stored in ClickHouse.
#[derive(Debug, Row, Deserialize)]
pub(super) struct StoredCheckpoint {
    from_offset: u64,
    next_offset: u64,
    state_offset: u64,
    max_event_time: i64,
    sessions: String,
    snapshot_offset: u64,
    state: String,
}

impl From<StoredCheckpoint> for Checkpoint {
    fn from(r: StoredCheckpoint) -> Self {
        Checkpoint {
            from_offset: r.from_offset as i64,
            next_offset: r.next_offset as i64,
            state_offset: r.state_offset as i64,
            max_event_time: r.max_event_time,
            snapshot_offset: r.snapshot_offset as i64,
            // Checkpoints from before migration 0006 carry the CMCD sessions alone; the
            // partition state reads that form too.
            state: if r.state.is_empty() {
                r.sessions
            } else {
                r.state
            },
        }
    }
}

impl Writer {
    /// The furthest checkpoint of every partition of the topic that has one.
    pub async fn checkpoint_ends(&self) -> Result<Vec<(i32, i64)>, WriteError> {
        #[derive(Row, Deserialize)]
        struct End {
            partition: u32,
            next: u64,
        }
        let shards = self
            .on_each_shard(|store| async move {
                let rows: Vec<End> = store
                    .client
                    .query(
                        "SELECT partition, max(next_offset) AS next FROM qoe_checkpoints \
                         WHERE topic = ? GROUP BY partition ORDER BY partition",
                    )
                    .bind(&self.topic)
                    .fetch_all()
                    .await?;
                Ok(rows)
            })
            .await?;
        let mut ends: Vec<(i32, i64)> = Vec::new();
        for rows in shards {
            for r in rows {
                let (p, next) = (r.partition as i32, r.next as i64);
                match ends.iter_mut().find(|(q, _)| *q == p) {
                    Some((_, n)) => *n = (*n).max(next),
                    None => ends.push((p, next)),
                }
            }
        }
        ends.sort_unstable();
        Ok(ends)
    }

    /// Deletes every checkpoint of the topic, so that all its partitions start over from the
    /// beginning; waits until the deletion is visible.
    pub async fn delete_checkpoints(&self) -> Result<(), WriteError> {
        self.on_each_shard(|store| async move {
            store
                .client
                .query("ALTER TABLE qoe_checkpoints DELETE WHERE topic = ?")
                .bind(&self.topic)
                .execute()
                .await?;
            Ok(())
        })
        .await?;
        for _ in 0..600 {
            if self.checkpoint_ends().await?.is_empty() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(WriteError::Timeout(Duration::from_secs(60)))
    }

    /// Drops the hours of `qoe_staging` that ended more than `retention` ago, on every shard;
    /// returns how many hour partitions were dropped. A staged batch is read only by the move
    /// of its own write attempt (bounded by the write timeout; a retry stages again under a
    /// new id), so older rows are dead weight: without this, staging keeps a copy of every
    /// row ever written.
    pub async fn drop_old_staging(&self, retention: Duration) -> Result<usize, WriteError> {
        let dropped = self
            .on_each_shard(|store| async move {
                // Partitions are `toYYYYMMDD(staged_at) * 100 + toHour(staged_at)`, in UTC.
                let old: Vec<String> = store
                    .client
                    .query(
                        "SELECT DISTINCT partition FROM system.parts \
                         WHERE database = currentDatabase() AND table = 'qoe_staging' AND active \
                         AND toUInt64(partition) < toYYYYMMDD(toDateTime(now() - ?, 'UTC')) * 100 \
                             + toHour(toDateTime(now() - ?, 'UTC'))",
                    )
                    .bind(retention.as_secs())
                    .bind(retention.as_secs())
                    .fetch_all()
                    .await?;
                for partition in &old {
                    // The value came from the server as a number; refuse anything else.
                    if partition.bytes().all(|b| b.is_ascii_digit()) {
                        store
                            .client
                            .query(&format!(
                                "ALTER TABLE qoe_staging DROP PARTITION {partition}"
                            ))
                            .execute()
                            .await?;
                    }
                }
                Ok(old.len())
            })
            .await?;
        Ok(dropped.into_iter().sum())
    }

    /// The latest committed checkpoint of a partition, after any commit of it still running
    /// on the server (from a predecessor that died mid-request) has finished.
    pub async fn checkpoint(&self, partition: i32) -> Result<Option<Checkpoint>, WriteError> {
        let timeout = Duration::from_secs(30);
        tokio::time::timeout(timeout, self.checkpoint_unbounded(partition))
            .await
            .unwrap_or(Err(WriteError::Timeout(timeout)))
    }

    async fn checkpoint_unbounded(&self, partition: i32) -> Result<Option<Checkpoint>, WriteError> {
        self.on_partition(partition, |store| self.latest_checkpoint(store, partition))
            .await
    }

    async fn latest_checkpoint(
        &self,
        store: &Store,
        partition: i32,
    ) -> Result<Option<Checkpoint>, WriteError> {
        self.wait_moves_on(store, partition).await?;
        let row: Option<StoredCheckpoint> = store
            .client
            .query(
                "SELECT ?fields FROM qoe_checkpoints WHERE topic = ? AND partition = ? \
                 ORDER BY next_offset DESC LIMIT 1",
            )
            .bind(&self.topic)
            .bind(partition as u32)
            .fetch_optional()
            .await?;
        Ok(row.map(Checkpoint::from))
    }

    /// The committed checkpoint of a partition that ends at `next_offset` (the one holding
    /// the state snapshot a later checkpoint names).
    pub async fn checkpoint_at(
        &self,
        partition: i32,
        next_offset: i64,
    ) -> Result<Option<Checkpoint>, WriteError> {
        self.on_partition(partition, |store| async move {
            let row: Option<StoredCheckpoint> = store
                .client
                .query(
                    "SELECT ?fields FROM qoe_checkpoints WHERE topic = ? AND partition = ? \
                     AND next_offset = ? AND state != '' LIMIT 1",
                )
                .bind(&self.topic)
                .bind(partition as u32)
                .bind(next_offset as u64)
                .fetch_optional()
                .await?;
            Ok(row.map(Checkpoint::from))
        })
        .await
    }

    /// Whether the batch written under `batch_id` is committed.
    pub async fn committed(&self, partition: i32, batch_id: u64) -> Result<bool, WriteError> {
        self.on_partition(partition, |store| {
            self.committed_on(store, partition, batch_id)
        })
        .await
    }

    pub(super) async fn committed_on(
        &self,
        store: &Store,
        partition: i32,
        batch_id: u64,
    ) -> Result<bool, WriteError> {
        let n: u64 = store
            .client
            .query("SELECT count() FROM qoe_checkpoints WHERE topic = ? AND partition = ? AND batch_id = ?")
            .bind(&self.topic)
            .bind(partition as u32)
            .bind(batch_id)
            .fetch_one()
            .await?;
        Ok(n > 0)
    }
}
