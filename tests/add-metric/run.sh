#!/usr/bin/env bash
# Adding a metric, end to end, in a scratch copy of the tree (ARCHITECTURE.md, "Adding a
# metric"): `heartbeats`, a count of `heartbeat` events, goes into the catalogue, and this shows
# what follows by itself and what the tests demand, step by step:
#
#   1. the catalogue entry alone: the generator's test fails naming the migration it would
#      write; QOE_BLESS=1 writes it (a header and one `-- qoe:generate` line that stands for
#      ADD COLUMN where window metrics travel and the three window views re-created); the
#      migrations' test fails until it is listed in MIGRATIONS;
#      `make metrics-json` puts it in schemas/metrics.json;
#   2. the oracles and the rows: both coverage tests (the simulator's truth, and the tests'
#      replay built on it) fail naming `heartbeats` until the simulator's truth has a rule; then
#      the aggregator's rows differ from the oracle's in `heartbeats` (tests/tests/rows.rs) until
#      the aggregator has its rule, one match arm; then every unit test passes;
#   3. real ClickHouse: the migrations, the generated one included, apply by the aggregator's
#      migrator and give staging, ingest and every window table the catalogue's columns
#      (`schema_matches_the_metric_catalogue`); a metric generated on top still migrates and its
#      staged values roll up to 10 s, 1 m and 1 h;
#   4. the dashboards: the generator accepts the column in a panel (it refuses it in the real
#      tree) and its output for the released dashboards is unchanged.
#
# The copy builds in the project's target directory: its own crates under another version (so
# they are compiled apart), the dependencies shared; it builds no binaries, which cargo would
# put where the real tree's are. Needs
# ClickHouse (scripts/stack.sh start). Run by `make test` (suite `metric`); alone:
# tests/add-metric/run.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
CARGO="${CARGO:-cargo}"
PYTHON="${PYTHON:-$ROOT/.stack/venv/bin/python}"
CH="${QOE_CLICKHOUSE_URL:-http://127.0.0.1:8123}"
SCRATCH="$CARGO_TARGET_DIR/add-metric"

step() { echo "----- $*"; }
fail() {
  echo "FAILED: $*" >&2
  exit 1
}
# Runs a command that must fail, and checks its output names what is missing.
must_fail_naming() {
  local want="$1" out
  shift
  if out="$("$@" 2>&1)"; then
    echo "$out" | tail -n 20
    fail "'$*' passed; it must fail while the metric is missing there"
  fi
  echo "$out" | grep -F -- "$want" | head -n 3 || {
    echo "$out" | tail -n 30
    fail "'$*' failed without naming '$want'"
  }
}
# Inserts `text` after the first line of `file` that contains `anchor` (a fixed string).
insert_after() {
  local file="$1" anchor="$2" text="$3"
  grep -qF -- "$anchor" "$file" || fail "$file: no line with '$anchor'"
  ANCHOR="$anchor" TEXT="$text" perl -0pi -e \
    's/^(.*\Q$ENV{ANCHOR}\E.*\n)/$1$ENV{TEXT}\n/m' "$file"
}

step "a scratch copy of the tree in $SCRATCH"
rm -rf "$SCRATCH"
mkdir -p "$SCRATCH"
(cd "$ROOT" && git ls-files -z | xargs -0 cp --parents -t "$SCRATCH")
cd "$SCRATCH"
# Another version for the copy's crates: cargo names a workspace crate's artifacts by name and
# version, not by path, so without it the copy's would replace the tree's in the shared target
# directory. The dependencies' artifacts are shared.
sed -i '0,/^version = "0.1.0"$/s//version = "0.1.0-add-metric"/' Cargo.toml
grep -q '^version = "0.1.0-add-metric"$' Cargo.toml || fail "Cargo.toml: no workspace version to change"

step "1. the catalogue entry"
insert_after schemas/src/metrics.rs 'rm_late_requests: sum, unit = "requests"' \
  '    /// Heartbeats: `heartbeat` events.
    heartbeats: sum, unit = "events", per_view = false;'
next=$(printf '%04d' $(($(ls schemas/clickhouse/*.sql | wc -l) + 1)))
migration="schemas/clickhouse/${next}_heartbeats.sql"
must_fail_naming "${next}_heartbeats.sql" $CARGO test -q -p qoe-schemas --lib window_sql
must_fail_naming "wrote $SCRATCH/$migration" env QOE_BLESS=1 $CARGO test -q -p qoe-schemas --lib window_sql
# Its statements are one generated line (schemas/src/migrations/templates.rs); step 3 applies
# them, and the migrations' unit tests check what that line stands for.
grep -qxF -- "-- qoe:generate add-window-columns rm_late_requests heartbeats" "$migration" ||
  fail "$migration: no line generating heartbeats' statements"
echo "$migration: $(grep -c . "$migration") lines, its statements generated from the catalogue"
must_fail_naming "MIGRATIONS must list every file" $CARGO test -q -p qoe-schemas --lib migrations
insert_after schemas/src/migrations.rs 'sql: include_str!("../clickhouse/0010_request_mode.sql"),' \
  "    },
    Migration {
        version: $((10#$next)),
        name: \"${next}_heartbeats.sql\",
        sql: include_str!(\"../clickhouse/${next}_heartbeats.sql\"),
        released: None,"
must_fail_naming "out of date" $CARGO test -q -p qoe-schemas --lib committed_json_is_current
QOE_BLESS=1 $CARGO test -q -p qoe-schemas --lib committed_json_is_current >/dev/null
grep -q '"heartbeats"' schemas/metrics.json || fail "metrics.json has no heartbeats"
$CARGO test -q -p qoe-schemas --lib 2>&1 | grep "test result"

step "2. the oracles and the rows"
for want in "the simulator's oracle has no rule for heartbeats" "no oracle rule produced heartbeats"; do
  must_fail_naming "$want" \
    $CARGO test -q --workspace --lib --no-fail-fast every_catalogue_column_has_a_rule
done
insert_after simulator/src/truth.rs 'EventType::Seek => row.bump("seeks", 1),' \
  '        EventType::Heartbeat => row.bump("heartbeats", 1),'
# The rows: the aggregator's, per window and slice, against the oracle's (tests/tests/rows.rs).
must_fail_naming "heartbeats at" $CARGO test -q --workspace --test rows
insert_after aggregator/src/metrics.rs 'EventType::Seek => self.seeks += 1,' \
  '            EventType::Heartbeat => self.heartbeats += 1,'
$CARGO test -q --workspace --lib --test rows 2>&1 | grep "test result" | sort | uniq -c

step "3. real ClickHouse ($CH)"
# The released migrations and the generated one, applied by the aggregator's migrator, give
# staging, ingest and the window tables the catalogue's columns, heartbeats last; a metric
# generated on top of that still migrates, and its staged values roll up to 10 s, 1 m and 1 h.
$CARGO test -q --workspace --test clickhouse_migrations --no-fail-fast -- \
  schema_matches_the_metric_catalogue a_metric_added_to_the_catalogue_migrates_and_rolls_up \
  migrations_are_idempotent_and_rows_round_trip 2>&1 | grep "test result"

step "4. the dashboards"
must_fail_naming "'heartbeats' is not a column of the metric catalogue" \
  "$PYTHON" -c "import sys; sys.path.insert(0, '$ROOT/dashboards'); import generate; generate.column('heartbeats')"
"$PYTHON" -c "import sys; sys.path.insert(0, 'dashboards'); import generate; print('panel column accepted:', generate.column('heartbeats'))"
"$PYTHON" dashboards/generate.py --check
echo "adding a metric: every step checked"
