-- Request metrics from CMCD `rr` reports (catalogue entries cdn_requests, cdn_request_errors,
-- ttfb_ms_sum and the ttfb histogram, schemas/src/metrics.rs): per window and slice, the CDN
-- requests players made, those that failed (status >= 400 or none) and their time to first byte.
-- Adds the columns wherever window metrics travel and re-creates the window materialized views
-- with them, like 0002_seeks.sql (apply with the aggregators stopped; every statement can be
-- re-run).

-- The statements, generated from the metric catalogue (schemas/src/window_sql.rs):
-- qoe:generate add-window-columns startup_unknown ttfb_le_inf
