"""Benchmark of the VM lifecycle (issue 4): run ``python -m bench.vms``.

Not a timed test: it prints figures and compares them with the targets.

For each mode — embedded (SQLite, ``Async`` calls run in the server) and
Celery (PostgreSQL + Redis + one ``xapi worker``; skipped with a loud note
when PostgreSQL or Redis is missing) — on a fresh server with its own
xenopsd simulator:

(1) Creation: ``--vms`` (1000) VMs installed as ``xe vm-install`` does
    (``VM.clone`` of a template, ``VM.provision``, ``VM.set_is_a_template
    false``) by ``--create-clients`` (4) concurrent connections.  The template
    is a clone of "Other install media" with 256 MiB of memory (set through
    the generic ``set_memory_*`` setters; ``VM.set_memory_limits`` is not
    implemented), so memory is never what limits the run.  VMs/s.

(2) Start: ``Async.VM.start(vm, false, false)`` of every VM, ``--inflight``
    (32) tasks in flight: each of that many keep-alive connections submits a
    start, waits until the task is seen finished, and submits the next.  A
    client waiting in ``event.from(["task"], …)`` (as Xen Orchestra does) sees
    each task finish.  Starts/s is VMs / (first submission -> last task seen
    finished); latency is submission sent -> task seen finished (success).
    Every task must end ``success`` and every VM must then be ``Running``
    (checked with ``VM.get_all_records``); anything else is a failure,
    reported and fatal for the target.  Targets: >= 100 starts/s.

(3) Shutdown: the same with ``Async.VM.hard_shutdown`` (``--shutdown clean``
    for ``clean_shutdown``); every VM must end ``Halted``.  Figures only.

(4) Memory: VmRSS of the server process and, separately, of the simulator
    (and of the worker) idle, with the VMs created (halted), with every VM
    running, and after the shutdown (``/proc/<pid>/status``).  Target: server
    VmRSS < 300 MB with 1000 VMs running.

Before (2) ``--warmup`` (16) extra VMs are started and shut down once (first
calls, the worker's start-up); they stay halted.  The servers run with default
settings except ``max_tasks``, raised so that the task GC cannot destroy a
finished task before the client has seen (and verified) its outcome.  The finished tasks of each
phase are destroyed after the phase (outside the measurement), as a client
does.  The load generator (plain asyncio protocols, JSON-RPC) runs in its own
process; it also reports the server's CPU per thread over the start phase,
which is where to look when the target is missed.

The latest figures go to docs/performance.md, section "VM lifecycle
(issue 4)".  Internal entry points: ``_create`` and ``_power`` run the load
generator.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.procs import cpu_seconds, stop, wait_for_other_benchmarks
from bench.report import REPO, publish

from bench.events import (Client, Conn, code_version, connect, http_request,
                          json_request, log, login, loud, machine_busy, machine_steal, nproc,
                          pct, raise_fd_limit)

SECTION = "## VM lifecycle (issue 4)"
STARTS_TARGET = 100.0  # starts per second, at least
RSS_TARGET_MB = 300.0  # server VmRSS with every VM running, below (MB = 10^6 bytes)
# The GC keeps at most max_tasks (default 200) finished tasks: it could destroy a start's
# task before the client has seen its outcome, which then cannot be verified.
MAX_TASKS = 100_000
MiB = 1024 * 1024
VM_MEMORY = 256 * MiB
TEMPLATE = "Other install media"


# -----------------------------------------------------------------------------
# small helpers
# -----------------------------------------------------------------------------


def memory_mib(pid: int | None) -> dict[str, float]:
    """VmRSS and VmHWM of a process in MiB (NaN when it is gone)."""
    out = {"VmRSS": float("nan"), "VmHWM": float("nan")}
    if not pid:
        return out
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in out:
                    out[key] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return out


def thread_cpu(pid: int | None) -> dict[str, float]:
    """CPU seconds per thread of a process, by thread id (Python 3.11 names no OS thread)."""
    out: dict[str, float] = {}
    if not pid:
        return out
    tick = os.sysconf("SC_CLK_TCK")
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                text = f.read()
        except OSError:
            continue
        name = "main (event loop)" if tid == str(pid) else f"thread {tid}"
        fields = text.rsplit(")", 1)[1].split()
        out[name] = (int(fields[11]) + int(fields[12])) / tick
    return out


# -----------------------------------------------------------------------------
# load generator: JSON-RPC over keep-alive connections, one call in flight each
# -----------------------------------------------------------------------------


class CallFailed(Exception):
    def __init__(self, method: str, error):
        super().__init__(f"{method}: {error}")
        self.error = error


class Rpc:
    """One keep-alive connection; ``await call(...)`` -> (result, t_sent, t_read)."""

    def __init__(self, port: int):
        self.port = port
        self.conn: Conn | None = None
        self.fut: asyncio.Future | None = None
        self.ids = 0

    async def open(self) -> "Rpc":
        self.conn = await connect(self.port, self._on_response, self._on_error)
        return self

    def _on_response(self, conn, body: bytes, t: float) -> None:
        fut, self.fut = self.fut, None
        if fut is not None and not fut.done():
            fut.set_result((body, t))

    def _on_error(self, msg: str) -> None:
        fut, self.fut = self.fut, None
        if fut is not None and not fut.done():
            fut.set_exception(RuntimeError(msg))

    async def call(self, method: str, *params):
        self.ids += 1
        self.fut = asyncio.get_running_loop().create_future()
        request = http_request(self.port, "/jsonrpc", "application/json",
                               json_request(method, *params, req_id=self.ids))
        sent = time.perf_counter()
        self.conn.send(request)
        body, t = await self.fut
        reply = json.loads(body)
        if "error" in reply:
            err = reply["error"]
            if isinstance(err, dict):  # JSON-RPC 2.0: message is the code, data the params
                err = [err.get("message"), *(err.get("data") or [])]
            raise CallFailed(method, err)
        return reply["result"], sent, t

    def close(self) -> None:
        if self.conn is not None:
            self.conn.closing = True
            self.conn.transport.close()


def cpu_snapshot(cfg: dict) -> dict:
    return {"t": time.perf_counter(), "server": cpu_seconds(cfg["server_pid"]),
            "sim": cpu_seconds(cfg["sim_pid"]) if cfg.get("sim_pid") else 0.0,
            "worker": cpu_seconds(cfg["worker_pid"]) if cfg.get("worker_pid") else 0.0,
            "client": time.process_time(), "machine": machine_busy(), "steal": machine_steal(),
            "threads": thread_cpu(cfg["server_pid"])}


def cpu_shares(a: dict, b: dict, elapsed: float) -> dict:
    srv, sim, wrk, cli = (b[k] - a[k] for k in ("server", "sim", "worker", "client"))
    other = max((b["machine"] - a["machine"]) - srv - sim - wrk - cli, 0.0)
    threads = {name: b["threads"][name] - a["threads"].get(name, 0.0) for name in b["threads"]}
    loop_cpu = threads.pop("main (event loop)", 0.0)
    others = sorted(threads.values(), reverse=True)
    return {"server_cpu": srv / elapsed, "sim_cpu": sim / elapsed,
            "worker_cpu": wrk / elapsed, "client_cpu": cli / elapsed,
            "other_cpu": other / elapsed, "steal_cpu": (b["steal"] - a["steal"]) / elapsed,
            "threads": {"event loop": loop_cpu / elapsed,
                        "busiest other thread": (others[0] if others else 0.0) / elapsed,
                        f"all {len(others)} other threads": sum(others) / elapsed}}


async def _create(cfg: dict) -> dict:
    """Install ``names`` from the template, ``clients`` connections at a time."""
    port, session, tpl = cfg["port"], cfg["session"], cfg["template"]
    names = list(reversed(cfg["names"]))
    made: dict[str, str] = {}  # name -> VM
    lat: list[float] = []

    async def client():
        rpc = await Rpc(port).open()
        try:
            while names:
                name = names.pop()
                t0 = time.perf_counter()
                vm, _, _ = await rpc.call("VM.clone", session, tpl, name)
                await rpc.call("VM.provision", session, vm)
                _, _, t1 = await rpc.call("VM.set_is_a_template", session, vm, False)
                made[name] = vm
                lat.append((t1 - t0) * 1e3)
        finally:
            rpc.close()

    a = cpu_snapshot(cfg)
    await asyncio.gather(*(client() for _ in range(cfg["clients"])))
    b = cpu_snapshot(cfg)
    elapsed = b["t"] - a["t"]
    lat.sort()
    return {"vms": [made[n] for n in cfg["names"] if n in made], "seconds": elapsed,
            "rate": len(made) / elapsed,
            "p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99), **cpu_shares(a, b, elapsed)}


async def _power(cfg: dict) -> dict:
    """``Async.<method>`` of every VM, ``inflight`` tasks at a time, seen finished (event.from)."""
    loop = asyncio.get_running_loop()
    port, session, method = cfg["port"], cfg["session"], cfg["method"]
    extra = cfg.get("extra", [])
    queue = list(reversed(cfg["vms"]))
    finished: dict[str, tuple[float, str, list]] = {}  # task -> (seen at, status, error_info)
    waiters: dict[str, asyncio.Future] = {}
    submitted: dict[str, tuple[str, float]] = {}  # task -> (vm, sent at)
    call_failures: list[tuple[str, list]] = []
    fatal = loop.create_future()

    # The client that waits for tasks to finish, as Xen Orchestra does.
    watch = await Rpc(port).open()
    token = (await watch.call("event.from", session, ["task"], "", 0.0))[0]["token"]

    async def watcher(token: str) -> None:
        try:
            while True:
                result, _, t = await watch.call("event.from", session, ["task"], token, 30.0)
                for ev in result["events"]:
                    ref = ev["ref"]
                    if ref in finished:
                        continue
                    if ev["operation"] == "del":  # its outcome was never seen: not verified
                        finished[ref] = (t, "destroyed", ["destroyed before its outcome was seen"])
                    elif ev["snapshot"]["status"] != "pending":
                        snap = ev["snapshot"]
                        finished[ref] = (t, snap["status"], snap.get("error_info") or [])
                    else:
                        continue
                    fut = waiters.pop(ref, None)
                    if fut is not None and not fut.done():
                        fut.set_result(None)
                token = result["token"]
        except Exception as exc:  # noqa: BLE001 - any failure ends the run
            if not fatal.done():
                fatal.set_exception(exc)

    watch_job = asyncio.create_task(watcher(token))

    async def slot() -> None:
        rpc = await Rpc(port).open()
        try:
            while queue:
                vm = queue.pop()
                try:
                    task, sent, _ = await rpc.call(f"Async.{method}", session, vm, *extra)
                except CallFailed as exc:
                    call_failures.append((vm, exc.error))
                    continue
                submitted[task] = (vm, sent)
                if task not in finished:
                    fut = waiters[task] = loop.create_future()
                    await fut
        finally:
            rpc.close()

    a = cpu_snapshot(cfg)
    slots = asyncio.gather(*(slot() for _ in range(cfg["inflight"])))
    done, _ = await asyncio.wait({slots, fatal}, timeout=cfg["timeout"],
                                 return_when=asyncio.FIRST_COMPLETED)
    b = cpu_snapshot(cfg)
    if fatal in done:
        fatal.result()  # raises the watcher's failure
    if slots not in done:
        missing = [t for t in submitted if t not in finished]
        raise RuntimeError(f"{method}: {len(missing)} tasks not finished and {len(queue)} not "
                           f"submitted after {cfg['timeout']} s")
    slots.result()
    watch_job.cancel()
    watch.close()

    first = min(sent for _, sent in submitted.values()) if submitted else a["t"]
    last = max(finished[t][0] for t in submitted) if submitted else a["t"]
    elapsed = max(last - first, 1e-9)
    lat = sorted((finished[t][0] - sent) * 1e3 for t, (_, sent) in submitted.items())
    statuses: dict[str, int] = {}
    failures = []
    for t, (vm, _) in submitted.items():
        status, error = finished[t][1], finished[t][2]
        statuses[status] = statuses.get(status, 0) + 1
        if status != "success":
            failures.append({"vm": vm, "task": t, "status": status, "error": error})
    failures += [{"vm": vm, "task": None, "status": "call failed", "error": err}
                 for vm, err in call_failures]

    # Verification: every VM in the expected power state.
    rpc = await Rpc(port).open()
    records = (await rpc.call("VM.get_all_records", session))[0]
    rpc.close()
    wrong = {}
    for vm in cfg["vms"]:
        power = records.get(vm, {}).get("power_state", "missing")
        if power != cfg["expect"]:
            wrong[vm] = power
    shares = cpu_shares(a, b, b["t"] - a["t"])
    return {"vms": len(cfg["vms"]), "submitted": len(submitted), "seconds": elapsed,
            "rate": len(submitted) / elapsed, "p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99),
            "max_ms": lat[-1] if lat else float("nan"), "statuses": statuses,
            "failures": len(failures), "failure_samples": failures[:5],
            "wrong_power": len(wrong), "wrong_samples": list(wrong.items())[:5],
            "tasks": list(submitted), **shares,
            **({"latencies_ms": lat} if cfg.get("keep_latencies") else {})}


def loadgen_main(kind: str, cfg_file: str) -> None:
    raise_fd_limit()
    cfg = json.loads(Path(cfg_file).read_text())
    fn = {"_create": _create, "_power": _power}[kind]
    print(json.dumps(asyncio.run(fn(cfg))), flush=True)


def run_loadgen(kind: str, cfg: dict, timeout: float) -> dict:
    with tempfile.NamedTemporaryFile("w", prefix=f"bench-vms{kind}-", suffix=".json",
                                     delete=False) as f:
        json.dump(cfg, f)
    try:
        out = subprocess.run([sys.executable, "-m", "bench.vms", kind, f.name],
                             cwd=REPO, capture_output=True, text=True, timeout=timeout)
    finally:
        os.unlink(f.name)
    if out.returncode != 0:
        raise RuntimeError(f"load generator ({kind}) failed:\n{out.stderr}")
    if out.stderr.strip():
        sys.stderr.write(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


# -----------------------------------------------------------------------------
# one mode: a fresh server (and worker), create, start, shut down
# -----------------------------------------------------------------------------


def start_worker(server, concurrency: int, redis_url: str) -> subprocess.Popen:
    """``xapi worker`` as tests.support.start_worker runs it, with our concurrency."""
    env = dict(os.environ)
    env.update({"XAPI_STATE_DIR": server.state_dir, "XAPI_DB_URL": server.db_url or "",
                "XAPI_LOG_LEVEL": "INFO", "XAPI_REDIS_URL": redis_url})
    env.pop("XAPI_CONFIG", None)
    out = open(os.path.join(server.state_dir, "worker.log"), "ab")
    return subprocess.Popen([sys.executable, "-m", "api.cli", "worker", "--concurrency",
                             str(concurrency)], cwd=REPO, env=env, stdout=out,
                            stderr=subprocess.STDOUT)


def simulator_pid(server) -> int | None:
    deadline = time.monotonic() + 30
    path = os.path.join(server.state_dir, "xenopsd-sim.pid")
    while time.monotonic() < deadline:
        try:
            pid = int(Path(path).read_text().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            time.sleep(0.2)
    return None


def bench_template(admin: Client, session: str) -> str:
    """A clone of TEMPLATE with VM_MEMORY of memory (static_min half of it)."""
    records = admin.xml("VM.get_all_records_where", session, 'field "is_default_template"="true"')
    (base,) = [r for r, v in records.items() if v["name_label"] == TEMPLATE]
    tpl = admin.xml("VM.clone", session, base, "bench.vms template")
    # The generic setters check nothing, so the order does not matter; the end state is valid.
    admin.xml("VM.set_memory_static_min", session, tpl, str(VM_MEMORY // 2))
    admin.xml("VM.set_memory_dynamic_min", session, tpl, str(VM_MEMORY))
    admin.xml("VM.set_memory_dynamic_max", session, tpl, str(VM_MEMORY))
    admin.xml("VM.set_memory_static_max", session, tpl, str(VM_MEMORY))
    return tpl


def settle(pids: list[int | None], quiet: float = 0.05, limit: float = 10.0) -> None:
    """Wait until the processes together use < ``quiet`` of a CPU over 0.2 s (at most ``limit``)."""
    deadline = time.monotonic() + limit
    live = [p for p in pids if p]
    before = sum(cpu_seconds(p) for p in live)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = sum(cpu_seconds(p) for p in live)
        if now - before < quiet * 0.2 + 1e-9:
            return
        before = now


def destroy_tasks(admin: Client, session: str, refs: list[str]) -> None:
    for ref in refs:
        try:
            admin.xml("task.destroy", session, ref)
        except RuntimeError:
            pass  # already gone (GC)


def run_mode(label: str, pg: bool, celery: bool, args) -> dict:
    from tests import support

    db_url = support.create_pg_database() if pg else None
    settings = {"max_tasks": MAX_TASKS}
    if celery:
        settings["redis_url"] = support.REDIS_URL
    server = support.start_server(db_url=db_url, **settings)
    worker = None
    try:
        session = login(server, "bench.vms")
        admin = Client(server.port)
        pids = {"server": server.process.pid, "sim": simulator_pid(server), "worker": None}
        if celery:
            worker = start_worker(server, args.worker_concurrency, support.REDIS_URL)
            pids["worker"] = worker.pid
        cfg = {"port": server.port, "session": session, "server_pid": pids["server"],
               "sim_pid": pids["sim"], "worker_pid": pids["worker"]}
        mem: dict[str, dict] = {}

        def snap(point: str) -> None:
            settle(list(pids.values()))
            mem[point] = {k: memory_mib(p) for k, p in pids.items()}
            log(f"{label}: {point}: VmRSS server {mem[point]['server']['VmRSS']:.1f} MiB, "
                f"simulator {mem[point]['sim']['VmRSS']:.1f} MiB"
                + (f", worker {mem[point]['worker']['VmRSS']:.1f} MiB" if celery else ""))

        time.sleep(1.0)
        snap("idle")
        tpl = bench_template(admin, session)

        names = [f"bench-vm-{i:04d}" for i in range(args.vms)]
        warm_names = [f"bench-warm-{i:02d}" for i in range(args.warmup)]
        created = run_loadgen("_create", {**cfg, "template": tpl, "names": names + warm_names,
                                          "clients": args.create_clients}, timeout=args.timeout)
        vms, warm = created["vms"][:args.vms], created["vms"][args.vms:]
        if len(created["vms"]) != args.vms + args.warmup:
            raise RuntimeError(f"only {len(created['vms'])} VMs created")
        log(f"{label}: created {len(created['vms'])} VMs in {created['seconds']:.1f} s "
            f"({created['rate']:.0f}/s, p50 {created['p50_ms']:.0f} ms, "
            f"p99 {created['p99_ms']:.0f} ms, server cpu {created['server_cpu'] * 100:.0f}%)")
        snap("created")

        shutdown = {"hard": ("VM.hard_shutdown", []), "clean": ("VM.clean_shutdown", [])}[
            args.shutdown]
        start = ("VM.start", [False, False])
        power = {**cfg, "inflight": args.inflight, "timeout": args.timeout}
        if warm:
            for (method, extra), expect in ((start, "Running"), (shutdown, "Halted")):
                r = run_loadgen("_power", {**power, "vms": warm, "method": method,
                                           "extra": extra, "expect": expect},
                                timeout=args.timeout + 120)
                if r["failures"] or r["wrong_power"]:
                    loud(f"{label}: warm-up {method} failed: {r['failure_samples']} "
                         f"{r['wrong_samples']}")
                destroy_tasks(admin, session, r["tasks"])

        results = {}
        for phase, (method, extra), expect in (("start", start, "Running"),
                                               ("shutdown", shutdown, "Halted")):
            settle(list(pids.values()))
            r = run_loadgen("_power", {**power, "vms": vms, "method": method, "extra": extra,
                                       "expect": expect}, timeout=args.timeout + 120)
            results[phase] = r
            log(f"{label}: {method}: {r['rate']:.1f}/s ({r['submitted']} in {r['seconds']:.1f} s),"
                f" p50 {r['p50_ms']:.0f} ms p99 {r['p99_ms']:.0f} ms max {r['max_ms']:.0f} ms, "
                f"outcomes {r['statuses']}, not {expect}: {r['wrong_power']}, server cpu "
                f"{r['server_cpu'] * 100:.0f}%, simulator cpu {r['sim_cpu'] * 100:.0f}%"
                + (f", worker cpu {r['worker_cpu'] * 100:.0f}%" if celery else "")
                + f", client cpu {r['client_cpu'] * 100:.0f}%, other {r['other_cpu'] * 100:.0f}%"
                + f", stolen {r['steal_cpu'] * 100:.0f}%")
            if r["failures"] or r["wrong_power"]:
                loud(f"{label}: {method}: {r['failures']} failed tasks {r['failure_samples']}; "
                     f"{r['wrong_power']} VMs not {expect} {r['wrong_samples']}")
            snap("running" if phase == "start" else "after shutdown")
            destroy_tasks(admin, session, r.pop("tasks"))
        admin.close()
        created.pop("vms")
        return {"mode": label, "created": created, "start": results["start"],
                "shutdown": results["shutdown"], "memory": mem, "celery": celery}
    finally:
        stop(worker)
        server.stop()
        if db_url:
            support.drop_pg_database(db_url)


def bench_modes(args) -> tuple[list[dict], list[str]]:
    from tests import support

    modes = [] if args.no_embedded else [("embedded, SQLite", False, False)]
    skipped = []
    if not args.no_celery:
        problem = support.ensure_postgres() or support.ensure_redis()
        if problem:
            loud(f"SKIPPING the Celery run (PostgreSQL + Redis + worker): {problem}")
            skipped.append(f"Celery run skipped: {problem}")
        else:
            modes.append((f"Celery, PostgreSQL + Redis, 1 worker ({args.worker_concurrency} "
                          f"threads)", True, True))
    return [run_mode(label, pg, celery, args) for label, pg, celery in modes], skipped


# -----------------------------------------------------------------------------
# report
# -----------------------------------------------------------------------------


def yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def verdicts(r: dict) -> tuple[bool, bool, bool]:
    s = r["start"]
    clean = not (s["failures"] or s["wrong_power"] or s["submitted"] != s["vms"])
    starts_ok = clean and s["rate"] >= STARTS_TARGET
    rss_mb = r["memory"]["running"]["server"]["VmRSS"] * MiB / 1e6
    return clean, starts_ok, rss_mb < RSS_TARGET_MB


def fmt_mem(m: dict, who: str) -> str:
    return "/".join(f"{m[p][who]['VmRSS']:.0f}"
                    for p in ("idle", "created", "running", "after shutdown"))


def report(runs: list[dict], skipped: list[str], args) -> tuple[str, str, bool]:
    today, cpus = _dt.date.today().isoformat(), nproc()
    all_ok = bool(runs)
    lines = [
        "",
        f"VM lifecycle benchmark: {today}, nproc {cpus}, Python {platform.python_version()}, "
        f"code {code_version()}",
        f"{args.vms} VMs ({VM_MEMORY // MiB} MiB each) cloned from {TEMPLATE!r}; "
        f"Async.VM.start / Async.VM.{args.shutdown}_shutdown with {args.inflight} tasks in "
        f"flight; JSON-RPC",
        "",
        f"  {'mode':46} {'create/s':>8} {'starts/s':>8} {'start p50/p99 ms':>17} "
        f"{'stops/s':>8} {'stop p50/p99 ms':>16} {'failed':>6}",
    ]
    for r in runs:
        c, s, d = r["created"], r["start"], r["shutdown"]
        failed = s["failures"] + s["wrong_power"] + d["failures"] + d["wrong_power"]
        lines.append(
            f"  {r['mode']:46} {c['rate']:8.0f} {s['rate']:8.1f} "
            f"{s['p50_ms']:8.0f} /{s['p99_ms']:7.0f} {d['rate']:8.1f} "
            f"{d['p50_ms']:7.0f} /{d['p99_ms']:7.0f} {failed:6}")
    lines += ["", "  VmRSS MiB: idle / created (halted) / running / after shutdown"]
    for r in runs:
        m = r["memory"]
        lines.append(f"  {r['mode']:46} server {fmt_mem(m, 'server')}   simulator "
                     f"{fmt_mem(m, 'sim')}"
                     + (f"   worker {fmt_mem(m, 'worker')}" if r["celery"] else "")
                     + f"   (server peak VmHWM {m['after shutdown']['server']['VmHWM']:.0f})")
    lines += ["", "  CPU during the start phase (share of one CPU)"]
    for r in runs:
        s = r["start"]
        top = ", ".join(f"{n} {c * 100:.0f}%" for n, c in list(s["threads"].items())[:4])
        lines.append(f"  {r['mode']:46} server {s['server_cpu'] * 100:.0f}% ({top}); simulator "
                     f"{s['sim_cpu'] * 100:.0f}%"
                     + (f"; worker {s['worker_cpu'] * 100:.0f}%" if r["celery"] else "")
                     + f"; load generator {s['client_cpu'] * 100:.0f}%; other "
                     f"{s['other_cpu'] * 100:.0f}%; stolen by the hypervisor "
                     f"{s['steal_cpu'] * 100:.0f}%")
    for s_ in skipped:
        lines.append(f"  !!! {s_}")
    lines.append("")
    for r in runs:
        clean, starts_ok, rss_ok = verdicts(r)
        all_ok = all_ok and starts_ok and rss_ok
        rss = r["memory"]["running"]["server"]["VmRSS"]
        lines.append(
            f"  targets, {r['mode']}: every start succeeded: {yes(clean)}; "
            f">= {STARTS_TARGET:g} starts/s: {yes(starts_ok)} ({r['start']['rate']:.1f}); "
            f"server VmRSS < {RSS_TARGET_MB:g} MB running: {yes(rss_ok)} "
            f"({rss * MiB / 1e6:.0f} MB)")
        for phase in ("start", "shutdown"):
            p = r[phase]
            for f in p["failure_samples"]:
                lines.append(f"    !!! {phase} failed: {f}")
            for vm, power in p["wrong_samples"]:
                lines.append(f"    !!! after {phase}: {vm} is {power}")
    lines.append("")
    console = "\n".join(lines)

    md = [
        SECTION,
        "",
        f"Latest run of `python -m bench.vms`: {today}, `nproc` = {cpus} ({platform.machine()}), "
        f"Python {platform.python_version()}, code at {code_version()}.  Server, xenopsd "
        f"simulator, load generator (and worker) are separate processes on the same machine; "
        f"server settings are the defaults (`worker_threads` = 8) except `max_tasks` = "
        f"{MAX_TASKS}, so that the GC cannot destroy a finished task before the client has "
        f"seen its outcome (with the default 200 that happened to 1 start in 1000 in a Celery "
        f"run).",
        "",
        f"{args.vms} VMs installed as `xe vm-install` does (`VM.clone` of a clone of "
        f"\"{TEMPLATE}\" given {VM_MEMORY // MiB} MiB, `VM.provision`, "
        f"`VM.set_is_a_template false`) by {args.create_clients} connections; then "
        f"`Async.VM.start(vm, false, false)` of all of them with {args.inflight} tasks in "
        f"flight (each of {args.inflight} keep-alive connections submits a start, waits "
        f"until a client in `event.from([\"task\"], …)` sees it finished, submits the next), "
        f"then `Async.VM.{args.shutdown}_shutdown` the same way.  *Starts/s* is VMs / (first "
        f"submission → last task seen finished); latency is submission → task seen finished.  "
        f"Every task must end `success` and every VM be `Running` (then `Halted`) in "
        f"`VM.get_all_records`; *failed* counts the tasks that did not succeed and the VMs "
        f"left in another power state (start and shutdown together).  {args.warmup} extra "
        f"VMs are started and shut down once beforehand (warm-up); finished tasks are "
        f"destroyed after each phase.  JSON-RPC throughout.  CPU columns are shares of one CPU "
        f"over the start phase; *rest of the machine* is everything else (PostgreSQL, Redis, the "
        f"kernel, other processes: when it is high, the machine was not idle); *stolen* is "
        f"CPU time the hypervisor gave other guests while this one wanted it (`steal` in "
        f"/proc/stat): when it is high, every figure of the run is low.",
        "",
        "| mode | created VMs/s | starts/s | start p50 / p99 | shutdowns/s | shutdown p50 / p99 | "
        "failed | server CPU (start) | simulator CPU (start) | worker CPU (start) | "
        "rest of the machine (start) | stolen (start) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        c, s, d = r["created"], r["start"], r["shutdown"]
        failed = s["failures"] + s["wrong_power"] + d["failures"] + d["wrong_power"]
        wrk = f"{s['worker_cpu'] * 100:.0f}%" if r["celery"] else "–"
        md.append(
            f"| {r['mode']} | {c['rate']:.0f} | {s['rate']:.1f} | {s['p50_ms']:.0f} / "
            f"{s['p99_ms']:.0f} ms | {d['rate']:.1f} | {d['p50_ms']:.0f} / {d['p99_ms']:.0f} ms | "
            f"{failed} | {s['server_cpu'] * 100:.0f}% | {s['sim_cpu'] * 100:.0f}% | {wrk} | "
            f"{s['other_cpu'] * 100:.0f}% | {s['steal_cpu'] * 100:.0f}% |")
    md += [
        "",
        "**Memory** (VmRSS, MiB): idle, with the VMs created (halted), with all of them "
        "running, after the shutdown.",
        "",
        "| mode | server | simulator | worker | server peak (VmHWM) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in runs:
        m = r["memory"]
        md.append(f"| {r['mode']} | {fmt_mem(m, 'server').replace('/', ' / ')} | "
                  f"{fmt_mem(m, 'sim').replace('/', ' / ')} | "
                  + (f"{fmt_mem(m, 'worker').replace('/', ' / ')}" if r["celery"] else "–")
                  + f" | {m['after shutdown']['server']['VmHWM']:.0f} |")
    md += ["", "**Server CPU by thread during the start phase** (share of one CPU):", ""]
    for r in runs:
        threads = ", ".join(f"{n} {c * 100:.0f}%" for n, c in r["start"]["threads"].items())
        md.append(f"- {r['mode']}: {threads}.")
    for s_ in skipped:
        md += ["", f"**{s_}**"]
    md.append("")
    for r in runs:
        clean, starts_ok, rss_ok = verdicts(r)
        rss = r["memory"]["running"]["server"]["VmRSS"]
        md.append(
            f"Targets, {r['mode']}: every start succeeded **{yes(clean)}**; ≥ {STARTS_TARGET:g} "
            f"starts/s **{yes(starts_ok)}** ({r['start']['rate']:.1f}); server VmRSS < "
            f"{RSS_TARGET_MB:g} MB with {args.vms} VMs running **{yes(rss_ok)}** "
            f"({rss * MiB / 1e6:.0f} MB).")
        md.append("")
    md += ["These are one run's figures; on a shared 2-CPU machine back-to-back runs of a "
           "mode differ by up to ±20%, so compare several runs before reading a verdict "
           "near its target.", ""]
    return console, "\n".join(md), all_ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.vms",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, default=1000, help="VMs to create and start (1000)")
    parser.add_argument("--inflight", type=int, default=32,
                        help="Async tasks in flight during starts and shutdowns (32)")
    parser.add_argument("--create-clients", type=int, default=4,
                        help="concurrent connections installing VMs (4)")
    parser.add_argument("--warmup", type=int, default=16,
                        help="extra VMs started and shut down before the measurement (16)")
    parser.add_argument("--shutdown", choices=("hard", "clean"), default="hard",
                        help="hard_shutdown or clean_shutdown (hard)")
    parser.add_argument("--worker-concurrency", type=int, default=8,
                        help="threads of the Celery worker (8, as the server's worker_threads)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="give up on a phase after this many seconds (600)")
    parser.add_argument("--no-embedded", action="store_true", help="skip the embedded run")
    parser.add_argument("--no-celery", action="store_true", help="skip the Celery run")
    parser.add_argument("--no-docs", action="store_true", help="do not update docs/performance.md")
    parser.add_argument("--no-wait", action="store_true",
                        help="do not wait for other running benchmarks (bench.*)")
    args = parser.parse_args(argv)

    if not args.no_wait:
        wait_for_other_benchmarks("bench.vms", 1800)
    raise_fd_limit()
    started = time.perf_counter()
    runs, skipped = bench_modes(args)
    console, section, ok = report(runs, skipped, args)
    publish(console, SECTION, section, not args.no_docs)
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("_create", "_power"):
        loadgen_main(sys.argv[1], sys.argv[2])
    else:
        raise SystemExit(main())
