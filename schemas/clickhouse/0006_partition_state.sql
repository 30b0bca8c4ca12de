-- Beacon views are tracked for their whole life (duplicates, timeouts; aggregator/src/views.rs).
-- Their table and the CMCD sessions form the partition's state, stored with a checkpoint every
-- few seconds (`state`, JSON) instead of with every batch: every checkpoint names the latest one
-- that carries it (`snapshot_offset`), and a restarted aggregator resumes from that state and
-- re-reads the messages after it without writing them again. `sessions` is only read from
-- checkpoints written before this migration. Apply with the aggregators stopped (the checkpoint
-- materialized view is re-created); every statement can be re-run.

ALTER TABLE qoe_staging ADD COLUMN snapshot_offset UInt64 AFTER sessions;
ALTER TABLE qoe_staging ADD COLUMN state String AFTER snapshot_offset;
ALTER TABLE qoe_ingest ADD COLUMN snapshot_offset UInt64 AFTER sessions;
ALTER TABLE qoe_ingest ADD COLUMN state String AFTER snapshot_offset;
ALTER TABLE qoe_checkpoints ADD COLUMN snapshot_offset UInt64;
ALTER TABLE qoe_checkpoints ADD COLUMN state String;

DROP TABLE IF EXISTS qoe_checkpoints_mv;
CREATE MATERIALIZED VIEW IF NOT EXISTS qoe_checkpoints_mv TO qoe_checkpoints AS
SELECT topic, partition, from_offset, next_offset, state_offset, max_event_time, batch_id, staged_at AS written_at, sessions, snapshot_offset, state
FROM qoe_ingest
WHERE kind = 'checkpoint';
