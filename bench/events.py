"""Benchmark of events and tasks (issue 3): run ``python -m bench.events``.

Not a timed test: it prints figures and compares them with the targets.

(1) ``event.from`` latency: 1, 100 and 500 (``--watchers``) idle watchers, each
    with its own session and its own HTTP/1.1 keep-alive connection, wait in
    ``event.from(["pool"], token, 60)`` (XML-RPC).  Another connection makes a
    commit (``pool.add_to_other_config`` / ``remove_from_other_config``,
    alternately); the latency of a watcher is from the moment the trigger
    request was *sent* to the moment that watcher's whole response was read.
    The commit happens somewhere between the trigger's send and the arrival of
    its reply, so this is an upper bound of commit → response; the lower bound
    (from the trigger's reply) is printed too.  Each watcher re-arms at once
    with the token it got, as a real client does.  ``--commits`` (20) commits
    per watcher count, each once the server is idle again.  The server runs
    with its default ``event_from_delay`` (0.02 s of batching).
    Targets at 500 watchers: p50 <= 60 ms, p99 <= 150 ms.

(2) Server memory: VmRSS (``/proc/<pid>/status``) idle, then with the
    watchers' sessions logged in, then with 500 watchers waiting.
    Target: <= 2x idle.

(3) Task throughput: ``Async.network.create`` from ``--submitters`` (8)
    concurrent connections (JSON-RPC), ``--tasks`` (1000) tasks, until every
    task is seen finished by a client waiting in ``event.from(["task"], …)``:
    tasks/s end to end.  Embedded mode (SQLite, tasks run in the server), the
    same with ``--idle-watchers`` (500) clients waiting on the pool, which the
    tasks never touch, the embedded mode on PostgreSQL (for comparison), and
    with Celery (PostgreSQL + Redis + one ``xapi worker`` process).  No
    target; figures only.

The load generators (plain asyncio protocols) run in their own process, so
they share no GIL with the server.  The latest figures go to
docs/performance.md, section "Events and tasks (issue 3)".  Internal entry
points: ``_latency`` and ``_tasks`` run the load generators.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import http.client
import json
import os
import platform
import random
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from pathlib import Path

from bench.procs import cpu_seconds, stop, wait_for_other_benchmarks
from bench.report import REPO, publish

SECTION = "## Events and tasks (issue 3)"
P50_TARGET_MS = 60.0  # at 500 watchers
P99_TARGET_MS = 150.0
RSS_TARGET = 2.0  # waiting / idle, at most
TARGET_WATCHERS = 500
NET = {"name_label": "bench-events", "name_description": "", "MTU": "1500", "other_config": {}}


# -----------------------------------------------------------------------------
# small helpers
# -----------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def loud(msg: str) -> None:
    bar = "!" * 78
    print(f"\n{bar}\n!!! {msg}\n{bar}\n", file=sys.stderr, flush=True)


def _cpu_line() -> list[int]:
    # user nice system idle iowait irq softirq steal
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:9]]


def machine_busy() -> float:
    """CPU-seconds the whole machine spent busy (all CPUs), from /proc/stat;
    time stolen by the hypervisor is not counted (``machine_steal``)."""
    fields = _cpu_line()
    return (sum(fields) - fields[3] - fields[4] - fields[7]) / os.sysconf("SC_CLK_TCK")


def machine_steal() -> float:
    """CPU-seconds the hypervisor gave to other guests while this machine wanted
    them: on a shared host, the part of a slow run nobody here can fix."""
    return _cpu_line()[7] / os.sysconf("SC_CLK_TCK")


def memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process in MiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    return out


def nproc() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def pct(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p))]


def code_version() -> str:
    """The commit measured, and whether tracked files differed from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(  # the benchmarks' own output does not count
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
             ":!docs/performance.md"],
            cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{commit}" + (" with uncommitted changes" if dirty else "")


def raise_fd_limit(want: int = 8192) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def xml_request(method: str, *params) -> bytes:
    return xmlrpc.client.dumps(tuple(params), method, allow_none=True).encode()


def json_request(method: str, *params, req_id: int = 1) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "method": method, "params": list(params),
                       "id": req_id}).encode()


def http_request(port: int, path: str, content_type: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost", timeout=60)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


class Client:
    """One keep-alive connection (stdlib http.client) for setup calls."""

    def __init__(self, port: int | None = None, unix_path: str | None = None):
        if unix_path:
            self.conn = _UnixHTTPConnection(unix_path)
        else:
            self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def xml(self, method: str, *params):
        self.conn.request("POST", "/", xml_request(method, *params), {"Content-Type": "text/xml"})
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status} for {method}: {data[:200]!r}")
        reply = xmlrpc.client.loads(data)[0][0]
        if reply.get("Status") != "Success":
            raise RuntimeError(f"{method} failed: {reply.get('ErrorDescription')}")
        return reply["Value"]

    def close(self) -> None:
        self.conn.close()


