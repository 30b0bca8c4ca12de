//! Writes a partition's batch to ClickHouse effectively once, and reads checkpoints back.
//!
//! A batch is written in two steps (see ARCHITECTURE.md, "Effectively once"):
//! 1. its rows, checkpoint row included, are inserted into `qoe_staging` under a fresh random
//!    `batch_id`. If the process dies here, a prefix of the rows may be staged; nothing reads
//!    it, because step 2 never runs for that id.
//! 2. one `INSERT INTO qoe_ingest SELECT ... FROM qoe_staging WHERE batch_id = ...` moves the
//!    batch; the materialized views fan it out. The statement is fenced: it moves nothing if a
//!    checkpoint beyond this batch's start already exists for the partition (another owner, or
//!    a retry of this very batch, got there first).
//!
//! Then the checkpoint is read back: present means committed. A step-2 error is not retried
//! blindly; the checkpoint decides.

mod checkpoints;

use crate::batch::Batch;
use crate::checkpoint::Checkpoint;
use crate::route::{Router, Topology};
use crate::staging::{self, secs, Kind, StagingRow};
use crate::store::Store;
use qoe_schemas::metrics::WindowMetrics;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("another writer committed partition {partition} beyond offset {from}; this batch was dropped")]
    Fenced { partition: i32, from: i64 },
    #[error("ClickHouse did not answer within {0:?}")]
    Timeout(Duration),
}

/// Size of the chunks a batch is streamed to ClickHouse in.
const CHUNK_BYTES: usize = 1 << 20;

/// Encodes one staged row and adds it to the insert, sending a chunk when the buffer is full.
async fn push(
    insert: &mut clickhouse::insert_formatted::BufInsertFormatted,
    r: &StagingRow<'_>,
    scratch: &mut Vec<u8>,
) -> Result<(), WriteError> {
    scratch.clear();
    r.encode(scratch);
    insert.write_buffered(scratch);
    if insert.buf_len() >= CHUNK_BYTES {
        insert.flush().await?;
    }
    Ok(())
}

fn now_secs() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

/// Topic names are interpolated into SQL and query ids; Kafka allows only these characters.
fn sql_safe_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Start of the query id of every batch commit of `topic`: a commit still running on the
/// server (its rows still reaching later materialized views) is found by it.
pub fn commit_query_id_prefix(topic: &str) -> String {
    format!("qoe-commit-{topic}-")
}

fn query_id_prefix(topic: &str, partition: i32) -> String {
    format!("{}{partition}-", commit_query_id_prefix(topic))
}

pub struct Writer {
    /// Every server written to: one, or each replica of each shard of a cluster.
    servers: Vec<Store>,
    router: Router,
    pub topic: String,
}

/// How long a replica may take to catch up with its shard before it is given up on.
const SYNC_TIMEOUT: Duration = Duration::from_secs(15);

/// A writer that cannot be made from its arguments.
#[derive(Debug, thiserror::Error)]
pub enum WriterConfigError {
    #[error("a cluster needs at least one shard, each with at least one replica")]
    EmptyCluster,
    #[error("topic name {0:?} has characters Kafka does not allow")]
    TopicName(String),
}

impl Writer {
    /// A writer to one server.
    pub fn new(store: Store, topic: &str) -> Result<Writer, WriterConfigError> {
        Writer::with_topology(vec![store], Topology::single(), topic)
    }

    /// A writer to a cluster: `shards[s]` are the replicas of shard `s` (see [`crate::route`]).
    pub fn cluster(shards: Vec<Vec<Store>>, topic: &str) -> Result<Writer, WriterConfigError> {
        if shards.is_empty() || shards.iter().any(|s| s.is_empty()) {
            return Err(WriterConfigError::EmptyCluster);
        }
        let mut servers = Vec::new();
        let mut topology = Topology { shards: Vec::new() };
        for shard in shards {
            let mut replicas = Vec::new();
            for store in shard {
                replicas.push(servers.len());
                servers.push(store);
            }
            topology.shards.push(replicas);
        }
        Writer::with_topology(servers, topology, topic)
    }

    fn with_topology(
        servers: Vec<Store>,
        topology: Topology,
        topic: &str,
    ) -> Result<Writer, WriterConfigError> {
        if !sql_safe_topic(topic) {
            return Err(WriterConfigError::TopicName(topic.to_owned()));
        }
        Ok(Writer {
            servers,
            router: Router::new(topology),
            topic: topic.to_owned(),
        })
    }

