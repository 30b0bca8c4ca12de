-- Core QoE schema. Runs unchanged on ClickHouse 18.16 and on current releases; statements
-- marked `-- qoe:min-version X.Y` are applied only when the server is at least that version.
--
-- Data path inside ClickHouse (see ARCHITECTURE.md, "Effectively once"):
--
--   aggregator --INSERT--> qoe_staging --INSERT ... SELECT (one statement per batch)--> qoe_ingest (Null)
--                                                                                        |  materialized views
--        qoe_window_10s / qoe_window_1m / qoe_window_1h   (SummingMergeTree, additive metrics)
--        qoe_active_views_10s                             (distinct views, base grain only)
--        qoe_view_partials -> qoe_views                   (one row per view)
--        qoe_checkpoints                                  (per Kafka partition progress)
--
-- Dimensions that are not configured as grouping keys are stored as the empty string.

-- Rows of one aggregator batch, staged. A client killed mid-INSERT can leave a prefix of a
-- batch here; nothing reads a batch before its staging INSERT was acknowledged.
CREATE TABLE IF NOT EXISTS qoe_staging
(
    batch_id UInt64,
    staged_at DateTime('UTC'),
    kind Enum8('window' = 1, 'presence' = 2, 'view' = 3, 'checkpoint' = 4),
    -- qoe:generate window-key-columns
    view_id String,
    -- qoe:generate window-columns duplicate_events
    player String,
    protocol String,
    first_event_time DateTime('UTC'),
    last_event_time DateTime('UTC'),
    started UInt8,
    startup_ms UInt32,
    error_code String,
    error_time UInt64,
    end_reason String,
    end_time UInt64,
    topic String,
    partition UInt32,
    from_offset UInt64,
    next_offset UInt64,
    state_offset UInt64,
    max_event_time Int64
)
ENGINE = MergeTree
PARTITION BY toYYYYMMDD(staged_at) * 100 + toHour(staged_at)
ORDER BY batch_id;

-- Fan-out point: a batch is moved here by one server-side statement; the views below do the rest.
CREATE TABLE IF NOT EXISTS qoe_ingest AS qoe_staging ENGINE = Null;

-- Per-window QoE metrics at the base grain (default 10 s). All columns add up.
-- qoe:generate window-table duplicate_events

CREATE TABLE IF NOT EXISTS qoe_window_1m AS qoe_window_10s;
CREATE TABLE IF NOT EXISTS qoe_window_1h AS qoe_window_10s;

-- qoe:generate window-views duplicate_events

-- Distinct views per base window and slice. Replays of the same view id are harmless here.
-- qoe:generate distinct-at-base-grain qoe_active_views_10s views presence

-- Per-view summaries, built from per-batch partials so a view is visible while it plays.
CREATE TABLE IF NOT EXISTS qoe_view_partials
(
    view_id String,
    region AggregateFunction(anyLast, String),
    cdn AggregateFunction(anyLast, String),
    stream_type AggregateFunction(anyLast, String),
    platform AggregateFunction(anyLast, String),
    stream_id AggregateFunction(anyLast, String),
    player AggregateFunction(anyLast, String),
    protocol AggregateFunction(anyLast, String),
    first_event_time AggregateFunction(min, DateTime('UTC')),
    last_event_time AggregateFunction(max, DateTime('UTC')),
    started AggregateFunction(max, UInt8),
    startup_ms AggregateFunction(max, UInt32),
    playing_ms AggregateFunction(sum, UInt64),
    stall_ms AggregateFunction(sum, UInt64),
    stalls AggregateFunction(sum, UInt64),
    bitrate_kbps_ms AggregateFunction(sum, UInt64),
    errors AggregateFunction(sum, UInt64),
    error_code AggregateFunction(argMax, String, UInt64),
    end_reason AggregateFunction(argMax, String, UInt64)
)
ENGINE = AggregatingMergeTree
ORDER BY view_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS qoe_view_partials_mv TO qoe_view_partials AS
SELECT
    view_id,
    anyLastState(region) AS region,
    anyLastState(cdn) AS cdn,
    anyLastState(stream_type) AS stream_type,
    anyLastState(platform) AS platform,
    anyLastState(stream_id) AS stream_id,
    anyLastState(player) AS player,
    anyLastState(protocol) AS protocol,
    minState(first_event_time) AS first_event_time,
    maxState(last_event_time) AS last_event_time,
    maxState(started) AS started,
    maxState(startup_ms) AS startup_ms,
    sumState(playing_ms) AS playing_ms,
    sumState(stall_ms) AS stall_ms,
    sumState(stalls) AS stalls,
    sumState(bitrate_kbps_ms) AS bitrate_kbps_ms,
    sumState(errors) AS errors,
    argMaxState(error_code, error_time) AS error_code,
    argMaxState(end_reason, end_time) AS end_reason
FROM qoe_ingest
WHERE kind = 'view'
GROUP BY view_id;

-- One row per view: what SREs drill down to.
-- qoe:generate views-view

-- Progress of every Kafka partition: the offset up to which its events are in the tables above.
CREATE TABLE IF NOT EXISTS qoe_checkpoints
(
    topic String,
    partition UInt32,
    from_offset UInt64,
    next_offset UInt64,
    state_offset UInt64,
    max_event_time Int64,
    batch_id UInt64,
    written_at DateTime('UTC')
)
ENGINE = MergeTree
ORDER BY (topic, partition, next_offset);

CREATE MATERIALIZED VIEW IF NOT EXISTS qoe_checkpoints_mv TO qoe_checkpoints AS
SELECT topic, partition, from_offset, next_offset, state_offset, max_event_time, batch_id, staged_at AS written_at
FROM qoe_ingest
WHERE kind = 'checkpoint';

-- Staged batches are only needed until they are moved; keep a day for inspection.
-- qoe:min-version 19.6
ALTER TABLE qoe_staging MODIFY TTL staged_at + INTERVAL 1 DAY;
