"""The ClickHouse schema on a current ClickHouse (chDB, in-process, ClickHouse 26.x).

The same migration files the aggregator applies to the server run here unchanged, every
statement included (also those gated to newer servers); the tables hold exactly the metric
catalogue (`schemas/metrics.json`); and the aggregator's batch path (stage, fenced move by
column name, materialized views) gives the same totals at every grain. The SQL of the move
mirrors `aggregator/src/writer.rs`.
"""

import datetime
import json
import pathlib

CATALOGUE = json.loads((pathlib.Path(__file__).resolve().parents[2] / "schemas" / "metrics.json").read_text())
KEYS = ["window_start"] + CATALOGUE["dimensions"]

import pytest


@pytest.fixture(scope="module")
def ch(chdb_session):
    return chdb_session


def q(s, sql):
    return [line.split("\t") for line in str(s.query(sql, "TSV")).splitlines() if line]


def stage(s, batch_id, rows):
    cols = ["batch_id", "staged_at", "kind", "window_start", "region", "cdn", "view_id",
            "attempts", "plays", "playing_ms", "stall_ms", "startup_ms_sum", "startup_le_1000",
            "topic", "partition", "from_offset", "next_offset"]
    # Staged now: qoe_staging drops rows a day after `staged_at` (TTL), even on insert.
    staged_at = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    values = ",".join(
        "(" + ",".join(repr(v) if isinstance(v, str) else str(v) for v in (batch_id, staged_at) + r) + ")"
        for r in rows
    )
    s.query(f"INSERT INTO qoe_staging ({','.join(cols)}) VALUES {values}")


def columns(s, table):
    return q(s, f"SELECT name, type FROM system.columns WHERE database = 'qoe' AND table = '{table}' ORDER BY position")


def move(s, batch_id, partition, from_offset):
    cols = ", ".join(name for name, _ in columns(s, "qoe_staging"))
    s.query(
        f"INSERT INTO qoe_ingest ({cols}) SELECT {cols} FROM qoe_staging WHERE batch_id = {batch_id} "
        f"AND (SELECT count() FROM qoe_checkpoints WHERE topic = 'qoe.events' "
        f"AND partition = {partition} AND next_offset > {from_offset}) = 0"
    )


def test_every_statement_applies_and_tables_exist(ch):
    tables = {r[0] for r in q(ch, "SELECT name FROM system.tables WHERE database = 'qoe'")}
    for t in ["qoe_staging", "qoe_ingest", "qoe_window_10s", "qoe_window_1m", "qoe_window_1h",
              "qoe_active_views_10s", "qoe_view_partials", "qoe_views", "qoe_checkpoints"]:
        assert t in tables
    ttl = q(ch, "SELECT create_table_query FROM system.tables WHERE database = 'qoe' AND name = 'qoe_staging'")
    assert "TTL" in ttl[0][0], "the TTL statement gated to newer servers applies here"


def test_batches_fan_out_with_equal_totals_and_fencing(ch):
    def window(ws, region, attempts, plays, playing, stall, view=""):
        return ("window", ws, region, "cdn-a", view, attempts, plays, playing, stall, 900 * plays, plays, "", 0, 0, 0)

    def checkpoint(partition, frm, nxt):
        return ("checkpoint", "1970-01-01 00:00:00", "", "", "", 0, 0, 0, 0, 0, 0, "qoe.events", partition, frm, nxt)

    def presence(ws, region, view):
        return ("presence", ws, region, "cdn-a", view, 0, 0, 0, 0, 0, 0, "", 0, 0, 0)

    stage(ch, 1, [
        window("2026-11-21 10:00:10", "eu", 2, 1, 5000, 100),
        window("2026-11-21 10:01:20", "eu", 1, 1, 7000, 0),
        presence("2026-11-21 10:00:10", "eu", "v1"),
        presence("2026-11-21 10:00:10", "eu", "v2"),
        checkpoint(0, 0, 10),
    ])
    move(ch, 1, 0, 0)
    # A retry of the same range is fenced off: nothing is counted twice.
    stage(ch, 2, [window("2026-11-21 10:00:10", "eu", 2, 1, 5000, 100), checkpoint(0, 0, 10)])
    move(ch, 2, 0, 0)
    # The next batch of the partition, and another partition.
    stage(ch, 3, [window("2026-11-21 10:00:10", "eu", 1, 0, 0, 0), presence("2026-11-21 10:00:10", "eu", "v1"), checkpoint(0, 10, 15)])
    move(ch, 3, 0, 10)
    stage(ch, 4, [window("2026-11-21 10:00:20", "us", 4, 4, 100, 50), checkpoint(1, 0, 3)])
    move(ch, 4, 1, 0)

    totals = {}
    for table in ["qoe_window_10s", "qoe_window_1m", "qoe_window_1h"]:
        totals[table] = q(ch, f"SELECT sum(attempts), sum(plays), sum(playing_ms), sum(stall_ms), sum(startup_le_1000) FROM {table} WHERE region != 'fanout'")[0]
    assert totals["qoe_window_10s"] == ["8", "6", "12100", "150", "6"]
    assert totals["qoe_window_1m"] == totals["qoe_window_10s"] == totals["qoe_window_1h"]
    per_minute = q(ch, "SELECT toString(window_start), region, sum(attempts) FROM qoe_window_1m WHERE region != 'fanout' GROUP BY window_start, region ORDER BY window_start, region")
    assert per_minute == [["2026-11-21 10:00:00", "eu", "3"], ["2026-11-21 10:00:00", "us", "4"], ["2026-11-21 10:01:00", "eu", "1"]]
    assert q(ch, "SELECT uniqExactMerge(views) FROM qoe_active_views_10s WHERE region = 'eu'") == [["2"]]
    assert q(ch, "SELECT partition, max(next_offset) FROM qoe_checkpoints GROUP BY partition ORDER BY partition") == [["0", "15"], ["1", "3"]]


