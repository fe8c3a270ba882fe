"""Shared test machinery: database selection and a live server process."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("XAPI_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
ROOT_PASSWORD = "xenroot"


def wanted_backend() -> str:
    return os.environ.get("XAPI_TEST_DB", "sqlite").lower()


def _pg_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


def ensure_postgres() -> str | None:
    """Start the local PostgreSQL if it is down; returns a reason when unusable."""
    if _pg_reachable():
        return None
    ctl = shutil.which("pg_ctlcluster")
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if ctl and versions:
        subprocess.run([ctl, "--skip-systemctl-redirect", versions[-1], "main", "start"],
                       capture_output=True, timeout=60)
        for _ in range(50):
            if _pg_reachable():
                return None
            time.sleep(0.2)
    return "PostgreSQL is not reachable on 127.0.0.1:5432 and could not be started"


REDIS_URL = os.environ.get("XAPI_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _redis_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            return True
    except OSError:
        return False


def ensure_redis() -> str | None:
    """Start a local Redis if it is down; returns a reason when unusable."""
    if _redis_reachable():
        return None
    server = shutil.which("redis-server")
    if server:
        subprocess.run([server, "--daemonize", "yes", "--bind", "127.0.0.1", "--port", "6379",
                        "--save", "", "--appendonly", "no"], capture_output=True, timeout=30)
        for _ in range(50):
            if _redis_reachable():
                return None
            time.sleep(0.1)
    return "Redis is not reachable on 127.0.0.1:6379 and could not be started"


def require_pool_services() -> None:
    """Skip the calling test, loudly, unless PostgreSQL and Redis are (or can be started)."""
    import pytest

    for problem in (ensure_postgres(), ensure_redis()):
        if problem:
            pytest.skip(f"LOUD SKIP: a pool needs PostgreSQL and Redis: {problem}")


def create_pg_database() -> str:
    """A fresh, empty database for one test run; returns its URL."""
    from sqlalchemy import create_engine, text

    name = f"xapi_test_{uuid.uuid4().hex[:12]}"
    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def drop_pg_database(url: str) -> None:
    from sqlalchemy import create_engine, text

    name = url.rsplit("/", 1)[1]
    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveServer:
    process: subprocess.Popen
    state_dir: str
    port: int
    db_url: str | None
    log_path: str
    host: str = "127.0.0.1"  # what it listens on (pool members: 127.0.0.2, 127.0.0.3, …)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def socket_path(self) -> str:
        return os.path.join(self.state_dir, "xapi.sock")

    def log(self) -> str:
        return Path(self.log_path).read_text()

    def stop(self, keep_state: bool = False) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.stop_simulator()
        if not keep_state:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def stop_simulator(self) -> None:
        """The xenopsd simulator (and a server-started worker) outlive a killed server by design."""
        for name, marker in (("worker.pid", b"worker"), ("xenopsd-sim.pid", b"xenops")):
            _stop_pid_file(os.path.join(self.state_dir, name), marker)


def _stop_pid_file(pid_file: str, marker: bytes) -> None:
    """Stop the process a pid file names, if it still is that process: pids are reused
    (pid_max may be 32768), and a stale file must not kill an unrelated process."""
    try:
        pid = int(open(pid_file).read().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if marker not in f.read():
                return
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def start_worker(server: "LiveServer", concurrency: int = 2, **settings) -> subprocess.Popen:
    """Run ``xapi worker`` for the server's host (same state dir, database and listen address)."""
    env = dict(os.environ)
    env.update({"XAPI_STATE_DIR": server.state_dir, "XAPI_DB_URL": server.db_url or "",
                "XAPI_LISTEN": f"{server.host}:{server.port}", "XAPI_LOG_LEVEL": "INFO"})
    env.pop("XAPI_CONFIG", None)
    for key, value in settings.items():
        env[f"XAPI_{key.upper()}"] = str(value)
    log = open(os.path.join(server.state_dir, "worker.log"), "ab")
    return subprocess.Popen([sys.executable, "-m", "api.cli", "worker", "--concurrency", str(concurrency)],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def start_server(db_url: str | None = None, state_dir: str | None = None,
                 listen_host: str = "127.0.0.1", **settings) -> LiveServer:
    """Run ``xapi serve`` in a child process and wait until it answers.

    Hosts of one pool on one machine listen on 127.0.0.x with the same port."""
    # No '_' in the path: XenAPI's UDSTransport maps '_' to '/' in socket paths.
    state_dir = state_dir or os.path.join(tempfile.gettempdir(), f"xapi-test-{uuid.uuid4().hex}")
    os.makedirs(state_dir, exist_ok=True)
    port = settings.pop("port", None) or free_port()
    env = dict(os.environ)
    env.update({
        "XAPI_STATE_DIR": state_dir,
        "XAPI_LISTEN": f"{listen_host}:{port}",
        "XAPI_ROOT_PASSWORD": ROOT_PASSWORD,
        "XAPI_AUTH_FAILURE_DELAY": "0.2",
        "XAPI_LOG_LEVEL": "INFO",
        "XAPI_WORKER": "false",  # tests start workers themselves (start_worker); worker=True: the server's
    })
    env.pop("XAPI_CONFIG", None)
    if db_url:
        env["XAPI_DB_URL"] = db_url
    for key, value in settings.items():
        env[f"XAPI_{key.upper()}"] = str(value)
    log_path = os.path.join(state_dir, "server.log")
    log = open(log_path, "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve"], cwd=REPO, env=env,
        stdout=log, stderr=subprocess.STDOUT,
    )
    server = LiveServer(proc, state_dir, port, db_url, log_path, listen_host)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()}")
        try:
            with socket.create_connection((listen_host, port), timeout=0.5):
                return server
        except OSError:
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server did not start:\n{server.log()}")
