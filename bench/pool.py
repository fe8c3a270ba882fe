"""Benchmark of a 64-host pool with 10,000 VMs (issue 7): run ``python -m bench.pool``.

Not a timed test: it prints figures and compares them with the targets.

What runs (all on this machine, PostgreSQL + Redis):

* the **master**: a real ``xapi serve`` (its own xenopsd simulator, local
  storage) with its own ``xapi worker`` on queue ``host.<uuid>``;
* **63 members as lightweight host agents**, ``--packs`` (4) processes of
  about 16 agents each (``python -m bench.pool _agents``).  An agent is a host
  as the rest of the pool sees it: its own state directory and host uuid,
  first boot against the pool database (host, host_metrics, host_cpu,
  control domain), liveness heartbeats every ``host_heartbeat_interval``
  (``xapi/pool/liveness.py``), a xenopsd simulator of its own (the project's
  simulator server, one per agent on its own unix socket, served from the
  pack's event loop rather than a process each), a xenopsd event watcher, and
  its Celery queue ``host.<uuid>`` consumed by the pack's Celery worker, which
  runs each call through the real dispatcher (``Dispatcher.run_submitted``,
  as ``xapi worker`` does) under that agent's runtime.  What an agent does not
  have is an HTTP API of its own: nothing in the pool calls a member's API
  (forwarding goes through the Celery queues), only clients would.  The agents
  of a pack share one database connection pool and one object cache, which is
  what makes 63 of them fit on 2 cores; a full daemon per host would be 64
  servers, 64 workers and 64 simulator processes.

Phases:

(1) ``--vms`` (10,000) halted HVM guests (256 MiB, no disks) are written into
    the fresh pool database through the write path before the master starts.
(2) **Join**: the packs start; time from their launch until the master's
    ``host.get_all_records`` shows 64 hosts, every one live.  ``--join``:
    ``first-boot`` (default): first boot against the pool database;
    ``pool.join``: each agent boots on a SQLite database of its own and runs
    pool.join's code (``xapi/pool/joining.py``) against the master.
(3) **``VM.get_all_records``** of the 10,000 VMs from the master over XML-RPC
    and JSON-RPC, end to end (request sent -> reply parsed by the stdlib
    parser), cold (first call of the format) and warm (best of ``--repeat``).
    Baseline: the same calls to a single-host server on its own database with
    the same VMs, measured in the same run.  Target: <= 2 s end to end.
(4) **Starts across the pool**: ``Async.VM.start`` of ``--starts`` (640) VMs,
    ``--inflight`` (32) at a time, a client seeing each task finish through
    ``event.from`` (``bench.vms``'s load generator); the master's placement
    chooses the host and forwards the call to its queue.  Starts/s, latency,
    how many hosts got VMs, every VM checked ``Running``.  Baseline: the same
    starts on the single host (its own worker).
(5) **Master CPU and memory**: VmRSS idle before the join, after it, after
    the starts; CPU over each phase and over ``--idle`` (20) s of an idle pool
    (63 agents beating).  Target: master VmRSS <= 1 GB (10^9 bytes).

Figures go to docs/performance.md, section "Pool of 64 hosts (issue 7)".
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xmlrpc.client
from pathlib import Path

from bench.events import code_version, log, loud, memory, nproc, raise_fd_limit
from bench.procs import cpu_seconds, stop, wait_for_other_benchmarks
from bench.report import REPO, publish

SECTION = "## Pool of 64 hosts (issue 7)"
RECORDS_TARGET_S = 2.0
RSS_TARGET_MB = 1000.0  # MB = 10^6 bytes
MiB = 1024 * 1024
VM_MEMORY = 256 * MiB


# -----------------------------------------------------------------------------
# the host agents (one pack = one process)
# -----------------------------------------------------------------------------


def _serve_simulators(settings_list) -> None:
    """The agents' xenopsd simulators: one server each, all on one event loop."""
    from xapi.backends.xenops.simulator.server import serve

    async def all_of_them():
        await asyncio.gather(*(serve(s) for s in settings_list))

    asyncio.run(all_of_them())


