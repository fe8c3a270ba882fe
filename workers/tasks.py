"""What a worker process runs: one XenAPI call under an existing task."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import uuid

from celery.signals import worker_init

from xapi import config as config_mod
from xapi import tasks
from xapi.context import Runtime

from .broker import queued_task_ids
from .celery_app import TASK_NAME, app, queue_for

log = logging.getLogger("xapi.worker")

_runtime: Runtime | None = None
_dispatcher = None
_lock = threading.Lock()


def worker_runtime():
    """This worker process's runtime, built on first use (after any fork)."""
    global _runtime, _dispatcher
    with _lock:
        if _runtime is None:
            from concurrent.futures import ThreadPoolExecutor

            from api.dispatch import Dispatcher
            from db.listen import ChangeListener
            from db.store import Database
            from xapi import firstboot

            cfg = config_mod.load()
            db = Database(cfg.database_url)
            db.upgrade()
            db.load()
            rt = Runtime(config=cfg, db=db, executor=ThreadPoolExecutor(cfg.worker_threads))
            host_uuid = firstboot.host_uuid(cfg.state_dir)
            rt.host_ref = db.cache.ref_by_uuid("host", host_uuid) or rt.host_ref
            pools = db.cache.rows("pool")
            rt.pool_ref = pools[0].ref if pools else rt.pool_ref
            rt.process_id = f"{host_uuid}/worker/{os.getpid()}/{uuid.uuid4().hex[:8]}"
            rt.extra["listener"] = ChangeListener(db, poll_interval=0.5).start(force=True)
            from xapi.backends.storage.plugins import PluginRegistry
            from xapi.storage.service import Storage

            # Storage and VBD work forwarded to this host runs here: disks are
            # activated through this host's plugins and its PBDs.
            rt.storage = Storage(rt, PluginRegistry(cfg.storage_plugin_dir_list))
            if cfg.xenopsd_queue_list:
                from xapi.domains.service import Domains

                rt.domains = Domains(rt, cfg.xenopsd_queue_list, cfg.xenopsd_sockets,
                                     cfg.xenopsd_encoding, watching=False)
                rt.domains.start_task_watchers()
            failed = tasks.fail_orphans(rt, alive={rt.process_id}, kind="worker")
            if failed:
                log.warning("failed %d tasks left pending by a previous worker", failed)
            _dispatcher = Dispatcher(rt)
            _runtime = rt
        return _runtime, _dispatcher


@worker_init.connect
def _take_over(sender=None, **_) -> None:
    """Before the worker takes its first message: build the runtime (which fails
    the tasks its predecessor was running) and fail the tasks whose messages the
    predecessor had taken and lost.  Only when calls run in this process
    (``xapi worker`` runs the threads pool): a forking pool's children build
    their own runtime."""
    pool = getattr(sender, "pool_cls", "")
    name = pool if isinstance(pool, str) else getattr(pool, "__module__", "")
    if "thread" not in name and "solo" not in name:
        return
    rt, _ = worker_runtime()
    host_uuid = rt.cache.get("host", rt.host_ref).values["uuid"]
    try:
        lost = tasks.fail_lost_queued(rt, queued_task_ids(app, queue_for(host_uuid)))
    except Exception:
        log.exception("could not look for calls a previous worker took and lost")
    else:
        if lost:
            log.warning("failed %d tasks a previous worker took from the queue and did not run",
                        lost)


_loops = threading.local()


def _run(coro):
    """Run a coroutine on this Celery thread's own event loop, kept between calls
    (a new loop per call, as asyncio.run makes, costs more than many calls)."""
    loop = getattr(_loops, "loop", None)
    if loop is None or loop.is_closed():
        loop = _loops.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
    return loop.run_until_complete(coro)


@app.task(name=TASK_NAME)
def run_call(task: str, method: str, args_xml: str, session: str) -> None:
    rt, dispatcher = worker_runtime()
    if rt.cache.get("task", task) is None:
        rt.db.catch_up()  # committed just before this message was sent; not heard of yet
    _run(dispatcher.run_submitted(rt, task, method, args_xml, session))
