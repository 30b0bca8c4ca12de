"""Shared fixtures of the Python tests (pytest; `make test` runs them after `cargo test`).

chDB embeds one ClickHouse server per process, so all tests share one session with the
project's migrations applied to database `qoe`.
"""

import pathlib

import pytest
from chdb import session

ROOT = pathlib.Path(__file__).resolve().parents[1]
MIGRATIONS = sorted((ROOT / "schemas" / "clickhouse").glob("*.sql"))


def statements(path):
    """Splits a migration the way `qoe_schemas::migrations` does."""
    out, cur = [], []
    for line in path.read_text().splitlines():
        t = line.strip()
        if t.startswith("--") or (not t and not cur):
            continue
        cur.append(line)
        if t.endswith(";"):
            out.append("\n".join(cur).strip().rstrip(";"))
            cur = []
    assert not "".join(cur).strip(), f"{path.name}: text after the last ';'"
    return out


@pytest.fixture(scope="session")
def chdb_session(tmp_path_factory):
    """Current ClickHouse (chDB, in-process) with every migration statement applied unchanged."""
    # pytest's own temporary directory: cleaned up by pytest, not left behind in /tmp.
    s = session.Session(str(tmp_path_factory.mktemp("chdb")))
    migrate(s, "qoe")
    yield s
    s.close()


def migrate(s, database):
    """Creates `database` in chDB session `s` with every migration statement applied, and makes
    it the current one."""
    s.query(f"CREATE DATABASE IF NOT EXISTS {database}")
    s.query(f"USE {database}")
    for path in MIGRATIONS:
        for st in statements(path):
            s.query(st)


@pytest.fixture(scope="session")
def chdb_migrate():
    """`migrate`, for tests that need a database of their own in the shared session."""
    return migrate
