-- Request mode (CMCD v1 from CDN and origin logs, README.md "Request mode"): per window and
-- slice, the requests logged, their errors, time to first byte, throughput, delivered bitrate,
-- starvation, startup requests and buffer length, from what players send with each request.
-- Approximations of QoE, in columns of their own (`rm_*`), apart from the view metrics.
-- Generated from the metric catalogue (schemas/src/metrics.rs) by schemas/src/window_sql.rs:
-- adds the columns wherever window metrics travel and re-creates the window materialized
-- views with them. Apply with the aggregators stopped (a batch moved while a view is
-- re-created would miss it); every statement can be re-run.

-- qoe:generate add-window-columns reports_lost rm_late_requests

-- Distinct sessions per base window and slice: the aggregator stages one row of kind
-- 'request_session' per window, slice and sid; uniqExact states merge them exactly across
-- batches and instances.
ALTER TABLE qoe_staging MODIFY COLUMN kind Enum8('window' = 1, 'presence' = 2, 'view' = 3, 'checkpoint' = 4, 'error_code' = 5, 'request_session' = 6);
ALTER TABLE qoe_ingest MODIFY COLUMN kind Enum8('window' = 1, 'presence' = 2, 'view' = 3, 'checkpoint' = 4, 'error_code' = 5, 'request_session' = 6);

-- qoe:generate distinct-at-base-grain qoe_request_sessions_10s sessions request_session