def test_schema_matches_the_metric_catalogue(ch):
    """Every window table holds the catalogue's columns in its order and types, staging and the
    fan-out table agree, and every materialized view carries every metric column."""
    want = [[c, m["clickhouse_type"]] for m in CATALOGUE["metrics"] if "qoe_window_10s" in m["tables"]
            for c in m["columns"]]
    assert [c for c, _ in want] == CATALOGUE["window_columns"]
    for t in CATALOGUE["window_tables"]:
        cols = columns(ch, t["table"])
        assert [c for c, _ in cols[:len(KEYS)]] == KEYS
        assert cols[len(KEYS):] == want, f"{t['table']}: columns differ from the catalogue"
    staging = columns(ch, "qoe_staging")
    assert columns(ch, "qoe_ingest") == staging
    staged = [c for c, _ in staging]
    for c in CATALOGUE["window_columns"]:
        assert c in staged, f"qoe_staging lacks {c}"
    view_cols = [c for c, _ in columns(ch, "qoe_views")]
    for m in CATALOGUE["metrics"]:
        if m["per_view"]:
            assert m["name"] in view_cols, f"qoe_views lacks per-view metric {m['name']}"
        if m["rollup"] == "distinct_base_grain":
            for table in m["tables"]:
                assert columns(ch, table)[-1][1] == m["clickhouse_type"]

    # A distinct value per metric column through the fan-out, in a slice of its own ('fanout',
    # which the batch test leaves out of its totals).
    names = CATALOGUE["window_columns"]
    values = [1000 * (i + 1) + 7 for i in range(len(names))]
    ch.query(
        f"INSERT INTO qoe.qoe_ingest (kind, window_start, region, {', '.join(names)}) "
        f"SELECT 'window', toDateTime('2020-01-01 00:00:00', 'UTC'), 'fanout', "
        f"{', '.join(map(str, values))}"
    )
    for t in CATALOGUE["window_tables"]:
        got = q(ch, f"SELECT {', '.join(f'sum({c})' for c in names)} FROM qoe.{t['table']} WHERE region = 'fanout'")[0]
        missing = [c for c, v, g in zip(names, values, got) if str(v) != g]
        assert not missing, f"{t['table']}: its materialized view drops {missing}"


def test_cluster_form_of_the_migrations_parses_on_current_clickhouse(ch):
    """chDB cannot run a cluster; the cluster form of every migration statement (ON CLUSTER,
    replicated engines, the Distributed reading layer: `aggregator migrate --print`) must at
    least parse on a current server."""
    import os
    import subprocess

    root = pathlib.Path(__file__).resolve().parents[2]
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", root / "target")) / "debug"
    out = subprocess.run([str(target / "aggregator"), "migrate", "--clickhouse-cluster", "qoe",
                          "--print"], check=True, capture_output=True, text=True).stdout
    statements = [s.strip().rstrip(";") for s in out.split(";\n\n") if s.strip()]
    assert len(statements) > 100
    assert all(" ON CLUSTER qoe" in s for s in statements)
    assert any("ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/qoe/qoe_window_1m'" in s
               for s in statements)
    assert any("ENGINE = Distributed(qoe, qoe, qoe_view_partials, rand())" in s for s in statements)
    for s in statements:
        ch.query("EXPLAIN AST " + s)
    with pytest.raises(Exception):  # the check can fail
        ch.query("EXPLAIN AST CREATE TABLE x ON CLUSTER qoe ENGINE = ReplicatedMergeTree(")
