"""A daemon's membership in a cluster: registration with the master, heartbeats, and
following the cluster map.

The daemon registers on first connection with its disk's uuid (so a restarted daemon gets its
old id back), the addresses it serves and its capacity; the master answers with its id, the
map and the ticket key (over mutual TLS when certificates are configured). Then two loops on
that connection: a heartbeat every `heartbeat` seconds, and a long-poll for the next map. If
the master goes away the daemon keeps serving with the map it has and reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from typing import Any

from shoal.client.connection import Connection
from shoal.cluster.map import ClusterMap, MapDiff, apply
from shoal.errors import ShoalError
from shoal.proto.frames import Op

log = logging.getLogger("shoal.daemon")

POLL_WAIT = 30.0


class Membership:
    def __init__(
        self,
        master: tuple[str, int],
        info: Callable[[], dict[str, Any]],
        ssl_ctx: ssl.SSLContext | None = None,
    ) -> None:
        self.master, self.info, self.ssl = master, info, ssl_ctx
        self.id: int | None = None
        self.map = ClusterMap()
        self.ticket_key = b""
        self.heartbeat = 1.0
        self.registered = asyncio.Event()
        self.map_changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Heartbeats carry `figures()` (recovery and scrub counts); the reply's requests (a
        # scrub, a recovery pass) go to `on_reply`. `on_map` hears of every new epoch.
        self.figures: Callable[[], dict[str, Any]] | None = None
        self.on_reply: Callable[[dict[str, Any]], None] | None = None
        self.on_map: Callable[[ClusterMap, bool], None] | None = None  # (map, one epoch on)

    @property
    def epoch(self) -> int:
        return self.map.epoch

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        backoff = 0.2
        host, port = self.master
        while True:
            conn = None
            try:
                conn = await Connection.open(host, port, 10.0, ssl=self.ssl)
                reply, _ = await conn.request(Op.REGISTER, self.info())
                self.id = int(reply["id"])
                self.ticket_key = bytes(reply["ticket_key"])
                self.heartbeat = float(reply.get("heartbeat", 1.0))
                self._set(ClusterMap.from_dict(reply["map"]))
                if not self.registered.is_set():
                    log.info("registered with the master at %s:%d as daemon %d (epoch %d)",
                             host, port, self.id, self.epoch)  # fmt: skip
                self.registered.set()
                backoff = 0.2
                beat = asyncio.ensure_future(self._beat(conn))
                follow = asyncio.ensure_future(self._follow(conn))
                try:
                    done, _ = await asyncio.wait(
                        [beat, follow], return_when=asyncio.FIRST_COMPLETED
                    )
                    for t in done:
                        t.result()
                finally:
                    beat.cancel()
                    follow.cancel()
            except (OSError, ConnectionError, ShoalError, ssl.SSLError, TimeoutError) as exc:
                log.warning("master at %s:%d: %s: %s; retrying in %.1f s", host, port,
                            type(exc).__name__, exc, backoff)  # fmt: skip
            finally:
                if conn is not None:
                    conn.close()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _beat(self, conn: Connection) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            info = self.info()
            meta = {"id": self.id, "capacity": info.get("capacity", 0),
                    "used": info.get("used", 0)}  # fmt: skip
            if self.figures is not None:
                meta["recovery"] = self.figures()
            async with asyncio.timeout(max(5.0, 5 * self.heartbeat)):
                reply, _ = await conn.request(Op.HEARTBEAT, meta, epoch=self.epoch)
            if int(reply.get("epoch", 0)) > self.epoch:
                self.map_changed.set()  # (the follower fetches it)
            if self.on_reply is not None:
                self.on_reply(reply)

    async def _follow(self, conn: Connection) -> None:
        while True:
            async with asyncio.timeout(POLL_WAIT + 10):
                reply, _ = await conn.request(
                    Op.MAP, {"since": self.epoch, "wait": POLL_WAIT, "steps": True}
                )
            self._take(reply)

    def _take(self, reply: dict[str, Any]) -> None:
        if "map" in reply:
            self._set(ClusterMap.from_dict(reply["map"]))
        elif "diffs" in reply:  # every epoch, one by one
            for raw in reply["diffs"]:
                d = MapDiff.from_dict(raw)
                if d.base != self.epoch:
                    return
                self._set(apply(self.map, d))
        elif "diff" in reply:
            d = MapDiff.from_dict(reply["diff"])
            if d.base == self.epoch:
                self._set(apply(self.map, d))

    def _set(self, m: ClusterMap) -> None:
        changed, step = m.epoch != self.map.epoch, m.epoch == self.map.epoch + 1
        if changed:
            log.info("map epoch %d", m.epoch)
        self.map = m
        if changed and self.on_map is not None:
            self.on_map(m, step)
        self.map_changed.set()
        self.map_changed.clear()
