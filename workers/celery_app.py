"""The Celery application: asynchronous XenAPI calls on per-host queues.

With ``redis_url`` set, the server hands each ``Async.*`` call to the queue
of the host that should run it (``host.<host uuid>``) instead of running it
in-process; ``xapi worker`` consumes that queue.  The worker runs the call
through the same dispatch code as the server and records the outcome on the
task; the server learns of it through the database's change notifications.
Arguments travel as XML-RPC text, the API's own wire form, so nothing but
XenAPI values crosses the broker.
"""

from __future__ import annotations

import logging

from celery import Celery
from celery.signals import after_setup_logger

from xapi import config as config_mod

TASK_NAME = "xapi.run_call"


def queue_for(host_uuid: str) -> str:
    return f"host.{host_uuid}"


def make_app(redis_url: str) -> Celery:
    app = Celery("xapi", broker=redis_url, include=["workers.tasks"])
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        # kombu's Redis ack emulation keeps a copy of each message a worker takes
        # until it is acknowledged (two more Redis round trips per call) and gives
        # it back after an hour if the worker died.  Without it a killed worker
        # loses the few messages it took ahead of running them: the next worker
        # fails their tasks before it takes any (workers/tasks.py).  A worker
        # stopped with SIGTERM puts them back in the queue.
        broker_transport_options={"ack_emulation": False},
    )
    use_broker(app, redis_url)
    return app


def use_broker(app: Celery, redis_url: str) -> None:
    app.conf.broker_url = redis_url
    # kombu's Redis transport, keeping its client objects (workers/broker.py);
    # other schemes (rediss://, sentinel://) keep kombu's own.
    app.conf.broker_transport = ("workers.broker:Transport" if redis_url.startswith("redis://")
                                 else None)


@after_setup_logger.connect
def _quiet_per_task_lines(logger=None, loglevel=logging.INFO, **_) -> None:
    """Celery logs two INFO lines per task (received, succeeded): at hundreds of
    Async calls a second they are most of the log and a measurable share of the
    worker's CPU, and the task records say as much.  DEBUG keeps them."""
    if loglevel is None or (isinstance(loglevel, int) and loglevel > logging.DEBUG) \
            or (isinstance(loglevel, str) and loglevel.upper() != "DEBUG"):
        for name in ("celery.worker.strategy", "celery.app.trace"):
            logging.getLogger(name).setLevel(logging.WARNING)


# `celery -A workers.celery_app worker` finds this; the URL comes from the configuration.
app = make_app(config_mod.load().redis_url or "redis://127.0.0.1:6379/0")
