"""The gateway side of the `shoal` command: `shoal http` (minikeyvalue's API over a pool),
`shoal s3` (S3's API over a pool) and `shoal index` (the name index behind their listings)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from shoal.cli.common import (
    add_cluster_options,
    cluster_client,
    need_config,
    progress,
    run_async,
)
from shoal.config import DEFAULT_DATA
from shoal.errors import InvalidArgument

DEFAULT_INDEX = os.path.join(DEFAULT_DATA, "index.db")
INDEX_HELP = (
    "the name index: sqlite:///PATH (or a path), redis://HOST:PORT[/DB], "
    f"postgresql://USER@HOST:PORT/DB (default: ./{DEFAULT_INDEX})"
)


def _client(args: argparse.Namespace) -> Any:
    return cluster_client(need_config(args))


async def _pool_exists(client: Any, pool: str) -> None:
    await client.connect()
    if pool not in client.map.pools:
        await client.refresh()
    if pool not in client.map.pools:
        raise InvalidArgument(f"there is no pool {pool!r} (`shoal pool create {pool}` makes it)")


def _serve(
    args: argparse.Namespace,
    make_app: Callable[[Any, Any, Any], Any],
    listening: Callable[[str, int, Any], str],
) -> int:
    """Serve a gateway until SIGTERM or SIGINT: its index opened (a bad URL refused before
    anything starts), its pool checked, the app `make_app(client, index, request_log)` served
    on --host:--port, and the line `listening(host, port, index)` printed once it listens."""
    from shoal.asgi import start_http, stop_http
    from shoal.daemon.main import run_service
    from shoal.gateway.common import RequestLog
    from shoal.index import open_index
    from shoal.memory import keep_heap

    index = open_index(args.index)
    keep_heap()
    client = _client(args)
    request_log = None if args.log == "off" else RequestLog(args.log)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        server, app = None, None  # type: Any, Any
        try:
            await index.open()
            await _pool_exists(client, args.pool)
            app = make_app(client, index, request_log)
            server, (host, port) = await start_http(app, f"{args.host}:{args.port}")
            print(listening(host, port, index), flush=True)
            await stop.wait()
        finally:
            if server is not None:
                await stop_http(server)
            if hasattr(app, "aclose"):
                await app.aclose()
            await client.close()
            await index.close()
            if request_log is not None:
                request_log.close()

    return run_service(serve())


def cmd_http(args: argparse.Namespace) -> int:
    from shoal.gateway.auth import KeyCheck, auth_required
    from shoal.gateway.http import HttpGateway

    keys = auth_required(args.host, args.no_auth)

    def make_app(client: Any, index: Any, request_log: Any) -> Any:
        return HttpGateway(
            client, index, args.pool, redirect=args.redirect, request_log=request_log,
            idle_timeout=args.idle_timeout,
            auth=KeyCheck(client.authenticate, args.pool) if keys else None,
        )  # fmt: skip

    def listening(host: str, port: int, index: Any) -> str:
        mode = "redirect" if args.redirect else "proxy"
        who = "keys required" if keys else "open: no keys"
        return (f"shoal http listening on {host}:{port} (pool {args.pool}, index "
                f"{index.url}, GET by {mode}, {who})")  # fmt: skip

    return _serve(args, make_app, listening)


def cmd_s3(args: argparse.Namespace) -> int:
    from shoal.gateway.s3 import S3Gateway
    from shoal.gateway.s3keys import S3Keys

    def make_app(client: Any, index: Any, request_log: Any) -> Any:
        return S3Gateway(
            client, index, args.pool, S3Keys.of(client), region=args.region,
            domain=args.domain, request_log=request_log, idle_timeout=args.idle_timeout,
            multipart_expiry=args.multipart_expiry * 3600,
        )  # fmt: skip

    def listening(host: str, port: int, index: Any) -> str:
        vhost = f", virtual hosts BUCKET.{args.domain}" if args.domain else ""
        return (f"shoal s3 listening on {host}:{port} (pool {args.pool}, index {index.url}, "
                f"region {args.region}{vhost})")  # fmt: skip

    return _serve(args, make_app, listening)


def cmd_index(args: argparse.Namespace) -> int:
    from shoal.index import Entry, of_object, open_index

    index = open_index(args.index)
    client = _client(args)

    async def go() -> int:
        try:
            await index.open()
            await index.ping()
            if args.action == "drop":
                await index.drop(args.pool)
                print(f"{index.url}: pool {args.pool} forgotten")
                return 0
            await _pool_exists(client, args.pool)
            started, seen = time.time(), 0

            async def items() -> AsyncIterator[tuple[str, Entry]]:
                nonlocal seen
                with progress(None, f"rebuild {args.pool}", unit="keys") as advance:
                    async for info in client.list(args.pool):
                        seen += 1
                        advance(1)
                        yield info.name, of_object(info.size, info.hash, info.version,
                                                   info.mtime, info.meta)  # fmt: skip

            written, removed = await index.rebuild(args.pool, items(), started)
            print(f"{index.url}: pool {args.pool}: {written} keys from the daemons, "
                  f"{removed} stale rows removed")  # fmt: skip
            return 0
        finally:
            await client.close()
            await index.close()

    rc: int = run_async(go())
    return rc


def register(top: Any) -> None:
    v = top.add_parser("http", help="serve minikeyvalue's HTTP API over a pool (port 3000)")
    v.add_argument("--port", type=int, default=3000)
    v.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    v.add_argument("--pool", default="default", help="the pool whose objects it serves")
    v.add_argument("--index", default=DEFAULT_INDEX, help=INDEX_HELP)
    v.add_argument(
        "--redirect", action="store_true",
        help="answer a GET of an object stored whole with a 302 to a daemon's read endpoint "
        "(minikeyvalue's way) instead of proxying the bytes",
    )  # fmt: skip
    v.add_argument(
        "--idle-timeout", type=float, default=60.0, metavar="SECONDS",
        help="a client that sends nothing of its body (408), or takes nothing of a reply, "
        "for this long is cut off",
    )  # fmt: skip
    v.add_argument(
        "--log", default="-",
        help="the request log, one JSON line per request: a file, - (stderr) or off",
    )  # fmt: skip
    v.add_argument(
        "--no-auth", action="store_true",
        help="serve without keys on an address other than loopback (on loopback it always "
        "does; elsewhere each request needs a key with the right on the pool: curl -u "
        "ACCESS:SECRET)",
    )  # fmt: skip
    add_cluster_options(v)
    v.set_defaults(func=cmd_http)

    v = top.add_parser("s3", help="serve S3's API over a pool (port 9000)")
    v.add_argument("--port", type=int, default=9000)
    v.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    v.add_argument("--pool", default="default", help="the pool whose objects it serves")
    v.add_argument("--index", default=DEFAULT_INDEX, help=INDEX_HELP)
    v.add_argument(
        "--domain", help="serve virtual-host-style requests too: Host BUCKET.DOMAIN",
    )  # fmt: skip
    v.add_argument("--region", default="us-east-1", help="the region clients sign for")
    v.add_argument(
        "--multipart-expiry", type=float, default=24.0, metavar="HOURS",
        help="a multipart upload neither completed nor aborted for this long is cleaned up",
    )  # fmt: skip
    v.add_argument(
        "--idle-timeout", type=float, default=60.0, metavar="SECONDS",
        help="a client that sends nothing of its body, or takes nothing of a reply, for this "
        "long is cut off",
    )  # fmt: skip
    v.add_argument(
        "--log", default="-",
        help="the request log, one JSON line per request: a file, - (stderr) or off",
    )  # fmt: skip
    add_cluster_options(v)
    v.set_defaults(func=cmd_s3)

    v = top.add_parser("index", help="the name index behind the gateways' listings")
    v.add_argument(
        "action", choices=["rebuild", "drop"],
        help="rebuild: from every daemon's key store; drop: forget the pool's entries",
    )  # fmt: skip
    v.add_argument("--pool", default="default")
    v.add_argument("--index", default=DEFAULT_INDEX, help=INDEX_HELP)
    add_cluster_options(v)
    v.set_defaults(func=cmd_index)
