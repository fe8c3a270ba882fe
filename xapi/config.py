"""Server configuration: xapi's ``key = value`` file format, validated by pydantic.

Lines are ``key = value``; ``#`` starts a comment; values may be quoted.
Every key is documented in ``etc/xapi.conf``.  Environment variables
``XAPI_<KEY>`` (upper case) override the file, which is how tests and
containers adjust single settings.

A host that joined a pool keeps the pool's database and Redis URLs in
``<state_dir>/pool.conf`` (same format; written by pool.join, removed by
pool.eject); they win over both, as xapi's pool.conf decides its role.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator


def _default_state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "xapi-server")


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    listen: str = "127.0.0.1:8080"
    unix_socket: str | None = None  # default: <state_dir>/xapi.sock; "" disables it
    state_dir: str = Field(default_factory=_default_state_dir)
    db_url: str | None = None  # default: SQLite file in state_dir
    redis_url: str | None = None  # unset: embedded, in-process executor
    worker: bool = True  # with redis_url, `xapi serve` runs and supervises this host's worker
    host_name: str | None = None  # default: this machine's hostname
    host_address: str | None = None  # what other hosts and clients use; default: the listen host
    worker_threads: int = 8

    auth_failure_delay: float = 5.0
    inactive_session_timeout: float = 86400.0
    max_sessions_per_originator: int = 500
    max_anonymous_sessions: int = 400
    session_last_active_threshold: float = 600.0

    pending_task_timeout: float = 86400.0
    completed_task_timeout: float = 3900.0
    max_tasks: int = 200
    gc_interval: float = 30.0

    event_from_delay: float = 0.02
    event_next_delay: float = 0.2
    event_next_max_queue: int = 100_000
    heartbeat_interval: float = 60.0

    xenopsd_queues: str = "org.xen.xapi.xenops.simulator"  # comma-separated; the first is the default
    xenopsd_socket_dir: str | None = None  # default: <state_dir>/xenopsd
    xenopsd_encoding: str = "json"  # "xmlrpc" for a real xenopsd run with --use-switch=false
    xenopsd_simulator: bool = True  # start the project's simulator for the .simulator queue
    xenopsd_simulator_args: str = ""  # extra command-line flags for it (delays, failures)

    storage_plugin_dirs: str = ""  # comma-separated, searched first; the built-in plugins come last
    storage_gc_interval: float = 30.0  # seconds between coalescing passes over the SRs
    local_storage: bool = True  # first boot makes a file SR (default SR) and an ISO library

    host_heartbeat_interval: float = 30.0  # each host records that it is alive this often
    host_assumed_dead_interval: float = 600.0  # silent this long: host_metrics.live = false

    max_rpc_size: int = 300 * 1024
    log_level: str = "INFO"

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError("listen must be host:port")
        return v

    @property
    def listen_host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def listen_port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def advertised_address(self) -> str:
        """host.address: the configured one, else the listen host, else this machine's."""
        if self.host_address:
            return self.host_address
        host = self.listen_host
        if host not in ("", "0.0.0.0", "::"):
            return host
        import socket

        try:  # the address of the interface that routes outwards; no packet is sent
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect(("192.0.2.1", 9))
                return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"

    @property
    def database_url(self) -> str:
        if self.db_url:
            return self.db_url
        return "sqlite:///" + os.path.join(os.path.abspath(self.state_dir), "xapi.db")

    @property
    def xenopsd_queue_list(self) -> list[str]:
        return [q.strip() for q in self.xenopsd_queues.split(",") if q.strip()]

    @property
    def xenopsd_sockets(self) -> str:
        return self.xenopsd_socket_dir or os.path.join(self.state_dir, "xenopsd")

    @property
    def storage_plugin_dir_list(self) -> list[str]:
        from xapi.backends.storage.plugins import DEFAULT_PLUGIN_DIR

        extra = [d.strip() for d in self.storage_plugin_dirs.split(",") if d.strip()]
        return [*extra, DEFAULT_PLUGIN_DIR]

    @property
    def socket_path(self) -> str | None:
        if self.unix_socket == "":
            return None
        return self.unix_socket or os.path.join(self.state_dir, "xapi.sock")


def parse_conf(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"line {lineno}: expected 'key = value'")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        else:
            value = value.split(" #", 1)[0].strip()
        values[key.strip()] = value
    return values


POOL_CONF = "pool.conf"
POOL_KEYS = ("db_url", "redis_url")  # what a member takes from its pool


def pool_conf_path(state_dir: str) -> str:
    return os.path.join(state_dir, POOL_CONF)


def load(path: str | Path | None = None, env: dict[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    values: dict[str, str] = {}
    path = path or env.get("XAPI_CONFIG")
    if path:
        values.update(parse_conf(Path(path).read_text()))
    for name in Config.model_fields:
        key = f"XAPI_{name.upper()}"
        if key in env:
            values[name] = env[key]
    config = Config(**values)
    membership = pool_conf_path(config.state_dir)
    if os.path.exists(membership):
        pool = parse_conf(Path(membership).read_text())
        config = config.model_copy(update={k: pool[k] for k in POOL_KEYS if pool.get(k)})
    return config
