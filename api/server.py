"""Start a server: database, first boot, HTTP and unix-socket listeners, GC."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from db.listen import ChangeListener
from db.store import Database
from xapi import firstboot, operations, sessions, tasks
from xapi.auth import hash_password
from xapi.config import Config
from xapi.context import Runtime
from xapi.domains import embedded
from xapi.backends.storage.plugins import PluginRegistry
from xapi.domains.service import Domains
from xapi.storage import firstboot as storage_firstboot
from xapi.storage.service import Storage
from xapi.events import EventHub
from xapi.pool import liveness, restart, roles

from db.migrate import wipe
from workers import gc as db_gc
from workers import storage_gc, supervisor

from .app import DISPATCHER, create_app

log = logging.getLogger("xapi.server")

ROOT_PASSWORD_ENV = "XAPI_ROOT_PASSWORD"


def open_runtime(config: Config) -> Runtime:
    """Bring the database up to date, load it and run first boot."""
    os.makedirs(config.state_dir, exist_ok=True)
    db = Database(config.database_url)
    if restart.take_reset_mark(config.state_dir):
        log.warning("ejected from a pool: starting again from an empty database")
        wipe(db.engine)
    db.upgrade()
    db.load()
    executor = ThreadPoolExecutor(max_workers=config.worker_threads, thread_name_prefix="xapi")
    rt = Runtime(config=config, db=db, executor=executor)
    set_initial_root_password(db)
    firstboot.run(rt)
    host_uuid = rt.cache.get("host", rt.host_ref).values["uuid"]
    rt.process_id = f"{host_uuid}/server/{os.getpid()}/{uuid.uuid4().hex[:8]}"
    liveness.beat(rt)  # first boot said live; the beat keeps the master from judging otherwise
    failed = tasks.fail_orphans(rt, alive={rt.process_id})
    if failed:
        log.warning("failed %d tasks left pending by a previous run", failed)
    cleared = operations.clear_stale(rt)
    if cleared:
        log.warning("cleared %d stale current_operations entries", cleared)
    rt.extra["listener"] = ChangeListener(db).start()  # commits of other processes (PostgreSQL)
    start_storage(rt)
    start_domains(rt)
    return rt


def close_runtime(rt: Runtime, keep_simulator: bool = False) -> None:
    """Stop what open_runtime started: watchers, the simulator it started, listener, threads, DB."""
    if rt.domains is not None:
        rt.domains.stop()
    if not keep_simulator:  # across a restart the domains live on, as under xenopsd
        embedded.stop_simulator(rt.extra.get("simulator"))
    listener = rt.extra.get("listener")
    if listener is not None:
        listener.stop()
    if rt.storage is not None:
        rt.storage.registry.close()  # the storage plugins' fork server
    rt.executor.shutdown(wait=False)
    rt.db.close()


def start_storage(rt: Runtime) -> None:
    """SMAPIv3 plugins: SM records for the installed ones, and first boot's SRs."""
    rt.storage = Storage(rt, PluginRegistry(rt.config.storage_plugin_dir_list))
    rt.storage.sync_sm_records()
    storage_firstboot.run(rt)


def start_domains(rt: Runtime) -> None:
    """xenopsd: the simulator in the embedded mode, a client and a watcher per queue."""
    config = rt.config
    queues = config.xenopsd_queue_list
    if not queues:
        return
    rt.extra["simulator"] = embedded.ensure_simulator(config)
    rt.domains = Domains(rt, queues, config.xenopsd_sockets, config.xenopsd_encoding)
    rt.domains.record_host_memory()
    rt.domains.start_watchers()
    for watcher in rt.domains.watchers:  # resynced before the first client is served
        if not watcher.resynced.wait(30):
            log.warning("xenopsd queue %s did not answer; VMs on it wait for it", watcher.queue)


def set_initial_root_password(db: Database) -> None:
    password = os.environ.get(ROOT_PASSWORD_ENV)
    if db.get_password_hash(sessions.ROOT) is not None:
        return
    if password:
        db.set_password_hash(sessions.ROOT, hash_password(password))
        log.info("root password set from %s", ROOT_PASSWORD_ENV)
    else:
        log.warning(
            "root has no password: logins over TCP will fail until one is set "
            "with `xapi passwd` (or start once with %s set)", ROOT_PASSWORD_ENV,
        )