def login(server, originator: str) -> str:
    from tests.support import ROOT_PASSWORD

    deadline = time.monotonic() + 60
    while True:  # start_server returns once the port accepts; wait for the first answer
        client = Client(server.port)
        try:
            return client.xml("session.login_with_password", "root", ROOT_PASSWORD, "1.0",
                              originator)
        except (ConnectionError, http.client.HTTPException):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
        finally:
            client.close()


def login_many(server, count: int) -> list[str]:
    """``count`` sessions, one originator each (xapi limits sessions per originator).

    Over the unix socket, where logins are pre-authenticated (no scrypt per
    login); over TCP with the password if the socket is not there.
    """
    from tests.support import ROOT_PASSWORD

    path = server.socket_path
    local = os.path.exists(path)
    client = Client(unix_path=path) if local else Client(server.port)
    try:
        return [client.xml("session.login_with_password", "root", "" if local else ROOT_PASSWORD,
                           "1.0", f"bench.events-watcher-{i}") for i in range(count)]
    finally:
        client.close()


# -----------------------------------------------------------------------------
# load generator plumbing: one HTTP/1.1 keep-alive connection, one call in flight
# -----------------------------------------------------------------------------


class Conn(asyncio.Protocol):
    """Calls ``on_response(conn, body, t)`` with the time the last byte was read."""

    def __init__(self, on_response, on_error):
        self.on_response = on_response
        self.on_error = on_error
        self.buf = bytearray()
        self.need = -1
        self.body_at = 0
        self.transport = None
        self.closing = False
        self.data = None  # the owner's per-connection state

    def connection_made(self, transport):
        self.transport = transport

    def send(self, request: bytes) -> None:
        self.buf.clear()
        self.need = -1
        self.transport.write(request)

    def data_received(self, data):
        now = time.perf_counter()
        buf = self.buf
        buf += data
        if self.need < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            at = head.find(b"\r\ncontent-length:")
            if at < 0 or not head.startswith(b"http/1.1 200"):
                self.on_error(f"unexpected response head: {bytes(buf[:end])[:200]!r}")
                self.transport.close()
                return
            stop = head.find(b"\r\n", at + 2)
            self.body_at = end + 4
            self.need = self.body_at + int(head[at + 17:stop if stop >= 0 else len(head)])
        if len(buf) < self.need:
            return
        body = bytes(buf[self.body_at:self.need])
        self.need = -1
        self.on_response(self, body, now)

    def connection_lost(self, exc):
        if not self.closing:
            self.on_error(f"connection lost: {exc}")


async def connect(port: int, on_response, on_error) -> Conn:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: Conn(on_response, on_error), "127.0.0.1", port)
    return conn


async def cpu_quiet(pid: int, window: float = 0.1, busy: float = 0.05, limit: float = 5.0) -> None:
    """Wait until the process used < ``busy`` of a CPU over ``window`` (at most ``limit`` s)."""
    deadline = time.perf_counter() + limit
    before = cpu_seconds(pid)
    while time.perf_counter() < deadline:
        await asyncio.sleep(window)
        now = cpu_seconds(pid)
        if now - before < busy * window + 1e-9:
            return
        before = now


# -----------------------------------------------------------------------------
# (1) + (2): event.from latency with N idle watchers
# -----------------------------------------------------------------------------

TOKEN_XML = re.compile(rb"<name>token</name>\s*<value>(?:<string>)?([0-9,]*)<")
TOKEN_JSON = re.compile(rb'"token"\s*:\s*"([0-9,]*)"')


class _Round:
    def __init__(self, n: int):
        self.active = False
        self.seq = -1
        self.arrivals: list[float] = []
        self.pending = n
        self.done: asyncio.Future | None = None


