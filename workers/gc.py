"""Garbage collection of tasks and sessions, as xapi's Db_gc does every 30 s.

One pass:

- completed tasks whose ``finished`` is older than ``completed_task_timeout``
  are destroyed;
- pending tasks older than ``pending_task_timeout`` whose progress has not
  moved since the previous pass are cancelled — the backend work behind
  them is told to stop, which xapi does not do — and destroyed;
- beyond ``max_tasks``, the oldest completed tasks are destroyed;
- sessions idle for longer than ``inactive_session_timeout`` and without
  pending tasks are destroyed;
- pending tasks of a worker process of this host that died are failed;
- change-log entries more than ``KEEP_GENERATIONS`` old are forgotten
  (``db/changelog.py``);
- on the master only, host liveness: ``host_metrics.live`` from the hosts'
  heartbeats (xapi's check_host_liveness, ``xapi/pool/liveness.py``).

All limits come from the configuration (``etc/xapi.conf``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from xapi import tasks
from xapi.context import Runtime, now
from xapi.pool import liveness

log = logging.getLogger("xapi.gc")


@dataclass
class GcState:
    """What one pass remembers for the next: the progress of old pending tasks."""

    pending_progress: dict[str, float] = field(default_factory=dict)
    judge: liveness.Judge = field(default_factory=liveness.Judge)  # host liveness


@dataclass
class GcReport:
    completed: int = 0
    pending: int = 0
    excess: int = 0
    sessions: int = 0
    orphans: int = 0
    trimmed: int = 0
    live_changed: dict[str, bool] = field(default_factory=dict)


def run_pass(rt: Runtime, state: GcState) -> GcReport:
    cfg = rt.config
    report = GcReport()
    try:
        report.live_changed = liveness.check(rt, state.judge)
    except Exception:  # the task and session GC below must not depend on it
        log.exception("host liveness check failed")
    report.orphans = tasks.fail_dead_local_workers(rt)
    report.trimmed = rt.db.trim_changes()
    current = now()
    rows = rt.cache.rows("task")
    doomed: set[str] = set()

    done_horizon = current - timedelta(seconds=cfg.completed_task_timeout)
    completed = [r for r in rows if r.values["status"] in tasks.FINISHED]
    for r in completed:
        if r.values["finished"] < done_horizon:
            doomed.add(r.ref)
    report.completed = len(doomed)

    pending_horizon = current - timedelta(seconds=cfg.pending_task_timeout)
    still_watched: dict[str, float] = {}
    for r in rows:
        if r.values["status"] != tasks.PENDING or r.values["created"] >= pending_horizon:
            continue
        progress = r.values["progress"]
        if state.pending_progress.get(r.ref) == progress:
            tasks.request_cancel(rt, r.ref)  # stop the backend work behind it
            doomed.add(r.ref)
            report.pending += 1
        else:
            still_watched[r.ref] = progress
    state.pending_progress = still_watched

    survivors = sorted(
        (r for r in completed if r.ref not in doomed), key=lambda r: r.values["finished"]
    )
    excess = len(survivors) - cfg.max_tasks
    if excess > 0:
        doomed.update(r.ref for r in survivors[:excess])
        report.excess = excess

    idle_horizon = current - timedelta(seconds=cfg.inactive_session_timeout)
    busy_sessions = _sessions_with_pending_tasks(rt, doomed)
    idle = [
        r.ref for r in rt.cache.rows("session")
        if r.values["last_active"] < idle_horizon and r.ref not in busy_sessions
    ]
    report.sessions = len(idle)

    with rt.db.write() as tx:
        for ref in doomed:
            if tx.exists("task", ref):
                tx.delete("task", ref)
        owners = tx.task_owners()
        tx.forget_task_owners([t for t in owners if t in doomed or rt.cache.get("task", t) is None])
        for ref in idle:
            if tx.exists("session", ref):
                tx.delete("session", ref)
    for ref in doomed:
        tasks.forget_cancel(rt, ref)
    if doomed or idle:
        log.info("GC: %s", report)
    return report


def _sessions_with_pending_tasks(rt: Runtime, doomed: set[str]) -> set[str]:
    with rt.db.write() as tx:
        owners = tx.task_owners()
    busy = set()
    for ref, (session, _) in owners.items():
        row = rt.cache.get("task", ref)
        if row is not None and ref not in doomed and row.values["status"] == tasks.PENDING:
            busy.add(session)
    return busy