async def _gc_loop(rt: Runtime) -> None:
    loop = asyncio.get_running_loop()
    state = db_gc.GcState()
    while True:
        await asyncio.sleep(rt.config.gc_interval)
        try:
            await loop.run_in_executor(rt.executor, db_gc.run_pass, rt, state)
        except Exception:
            log.exception("GC pass failed")


def _heartbeat(rt: Runtime) -> None:
    if not roles.is_master(rt):
        return  # one pool, one heartbeat: the master's
    with rt.db.write() as tx:
        tx.touch("pool", rt.pool_ref)


async def _simulator_keeper(rt: Runtime) -> None:
    """In the embedded mode the server keeps its xenopsd simulator running, as init keeps xenopsd."""
    loop = asyncio.get_running_loop()
    if not embedded.wanted(rt.config):
        return
    while True:
        await asyncio.sleep(2.0)
        process = rt.extra.get("simulator")
        if process is not None and process.poll() is None:
            continue  # ours, and alive
        if await loop.run_in_executor(rt.executor, embedded.answers, rt.config):
            continue  # one we did not start (a previous server's) and alive
        log.warning("the xenopsd simulator is gone; starting it again")
        try:
            rt.extra["simulator"] = await loop.run_in_executor(
                rt.executor, embedded.ensure_simulator, rt.config)
        except Exception:
            log.exception("could not restart the xenopsd simulator")


async def _heartbeat_loop(rt: Runtime) -> None:
    """xapi's periodic pool ``mod`` event: lets clients see the connection is alive."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(rt.config.heartbeat_interval)
        try:
            await loop.run_in_executor(rt.executor, _heartbeat, rt)
        except Exception:
            log.exception("pool heartbeat failed")


async def _host_heartbeat_loop(rt: Runtime) -> None:
    """This host's liveness heartbeat (xapi's Host.tickle_heartbeat), master or member."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(rt.config.host_heartbeat_interval)
        try:
            await loop.run_in_executor(rt.executor, liveness.beat, rt)
        except Exception:
            log.exception("host heartbeat failed")


async def run(config: Config, ready: asyncio.Event | None = None) -> None:
    loop = asyncio.get_running_loop()
    rt = await loop.run_in_executor(None, open_runtime, config)
    # The object cache is millions of long-lived objects: keep them out of the
    # cyclic GC's full passes, which would otherwise stall big responses.
    gc.collect()
    gc.freeze()
    rt.events = EventHub(loop, delay=config.event_from_delay)
    rt.events.generation = rt.cache.generation
    rt.cache.listeners.append(rt.events.notify_threadsafe)
    app = create_app(rt)
    runners = [web.AppRunner(app, access_log=None, handle_signals=True)]
    await runners[0].setup()
    sites = [web.TCPSite(runners[0], config.listen_host, config.listen_port, backlog=1024)]
    socket_path = config.socket_path
    if socket_path:
        if os.path.exists(socket_path):
            os.unlink(socket_path)
        local = web.AppRunner(create_app(rt, app[DISPATCHER], local=True), access_log=None)
        await local.setup()
        runners.append(local)
        sites.append(web.UnixSite(local, socket_path))
    for site in sites:
        await site.start()
    log.info("xapi listening on %s%s", config.listen,
             f" and {socket_path}" if socket_path else "")
    background = [asyncio.create_task(_gc_loop(rt)), asyncio.create_task(_heartbeat_loop(rt)),
                  asyncio.create_task(_simulator_keeper(rt)),
                  asyncio.create_task(storage_gc.loop(rt)),  # VHD coalescing, workers/storage_gc.py
                  asyncio.create_task(_host_heartbeat_loop(rt))]
    worker = supervisor.start(config)
    restarting = asyncio.Event()
    rt.extra[restart.HOOK] = lambda reason: loop.call_soon_threadsafe(
        loop.call_later, 1.0, restarting.set)  # let the reply (and its task) go out first
    if ready is not None:
        ready.set()
    try:
        await restarting.wait()
        log.warning("restarting for a change of pool membership")
    finally:
        for job in background:
            job.cancel()
        supervisor.stop(worker, config)
        for runner in runners:
            await runner.cleanup()
        if not restarting.is_set():
            try:
                liveness.shutting_down(rt)  # a clean stop: this host is dead at once
            except Exception:
                log.exception("could not mark this host as shutting down")
        close_runtime(rt, keep_simulator=restarting.is_set())
    # The same command again, now reading this host's new pool.conf (xapi restarts too).
    logging.shutdown()
    os.execv(sys.executable, sys.orig_argv)