def _wait_socket(path: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise RuntimeError(f"simulator socket {path} did not appear")
        time.sleep(0.05)


def join_by_first_boot(rt, cfg: dict) -> None:
    """A host enters the pool by booting against the pool database (first boot adds it)."""
    from xapi import firstboot

    firstboot.run(rt)


def join_by_pool_join(rt, cfg: dict) -> None:
    """xapi's way: the host boots on a database of its own, then runs pool.join's code
    (xapi/pool/joining.py: login to the master, pre-join checks, pool secret, its objects
    carried into the pool database); then it runs as a member on the pool database."""
    from db.store import Database
    from xapi import firstboot
    from xapi.context import Context, Runtime
    from xapi.pool import joining
    from tests.support import ROOT_PASSWORD

    own = rt.config.model_copy(update={"db_url": None})  # SQLite in its state directory
    db = Database(own.database_url)
    db.upgrade()
    db.load()
    alone = Runtime(config=own, db=db, executor=rt.executor)
    firstboot.run(alone)
    joining.join(Context(rt=alone), "127.0.0.1", "root", ROOT_PASSWORD, force=False)
    db.close()
    rt.db.catch_up()  # the carried host, before first boot looks for it
    firstboot.run(rt)


JOINS = {"first-boot": join_by_first_boot, "pool.join": join_by_pool_join}


def agents_main(cfg_file: str) -> None:
    """A pack of host agents: first boot, heartbeats, simulators, watchers, one Celery worker."""
    import logging
    import uuid as uuid_mod
    from concurrent.futures import ThreadPoolExecutor

    from celery import Celery

    from api.dispatch import Dispatcher
    from db.listen import ChangeListener
    from db.store import Database
    from workers.celery_app import TASK_NAME, queue_for
    from xapi import firstboot
    from xapi.backends.storage.plugins import PluginRegistry
    from xapi.backends.xenops import protocol as P
    from xapi.backends.xenops.simulator.server import Settings
    from xapi.config import Config
    from xapi.context import Runtime
    from xapi.domains.service import Domains
    from xapi.pool import liveness
    from xapi.storage.service import Storage

    cfg = json.loads(Path(cfg_file).read_text())
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    db = Database(cfg["db_url"])
    db.load()
    ChangeListener(db, poll_interval=0.5).start(force=True)
    executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="agent")

    configs = []
    for i in cfg["agents"]:
        state = os.path.join(cfg["base"], f"host{i:02d}")
        configs.append(Config(
            state_dir=state, db_url=cfg["db_url"], redis_url=cfg["redis_url"],
            host_name=f"agent-{i:02d}", host_address=f"127.0.1.{i}", listen=cfg["listen"],
            local_storage=False, host_heartbeat_interval=cfg["heartbeat"]))
    sims = [Settings(socket_dir=c.xenopsd_sockets, state_dir=os.path.join(c.state_dir, "sim"))
            for c in configs]
    threading.Thread(target=_serve_simulators, args=(sims,), daemon=True,
                     name="simulators").start()

    by_queue = {}
    runtimes = []
    for c in configs:
        rt = Runtime(config=c, db=db, executor=executor)
        JOINS[cfg["join"]](rt, cfg)
        host_uuid = firstboot.host_uuid(c.state_dir)
        rt.process_id = f"{host_uuid}/worker/{os.getpid()}/{uuid_mod.uuid4().hex[:8]}"
        liveness.beat(rt)
        rt.storage = Storage(rt, PluginRegistry(c.storage_plugin_dir_list))
        _wait_socket(P.socket_path(c.xenopsd_sockets, c.xenopsd_queue_list[0]))
        rt.domains = Domains(rt, c.xenopsd_queue_list, c.xenopsd_sockets, c.xenopsd_encoding)
        rt.domains.record_host_memory()
        rt.domains.start_watchers()
        by_queue[queue_for(host_uuid)] = (rt, Dispatcher(rt))
        runtimes.append(rt)

    def heartbeats() -> None:
        while True:
            time.sleep(cfg["heartbeat"])
            for rt in runtimes:
                try:
                    liveness.beat(rt)
                except Exception:  # noqa: BLE001 - the next round tries again
                    logging.getLogger("bench.agents").exception("heartbeat failed")

    threading.Thread(target=heartbeats, daemon=True, name="heartbeats").start()

    # The pack's own Celery app: workers.celery_app's includes workers.tasks, whose
    # shared task would take the name over and run every call as one host.
    app = Celery("xapi-agents", broker=cfg["redis_url"])
    app.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True,
                    worker_prefetch_multiplier=1, broker_connection_retry_on_startup=True,
                    worker_hijack_root_logger=False)  # as workers/celery_app.py make_app

    @app.task(name=TASK_NAME, bind=True, shared=False)
    def run_call(self, task: str, method: str, args_xml: str, session: str) -> None:
        # The routing key is the queue, host.<uuid>: which agent the call is for.
        rt, dispatcher = by_queue[self.request.delivery_info["routing_key"]]
        if rt.cache.get("task", task) is None:  # as workers/tasks.py run_call
            rt.db.catch_up()  # committed just before the message was sent; not heard of yet
        asyncio.run(dispatcher.run_submitted(rt, task, method, args_xml, session))

    print(json.dumps({"ready": len(runtimes)}), flush=True)
    app.worker_main(["worker", "--queues", ",".join(by_queue), "--pool", "threads",
                     "--concurrency", str(cfg["concurrency"]), "--loglevel", "WARNING",
                     "--hostname", f"agents-{os.getpid()}@%h", "--without-gossip",
                     "--without-mingle", "--without-heartbeat"])


