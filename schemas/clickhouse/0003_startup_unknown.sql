-- Plays whose startup time is unknown (metric `startup_unknown` of the catalogue,
-- schemas/src/metrics.rs): a `first_frame` without `startup_ms` is a play, left out of
-- `startup_ms_sum` and the startup histogram. Adds the column wherever window metrics travel and
-- re-creates the window materialized views with it, like 0002_seeks.sql (apply with the
-- aggregators stopped; every statement can be re-run).

-- The statements, generated from the metric catalogue (schemas/src/window_sql.rs):
-- qoe:generate add-window-columns seeks startup_unknown
