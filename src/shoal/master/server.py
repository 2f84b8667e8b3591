"""The master: the authority on the cluster map, the keys, and who is up.

Two listeners speak the native frames (requests without payloads): the peer address, where
storage daemons register and heartbeat (mutual TLS when certificates are given), and the
client address, where clients authenticate and follow the map, and admins change it (TLS).

Every change of the map is a new epoch, written to the state store before anyone hears of it.
A daemon that misses heartbeats for `down_after` seconds is marked down; one down for
`out_after` more is marked out (its data is to be re-replicated elsewhere); one that comes
back is marked up, and in again if the master had taken it out. Daemons and clients follow
the map by long-polling MAP with the epoch they hold: the answer comes when there is a newer
one (as a diff when the master still has their epoch), or after `wait` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import itertools
import logging
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any, cast

import msgpack

from shoal.cluster.auth import (
    Ticket,
    check_rights,
    issue,
    s3_sign_v2,
    s3_signing_key,
    secret_matches,
    verify,
)
from shoal.cluster.map import FAILURE_DOMAINS, WEIGHT_ONE, ClusterMap, DaemonInfo, Pool, diff
from shoal.cluster.placement import PoolPlacement, shortfall
from shoal.errors import Forbidden, InvalidArgument, NotAuthenticated, NotFound, ShoalError
from shoal.master.recovery import RecoveryReports
from shoal.master.state import MasterState
from shoal.proto.frames import (
    FrameEnd,
    FrameReader,
    FrameStart,
    Op,
    ProtocolError,
    encode,
    encode_error,
)

MAX_STEPS = 64  # a daemon behind by more gets the map whole
log = logging.getLogger("shoal.master")

PEER, CLIENT = "peer", "client"
MAX_WAIT = 60.0
GiB = 1 << 30


def weight_for(capacity: int) -> int:
    """A daemon's weight: its capacity in GiB, 16.16 fixed point (at least 1)."""
    return max(1, capacity * WEIGHT_ONE // GiB)


class Master:
    def __init__(
        self,
        state: MasterState,
        *,
        heartbeat: float = 1.0,
        down_after: float = 6.0,
        out_after: float = 60.0,
        ticket_ttl: float = 3600.0,
        failure_domain: str = "host",
    ) -> None:
        if failure_domain not in FAILURE_DOMAINS:
            raise InvalidArgument(
                f"failure domain must be one of {', '.join(FAILURE_DOMAINS)}, "
                f"not {failure_domain!r}"
            )
        self.failure_domain = failure_domain  # of a pool made without one
        self.state = state
        self.map = state.latest()
        self.heartbeat, self.down_after, self.out_after = heartbeat, down_after, out_after
        self.ticket_ttl = ticket_ttl
        self.ticket_key = state.ticket_key
        now = time.monotonic()
        self.last_seen = {i: now for i in self.map.daemons}  # a restarted master gives grace
        self.registered_at: dict[int, float] = {}  # (wall clock) a daemon's last registration
        self.down_since = {i: now for i, d in self.map.daemons.items() if not d.up}
        self.auto_out: set[int] = set()
        self.usage: dict[int, tuple[int, int]] = {}  # id -> (capacity, used), from heartbeats
        self.recovery = RecoveryReports()
        saved = state.setting("requests")  # (so that `shoal scrub` after a restart is new)
        if saved:
            self.recovery.requests.update(msgpack.unpackb(saved, raw=False))
        self.changed = asyncio.Condition()
        self._listeners: list[socket.socket] = []
        self._accepting: list[asyncio.Task[None]] = []
        self._handshakes: set[asyncio.Task[None]] = set()
        self._watch: asyncio.Task[None] | None = None
        self._conns: set[_Conn] = set()

    async def start(
        self, peer: tuple[str, int], client: tuple[str, int],
        peer_ssl: ssl.SSLContext | None = None, client_ssl: ssl.SSLContext | None = None,
    ) -> tuple[tuple[str, int], tuple[str, int]]:  # fmt: skip
        out = []
        for (host, port), role, ctx in ((peer, PEER, peer_ssl), (client, CLIENT, client_ssl)):
            sock = socket.create_server((host, port), backlog=512)
            sock.setblocking(False)
            self._listeners.append(sock)
            self._accepting.append(asyncio.ensure_future(self._accept_loop(sock, role, ctx)))
            name = sock.getsockname()
            out.append((name[0], name[1]))
        self._watch = asyncio.ensure_future(self._watch_loop())
        return out[0], out[1]

    async def _accept_loop(
        self, sock: socket.socket, role: str, ctx: ssl.SSLContext | None
    ) -> None:
        """Accept connections one by one (not create_server: a refused TLS handshake must be
        seen, to be logged)."""
        loop = asyncio.get_running_loop()
        while True:
            conn, addr = await loop.sock_accept(sock)
            task = asyncio.ensure_future(self._connect(conn, addr, role, ctx))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _connect(
        self, conn: socket.socket, addr: Any, role: str, ctx: ssl.SSLContext | None
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                functools.partial(_Conn, self, role), conn, ssl=ctx,
                ssl_handshake_timeout=10.0 if ctx else None,
            )  # fmt: skip
        except (OSError, ssl.SSLError, ConnectionError, TimeoutError) as exc:
            log.warning("%s connection from %s:%s refused: TLS handshake failed: %s",
                        role, addr[0], addr[1], exc)  # fmt: skip
            conn.close()

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        for t in [*self._accepting, *self._handshakes]:
            t.cancel()
        await asyncio.gather(*self._accepting, *self._handshakes, return_exceptions=True)
        for sock in self._listeners:
            sock.close()
        for c in list(self._conns):
            c.close()

    # -- the map -------------------------------------------------------------------------

    async def commit(self, new: ClusterMap, why: str) -> None:
        """Make `new` the map: on disk first, then announced."""
        self.state.save(new)
        self.map = new
        log.info("epoch %d: %s", new.epoch, why)
        async with self.changed:
            self.changed.notify_all()

    async def _watch_loop(self) -> None:
        while True:
            await asyncio.sleep(max(0.05, min(self.down_after, self.out_after) / 8))
            now = time.monotonic()
            m, why = self.map, []
            for i, d in sorted(m.daemons.items()):
                if d.up and now - self.last_seen.get(i, now) > self.down_after:
                    m = m.with_daemon(_replace(d, up=False))
                    self.down_since[i] = now
                    why.append(f"daemon {i} down (no heartbeat for {self.down_after:g} s)")
                elif not d.up and d.in_ and now - self.down_since.get(i, now) > self.out_after:
                    m = m.with_daemon(_replace(d, in_=False))
                    self.auto_out.add(i)
                    why.append(f"daemon {i} out (down for {self.out_after:g} s)")
            if why:
                await self.commit(_one_epoch(self.map, m), "; ".join(why))

    # -- requests --------------------------------------------------------------------------

    async def handle(self, role: str, op: int, meta: dict[str, Any]) -> dict[str, Any]:
        if op == Op.PING:
            return {"pong": True, "epoch": self.map.epoch}
        if op == Op.MAP:
            if role == CLIENT:  # a client must have proven its key (daemons: by their TLS)
                verify(self.ticket_key, meta.get("ticket"))
            return await self._map_request(meta)
        if role == PEER:
            if op == Op.REGISTER:
                return await self._register(meta)
            if op == Op.HEARTBEAT:
                return await self._heartbeat(meta)
        elif op == Op.AUTH:
            reply = self._auth(meta)
            if "since" in meta:  # and the map, in the same trip (a client that connects)
                reply.update(await self._map_request({"since": meta["since"]}))
            return reply
        elif op == Op.ADMIN:
            ticket = verify(self.ticket_key, meta.get("ticket"))
            return await self._admin(ticket, str(meta.get("cmd", "")), meta.get("args") or {})
        raise InvalidArgument(f"operation {op} is not served on the master's {role} address")

    async def _map_request(self, meta: dict[str, Any]) -> dict[str, Any]:
        since = int(meta.get("since", -1))
        wait = min(float(meta.get("wait", 0)), MAX_WAIT)
        if self.map.epoch <= since and wait > 0:
            async with self.changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self.changed.wait_for(lambda: self.map.epoch > since), wait
                    )
        m = self.map
        if m.epoch <= since:
            return {"epoch": m.epoch}
        if meta.get("steps") and since >= 0 and m.epoch - since <= MAX_STEPS:
            # (a daemon sees every epoch: whether it held a PG all along depends on each)
            maps = [self.state.map_at(e) for e in range(since, m.epoch)] + [m]
            if all(x is not None for x in maps):
                steps = [diff(a, b).to_dict() for a, b in itertools.pairwise(maps)]  # type: ignore[arg-type]
                return {"epoch": m.epoch, "diffs": steps}
        old = self.state.map_at(since) if since >= 0 else None
        if old is not None:
            return {"epoch": m.epoch, "diff": diff(old, m).to_dict()}
        return {"epoch": m.epoch, "map": m.to_dict()}

    async def _register(self, meta: dict[str, Any]) -> dict[str, Any]:
        try:
            uuid, address, host = str(meta["uuid"]), str(meta["address"]), str(meta["host"])
            capacity, used = int(meta.get("capacity", 0)), int(meta.get("used", 0))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"registration needs uuid, address and host ({exc!r})") from None
        m = self.map
        daemon_id = self.state.daemon_id(uuid, m.next_daemon_id())
        old = m.daemons.get(daemon_id)
        back_in = old is not None and not old.in_ and daemon_id in self.auto_out
        new = DaemonInfo(
            daemon_id, address, host,
            old.weight if old is not None else weight_for(capacity),
            True, True if old is None or back_in else old.in_,
            str(meta.get("peer_address", "")), str(meta.get("http_address", "")), capacity, used,
            m.epoch + 1,  # (every registration is a new start: a new epoch, see below)
        )  # fmt: skip
        self.last_seen[daemon_id] = time.monotonic()
        self.registered_at[daemon_id] = time.time()
        self.usage[daemon_id] = (capacity, used)
        self.auto_out.discard(daemon_id)
        # Always a new epoch, even for a daemon restarted before it was seen down: its copies
        # are current again only from then (up_from), and versions it hands out from then on
        # (at least epoch << 24) are above any it handed out before.
        what = ("registered" if old is None else "up again" if not old.up
                else "changed" if _identity(old) != _identity(new)
                else "registered again")  # fmt: skip
        await self.commit(m.with_daemon(new), f"daemon {daemon_id} ({address}) {what}")
        return {
            "id": daemon_id, "epoch": self.map.epoch, "map": self.map.to_dict(),
            "ticket_key": self.ticket_key, "heartbeat": self.heartbeat,
        }  # fmt: skip

    async def _heartbeat(self, meta: dict[str, Any]) -> dict[str, Any]:
        daemon_id = int(meta.get("id", -1))
        d = self.map.daemons.get(daemon_id)
        if d is None:
            raise NotFound(f"daemon {daemon_id} is not in the map: register again")
        self.last_seen[daemon_id] = time.monotonic()
        self.usage[daemon_id] = (int(meta.get("capacity", 0)), int(meta.get("used", 0)))
        if isinstance(meta.get("recovery"), dict):
            self.recovery.report(daemon_id, meta["recovery"])
        if not d.up:
            back_in = not d.in_ and daemon_id in self.auto_out
            self.auto_out.discard(daemon_id)
            new = _replace(d, up=True, in_=True if back_in else d.in_, up_from=self.map.epoch + 1)
            await self.commit(self.map.with_daemon(new), f"daemon {daemon_id} up again")
        return {"epoch": self.map.epoch, **self.recovery.requests}

    def _auth(self, meta: dict[str, Any]) -> dict[str, Any]:
        access, secret = str(meta.get("access_key", "")), str(meta.get("secret", ""))
        found = self.state.key(access)
        if found is None or not secret_matches(secret, found[0]):
            log.warning("authentication refused for key %r", access)
            raise NotAuthenticated("unknown access key or wrong secret")
        if not found.s3:  # (a key made before the master kept secrets: from now on it has)
            self.state.seal_secret(access, secret)
            log.info("key %s: its secret is kept from now on (S3-capable)", access)
        ticket = issue(self.ticket_key, access, found.rights, self.ticket_ttl)
        return {"ticket": ticket, "ttl": self.ticket_ttl, "epoch": self.map.epoch}

    # -- admin -----------------------------------------------------------------------------

    async def _admin(self, t: Ticket, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        handler = _ADMIN.get(cmd)
        if handler is None:
            raise InvalidArgument(f"unknown admin command {cmd!r}")
        if cmd in _GATEWAY and not t.allows("*", "a") and not t.allows("*", "g"):
            log.warning("gateway command %s refused for key %s", cmd, t.access_key)
            raise Forbidden(
                f"key {t.access_key} may not check S3 signatures (it needs g on '*': "
                "shoal key create --rights '*=g', or an admin key)"
            )
        if (
            cmd not in _GATEWAY
            and not t.allows("*", "a")
            and not (cmd in ("status", "pool_ls") and t.rights)
        ):
            log.warning("admin command %s refused for key %s", cmd, t.access_key)
            raise Forbidden(f"key {t.access_key} is not an admin key")
        out: dict[str, Any] = await handler(self, args)
        return out

    async def pool_create(self, a: dict[str, Any]) -> dict[str, Any]:
        """A new pool (its failure domain the master's `failure_domain` unless given).

        Refused unless it can be placed in full now: `replicas` daemons on distinct failure
        domains (hosts, or daemons) among the daemons it may use (those it names, or all)
        that are registered and in. The master cannot know which daemons are still to come,
        so the rule is about the cluster as it is, and it is `replicas`, not min_size: a pool
        made on fewer domains would keep fewer copies than it was made for, or (below
        min_size) take no writes at all, and say so only in `shoal status`. Whoever builds a
        cluster by hand makes pools once its daemons have registered (`shoal daemon ls`),
        and a refused `pool create` can simply be run again then; `shoal up`'s master, whose
        daemons all run on one host, makes pools with failure domain daemon by default. A
        pool that loses failure domains later (a host taken out) stays, short: `status`
        says why."""
        m = self.map
        name = str(a.get("name", ""))
        if name in m.pools:
            raise InvalidArgument(f"pool {name!r} exists")
        replicas = int(a.get("replicas", 3))
        daemons = tuple(sorted({int(x) for x in a.get("daemons") or ()}))
        unknown = [i for i in daemons if i not in m.daemons]
        if unknown:
            raise InvalidArgument(f"no daemon {', '.join(map(str, unknown))} (`shoal daemon ls`)")
        pool = Pool(
            m.next_pool_id(), name, replicas,
            int(a.get("min_size") or max(1, replicas - replicas // 2)),
            int(a.get("pg_num", 128)), str(a.get("failure_domain") or self.failure_domain),
            daemons,
        )  # fmt: skip
        short = shortfall(m, pool)
        if short is not None:
            raise InvalidArgument(f"pool {name}: {short.why()}; {short.remedy()}")
        await self.commit(m.with_pool(pool), f"pool {name} created")
        return {"pool": pool.to_dict(), "epoch": self.map.epoch}

    async def pool_rm(self, a: dict[str, Any]) -> dict[str, Any]:
        name = str(a.get("name", ""))
        await self.commit(self.map.without_pool(name), f"pool {name} removed")
        return {"epoch": self.map.epoch}

    async def pool_ls(self, a: dict[str, Any]) -> dict[str, Any]:
        return {"pools": [p.to_dict() for _, p in sorted(self.map.pools.items())]}

    async def daemon_ls(self, a: dict[str, Any]) -> dict[str, Any]:
        out = []
        for i, d in sorted(self.map.daemons.items()):
            cap, used = self.usage.get(i, (d.capacity, d.used))
            out.append({**d.to_dict(), "capacity": cap, "used": used})
        return {"daemons": out, "epoch": self.map.epoch}

    async def daemon_set(self, a: dict[str, Any], **change: Any) -> dict[str, Any]:
        d = self.map.daemon(int(a.get("id", -1)))
        self.auto_out.discard(d.id)
        if all(getattr(d, k) == v for k, v in change.items()):
            return {"epoch": self.map.epoch}
        what = ", ".join(f"{k.rstrip('_')}={v}" for k, v in change.items())
        await self.commit(self.map.with_daemon(_replace(d, **change)), f"daemon {d.id}: {what}")
        return {"epoch": self.map.epoch}

    async def daemon_out(self, a: dict[str, Any]) -> dict[str, Any]:
        return await self.daemon_set(a, in_=False)

    async def daemon_in(self, a: dict[str, Any]) -> dict[str, Any]:
        return await self.daemon_set(a, in_=True)

    async def daemon_down(self, a: dict[str, Any]) -> dict[str, Any]:
        """Mark a daemon down now, without waiting --down-after for its heartbeats: its
        supervisor saw its process end (`shoal up` does) at `dead_at` (wall clock); not if it
        has registered again since. A daemon that is in fact alive is up again at its next
        heartbeat."""
        d = self.map.daemon(int(a.get("id", -1)))
        dead_at = float(a.get("dead_at") or 0)
        if not d.up or self.registered_at.get(d.id, 0.0) > dead_at > 0:
            return {"epoch": self.map.epoch}  # (down already, or started again since)
        self.down_since[d.id] = time.monotonic()
        why = str(a.get("why") or "its process ended")
        await self.commit(
            self.map.with_daemon(_replace(d, up=False)), f"daemon {d.id} down ({why})"
        )
        return {"epoch": self.map.epoch}

    async def daemon_reweight(self, a: dict[str, Any]) -> dict[str, Any]:
        w = float(a.get("weight", 0))
        if not 0 <= w <= 1 << 15:
            raise InvalidArgument(f"a weight is 0..32768, not {w}")
        return await self.daemon_set(a, weight=int(w * WEIGHT_ONE))

    async def daemon_rm(self, a: dict[str, Any]) -> dict[str, Any]:
        d = self.map.daemon(int(a.get("id", -1)))
        if d.in_ or d.up:
            raise InvalidArgument(
                f"daemon {d.id} is {d.state}: take it out (shoal daemon out {d.id}) and stop it "
                "before removing it"
            )
        await self.commit(self.map.without_daemon(d.id), f"daemon {d.id} removed")
        self.state.forget_daemon(d.id)
        self.recovery.forget(d.id)
        return {"epoch": self.map.epoch}

    async def key_create(self, a: dict[str, Any]) -> dict[str, Any]:
        rights = check_rights(dict(a.get("rights") or {}))
        access, secret = self.state.create_key(rights, str(a.get("comment", "")))
        return {"access_key": access, "secret": secret, "rights": rights}

    async def key_ls(self, a: dict[str, Any]) -> dict[str, Any]:
        return {"keys": self.state.keys()}

    async def key_rm(self, a: dict[str, Any]) -> dict[str, Any]:
        self.state.delete_key(str(a.get("access_key", "")))
        return {}

    # -- for S3 gateways (keys with g on "*", or admin keys) ------------------------------

    def _s3_key(self, a: dict[str, Any]) -> tuple[str, str, dict[str, str]]:
        """The access key asked about, its secret and rights; NotFound if the master has no
        such key, or does not know its secret (a key made before it kept them, that has not
        authenticated since: see shoal.master.keyring)."""
        access = str(a.get("access_key", ""))
        found = self.state.secret(access)
        if found is None:
            raise NotFound(f"no key {access}")
        secret, rights = found
        if secret is None:
            raise NotFound(
                f"key {access} was made before the master kept secrets for S3: it becomes "
                "S3-capable once used with shoal (any command), or make a new one (shoal key "
                "create)"
            )
        return access, secret, rights

    async def s3_signing_key(self, a: dict[str, Any]) -> dict[str, Any]:
        """SigV4: the signing key of key `access_key` for `date` (YYYYMMDD, UTC) and
        `region`, service s3, and the key's rights. The secret itself never leaves the
        master: a signing key checks (and makes) signatures of that day and region only.
        The date must be between 8 days ago and tomorrow (UTC): a presigned URL is good for
        up to 7 days after the day it was signed, and a client's clock may be ahead; a
        gateway cannot get signing keys for days to come."""
        access, secret, rights = self._s3_key(a)
        date, region = str(a.get("date", "")), str(a.get("region", ""))
        try:
            day = datetime.datetime.strptime(date, "%Y%m%d").date()
        except ValueError:
            raise InvalidArgument(f"a date is YYYYMMDD, not {date!r}") from None
        today = datetime.datetime.now(datetime.UTC).date()
        if not today - datetime.timedelta(days=8) <= day <= today + datetime.timedelta(days=1):
            raise InvalidArgument(f"no signing key for {date}: from 8 days ago to tomorrow only")
        if not region or len(region) > 128 or not region.isprintable() or "/" in region:
            raise InvalidArgument(f"not a region: {region!r}")
        key = s3_signing_key(secret, date, region, "s3")
        return {"access_key": access, "rights": rights, "signing_key": key}

    async def s3_sign_v2(self, a: dict[str, Any]) -> dict[str, Any]:
        """SigV2: the signature (HMAC-SHA1, 20 bytes) of `string_to_sign` (bytes, or text
        taken as UTF-8) with the secret of key `access_key`, and the key's rights."""
        access, secret, rights = self._s3_key(a)
        sts = a.get("string_to_sign", b"")
        if isinstance(sts, str):
            sts = sts.encode()
        if not isinstance(sts, bytes):
            raise InvalidArgument("string_to_sign is bytes or text")
        return {"access_key": access, "rights": rights, "signature": s3_sign_v2(secret, sts)}

    async def status(self, a: dict[str, Any]) -> dict[str, Any]:
        m = self.map
        ds = m.daemons.values()
        pools, states = [], {"active+clean": 0, "active+degraded": 0, "inactive": 0}
        problems = []  # one line each: why PGs are short, where placement is the cause
        up = {i for i, d in m.daemons.items() if d.up}
        for p in sorted(m.pools.values(), key=lambda p: p.name):
            table = PoolPlacement(m, p).table()
            for row in table:
                have = sum(1 for x in row if x >= 0 and int(x) in up)
                key = (
                    "active+clean" if have == p.replicas
                    else "active+degraded" if have >= p.min_size
                    else "inactive"
                )  # fmt: skip
                states[key] += 1
            pools.append(p.to_dict())
            short = shortfall(m, p)
            if short is not None:
                problems.append(short.status_line())
        usage = [self.usage.get(d.id, (d.capacity, d.used)) for d in ds if d.up]
        recovery, scrub = self.recovery.summary(m)
        return {
            "recovery": recovery,
            "scrub": scrub,
            "epoch": m.epoch,
            "daemons": len(m.daemons),
            "up": sum(1 for d in ds if d.up),
            "in": sum(1 for d in ds if d.in_),
            "pools": pools,
            "pgs": {k: v for k, v in states.items() if v},
            "problems": problems,
            "capacity": sum(c for c, _ in usage),
            "used": sum(u for _, u in usage),
        }

    async def scrub(self, a: dict[str, Any]) -> dict[str, Any]:
        pool = str(a.get("pool") or "")
        if pool:
            self.map.pool(pool)  # NotFound if there is none
        n = self.recovery.scrub(pool)
        self.state.set_setting("requests", msgpack.packb(self.recovery.requests))
        return {"scrub": n}

    async def rebalance(self, a: dict[str, Any]) -> dict[str, Any]:
        n = self.recovery.rebalance()
        self.state.set_setting("requests", msgpack.packb(self.recovery.requests))
        return {"rebalance": n}


_ADMIN: dict[str, Callable[[Master, dict[str, Any]], Any]] = {
    "scrub": Master.scrub,
    "rebalance": Master.rebalance,
    "pool_create": Master.pool_create,
    "pool_rm": Master.pool_rm,
    "pool_ls": Master.pool_ls,
    "daemon_ls": Master.daemon_ls,
    "daemon_out": Master.daemon_out,
    "daemon_in": Master.daemon_in,
    "daemon_down": Master.daemon_down,
    "daemon_rm": Master.daemon_rm,
    "daemon_reweight": Master.daemon_reweight,
    "key_create": Master.key_create,
    "key_ls": Master.key_ls,
    "key_rm": Master.key_rm,
    "status": Master.status,
    "s3_signing_key": Master.s3_signing_key,
    "s3_sign_v2": Master.s3_sign_v2,
}
_GATEWAY = ("s3_signing_key", "s3_sign_v2")  # commands that g on "*" allows


def _replace(d: DaemonInfo, **kw: Any) -> DaemonInfo:
    fields = d.to_dict()
    fields.update({("in" if k == "in_" else k): v for k, v in kw.items()})
    return DaemonInfo.from_dict(fields)


def _identity(d: DaemonInfo | None) -> tuple[Any, ...] | None:
    """What of a daemon's entry is worth a new epoch (not its usage figures)."""
    if d is None:
        return None
    return (d.address, d.host, d.weight, d.up, d.in_, d.peer_address, d.http_address)


def _one_epoch(base: ClusterMap, m: ClusterMap) -> ClusterMap:
    """Several changes made one after the other, as one new epoch."""
    return ClusterMap(base.epoch + 1, m.daemons, m.pools)


class _Conn(asyncio.Protocol):
    """One connection to the master: payload-less requests, answered in any order."""

    def __init__(self, master: Master, role: str) -> None:
        self.master, self.role = master, role
        self.reader = FrameReader(max_payload=0)
        self.transport: asyncio.Transport | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.master._conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.master._conns.discard(self)
        for t in self.tasks:
            t.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.reader.feed(data)
        except ProtocolError as exc:
            log.warning("closing a %s connection: %s", self.role, exc)
            self._write(encode_error(Op.PING, 0, exc))
            self.close()
            return
        for ev in events:
            if isinstance(ev, FrameStart):
                task = asyncio.ensure_future(self._answer(ev))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            elif not isinstance(ev, FrameEnd):  # a payload: the master takes none
                self.close()
                return

    async def _answer(self, ev: FrameStart) -> None:
        h = ev.header
        try:
            meta = await self.master.handle(self.role, h.op, ev.meta)
        except ShoalError as exc:
            if isinstance(exc, NotAuthenticated | Forbidden):
                log.warning("%s request %d refused: %s", self.role, h.op, exc)
            self._write(encode_error(h.op, h.request_id, exc, epoch=self.master.map.epoch))
            return
        except Exception as exc:
            log.exception("request with op %d failed", h.op)
            self._write(encode_error(h.op, h.request_id, exc, epoch=self.master.map.epoch))
            return
        self._write(encode(h.op, h.request_id, meta, response=True, epoch=self.master.map.epoch))

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