# -----------------------------------------------------------------------------
# the driver
# -----------------------------------------------------------------------------


def populate(db_url: str, count: int) -> float:
    """``count`` halted, diskless HVM guests of 256 MiB, written through the write path."""
    from bench.rpc import populate as populate_vms

    return populate_vms(db_url, count, memory_target=VM_MEMORY, memory_static_max=VM_MEMORY,
                        memory_dynamic_max=VM_MEMORY, memory_dynamic_min=VM_MEMORY,
                        memory_static_min=VM_MEMORY // 2, VCPUs_max=1, VCPUs_at_startup=1,
                        name_description="Created by bench.pool")


def rss_mb(pid: int) -> float:
    return memory(pid).get("VmRSS", float("nan")) * MiB / 1e6


class Api:
    """Setup calls and the timed big calls, over one keep-alive connection."""

    def __init__(self, port: int):
        from bench.rpc import Client

        self.client = Client(port)

    def xml(self, method: str, *params):
        return self.client.xml(method, *params)

    def all_records(self, session: str, fmt: str) -> tuple[float, float, int]:
        """Seconds to the last byte, seconds until parsed, and the VM count."""
        from bench.rpc import json_request, xml_request

        t0 = time.perf_counter()
        if fmt == "xml":
            data, _, wire = self.client.post("/", "text/xml", xml_request("VM.get_all_records",
                                                                           session))
            value = xmlrpc.client.loads(data)[0][0]["Value"]
        else:
            data, _, wire = self.client.post("/jsonrpc", "application/json",
                                             json_request("VM.get_all_records", session))
            value = json.loads(data)["result"]
        return wire, time.perf_counter() - t0, len(value)

    def close(self) -> None:
        self.client.close()


def measure_records(api: Api, session: str, repeat: int, expect: int) -> dict:
    out = {}
    for fmt in ("xml", "json"):
        wire, total, count = api.all_records(session, fmt)
        if count < expect:
            raise RuntimeError(f"VM.get_all_records returned {count} VMs, expected >= {expect}")
        warm = [api.all_records(session, fmt) for _ in range(repeat)]
        best = min(warm, key=lambda r: r[1])
        out[fmt] = {"cold": total, "cold_wire": wire, "warm": best[1], "warm_wire": best[0],
                    "count": count}
    return out


