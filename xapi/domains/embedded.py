"""The embedded mode's own xenopsd: start the simulator daemon unless one already answers.

The simulator is a separate process, like xenopsd beside xapi, so a server
that is killed leaves its domains running and finds them again when it
comes back; a server that stops normally stops the simulator it started.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
import time

from xapi.backends.xenops.client import XenopsClient, XenopsUnavailable
from xapi.config import Config

log = logging.getLogger("xapi.domains")

SIMULATOR_QUEUE = "org.xen.xapi.xenops.simulator"
PID_FILE = "xenopsd-sim.pid"


def _answers(socket_dir: str, queue: str) -> bool:
    try:
        XenopsClient(socket_dir, queue, timeout=2).query()
        return True
    except (XenopsUnavailable, OSError):
        return False


def wanted(config: Config) -> bool:
    return config.xenopsd_simulator and SIMULATOR_QUEUE in config.xenopsd_queue_list


def answers(config: Config) -> bool:
    return _answers(config.xenopsd_sockets, SIMULATOR_QUEUE)


def ensure_simulator(config: Config) -> subprocess.Popen | None:
    """Start the simulator if this host uses it and it is not running; the process we started."""
    if not wanted(config):
        return None
    socket_dir = config.xenopsd_sockets
    if _answers(socket_dir, SIMULATOR_QUEUE):
        log.info("reusing the running xenopsd simulator in %s", socket_dir)
        return None
    state = os.path.join(config.state_dir, "xenopsd-sim")
    os.makedirs(socket_dir, exist_ok=True)
    os.makedirs(state, exist_ok=True)
    command = [sys.executable, "-m", "xapi.backends.xenops.simulator",
               "--socket-dir", socket_dir, "--state-dir", state, "--queue", SIMULATOR_QUEUE,
               "--log", os.path.join(config.state_dir, "xenopsd-sim.log"),
               *shlex.split(config.xenopsd_simulator_args)]
    output = open(os.path.join(config.state_dir, "xenopsd-sim.out"), "ab")
    process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT,
                               start_new_session=True)  # outlives a killed server, like xenopsd
    with open(os.path.join(config.state_dir, PID_FILE), "w") as f:
        f.write(f"{process.pid}\n")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"xenopsd simulator exited with {process.returncode}")
        if _answers(socket_dir, SIMULATOR_QUEUE):
            log.info("started the xenopsd simulator (pid %d)", process.pid)
            return process
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("xenopsd simulator did not answer within 30 s")


def stop_simulator(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
