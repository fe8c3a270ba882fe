"""Fixtures: the database under test (SQLite or PostgreSQL) and a live server.

``XAPI_TEST_DB=postgresql`` runs every database-backed test against the local
PostgreSQL (started if it is down); the default is SQLite.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings

import pytest

from tests import support

# The write path hands the cache rows it did not read back: have it check them
# against the database in every test (servers started by tests inherit this).
os.environ.setdefault("XAPI_DB_VERIFY", "1")

_PG_PROBLEM: str | None = None


def pytest_report_header(config):
    return f"database under test: {support.wanted_backend()}"


def pytest_terminal_summary(terminalreporter):
    if _PG_PROBLEM:
        terminalreporter.write_sep("!", f"POSTGRESQL TESTS SKIPPED: {_PG_PROBLEM}", red=True)


@pytest.fixture(scope="session")
def db_url():
    """URL of a fresh database of the backend under test."""
    global _PG_PROBLEM
    if support.wanted_backend() == "postgresql":
        problem = support.ensure_postgres()
        if problem:
            _PG_PROBLEM = problem
            warnings.warn(problem)
            pytest.skip(f"LOUD SKIP: {problem}")
        url = support.create_pg_database()
        yield url
        support.drop_pg_database(url)
    else:
        directory = tempfile.mkdtemp(prefix="xapi-db-")
        yield f"sqlite:///{directory}/xapi.db"
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def fresh_db_url():
    """A database of its own for one test."""
    if support.wanted_backend() == "postgresql":
        problem = support.ensure_postgres()
        if problem:
            pytest.skip(f"LOUD SKIP: {problem}")
        url = support.create_pg_database()
        yield url
        support.drop_pg_database(url)
    else:
        directory = tempfile.mkdtemp(prefix="xapi-db-")
        yield f"sqlite:///{directory}/xapi.db"
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def server(db_url):
    srv = support.start_server(db_url=db_url)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def quiet_server():
    """A server of the module's own, on a fresh database: for tests that need no other activity."""
    url = None
    if support.wanted_backend() == "postgresql":
        problem = support.ensure_postgres()
        if problem:
            pytest.skip(f"LOUD SKIP: {problem}")
        url = support.create_pg_database()
    srv = support.start_server(db_url=url)
    yield srv
    srv.stop()
    if url:
        support.drop_pg_database(url)


@pytest.fixture
def xenapi(server):
    import XenAPI

    session = XenAPI.Session(server.url + "/")
    session.login_with_password("root", support.ROOT_PASSWORD, "1.0", "pytest")
    yield session
    try:
        session.logout()
    except Exception:
        pass


OLD_XENAPI = "24.13.0"


@pytest.fixture(scope="session")
def old_xenapi_path():
    """XenAPI 24.13.0 (eager API_version calls after login) in a directory of its own."""
    import os
    import subprocess
    import sys

    target = os.path.join(support.REPO, ".test-cache", f"xenapi-{OLD_XENAPI}")
    if not os.path.exists(os.path.join(target, "XenAPI")):
        out = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", target,
             f"XenAPI=={OLD_XENAPI}"],
            capture_output=True, text=True, timeout=300,
        )
        if out.returncode != 0:
            pytest.skip(f"LOUD SKIP: could not install XenAPI=={OLD_XENAPI}: {out.stderr[-500:]}")
    return target