    /// The server a partition writes to now, caught up with its shard first on a cluster.
    /// A replica that cannot catch up is passed over for the shard's next one at once
    /// (catching up only reads), so a dead home replica costs one refused connection.
    async fn store_for(&self, partition: i32) -> Result<&Store, WriteError> {
        let shard = self.router.topology().shard_of(partition);
        let replicas = self.router.topology().shards[shard].len();
        let mut last = None;
        for _ in 0..replicas {
            let (server, needs_sync) = self.router.route(partition, Instant::now());
            let store = &self.servers[server];
            if !needs_sync {
                return Ok(store);
            }
            self.wait_moves_in_shard(partition).await;
            match sync_checkpoints(store).await {
                Ok(()) => {
                    tracing::info!(partition, server = %store.config.url, "partition writes to this replica");
                    self.router.synced(partition, Instant::now());
                    return Ok(store);
                }
                Err(e) => {
                    tracing::warn!(partition, server = %store.config.url, error = %e, "replica cannot catch up with its shard; trying the next replica");
                    self.router.failed(partition, Instant::now());
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(WriteError::Timeout(SYNC_TIMEOUT)))
    }

    /// Waits until no move of the partition runs on any answering replica of its shard: a
    /// move that timed out on one replica may still commit there, and the replica the
    /// partition moves to must see that checkpoint before it fences the next batch. A replica
    /// that does not answer runs nothing (killed) or is cut off, which this cannot see.
    async fn wait_moves_in_shard(&self, partition: i32) {
        if !self.router.topology().is_cluster() {
            return;
        }
        let shard = &self.router.topology().shards[self.router.topology().shard_of(partition)];
        for &i in shard {
            let _ = self.wait_moves_on(&self.servers[i], partition).await;
        }
    }

    /// Waits (up to 10 s) until no move of the partition runs on `store`, each probe bounded
    /// by 2 s; a failed probe is returned.
    async fn wait_moves_on(&self, store: &Store, partition: i32) -> Result<(), WriteError> {
        let prefix = query_id_prefix(&self.topic, partition);
        let probe_timeout = Duration::from_secs(2);
        for _ in 0..100 {
            let running: u64 = tokio::time::timeout(
                probe_timeout,
                store
                    .client
                    .query("SELECT count() FROM system.processes WHERE startsWith(query_id, ?)")
                    .bind(&prefix)
                    .fetch_one(),
            )
            .await
            .map_err(|_| WriteError::Timeout(probe_timeout))??;
            if running == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Runs `call` on the partition's server; a failure (other than a fence) moves the
    /// partition to its shard's other replica for the next call.
    async fn on_partition<'a, T, F, Fut>(&'a self, partition: i32, call: F) -> Result<T, WriteError>
    where
        F: FnOnce(&'a Store) -> Fut,
        Fut: std::future::Future<Output = Result<T, WriteError>>,
    {
        let store = self.store_for(partition).await?;
        let result = call(store).await;
        if let Err(e) = &result {
            if !matches!(e, WriteError::Fenced { .. }) {
                self.router.failed(partition, Instant::now());
            }
        }
        result
    }

    /// `call`'s result on each shard, from the first of its replicas that answers.
    async fn on_each_shard<'a, T, F, Fut>(&'a self, call: F) -> Result<Vec<T>, WriteError>
    where
        F: Fn(&'a Store) -> Fut,
        Fut: std::future::Future<Output = Result<T, WriteError>>,
    {
        let mut out = Vec::new();
        for shard in &self.router.topology().shards {
            let mut last = None;
            for &i in shard {
                match call(&self.servers[i]).await {
                    Ok(v) => {
                        out.push(v);
                        last = None;
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            if let Some(e) = last {
                return Err(e);
            }
        }
        Ok(out)
    }

    /// A fresh batch id for one write attempt.
    pub fn new_batch_id() -> u64 {
        rand::random::<u64>() >> 1 // stays positive in signed readers
    }

    /// Writes one batch of one partition with its checkpoint under `batch_id` (fresh for each
    /// attempt). `Ok` means committed. Every ClickHouse call is bounded by `timeout`.
    pub async fn write(
        &self,
        partition: i32,
        batch: &Batch,
        checkpoint: &Checkpoint,
        batch_id: u64,
        timeout: Duration,
    ) -> Result<(), WriteError> {
        self.on_partition(partition, |store| async move {
            tokio::time::timeout(
                timeout,
                self.write_unbounded(store, partition, batch, checkpoint, batch_id),
            )
            .await
            .unwrap_or(Err(WriteError::Timeout(timeout)))
        })
        .await
    }

    async fn write_unbounded(
        &self,
        store: &Store,
        partition: i32,
        batch: &Batch,
        checkpoint: &Checkpoint,
        batch_id: u64,
    ) -> Result<(), WriteError> {
        let staged_at = now_secs();
        let client = &store.client;

        let columns = staging::column_list();
        // Rows are streamed in chunks of about CHUNK_BYTES (the client's buffered insert), so a
        // large batch is never held a second time, encoded, in memory.
        let mut insert = client
            .clone()
            .with_option("insert_deduplicate", "0")
            .insert_formatted_with(format!(
                "INSERT INTO qoe_staging ({columns}) FORMAT RowBinary"
            ))
            .buffered_with_capacity(CHUNK_BYTES);
        let mut row = Vec::new();
        for (window_start, slice, m) in batch.window_rows() {
            let mut r =
                StagingRow::empty(batch_id, staged_at, Kind::Window).at(window_start, slice);
            r.metrics = Some(m);
            push(&mut insert, &r, &mut row).await?;
        }
        for (window_start, slice, view_id) in batch.presence_rows() {
            let mut r =
                StagingRow::empty(batch_id, staged_at, Kind::Presence).at(window_start, slice);
            r.view_id = view_id;
            push(&mut insert, &r, &mut row).await?;
        }
        for (window_start, slice, sid) in batch.request_session_rows() {
            let mut r = StagingRow::empty(batch_id, staged_at, Kind::RequestSession)
                .at(window_start, slice);
            r.view_id = sid;
            push(&mut insert, &r, &mut row).await?;
        }
        for (view_id, c, v) in batch.view_rows() {
            // The per-view totals travel in the metric columns of the same names.
            let totals = WindowMetrics {
                playing_ms: v.playing_ms,
                stall_ms: v.stall_ms,
                stalls: v.stalls,
                bitrate_kbps_ms: v.bitrate_kbps_ms,
                errors: v.errors,
                ..WindowMetrics::default()
            };
            let mut r = StagingRow::empty(batch_id, staged_at, Kind::View);
            r.view_id = view_id;
            r.region = &c.region;
            r.cdn = &c.cdn;
            r.stream_type = c.stream_type.as_str();
            r.platform = &c.platform;
            r.stream_id = &c.stream_id;
            r.player = &c.player;
            r.protocol = &c.protocol;
            r.first_event_time = secs(v.first_event_time);
            r.last_event_time = secs(v.last_event_time);
            r.started = u8::from(v.started);
            r.startup_ms = v.startup_ms;
            r.metrics = Some(&totals);
            r.error_code = &v.error_code;
            r.error_time = v.error_time.max(0) as u64;
            r.end_reason = v.end_reason;
            r.end_time = v.end_time.max(0) as u64;
            push(&mut insert, &r, &mut row).await?;
        }
        for e in batch.error_rows() {
            // The counts travel in the metric columns of the same names.
            let count = WindowMetrics {
                errors: e.errors,
                attempts: e.attempts,
                events_lost: e.events_lost,
                reports_lost: e.reports_lost,
                ..WindowMetrics::default()
            };
            let mut r =
                StagingRow::empty(batch_id, staged_at, Kind::ErrorCode).at(e.window_start, e.slice);
            r.stream_id = "";
            r.player = e.player;
            r.error_code = e.code;
            r.started = u8::from(e.started);
            r.fatal = u8::from(e.fatal);
            r.business = u8::from(e.business);
            r.metrics = Some(&count);
            push(&mut insert, &r, &mut row).await?;
        }
        let mut r = StagingRow::empty(batch_id, staged_at, Kind::Checkpoint);
        r.topic = &self.topic;
        r.partition = partition as u32;
        r.from_offset = checkpoint.from_offset as u64;
        r.next_offset = checkpoint.next_offset as u64;
        r.state_offset = checkpoint.state_offset as u64;
        r.max_event_time = checkpoint.max_event_time;
        r.snapshot_offset = checkpoint.snapshot_offset as u64;
        r.state = &checkpoint.state;
        push(&mut insert, &r, &mut row).await?;
        insert.end().await?;

        let move_batch = format!(
            "INSERT INTO qoe_ingest ({columns}) SELECT {columns} FROM qoe_staging WHERE batch_id = {batch_id} \
             AND (SELECT count() FROM qoe_checkpoints WHERE topic = '{topic}' \
                  AND partition = {partition} AND next_offset > {from}) = 0",
            topic = self.topic,
            from = checkpoint.from_offset,
        );
        // Replicated tables drop a block identical to a recent one; on a cluster two batches
        // can produce identical window rows, and each must count.
        let moved = client
            .clone()
            .with_option("insert_deduplicate", "0")
            .with_option(
                "query_id",
                format!("{}{batch_id}", query_id_prefix(&self.topic, partition)),
            )
            .query(&move_batch)
            .execute()
            .await;
        match (moved, self.committed_on(store, partition, batch_id).await?) {
            (_, true) => Ok(()),
            (Err(e), false) => Err(e.into()),
            (Ok(()), false) => Err(WriteError::Fenced {
                partition,
                from: checkpoint.from_offset,
            }),
        }
    }
}

/// Waits until `store` holds every checkpoint its shard has committed (`SYSTEM SYNC REPLICA`:
/// it fetches the replication log and waits for its queue to empty). Fails when it cannot
/// within [`SYNC_TIMEOUT`], e.g. while the other replica holds a part nobody else has yet.
async fn sync_checkpoints(store: &Store) -> Result<(), WriteError> {
    let sql = format!(
        "SYSTEM SYNC REPLICA {}.qoe_checkpoints",
        store.config.database
    );
    let timeout_secs = SYNC_TIMEOUT.as_secs().saturating_sub(2).max(1);
    tokio::time::timeout(
        SYNC_TIMEOUT,
        store
            .client
            .clone()
            .with_option("receive_timeout", timeout_secs.to_string())
            .query(&sql)
            .execute(),
    )
    .await
    .unwrap_or_else(|_| Err(clickhouse::error::Error::Custom("timed out".into())))
    .map_err(|e| match e {
        clickhouse::error::Error::Custom(_) => WriteError::Timeout(SYNC_TIMEOUT),
        other => other.into(),
    })
}
