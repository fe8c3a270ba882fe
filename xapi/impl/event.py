"""event.*: from, inject, get_current_id and the legacy register/next/unregister."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from xapi import sessions
from xapi.context import Context
from xapi.errors import ApiError
from xapi.wire import I4
from xapi.events import (
    Event,
    Subscription,
    collect,
    format_token,
    parse_subscriptions,
    parse_token,
)

from . import implements

def _event_record(ctx: Context, ev: Event, timestamp: str) -> dict | None:
    record = {
        "id": str(ev.generation),
        "timestamp": timestamp,
        "class": ev.cls.lower(),
        "operation": ev.op,
        "ref": ev.ref,
    }
    if ev.op != "del":
        row = ctx.rt.cache.get(ev.cls, ev.ref)
        if row is None:
            return None
        record["snapshot"] = ctx.encode_record(ev.cls, row)
    return record


def _session_alive(ctx: Context) -> None:
    if not sessions.alive(ctx.rt, ctx.session):
        raise ApiError("SESSION_INVALID", ctx.session)


async def _wait_for_events(ctx: Context, sub: Subscription, since: int, timeout: float):
    """Block (without a thread) until ``sub`` has events after ``since`` or time runs out."""
    rt = ctx.rt
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(timeout, 0.0)
    classes = sub.all_classes
    while True:
        _session_alive(ctx)
        events, generation = collect(rt.cache, sub, since)
        if events or loop.time() >= deadline:
            return events, generation
        since = generation  # nothing for us up to here: never look at it again
        await rt.events.wait(generation, deadline - loop.time(), classes,
                             session=ctx.session, delayed=not sub.tasks_only)


def _batch(ctx: Context, sub: Subscription, events: list[Event], generation: int):
    """The encoded event.from reply; shared by every waiter that would get the same one."""
    key = (sub, tuple((e.generation, e.cls, e.ref, e.op) for e in events), generation, ctx.fmt)
    memo: dict = ctx.rt.extra.setdefault("event_batches", {})
    reply = memo.get(key)
    if reply is None:
        records = [r for r in (_event_record(ctx, ev, "0.0") for ev in events) if r is not None]
        counts = {cls.lower(): I4(ctx.rt.cache.count(cls)) for cls in sorted(sub.all_classes)}
        reply = ctx.encode_value({"events": records, "valid_ref_counts": counts,
                                  "token": format_token(generation)})
        if len(memo) >= 256:
            memo.clear()
        memo[key] = reply
    return reply


@implements("event.from", mode="async")
async def event_from(ctx: Context, classes: list[str], token: str, timeout: float):
    rt = ctx.rt
    sub = parse_subscriptions(rt.model, rt.cache, classes)
    since = parse_token(token)
    events, generation = await _wait_for_events(ctx, sub, since, timeout)
    return _batch(ctx, sub, events, generation)


@implements("event.inject")
def inject(ctx: Context, cls: str, ref: str):
    spec = ctx.rt.model.cls(cls)
    name = spec.name if spec is not None else cls
    if spec is None or name not in ctx.rt.cache.classes:
        raise ApiError("HANDLE_INVALID", cls, ref)
    with ctx.rt.db.write() as tx:
        if not tx.exists(name, ref):
            raise ApiError("HANDLE_INVALID", cls, ref)
        tx.touch(name, ref)
    return format_token(ctx.rt.cache.generation - 1)


@implements("event.get_current_id", mode="read")
def get_current_id(ctx: Context):
    return ctx.rt.cache.generation


# -- the legacy API: per-session registrations ------------------------------------------


@dataclass
class Registration:
    specs: set[str] = field(default_factory=set)
    cursor: int = 0


def _registrations(ctx: Context) -> dict[str, Registration]:
    return ctx.rt.extra.setdefault("event_registrations", {})


@implements("event.register", mode="async")
async def register(ctx: Context, classes: list[str]):
    parse_subscriptions(ctx.rt.model, ctx.rt.cache, classes)  # validate
    regs = _registrations(ctx)
    reg = regs.get(ctx.session)
    if reg is None:
        reg = regs[ctx.session] = Registration(cursor=ctx.rt.cache.generation)
    reg.specs.update(classes)
    return ""


@implements("event.unregister", mode="async")
async def unregister(ctx: Context, classes: list[str]):
    reg = _registrations(ctx).get(ctx.session)
    if reg is not None:
        reg.specs.difference_update(classes)
    return ""


@implements("event.next", mode="async")
async def next_(ctx: Context):
    regs = _registrations(ctx)
    reg = regs.get(ctx.session)
    if reg is None:
        raise ApiError("SESSION_NOT_REGISTERED", ctx.session)
    cache = ctx.rt.cache
    # A registration too far behind has lost events (xapi bounds its queue by size).
    if reg.cursor < cache.journal_floor or cache.generation - reg.cursor > ctx.rt.config.event_next_max_queue:
        reg.cursor = cache.generation
        raise ApiError("EVENTS_LOST")
    await asyncio.sleep(ctx.rt.config.event_next_delay)
    while True:
        sub = parse_subscriptions(ctx.rt.model, cache, sorted(reg.specs))
        events, generation = await _wait_for_events(ctx, sub, reg.cursor, 3600.0)
        reg.cursor = generation
        stamp = f"{time.time():.0f}."
        records = [r for r in (_event_record(ctx, ev, stamp) for ev in events) if r is not None]
        if records:
            return records
