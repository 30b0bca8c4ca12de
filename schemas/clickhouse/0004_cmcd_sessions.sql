-- CMCD sessions (aggregator/src/cmcd.rs) are per-partition state that lives as long as a viewer
-- watches: the checkpoint of each batch carries the partition's session table (JSON), so a
-- restarted aggregator resumes every session where it was instead of replaying its whole life.
-- Empty for partitions without CMCD traffic. Apply with the aggregators stopped (the checkpoint
-- materialized view is re-created); every statement can be re-run.

ALTER TABLE qoe_staging ADD COLUMN sessions String AFTER max_event_time;
ALTER TABLE qoe_ingest ADD COLUMN sessions String AFTER max_event_time;
ALTER TABLE qoe_checkpoints ADD COLUMN sessions String;

DROP TABLE IF EXISTS qoe_checkpoints_mv;
CREATE MATERIALIZED VIEW IF NOT EXISTS qoe_checkpoints_mv TO qoe_checkpoints AS
SELECT topic, partition, from_offset, next_offset, state_offset, max_event_time, batch_id, staged_at AS written_at, sessions
FROM qoe_ingest
WHERE kind = 'checkpoint';