def start_worker(server, concurrency: int, redis_url: str) -> subprocess.Popen:
    from bench.vms import start_worker as vms_start_worker

    return vms_start_worker(server, concurrency, redis_url)


def vm_refs(api: Api, session: str) -> list[str]:
    records = api.xml("VM.get_all_records_where", session,
                      'field "name_description"="Created by bench.pool"')
    return sorted(records, key=lambda r: records[r]["name_label"])


def run_starts(server, session: str, vms: list[str], worker_pid: int | None, args) -> dict:
    from bench.vms import run_loadgen, simulator_pid

    cfg = {"port": server.port, "session": session, "method": "VM.start", "extra": [False, False],
           "vms": vms, "inflight": args.inflight, "timeout": args.timeout, "expect": "Running",
           "server_pid": server.process.pid, "sim_pid": simulator_pid(server),
           "worker_pid": worker_pid}
    return run_loadgen("_power", cfg, args.timeout + 120)


def spread(api: Api, session: str, vms: list[str]) -> dict[str, int]:
    records = api.xml("VM.get_all_records", session)
    counts: dict[str, int] = {}
    for vm in vms:
        host = records[vm]["resident_on"]
        counts[host] = counts.get(host, 0) + 1
    return counts


def cpu_over(pid: int, seconds: float) -> float:
    a, t = cpu_seconds(pid), time.perf_counter()
    time.sleep(seconds)
    return (cpu_seconds(pid) - a) / (time.perf_counter() - t)


def baseline(db_url: str, redis_url: str, args) -> dict:
    """One host, no pool: the same VMs, the same calls."""
    from bench.events import login
    from tests import support

    populate(db_url, args.vms)
    server = support.start_server(db_url=db_url, redis_url=redis_url, worker="false",
                                  max_tasks=100_000)
    worker = start_worker(server, args.worker_concurrency, redis_url)
    try:
        session = login(server, "bench.pool")
        api = Api(server.port)
        idle_rss = rss_mb(server.process.pid)
        records = measure_records(api, session, args.repeat, args.vms)
        vms = vm_refs(api, session)[:args.starts]
        log(f"baseline: starting {len(vms)} VMs on one host")
        starts = run_starts(server, session, vms, worker.pid, args)
        rss_after = rss_mb(server.process.pid)
        api.close()
        return {"records": records, "starts": starts, "rss_idle": idle_rss,
                "rss_after_starts": rss_after}
    finally:
        stop(worker)
        server.stop()


