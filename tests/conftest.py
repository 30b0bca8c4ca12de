"""Shared fixtures of the Python tests (pytest; `make test` runs them after `cargo test`).

chDB embeds one ClickHouse server per process, so all tests share one session with the
project's migrations applied to database `qoe`.
"""

import functools
import os
import pathlib
import subprocess

import pytest
from chdb import session

ROOT = pathlib.Path(__file__).resolve().parents[1]
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"


@functools.cache
def migration_statements():
    """Every migration statement, in order, as the aggregator gives a current server (its
    `-- qoe:generate` lines expanded): `aggregator migrate --print`."""
    out = subprocess.run([str(TARGET / "aggregator"), "migrate", "--print"],
                         check=True, capture_output=True, text=True).stdout
    statements = [s.strip().removesuffix(";") for s in out.split(";\n\n") if s.strip()]
    assert len(statements) > 50, out[:500]
    return statements


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
    for st in migration_statements():
        s.query(st)


@pytest.fixture(scope="session")
def chdb_migrate():
    """`migrate`, for tests that need a database of their own in the shared session."""
    return migrate
