"""The server's own Celery worker: started with the server when redis_url is set.

One worker per host consumes the host's queue.  The server starts it (config
``worker``, on by default) so that one command runs a pool member, replaces a
worker left behind by a killed server (its pid file), and stops it when it
stops or restarts for a change of pool membership.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

from xapi.config import Config

log = logging.getLogger("xapi.worker")

PID_FILE = "worker.pid"


def _pid_file(config: Config) -> str:
    return os.path.join(config.state_dir, PID_FILE)


def _is_our_worker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return b"api.cli" in argv and b"worker" in argv


def _stop_pid(pid: int, timeout: float = 15.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)  # Celery's warm shutdown: running calls finish
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}") or _zombie(pid):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def stop_leftover(config: Config) -> None:
    try:
        pid = int(open(_pid_file(config)).read().strip())
    except (OSError, ValueError):
        return
    if _is_our_worker(pid):
        log.info("stopping the worker a previous server left running (pid %d)", pid)
        _stop_pid(pid)


def start(config: Config) -> subprocess.Popen | None:
    if not (config.redis_url and config.worker):
        return None
    stop_leftover(config)
    out = open(os.path.join(config.state_dir, "worker.log"), "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "worker", "--concurrency", str(config.worker_threads)],
        stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    with open(_pid_file(config), "w") as f:
        f.write(f"{process.pid}\n")
    log.info("started this host's worker (pid %d)", process.pid)
    return process


def stop(process: subprocess.Popen | None, config: Config) -> None:
    if process is None:
        return
    if process.poll() is None:
        _stop_pid(process.pid)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            pass
    try:  # a stale pid file could name an unrelated process once the pid is reused
        if int(open(_pid_file(config)).read().strip()) == process.pid:
            os.unlink(_pid_file(config))
    except (OSError, ValueError):
        pass
