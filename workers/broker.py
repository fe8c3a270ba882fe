"""Celery's Redis transport with one Redis client object per channel, and what
the host's queue holds (``queued_task_ids``).

kombu's Redis channel builds a new ``redis.Redis`` object for every
synchronous command it sends: each publish, and the delivery and
acknowledgement records of its ack emulation (two per task).  The
connection comes from the channel's pool either way; building the client
object (its table of response callbacks) costs more than the command.  A
client is thread-safe over its pool, so one per channel, made again when the
channel replaces its pool, does the same work.  ``make_app`` uses this
transport for ``redis://`` brokers.
"""

from __future__ import annotations

import json

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _sync_client = None

    def _create_client(self, asynchronous: bool = False):
        if asynchronous:
            return super()._create_client(asynchronous=True)
        client = self._sync_client
        if client is None or client.connection_pool is not self.pool:
            client = self._sync_client = super()._create_client()
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel


def queued_task_ids(app, queue: str) -> set[str]:
    """The Celery task ids of the messages waiting in ``queue``: a Redis list per
    priority step, each message a JSON document whose headers carry the id."""
    ids: set[str] = set()
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        for priority in channel.priority_steps:
            for raw in channel.client.lrange(channel._q_for_pri(queue, priority), 0, -1):
                try:
                    ids.add(json.loads(raw)["headers"]["id"])
                except (ValueError, KeyError, TypeError):
                    continue  # not a Celery message
    return ids
