-- Errors by code (README.md, "Errors by code"): per window and slice (region, CDN, stream
-- type, platform, player), how many `error` events carried each code, fatal or not, before or
-- after the first frame, and whether the code is configured as a business error. Codes are
-- bounded per partition and hour (schemas/src/errors.rs): later distinct codes count as
-- `other`. Rows of the empty code with all flags 0 also carry the play attempts of their
-- slice and player in `attempts`, and the beacon events and CMCD reports lost there
-- (`events_lost`, `reports_lost`, see migration 0008): per player, which the window tables
-- do not have. The aggregator stages one row of kind 'error_code' per window, slice and
-- code, its counts in `errors` and `attempts`; materialized views sum them per minute and
-- per hour.
-- Apply with the aggregators stopped; every statement can be re-run.

ALTER TABLE qoe_staging MODIFY COLUMN kind Enum8('window' = 1, 'presence' = 2, 'view' = 3, 'checkpoint' = 4, 'error_code' = 5);
ALTER TABLE qoe_staging ADD COLUMN fatal UInt8 AFTER state;
ALTER TABLE qoe_staging ADD COLUMN business UInt8 AFTER fatal;
ALTER TABLE qoe_ingest MODIFY COLUMN kind Enum8('window' = 1, 'presence' = 2, 'view' = 3, 'checkpoint' = 4, 'error_code' = 5);
ALTER TABLE qoe_ingest ADD COLUMN fatal UInt8 AFTER state;
ALTER TABLE qoe_ingest ADD COLUMN business UInt8 AFTER fatal;

CREATE TABLE IF NOT EXISTS qoe_error_codes_1m
(
    window_start DateTime('UTC'),
    region String,
    cdn String,
    stream_type String,
    platform String,
    player String,
    error_code String,
    fatal UInt8,
    started UInt8,
    business UInt8,
    errors UInt64,
    attempts UInt64,
    events_lost UInt64,
    reports_lost UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMMDD(window_start)
ORDER BY (window_start, region, cdn, stream_type, platform, player, error_code, fatal, started, business);

CREATE TABLE IF NOT EXISTS qoe_error_codes_1h AS qoe_error_codes_1m;

-- qoe:generate rollup-views error_code qoe_error_codes_1m:60 qoe_error_codes_1h:3600
