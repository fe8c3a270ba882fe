"""Celery's Redis transport with one Redis client object per channel.

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