def pool_run(db_url: str, redis_url: str, args) -> dict:
    from bench.events import login
    from tests import support

    base = tempfile.mkdtemp(prefix="bench-pool-")
    log(f"writing {args.vms} VMs into the pool database")
    populate_s = populate(db_url, args.vms)
    master = support.start_server(db_url=db_url, redis_url=redis_url, worker="false",
                                  max_tasks=100_000, host_heartbeat_interval=args.heartbeat)
    worker = start_worker(master, args.worker_concurrency, redis_url)
    packs: list[subprocess.Popen] = []
    try:
        session = login(master, "bench.pool")
        api = Api(master.port)
        pid = master.process.pid
        out: dict = {"populate_s": populate_s, "rss_before_join": rss_mb(pid)}

        members = list(range(1, args.hosts))
        groups = [members[k::args.packs] for k in range(args.packs)]
        log(f"joining {len(members)} host agents in {args.packs} processes")
        cpu0, t0 = cpu_seconds(pid), time.perf_counter()
        for k, group in enumerate(groups):
            cfg = {"db_url": db_url, "redis_url": redis_url, "agents": group, "base": base,
                   "heartbeat": args.heartbeat, "concurrency": args.pack_concurrency,
                   "join": args.join, "listen": f"127.0.0.1:{master.port}"}
            path = os.path.join(base, f"pack{k}.json")
            Path(path).write_text(json.dumps(cfg))
            logf = open(os.path.join(base, f"pack{k}.log"), "ab")
            packs.append(subprocess.Popen([sys.executable, "-m", "bench.pool", "_agents", path],
                                          cwd=REPO, stdout=logf, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + args.timeout
        while True:
            hosts = api.xml("host.get_all_records", session)
            metrics = api.xml("host_metrics.get_all_records", session)
            live = [h for h, r in hosts.items() if metrics.get(r["metrics"], {}).get("live")]
            if len(live) >= args.hosts:
                break
            for p in packs:
                if p.poll() is not None:
                    raise RuntimeError(f"an agent pack exited ({p.returncode}); see {base}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(live)} live hosts after {args.timeout} s")
            time.sleep(0.1)
        out["join_s"] = time.perf_counter() - t0
        out["join_cpu"] = (cpu_seconds(pid) - cpu0) / out["join_s"]
        out["hosts"] = len(hosts)
        time.sleep(3)  # the packs' Celery workers come up after the hosts exist
        out["rss_after_join"] = rss_mb(pid)
        log(f"idle pool: master CPU over {args.idle:.0f} s")
        out["idle_cpu"] = cpu_over(pid, args.idle)

        log("VM.get_all_records on the master")
        c0 = cpu_seconds(pid)
        out["records"] = measure_records(api, session, args.repeat, args.vms)
        out["records_cpu_s"] = cpu_seconds(pid) - c0
        out["rss_after_records"] = rss_mb(pid)

        vms = vm_refs(api, session)[:args.starts]
        log(f"starting {len(vms)} VMs across the pool")
        out["starts"] = run_starts(master, session, vms, worker.pid, args)
        out["spread"] = spread(api, session, vms)
        out["master_host"] = api.xml("pool.get_master", session,
                                     api.xml("pool.get_all", session)[0])
        out["rss_after_starts"] = rss_mb(pid)
        out["rss_hwm"] = memory(pid).get("VmHWM", float("nan")) * MiB / 1e6
        out["pack_rss"] = [rss_mb(p.pid) for p in packs]
        api.close()
        return out
    finally:
        for p in packs:
            p.send_signal(signal.SIGTERM)  # all at once; then each waited for
        for p in [*packs, worker]:
            stop(p)
        master.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            log(f"kept {base}")


# -----------------------------------------------------------------------------
# report
# -----------------------------------------------------------------------------


def yes(ok: bool) -> str:
    return "yes" if ok else "**NO**"


def report(pool: dict, base: dict, args) -> tuple[str, str]:
    pr, br = pool["records"], base["records"]
    ps, bs = pool["starts"], base["starts"]
    hosts_used = len([h for h in pool["spread"] if h != "OpaqueRef:NULL"])
    rss_peak = max(pool["rss_after_join"], pool["rss_after_records"], pool["rss_after_starts"])
    lines = [
        f"64-host pool: 1 master daemon + {args.hosts - 1} host agents in {args.packs} processes, "
        f"{args.vms} VMs, PostgreSQL + Redis",
        f"join: {pool['hosts']} hosts live after {pool['join_s']:.1f} s "
        f"(master CPU {pool['join_cpu']:.0%})",
        "VM.get_all_records (s, end to end: sent -> parsed)   pool   single host   pool/single",
    ]
    for fmt in ("xml", "json"):
        for phase in ("cold", "warm"):
            lines.append(f"  {fmt:4} {phase:4}  {pr[fmt][phase]:6.2f}  {br[fmt][phase]:6.2f}  "
                         f"{pr[fmt][phase] / br[fmt][phase]:5.2f}x")
    lines += [
        f"starts: pool {ps['rate']:.1f}/s over {hosts_used} hosts, single host {bs['rate']:.1f}/s "
        f"(ratio {ps['rate'] / bs['rate']:.2f}); failures pool {ps['failures']}, "
        f"single {bs['failures']}",
        f"master RSS: before join {pool['rss_before_join']:.0f} MB, after join "
        f"{pool['rss_after_join']:.0f} MB, after starts {pool['rss_after_starts']:.0f} MB "
        f"(single host {base['rss_after_starts']:.0f} MB)",
        f"master CPU idle pool: {pool['idle_cpu']:.1%}",
        f"targets: get_all_records <= {RECORDS_TARGET_S} s: JSON-RPC "
        f"{yes(max(pr['json']['cold'], pr['json']['warm']) <= RECORDS_TARGET_S)}, XML-RPC "
        f"{yes(max(pr['xml']['cold'], pr['xml']['warm']) <= RECORDS_TARGET_S)} (to the last byte "
        f"{max(pr['xml']['cold_wire'], pr['xml']['warm_wire']):.2f} s; the rest is the client's "
        f"parser); "
        f"RSS <= 1 GB: {yes(rss_peak <= RSS_TARGET_MB)}",
    ]
    console = "\n".join(lines)

    today = _dt.date.today().isoformat()
    rows = []
    for fmt, name in (("xml", "XML-RPC"), ("json", "JSON-RPC")):
        for phase in ("cold", "warm"):
            rows.append(
                f"| {name} {phase} | {pr[fmt][phase]:.2f} s (wire {pr[fmt][phase + '_wire']:.2f} s) "
                f"| {br[fmt][phase]:.2f} s (wire {br[fmt][phase + '_wire']:.2f} s) "
                f"| {pr[fmt][phase] / br[fmt][phase]:.2f} | {yes(pr[fmt][phase] <= RECORDS_TARGET_S)} |")
    per_host = sorted(v for h, v in pool["spread"].items() if h != "OpaqueRef:NULL")
    section = f"""{SECTION}

`python -m bench.pool` ({today}, {platform.node()}, {nproc()} CPUs, Python
{platform.python_version()}, code {code_version()}).  The pool: the master is a
real `xapi serve` with its own simulator and `xapi worker`; the other
{args.hosts - 1} hosts are **lightweight host agents**, {args.packs} processes of about
{(args.hosts - 1 + args.packs - 1) // args.packs} each: every agent has its own host identity (state directory,
host uuid, first boot against the pool database), heartbeats every
{args.heartbeat:.0f} s, its own xenopsd simulator (the project's simulator server on
its own socket, served from the pack's event loop) with an event watcher, and its
queue `host.<uuid>` consumed by the pack's Celery worker running the real
dispatcher; they have no HTTP API of their own (nothing in the pool calls a
member's API).  {args.vms:,} halted 256 MiB VMs without disks.  Baseline: one
host on its own database with the same VMs and the same calls, same run.
Hosts entered the pool by `--join {args.join}`.

**Join**: all {pool['hosts']} hosts live in the master's `host.get_all_records`
{pool['join_s']:.1f} s after the agent processes were launched (master CPU
{pool['join_cpu']:.0%} meanwhile).

**`VM.get_all_records`** of {pr['xml']['count']:,} VMs on the master, end to end (request sent
→ reply parsed by the stdlib client; *wire*: to the last byte). Target ≤ {RECORDS_TARGET_S:.0f} s.
The difference between the two columns is the client: `xmlrpc.client`'s pure-Python
parser spends seconds on 10,000 records where `json.loads` spends a fraction of one.
Target met over JSON-RPC: {yes(max(pr['json']['cold'], pr['json']['warm']) <= RECORDS_TARGET_S)};
over XML-RPC: {yes(max(pr['xml']['cold'], pr['xml']['warm']) <= RECORDS_TARGET_S)}, the
server delivering the last byte within {max(pr['xml']['cold_wire'], pr['xml']['warm_wire']):.2f} s
and the client's parsing taking the rest (the encoding is already xapi's leanest: untyped
string values).

| call | pool of 64 | single host | pool/single | ≤ {RECORDS_TARGET_S:.0f} s |
|---|---|---|---|---|
{chr(10).join(rows)}

**Starts across the pool**: `Async.VM.start` of {ps['vms']} VMs, {args.inflight} in
flight, placed by the master and forwarded to the chosen host's queue:
{ps['rate']:.1f} starts/s (p50 {ps['p50_ms']:.0f} ms, p99 {ps['p99_ms']:.0f} ms), on
{hosts_used} hosts ({per_host[0] if per_host else 0}–{per_host[-1] if per_host else 0} VMs each),
{ps['failures']} failures, {ps['wrong_power']} VMs not Running.  Single host (one
worker): {bs['rate']:.1f} starts/s (p50 {bs['p50_ms']:.0f} ms), {bs['failures']} failures.
Ratio pool/single {ps['rate'] / bs['rate']:.2f}.  Master CPU over the pool's starts
{ps['server_cpu']:.0%} (its worker {ps['worker_cpu']:.0%}).

**Master memory and CPU**: VmRSS {pool['rss_before_join']:.0f} MB before the
join, {pool['rss_after_join']:.0f} MB with 64 hosts, {pool['rss_after_records']:.0f} MB after
`get_all_records`, {pool['rss_after_starts']:.0f} MB after the starts (peak VmHWM
{pool['rss_hwm']:.0f} MB; single host {base['rss_after_starts']:.0f} MB); target ≤ 1 GB:
{yes(rss_peak <= RSS_TARGET_MB)}.  Master CPU with the pool idle (63 agents beating):
{pool['idle_cpu']:.1%} of one CPU over {args.idle:.0f} s.  Agent processes:
{', '.join(f'{r:.0f}' for r in pool['pack_rss'])} MB VmRSS.
"""
    return console, section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pool",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=64, help="hosts in the pool, master included")
    parser.add_argument("--vms", type=int, default=10_000, help="VMs in the pool (10,000)")
    parser.add_argument("--starts", type=int, default=640, help="VMs started (640)")
    parser.add_argument("--packs", type=int, default=4, help="agent processes (4)")
    parser.add_argument("--pack-concurrency", type=int, default=8,
                        help="Celery threads per agent process (8)")
    parser.add_argument("--worker-concurrency", type=int, default=8,
                        help="threads of the master's worker (8)")
    parser.add_argument("--inflight", type=int, default=32, help="Async starts in flight (32)")
    parser.add_argument("--heartbeat", type=float, default=30.0,
                        help="host_heartbeat_interval of every host (30, as xapi)")
    parser.add_argument("--join", choices=sorted(JOINS), default="first-boot",
                        help="how agents enter the pool (first-boot)")
    parser.add_argument("--repeat", type=int, default=3, help="warm get_all_records calls (3)")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of idle pool measured")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up on a phase (600 s)")
    parser.add_argument("--keep", action="store_true", help="keep the agents' state directories")
    parser.add_argument("--no-docs", action="store_true", help="do not update docs/performance.md")
    parser.add_argument("--no-wait", action="store_true",
                        help="do not wait for other running benchmarks (bench.*)")
    args = parser.parse_args(argv)

    from tests import support

    for problem in (support.ensure_postgres(), support.ensure_redis()):
        if problem:
            loud(f"cannot run: {problem}")
            return 1
    if not args.no_wait:
        wait_for_other_benchmarks("bench.pool", 1800)
    raise_fd_limit()
    started = time.perf_counter()
    redis_url = support.REDIS_URL
    pool_db, base_db = support.create_pg_database(), support.create_pg_database()
    try:
        pool = pool_run(pool_db, redis_url, args)
        log("baseline: a single host with the same VMs")
        base = baseline(base_db, redis_url, args)
    finally:
        support.drop_pg_database(pool_db)
        support.drop_pg_database(base_db)
    console, section = report(pool, base, args)
    publish(console, SECTION, section, not args.no_docs)
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_agents":
        agents_main(sys.argv[2])
    else:
        raise SystemExit(main())
