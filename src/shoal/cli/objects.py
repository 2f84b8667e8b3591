"""`shoal write|read|stat|rm|ls`: objects over the native protocol, to the cluster a client
config names (placement finds the daemons) or to one daemon (--storage-daemon).

What a small command costs is mostly what it imports: this module loads the client only,
and the client does not load numpy, the engine or the servers.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shoal.cli.common import (
    add_cluster_options,
    iso,
    nonneg,
    progress,
    run_async,
    say,
    show,
)
from shoal.config import find_config

if TYPE_CHECKING:
    from shoal.client import AsyncClient
    from shoal.client.cluster import ClusterClient

DEFAULT_POOL = "default"


def _remote(args: argparse.Namespace) -> AsyncClient | ClusterClient:
    """The client for a remote command: the daemon named by --storage-daemon (or
    $SHOAL_DAEMON), else the cluster a config names (placement finds the daemons), else the
    daemon at 127.0.0.1:4148."""
    from shoal.client import AsyncClient
    from shoal.client.cluster import ClusterClient

    address = args.storage_daemon or os.environ.get("SHOAL_DAEMON")
    if address:
        return AsyncClient(address)
    cfg = find_config(args)
    if cfg is None:
        return AsyncClient("127.0.0.1:4148")
    return ClusterClient(cfg.master, cfg.access_key, cfg.secret, ca=cfg.ca)


def cmd_write(args: argparse.Namespace) -> int:
    async def go() -> Any:
        async with _remote(args) as c:
            if args.data_literal is not None:
                return await c.put(args.pool, args.name, args.data_literal.encode())
            if args.file in (None, "-"):
                return await c.put(args.pool, args.name, sys.stdin.buffer.read())
            with open(args.file, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                with progress(size, f"write {args.name}") as advance:
                    return await c.put_file(args.pool, args.name, f, progress=advance)

    t0 = time.perf_counter()
    key = run_async(go())
    ms = (time.perf_counter() - t0) * 1e3
    say(args, f"wrote {args.pool}/{args.name}: {key.size} bytes in {ms:.1f} ms, {key}")
    return 0


def cmd_read(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()

    async def go() -> int:
        from shoal.client import AsyncClient

        async with _remote(args) as c:
            reader = None
            if not isinstance(c, AsyncClient) and args.offset == 0 and args.length is None:
                # A whole object from a cluster: its record and (stored whole, at most a
                # stripe) its bytes in one round trip, not a stat, another and a read.
                reader = await c.open(args.pool, args.name)
                info = reader.info
            else:
                info = await c.stat(args.pool, args.name)  # before a file is made for nothing
            total = info.size - args.offset if args.length is None else args.length
            out = open(args.output, "wb") if args.output else sys.stdout.buffer  # noqa: SIM115
            got = 0
            try:
                with progress(max(total, 0), f"read {args.name}") as advance:

                    def sink(piece: memoryview) -> None:
                        nonlocal got
                        out.write(piece)
                        got += len(piece)
                        advance(len(piece))

                    if reader is not None:
                        async with contextlib.aclosing(reader.pieces()) as pieces:
                            async for piece in pieces:
                                sink(piece)
                    else:
                        await c.get_to(
                            args.pool, args.name, sink, offset=args.offset, length=args.length
                        )
                out.flush()
            finally:
                if args.output:
                    out.close()
            return got

    got = run_async(go())
    ms = (time.perf_counter() - t0) * 1e3
    say(args, f"read {args.pool}/{args.name}: {got} bytes in {ms:.1f} ms")
    return 0


def cmd_remote_stat(args: argparse.Namespace) -> int:
    async def go() -> Any:
        async with _remote(args) as c:
            return await c.stat(args.pool, args.name)

    info = run_async(go())
    fields = {
        "pool": info.namespace,
        "name": info.name,
        "uuid": str(info.uuid),
        "size": info.size,
        "blake3": info.hash.hex() if info.hash else None,
        "version": info.version,
        "permanent": info.permanent,
        "refs": [r.hex() for r in info.refs],
        "modified": iso(info.mtime),
        "meta": dict(info.meta),
    }
    show(fields, args.json)
    return 0


def cmd_remote_rm(args: argparse.Namespace) -> int:
    async def go() -> None:
        async with _remote(args) as c:
            await c.delete(args.pool, args.name)

    run_async(go())
    say(args, f"removed {args.pool}/{args.name}")
    return 0


def cmd_remote_ls(args: argparse.Namespace) -> int:
    from shoal.client import AsyncClient

    def show(info: Any) -> None:
        if args.long:
            h = info.hash.hex()[:16] if info.hash else "-"
            print(f"{info.size:>14} {h:<16} v{info.version:<4} {info.name}")
        else:
            print(info.name)

    async def go() -> None:
        async with _remote(args) as c:
            if not isinstance(c, AsyncClient):  # a cluster: merged from every daemon
                async for info in c.list(args.pool, args.prefix):
                    if info.name > args.start_after:
                        show(info)
                return
            after: str | None = args.start_after
            while after is not None:
                page, after = await c.list(args.pool, args.prefix, start_after=after)
                for info in page:
                    show(info)

    run_async(go())
    return 0


def register(top: Any) -> None:
    def remote(
        name: str, fn: Callable[[argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        v: argparse.ArgumentParser = top.add_parser(name, help=help, description=help)
        v.add_argument(
            "--storage-daemon",
            metavar="HOST:PORT",
            help="talk to this daemon directly (default: $SHOAL_DAEMON; else the cluster of "
            "the client config, placement finding the daemons; else 127.0.0.1:4148)",
        )
        v.add_argument("--pool", default=DEFAULT_POOL, help="the pool (namespace)")
        add_cluster_options(v)
        v.set_defaults(func=fn)
        return v

    v = remote("write", cmd_write, "store an object")
    v.add_argument("name", help="the object's name")
    g = v.add_mutually_exclusive_group()
    g.add_argument("--data-file", "-f", dest="file", help="read the data from FILE ('-': stdin)")
    g.add_argument("--data-literal", help="the data itself, as text")
    v = remote("read", cmd_read, "read an object (or a range of it)")
    v.add_argument("name")
    v.add_argument("--offset", type=nonneg, default=0)
    v.add_argument("--length", type=nonneg)
    v.add_argument("-o", "--output", help="write to FILE instead of stdout")
    v = remote("stat", cmd_remote_stat, "show an object's size, hash, version and references")
    v.add_argument("name")
    v.add_argument("--json", action="store_true")
    v = remote("rm", cmd_remote_rm, "delete an object")
    v.add_argument("name")
    v = remote("ls", cmd_remote_ls, "list a pool's objects by name prefix")
    v.add_argument("prefix", nargs="?", default="")
    v.add_argument("--start-after", default="")
    v.add_argument("-l", "--long", action="store_true")