async def _latency(cfg: dict) -> dict:
    loop = asyncio.get_running_loop()
    port, pid, n = cfg["port"], cfg["server_pid"], len(cfg["sessions"])
    state = _Round(n)
    errors: list[str] = []
    spurious = 0
    armed = 0
    all_armed = loop.create_future()
    fatal = loop.create_future()

    def on_error(msg: str) -> None:
        errors.append(msg)
        if not fatal.done():
            fatal.set_result(msg)

    json_rpc = cfg.get("protocol", "xml") == "json"
    token_re = TOKEN_JSON if json_rpc else TOKEN_XML
    ok_mark, event_mark = ((b'"result"', b'"snapshot"') if json_rpc else
                           (b">Success<", b"<name>snapshot</name>"))
    rearm_now = cfg.get("rearm", "now") == "now"

    def arm(conn: Conn) -> None:
        nonlocal armed
        w = conn.data
        if json_rpc:
            request = http_request(port, "/jsonrpc", "application/json",
                                   json_request("event.from", w["session"], ["pool"], w["token"],
                                                60.0))
        else:
            request = http_request(port, "/", "text/xml",
                                   xml_request("event.from", w["session"], ["pool"], w["token"],
                                               60.0))
        conn.send(request)
        w["armed"] = True
        armed += 1
        if armed == n and not all_armed.done():
            all_armed.set_result(None)

    def on_watch(conn: Conn, body: bytes, t: float) -> None:
        nonlocal spurious, armed
        w = conn.data
        w["armed"] = False
        armed -= 1
        m = token_re.search(body)
        if m is None or ok_mark not in body:
            on_error(f"event.from failed: {body[:300]!r}")
            return
        w["token"] = m.group(1).decode()
        if state.active and w["round"] != state.seq and event_mark in body:
            w["round"] = state.seq
            state.arrivals.append(t)
            state.pending -= 1
            if state.pending == 0 and not state.done.done():
                state.done.set_result(None)
            if not rearm_now:
                return  # re-armed once every watcher has answered (diagnostic mode)
        else:
            spurious += 1  # an answer no trigger asked for (another commit, a timeout)
        arm(conn)

    trigger_reply: list = []

    def on_trigger(conn: Conn, body: bytes, t: float) -> None:
        if b">Success<" not in body:
            on_error(f"trigger failed: {body[:300]!r}")
        if trigger_reply and not trigger_reply[-1].done():
            trigger_reply[-1].set_result(t)

    watchers = []
    for i, session in enumerate(cfg["sessions"]):
        conn = await connect(port, on_watch, on_error)
        conn.data = {"session": session, "token": cfg["token"], "armed": False, "round": -1}
        watchers.append(conn)
    trigger = await connect(port, on_trigger, on_error)

    async def guarded(fut, timeout: float, what: str):
        done, _ = await asyncio.wait({fut, fatal}, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if fatal.done():
            raise RuntimeError(f"{what}: {fatal.result()}")
        if fut not in done:
            raise RuntimeError(f"{what}: timed out")
        return fut.result()

    async def settle():
        """Every watcher has a request out, and the server has gone quiet."""
        nonlocal all_armed
        if armed < n:
            all_armed = loop.create_future()
            await guarded(all_armed, 60, "re-arming")
        await cpu_quiet(pid)
        await asyncio.sleep(random.uniform(0.05, 0.1))

    for conn in watchers:
        arm(conn)
    await settle()
    await asyncio.sleep(0.5)
    await cpu_quiet(pid)
    rss_waiting = memory(pid)
    spurious = 0  # a stale starting token answers at once: not counted

    upper, lower, last, rtt = [], [], [], []
    srv0, cli0 = cpu_seconds(pid), time.process_time()
    for seq in range(cfg["commits"]):
        await settle()
        state.seq, state.arrivals, state.pending = seq, [], n
        state.done = loop.create_future()
        state.active = True
        trigger_reply.append(loop.create_future())
        key = f"bench-events-{os.getpid()}"  # per run: an odd number of commits leaves it set
        body = (xml_request("pool.add_to_other_config", cfg["session"], cfg["pool"], key, str(seq))
                if seq % 2 == 0 else
                xml_request("pool.remove_from_other_config", cfg["session"], cfg["pool"], key))
        request = http_request(port, "/", "text/xml", body)
        t_send = time.perf_counter()
        trigger.send(request)
        t_reply = await guarded(trigger_reply[-1], 30, "trigger")
        await guarded(state.done, 60, f"commit {seq}: {state.pending} of {n} watchers not answered")
        state.active = False
        if not rearm_now:
            for conn in watchers:
                if not conn.data["armed"]:
                    arm(conn)
        upper += [(t - t_send) * 1e3 for t in state.arrivals]
        lower += [max(t - t_reply, 0.0) * 1e3 for t in state.arrivals]
        last.append((max(state.arrivals) - t_send) * 1e3)
        rtt.append((t_reply - t_send) * 1e3)
    srv1, cli1 = cpu_seconds(pid), time.process_time()
    await settle()
    rss_after = memory(pid)
    for conn in watchers + [trigger]:
        conn.closing = True
        conn.transport.close()
    upper.sort()
    lower.sort()
    return {
        "watchers": n, "commits": cfg["commits"], "samples": len(upper),
        "p50_ms": pct(upper, 0.5), "p99_ms": pct(upper, 0.99), "max_ms": upper[-1],
        "lower_p50_ms": pct(lower, 0.5), "lower_p99_ms": pct(lower, 0.99),
        "last_p50_ms": statistics.median(last), "trigger_rtt_p50_ms": statistics.median(rtt),
        "server_cpu_ms_per_commit": (srv1 - srv0) / cfg["commits"] * 1e3,
        "client_cpu_ms_per_commit": (cli1 - cli0) / cfg["commits"] * 1e3,
        "spurious": spurious, "errors": len(errors),
        "rss_waiting": rss_waiting, "rss_after": rss_after,
    }


def latency_main(cfg_file: str) -> None:
    raise_fd_limit()
    cfg = json.loads(Path(cfg_file).read_text())
    print(json.dumps(asyncio.run(_latency(cfg))), flush=True)


def run_loadgen(kind: str, cfg: dict, timeout: float) -> dict:
    with tempfile.NamedTemporaryFile("w", prefix=f"bench-{kind}-", suffix=".json",
                                     delete=False) as f:
        json.dump(cfg, f)
    try:
        out = subprocess.run([sys.executable, "-m", "bench.events", f"_{kind}", f.name],
                             cwd=REPO, capture_output=True, text=True, timeout=timeout)
    finally:
        os.unlink(f.name)
    if out.returncode != 0:
        raise RuntimeError(f"load generator ({kind}) failed:\n{out.stderr}")
    if out.stderr.strip():
        sys.stderr.write(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_latency(args) -> dict:
    from tests.support import start_server

    counts = sorted(set(args.watchers))
    # The pool heartbeat (a pool `mod` every 60 s) would wake the watchers
    # between commits; it is not what is measured, so it is pushed out.
    server = start_server(heartbeat_interval=86400)
    pid = server.process.pid
    try:
        session = login(server, "bench.events")
        admin = Client(server.port)
        pool = admin.xml("pool.get_all", session)[0]
        for _ in range(20):  # warm the paths used below (encoders, method cache)
            admin.xml("pool.get_record", session, pool)
            admin.xml("event.from", session, ["pool"], "", 0.0)
        token = admin.xml("event.from", session, ["pool"], "", 0.0)["token"]
        admin.close()
        time.sleep(1.0)
        idle = memory(pid)
        log(f"server idle: VmRSS {idle['VmRSS']:.1f} MiB")
        t0 = time.perf_counter()
        sessions = login_many(server, max(counts))
        log(f"{len(sessions)} watcher sessions logged in ({time.perf_counter() - t0:.1f} s)")
        time.sleep(0.5)
        logged_in = memory(pid)
        runs = []
        for n in counts:
            cfg = {"port": server.port, "server_pid": pid, "sessions": sessions[:n],
                   "token": token, "session": session, "pool": pool, "commits": args.commits}
            r = run_loadgen("latency", cfg, timeout=120 + args.commits * 20)
            runs.append(r)
            log(f"{n:4} watchers: p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms  "
                f"max {r['max_ms']:6.1f} ms  last-watcher p50 {r['last_p50_ms']:6.1f} ms  "
                f"lower bound p50/p99 {r['lower_p50_ms']:.1f}/{r['lower_p99_ms']:.1f} ms  "
                f"trigger rtt {r['trigger_rtt_p50_ms']:.1f} ms  server cpu/commit "
                f"{r['server_cpu_ms_per_commit']:.1f} ms  spurious {r['spurious']}  "
                f"VmRSS waiting {r['rss_waiting']['VmRSS']:.1f} MiB")
        delay = server_setting(server, "event_from_delay")
        default = config_default("event_from_delay")
        if delay != default:
            loud(f"event_from_delay is {delay} (from the environment), not the default {default}")
        return {"runs": runs, "idle": idle, "logged_in": logged_in, "delay": delay}
    finally:
        server.stop()


def config_default(key: str):
    from xapi.config import Config

    return Config.model_fields[key].default


def server_setting(server, key: str):
    from xapi import config as config_mod

    env = dict(os.environ)  # what start_server gave the server (no settings passed for key)
    env.pop("XAPI_CONFIG", None)
    env["XAPI_STATE_DIR"] = server.state_dir
    return getattr(config_mod.load(env=env), key)


# -----------------------------------------------------------------------------
# (3) task throughput: Async.network.create until every task is finished
# -----------------------------------------------------------------------------


async def _tasks(cfg: dict) -> dict:
    loop = asyncio.get_running_loop()
    port, session = cfg["port"], cfg["session"]
    errors: list[str] = []
    fatal = loop.create_future()
    finished: dict[str, tuple[float, str]] = {}
    failures: list = []
    phase: dict = {}

    def on_error(msg: str) -> None:
        errors.append(msg)
        if not fatal.done():
            fatal.set_result(msg)

    def check_done() -> None:
        if (phase.get("all_sent") and not phase["done"].done()
                and all(ref in finished for ref in phase["submitted"])):
            phase["done"].set_result(None)

    # The client that waits for tasks to finish, as Xen Orchestra does.
    def watch_request(token: str) -> bytes:
        return http_request(port, "/jsonrpc", "application/json",
                            json_request("event.from", session, ["task"], token, 30.0))

    def on_watch(conn: Conn, body: bytes, t: float) -> None:
        reply = json.loads(body)
        if "result" not in reply:
            on_error(f"event.from failed: {reply.get('error')}")
            return
        result = reply["result"]
        for ev in result["events"]:
            ref = ev["ref"]
            if ref in finished:
                continue
            if ev["operation"] == "del":
                finished[ref] = (t, "destroyed")
            elif ev["snapshot"]["status"] != "pending":
                finished[ref] = (t, ev["snapshot"]["status"])
                if ev["snapshot"]["status"] != "success":
                    failures.append(ev["snapshot"]["error_info"])
        conn.send(watch_request(result["token"]))
        if phase:
            check_done()

    def on_submit(conn: Conn, body: bytes, t: float) -> None:
        reply = json.loads(body)
        if "result" not in reply:
            on_error(f"Async.network.create failed: {reply.get('error')}")
            return
        phase["submitted"][reply["result"]] = conn.data
        phase["last_reply"] = t
        submit_next(conn)

    def submit_next(conn: Conn) -> None:
        if phase["sent"] >= phase["total"]:
            if len(phase["submitted"]) == phase["total"]:
                phase["all_sent"] = True
                check_done()
            return
        phase["sent"] += 1
        conn.data = time.perf_counter()
        conn.send(http_request(port, "/jsonrpc", "application/json",
                               json_request("Async.network.create", session, NET,
                                            req_id=phase["sent"])))

    async def run_phase(total: int) -> dict:
        phase.clear()
        phase.update(total=total, sent=0, submitted={}, all_sent=False,
                     done=loop.create_future(), last_reply=0.0)
        srv0, wrk0, cli0 = (cpu_seconds(cfg["server_pid"]), cpu_seconds(cfg["worker_pid"] or 0),
                            time.process_time())
        all0 = machine_busy()
        t0 = time.perf_counter()
        for conn in submitters:
            submit_next(conn)
        done, _ = await asyncio.wait({phase["done"], fatal}, timeout=cfg["timeout"],
                                     return_when=asyncio.FIRST_COMPLETED)
        if fatal.done():
            raise RuntimeError(fatal.result())
        if phase["done"] not in done:
            missing = [r for r in phase["submitted"] if r not in finished]
            raise RuntimeError(f"{len(missing)} of {total} tasks not finished after "
                               f"{cfg['timeout']} s")
        t1 = max(finished[r][0] for r in phase["submitted"])
        srv1, wrk1, cli1 = (cpu_seconds(cfg["server_pid"]), cpu_seconds(cfg["worker_pid"] or 0),
                            time.process_time())
        all1 = machine_busy()
        wrk = (wrk1 - wrk0) if cfg["worker_pid"] else 0.0
        elapsed = t1 - t0
        lat = sorted((finished[r][0] - sent) * 1e3 for r, sent in phase["submitted"].items())
        statuses: dict[str, int] = {}
        for r in phase["submitted"]:
            statuses[finished[r][1]] = statuses.get(finished[r][1], 0) + 1
        return {
            "tasks": total, "seconds": elapsed, "rate": total / elapsed,
            "submit_rate": total / (phase["last_reply"] - t0),
            "p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99),
            "server_cpu": (srv1 - srv0) / elapsed,
            "worker_cpu": (wrk1 - wrk0) / elapsed if cfg["worker_pid"] else None,
            "client_cpu": (cli1 - cli0) / elapsed,
            # everything else: PostgreSQL, Redis, the kernel, other processes
            "other_cpu": max((all1 - all0) - (srv1 - srv0) - wrk - (cli1 - cli0), 0.0) / elapsed,
            "statuses": statuses,
        }

    # the watcher: token first, then wait
    first = loop.create_future()

    def on_first(conn: Conn, body: bytes, t: float) -> None:
        first.set_result(json.loads(body)["result"]["token"])

    # Optional idle watchers: clients waiting on the pool, which the tasks never touch.
    idle_answers = 0

    def idle_arm(conn: Conn) -> None:
        conn.send(http_request(port, "/", "text/xml", xml_request(
            "event.from", conn.data["session"], ["pool"], conn.data["token"], 60.0)))

    def on_idle(conn: Conn, body: bytes, t: float) -> None:
        nonlocal idle_answers
        m = TOKEN_XML.search(body)
        if m is None:
            on_error(f"idle watcher's event.from failed: {body[:300]!r}")
            return
        idle_answers += 1
        conn.data["token"] = m.group(1).decode()
        idle_arm(conn)

    idle = []
    for s in cfg.get("idle_sessions", []):
        conn = await connect(port, on_idle, on_error)
        conn.data = {"session": s, "token": cfg["idle_token"]}
        idle_arm(conn)
        idle.append(conn)
    if idle:
        await cpu_quiet(cfg["server_pid"])
        idle_answers = 0

    watcher = await connect(port, on_first, on_error)
    watcher.send(http_request(port, "/jsonrpc", "application/json",
                              json_request("event.from", session, ["task"], "", 0.0)))
    token = await asyncio.wait_for(first, 30)
    watcher.on_response = on_watch
    watcher.send(watch_request(token))
    submitters = [await connect(port, on_submit, on_error) for _ in range(cfg["submitters"])]
    await asyncio.sleep(0.2)

    warm = await run_phase(cfg["warmup"])  # worker start-up, first-call costs
    await asyncio.sleep(0.5)
    result = await run_phase(cfg["tasks"])
    result["warmup_seconds"] = warm["seconds"]
    result["failures"] = failures[:3]
    result["idle_watchers"] = len(idle)
    result["idle_answers"] = idle_answers
    for conn in submitters + [watcher] + idle:
        conn.closing = True
        conn.transport.close()
    return result


def tasks_main(cfg_file: str) -> None:
    cfg = json.loads(Path(cfg_file).read_text())
    print(json.dumps(asyncio.run(_tasks(cfg))), flush=True)


def bench_tasks(args) -> tuple[list[dict], list[str]]:
    from tests import support

    # label, PostgreSQL?, Redis + worker?, idle pool watchers
    modes = [("embedded, SQLite", False, False, 0)]
    if args.idle_watchers:
        modes.append((f"embedded, SQLite, {args.idle_watchers} idle pool watchers", False, False,
                      args.idle_watchers))
    skipped = []
    pg_problem = support.ensure_postgres()
    redis_problem = support.ensure_redis()
    if pg_problem:
        loud(f"SKIPPING the PostgreSQL and Celery task runs: {pg_problem}")
        skipped.append(f"PostgreSQL and Celery runs skipped: {pg_problem}")
    else:
        if not args.no_pg_embedded:
            modes.append(("embedded, PostgreSQL", True, False, 0))
        if redis_problem:
            loud(f"SKIPPING the Celery task run: {redis_problem}")
            skipped.append(f"Celery run skipped: {redis_problem}")
        else:
            modes.append(("Celery, PostgreSQL + Redis, 1 worker", True, True, 0))
    out = []
    for label, pg, celery, idle in modes:
        db_url = support.create_pg_database() if pg else None
        settings = {"heartbeat_interval": 86400}  # see bench_latency
        if celery:
            settings["redis_url"] = support.REDIS_URL
        server = support.start_server(db_url=db_url, **settings)
        worker = None
        try:
            session = login(server, "bench.events")
            cfg = {"port": server.port, "session": session, "server_pid": server.process.pid,
                   "worker_pid": None, "submitters": args.submitters, "tasks": args.tasks,
                   "warmup": 20, "timeout": args.task_timeout}
            if idle:
                cfg["idle_sessions"] = login_many(server, idle)
                admin = Client(server.port)
                cfg["idle_token"] = admin.xml("event.from", session, ["pool"], "", 0.0)["token"]
                admin.close()
            if celery:
                worker = support.start_worker(server, redis_url=support.REDIS_URL)
                cfg["worker_pid"] = worker.pid
            r = run_loadgen("tasks", cfg, timeout=2 * args.task_timeout + 120)
            r["mode"] = label
            out.append(r)
            log(f"{label}: {r['rate']:.0f} tasks/s end to end ({r['tasks']} tasks in "
                f"{r['seconds']:.2f} s), submissions {r['submit_rate']:.0f}/s, submit->finished "
                f"p50 {r['p50_ms']:.0f} ms p99 {r['p99_ms']:.0f} ms, server cpu "
                f"{r['server_cpu'] * 100:.0f}%"
                + (f", worker cpu {r['worker_cpu'] * 100:.0f}%" if worker else "")
                + f", client cpu {r['client_cpu'] * 100:.0f}%, other cpu "
                f"{r['other_cpu'] * 100:.0f}%, outcomes {r['statuses']}"
                + (f", idle watchers answered {r['idle_answers']} times" if idle else ""))
        finally:
            stop(worker)
            server.stop()
            if db_url:
                support.drop_pg_database(db_url)
    return out, skipped


# -----------------------------------------------------------------------------
# report
# -----------------------------------------------------------------------------


def yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def report(lat: dict, tasks: list[dict], skipped: list[str], args) -> tuple[str, str, bool]:
    today, cpus = _dt.date.today().isoformat(), nproc()
    runs = {r["watchers"]: r for r in lat["runs"]}
    big = runs.get(TARGET_WATCHERS)
    idle = lat["idle"]["VmRSS"]
    if big:
        p50_ok = big["p50_ms"] <= P50_TARGET_MS
        p99_ok = big["p99_ms"] <= P99_TARGET_MS
        rss_ratio = big["rss_waiting"]["VmRSS"] / idle
        rss_ok = rss_ratio <= RSS_TARGET
    else:
        p50_ok = p99_ok = rss_ok = False
        rss_ratio = float("nan")
    all_ok = p50_ok and p99_ok and rss_ok

    lines = [
        "",
        f"Events and tasks benchmark: {today}, nproc {cpus}, Python {platform.python_version()}, "
        f"event_from_delay {lat['delay']:g} s, code {code_version()}",
        "",
        f"(1) event.from latency, trigger sent -> watcher's response read (upper bound), "
        f"{args.commits} commits per row",
        f"    {'watchers':>8} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'last p50':>9} "
        f"{'lower p50/p99':>14} {'trig rtt':>8} {'srv cpu/commit':>14} {'cli cpu/commit':>14} "
        f"{'spurious':>8}",
    ]
    for n, r in sorted(runs.items()):
        lines.append(
            f"    {n:8} {r['p50_ms']:7.1f} {r['p99_ms']:7.1f} {r['max_ms']:7.1f} "
            f"{r['last_p50_ms']:9.1f} {r['lower_p50_ms']:6.1f} /{r['lower_p99_ms']:6.1f} "
            f"{r['trigger_rtt_p50_ms']:8.1f} {r['server_cpu_ms_per_commit']:11.1f} ms "
            f"{r['client_cpu_ms_per_commit']:11.1f} ms {r['spurious']:8}")
    lines += [
        "    last p50: median over commits of the slowest watcher; lower: from the trigger's "
        "reply instead of its send;",
        "    cpu/commit: CPU time of the server / the load generator over the row, per commit",
        "",
        "(2) server VmRSS: "
        f"idle {idle:.1f} MiB; {len(lat['runs']) and max(runs)} sessions logged in "
        f"{lat['logged_in']['VmRSS']:.1f} MiB"
        + (f"; {TARGET_WATCHERS} watchers waiting {big['rss_waiting']['VmRSS']:.1f} MiB "
           f"({rss_ratio:.2f}x idle); after {args.commits} commits "
           f"{big['rss_after']['VmRSS']:.1f} MiB (VmHWM {big['rss_after']['VmHWM']:.1f} MiB)"
           if big else ""),
        "",
        f"(3) Async.network.create, {args.submitters} submitters, {args.tasks} tasks, "
        "until every task is seen finished through event.from([\"task\"])",
        f"    {'mode':44} {'tasks/s':>8} {'submit/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'srv cpu':>7} {'wrk cpu':>7} {'cli cpu':>7} {'other':>7}",
    ]
    for r in tasks:
        wrk = f"{r['worker_cpu'] * 100:6.0f}%" if r["worker_cpu"] is not None else f"{'-':>7}"
        lines.append(
            f"    {r['mode']:44} {r['rate']:8.0f} {r['submit_rate']:8.0f} {r['p50_ms']:7.0f} "
            f"{r['p99_ms']:7.0f} {r['server_cpu'] * 100:6.0f}% {wrk} {r['client_cpu'] * 100:6.0f}% "
            f"{r['other_cpu'] * 100:6.0f}%")
    for s in skipped:
        lines.append(f"    !!! {s}")
    lines += [
        "    p50/p99: submission sent -> task seen finished (includes the queue of earlier tasks);",
        "    cpu: share of one CPU; other: the rest of the machine (PostgreSQL, Redis, kernel)",
        "",
    ]
    if big:
        lines.append(
            f"targets at {TARGET_WATCHERS} watchers: p50 <= {P50_TARGET_MS:g} ms: {yes(p50_ok)} "
            f"({big['p50_ms']:.1f}); p99 <= {P99_TARGET_MS:g} ms: {yes(p99_ok)} "
            f"({big['p99_ms']:.1f}); VmRSS <= {RSS_TARGET:g}x idle: {yes(rss_ok)} "
            f"({rss_ratio:.2f}x)")
    else:
        lines.append(f"targets not evaluated: no run with {TARGET_WATCHERS} watchers")
    lines.append("")
    console = "\n".join(lines)

    md = [
        SECTION,
        "",
        f"Latest run of `python -m bench.events`: {today}, `nproc` = {cpus} "
        f"({platform.machine()}), Python {platform.python_version()}, code at "
        f"{code_version()}.  Server, load generator "
        f"(and worker) are separate processes on the same machine; `event_from_delay` = "
        f"{lat['delay']:g} s (the default).",
        "",
        f"**(1) `event.from` latency** (SQLite, XML-RPC): *N* watchers, each with its own "
        f"session and keep-alive connection, wait in `event.from([\"pool\"], token, 60)` and "
        f"re-arm at once with the token they get.  Another connection commits "
        f"(`pool.add_to_other_config` / `remove_from_other_config`), {args.commits} times per "
        f"row, each once the server is idle.  Latency is from *sending* the trigger to reading "
        f"a watcher's whole response (an upper bound of commit → response); *lower bound* "
        f"counts from the trigger's reply instead.  *Last* is the median over commits of the "
        f"slowest watcher.  *Server CPU/commit* is the server's CPU time per commit over the "
        f"whole row.",
        "",
        "| watchers | p50 | p99 | max | last (median) | lower bound p50 / p99 | trigger RTT | "
        "server CPU / commit | load generator CPU / commit | spurious |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, r in sorted(runs.items()):
        md.append(
            f"| {n} | {r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms | {r['max_ms']:.1f} ms | "
            f"{r['last_p50_ms']:.1f} ms | {r['lower_p50_ms']:.1f} / {r['lower_p99_ms']:.1f} ms | "
            f"{r['trigger_rtt_p50_ms']:.1f} ms | {r['server_cpu_ms_per_commit']:.1f} ms | "
            f"{r['client_cpu_ms_per_commit']:.1f} ms | {r['spurious']} |")
    if big:
        md += [
            "",
            f"Targets at {TARGET_WATCHERS} watchers: p50 ≤ {P50_TARGET_MS:g} ms "
            f"**{yes(p50_ok)}** ({big['p50_ms']:.1f} ms); p99 ≤ {P99_TARGET_MS:g} ms "
            f"**{yes(p99_ok)}** ({big['p99_ms']:.1f} ms).",
            "",
            f"**(2) Server memory** (VmRSS): idle {idle:.1f} MiB; with {max(runs)} watcher "
            f"sessions logged in {lat['logged_in']['VmRSS']:.1f} MiB; with {TARGET_WATCHERS} "
            f"watchers waiting {big['rss_waiting']['VmRSS']:.1f} MiB = **{rss_ratio:.2f}× idle** "
            f"(target ≤ {RSS_TARGET:g}×: **{yes(rss_ok)}**); after their {args.commits} commits "
            f"{big['rss_after']['VmRSS']:.1f} MiB "
            f"(peak VmHWM {big['rss_after']['VmHWM']:.1f} MiB).",
        ]
    md += [
        "",
        f"**(3) Task throughput**: `Async.network.create` (JSON-RPC) from {args.submitters} "
        f"concurrent connections, one call in flight each, {args.tasks} tasks (after 20 of "
        f"warm-up); a client waiting in `event.from([\"task\"], …)` sees each task finish.  "
        f"*Tasks/s* is tasks / (first submission → last task seen finished); *submit/s* the "
        f"rate of the `Async` calls themselves; latency is submission → seen finished, "
        f"queueing included.  CPU is the share of one CPU over the run; *other* is the rest "
        f"of the machine (PostgreSQL, Redis, the kernel).  The *idle pool watchers* row is the "
        f"first one again with {args.idle_watchers} more clients waiting in "
        f"`event.from([\"pool\"], …)` (own sessions and connections, as in (1)); no pool "
        f"object changes during the run, so they never answer.  The servers run without the "
        f"60 s pool heartbeat (it would hand those watchers a new token once a minute).  "
        f"No target.",
        "",
        "| mode | tasks/s | submit/s | latency p50 / p99 | server CPU | worker CPU | client CPU | "
        "other CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in tasks:
        wrk = f"{r['worker_cpu'] * 100:.0f}%" if r["worker_cpu"] is not None else "–"
        md.append(
            f"| {r['mode']} | {r['rate']:.0f} | {r['submit_rate']:.0f} | "
            f"{r['p50_ms']:.0f} / {r['p99_ms']:.0f} ms | {r['server_cpu'] * 100:.0f}% | {wrk} | "
            f"{r['client_cpu'] * 100:.0f}% | {r['other_cpu'] * 100:.0f}% |")
    for s in skipped:
        md += ["", f"**{s}**"]
    md += [
        "",
        f"Targets met: latency p50 {yes(p50_ok)}, p99 {yes(p99_ok)}; memory {yes(rss_ok)}.",
        "",
    ]
    return console, "\n".join(md), all_ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.events",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--watchers", type=int, nargs="+", default=[1, 100, 500],
                        help="watcher counts (1 100 500)")
    parser.add_argument("--commits", type=int, default=20, help="commits per watcher count (20)")
    parser.add_argument("--tasks", type=int, default=1000, help="tasks per throughput run (1000)")
    parser.add_argument("--submitters", type=int, default=8, help="concurrent submitters (8)")
    parser.add_argument("--task-timeout", type=float, default=180.0,
                        help="give up on a throughput run after this many seconds (180)")
    parser.add_argument("--no-tasks", action="store_true", help="skip the throughput part")
    parser.add_argument("--idle-watchers", type=int, default=500,
                        help="idle pool watchers in the extra SQLite task run; 0 skips it (500)")
    parser.add_argument("--no-pg-embedded", action="store_true",
                        help="skip the embedded run on PostgreSQL")
    parser.add_argument("--no-docs", action="store_true", help="do not update docs/performance.md")
    parser.add_argument("--no-wait", action="store_true",
                        help="do not wait for other running benchmarks (bench.*)")
    args = parser.parse_args(argv)

    if not args.no_wait:
        wait_for_other_benchmarks("bench.events", 1800)
    raise_fd_limit()  # the server inherits it: 500 watchers are 500 sockets
    started = time.perf_counter()
    lat = bench_latency(args)
    tasks, skipped = bench_tasks(args) if not args.no_tasks else ([], ["throughput not run"])
    console, section, ok = report(lat, tasks, skipped, args)
    publish(console, SECTION, section, not args.no_docs)
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_latency":
        latency_main(sys.argv[2])
    elif len(sys.argv) > 1 and sys.argv[1] == "_tasks":
        tasks_main(sys.argv[2])
    else:
        raise SystemExit(main())
