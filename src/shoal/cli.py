"""The `shoal` command: parses arguments, calls the layers below, prints.

`shoal disk ...` is the operator's tool over one engine (one disk): format, put, get, stat, ls,
rm, write-at, ref, check, info. Errors are printed as one line on stderr with exit status 1;
bad usage exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, BinaryIO

from shoal import __version__
from shoal.cli_cluster import add_cluster_options, add_commands
from shoal.cli_gateway import add_commands as add_gateway_commands
from shoal.engine import ObjectStore, ObjKey, Record, check
from shoal.engine.objectstore import DEFAULT_NAMESPACE
from shoal.errors import InvalidArgument, ShoalError

if TYPE_CHECKING:
    from shoal.client import AsyncClient
    from shoal.client.cluster import ClusterClient

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_CHUNK = 4 << 20


def parse_size(text: str) -> int:
    """'4096', '64M', '1G', '1GiB', '10 TB' (binary units) -> bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([kmgtp]?)(?:i?b)?\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 4096, 64M, 1G)")
    return int(m.group(1)) * _UNITS[m.group(2)]


def _nonneg(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {v}")
    return v


def _ref_id(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 16:
        raise argparse.ArgumentTypeError(f"a reference id is 32 hex digits (16 bytes): {text!r}")
    return raw


# -- progress -------------------------------------------------------------------------------


@contextmanager
def progress(total: int | None, what: str) -> Iterator[Callable[[int], None]]:
    """An `advance(nbytes)` callable; a progress bar appears on a terminal once the transfer
    has taken a second, and nothing is drawn otherwise."""
    if not sys.stderr.isatty():
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task(what, total=total)
    started = time.monotonic()
    shown = False

    def advance(n: int) -> None:
        nonlocal shown
        bar.advance(task, n)
        if not shown and time.monotonic() - started > 1.0:
            bar.start()
            shown = True

    try:
        yield advance
    finally:
        if shown:
            bar.stop()


# -- the disk verbs -------------------------------------------------------------------------


def _open(args: argparse.Namespace) -> ObjectStore:
    return ObjectStore.open(args.device, args.keys)


def _record(store: ObjectStore, args: argparse.Namespace) -> Record:
    if args.uuid:
        return store.locate(args.name)
    return store.stat(args.name, namespace=args.namespace)


def _info(rec: Record) -> dict[str, object]:
    return {
        "namespace": rec.namespace,
        "name": rec.name,
        "uuid": str(rec.key.uuid),
        "size": rec.size,
        "blake3": rec.hash.hex() if rec.hash is not None else None,
        "version": rec.version,
        "permanent": rec.permanent,
        "refs": [r.hex() for r in rec.refs],
        "extents": len(rec.manifest.extents),
        "created": _iso(rec.ctime),
        "modified": _iso(rec.mtime),
    }


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


def _source(args: argparse.Namespace) -> tuple[BinaryIO | bytes, int | None]:
    if args.data_literal is not None:
        return args.data_literal.encode(), None
    if args.file is not None and args.file != "-":
        f = open(args.file, "rb")  # noqa: SIM115 - closed by the caller
        return f, os.fstat(f.fileno()).st_size
    return sys.stdin.buffer, None


def cmd_format(args: argparse.Namespace) -> int:
    with ObjectStore.format(
        args.device, args.keys, size=args.size, force=args.force, sparse=args.sparse
    ) as s:
        print(
            f"formatted {args.device}: {s.data_blocks} blocks of {s.block_size} bytes "
            f"({s.data_blocks * s.block_size / (1 << 30):.2f} GiB), "
            f"key store {s.keys.path}, device {s.device.superblock.device_uuid.hex()}"
        )
    return 0


def cmd_put(args: argparse.Namespace) -> int:
    src, size = _source(args)
    with _open(args) as store:
        if isinstance(src, bytes):
            key = store.put(
                src,
                namespace=args.namespace,
                name=args.name,
                refs=args.ref,
                permanent=args.permanent,
            )
        else:
            w = store.writer(
                args.namespace, args.name, size=size, refs=args.ref, permanent=args.permanent
            )
            with w, progress(size, "put") as advance:
                buf = bytearray(_CHUNK)
                while n := src.readinto(buf):  # type: ignore[attr-defined]
                    w.write(memoryview(buf)[:n])
                    advance(n)
                key = w.commit()
            if src is not sys.stdin.buffer:
                src.close()
    print(key.uuid if args.name is None else key)
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    with _open(args) as store:
        rec = _record(store, args)
        out = open(args.output, "wb") if args.output else sys.stdout.buffer  # noqa: SIM115
        try:
            length = rec.size - args.offset if args.length is None else args.length
            with progress(length, "get") as advance:
                for chunk in store.iter_read(
                    rec.name,
                    namespace=rec.namespace,
                    offset=args.offset,
                    length=args.length,
                    chunk=_CHUNK,
                ):
                    out.write(chunk)
                    advance(len(chunk))
            out.flush()
        finally:
            if args.output:
                out.close()
    return 0


def _show(fields: dict[str, object], as_json: bool, width: int = 10) -> None:
    if as_json:
        print(json.dumps(fields))
    else:
        for k, v in fields.items():
            print(f"{k:>{width}}: {v}")


def cmd_stat(args: argparse.Namespace) -> int:
    with _open(args) as store:
        _show(_info(_record(store, args)), args.json)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    with _open(args) as store:
        after, left = args.start_after, args.limit
        while left is None or left > 0:
            page = store.list(
                args.namespace, args.prefix, start_after=after, limit=min(1000, left or 1000)
            )
            for rec in page:
                if args.json:
                    print(json.dumps(_info(rec)))
                elif args.long:
                    h = rec.hash.hex()[:16] if rec.hash else "-"
                    print(f"{rec.size:>14} {h:<16} v{rec.version:<4} {rec.name}")
                else:
                    print(rec.name)
            if left is not None:
                left -= len(page)
            if len(page) < 1000:
                break
            after = page[-1].name
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    with _open(args) as store:
        name, ns = args.name, args.namespace
        if args.uuid:
            rec = store.locate(name)
            name, ns = rec.name, rec.namespace
        store.delete(name, namespace=ns, zero=args.zero, discard=args.discard)
    return 0


def cmd_write_at(args: argparse.Namespace) -> int:
    src, _ = _source(args)
    data = src if isinstance(src, bytes) else src.read()
    with _open(args) as store:
        key = store.write_at(
            args.name, args.offset, data, namespace=args.namespace, create=not args.no_create
        )
    print(key)
    return 0


def cmd_ref(args: argparse.Namespace) -> int:
    with _open(args) as store:
        if args.action == "add":
            refs = store.add_refs(args.name, args.ids, namespace=args.namespace)
        else:
            refs = store.remove_refs(args.name, args.ids, namespace=args.namespace)
            if not refs:
                print(f"{args.namespace}/{args.name}: no references left")
    for r in refs:
        print(r.hex())
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    with _open(args) as store:
        used = (store.data_blocks - store.free_blocks) * store.block_size
        with progress(used, "check") as advance:
            seen = 0

            def step(done: int) -> None:
                nonlocal seen
                advance(done - seen)
                seen = done

            report = check(store, progress=step)
    for p in report.problems:
        print(f"problem: {p}")
    print(
        f"{report.objects} objects, {report.bytes} bytes, {report.used_blocks} blocks used, "
        f"{report.free_blocks} free: "
        + ("ok" if report.ok else f"{len(report.problems)} problem(s)")
    )
    return 0 if report.ok else 1


def cmd_info(args: argparse.Namespace) -> int:
    with _open(args) as store:
        sb = store.device.superblock
        info = {
            "device": args.device,
            "keys": store.keys.path,
            "device_uuid": sb.device_uuid.hex(),
            "format_version": sb.version,
            "block_size": store.block_size,
            "data_blocks": store.data_blocks,
            "free_blocks": store.free_blocks,
            "namespaces": store.namespaces(),
        }
    _show(info, args.json, width=14)
    return 0


# -- object verbs over the native protocol ----------------------------------------------------


def _run_async(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def _say(args: argparse.Namespace, text: str) -> None:
    if args.verbose:
        print(text, file=sys.stderr)


def _remote(args: argparse.Namespace) -> AsyncClient | ClusterClient:
    """The client for a remote command: the daemon named by --storage-daemon (or
    $SHOAL_DAEMON), else the cluster a config names (placement finds the daemons), else the
    daemon at 127.0.0.1:4148."""
    from shoal.cli_cluster import find_config
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
    async def go() -> ObjKey:
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
    key = _run_async(go())
    ms = (time.perf_counter() - t0) * 1e3
    _say(args, f"wrote {args.pool}/{args.name}: {key.size} bytes in {ms:.1f} ms, {key}")
    return 0


def cmd_read(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()

    async def go() -> int:
        async with _remote(args) as c:
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

                    await c.get_to(
                        args.pool, args.name, sink, offset=args.offset, length=args.length
                    )
                out.flush()
            finally:
                if args.output:
                    out.close()
            return got

    got = _run_async(go())
    ms = (time.perf_counter() - t0) * 1e3
    _say(args, f"read {args.pool}/{args.name}: {got} bytes in {ms:.1f} ms")
    return 0


def cmd_remote_stat(args: argparse.Namespace) -> int:
    async def go() -> Any:
        async with _remote(args) as c:
            return await c.stat(args.pool, args.name)

    info = _run_async(go())
    fields = {
        "pool": info.namespace,
        "name": info.name,
        "uuid": str(info.uuid),
        "size": info.size,
        "blake3": info.hash.hex() if info.hash else None,
        "version": info.version,
        "permanent": info.permanent,
        "refs": [r.hex() for r in info.refs],
        "modified": _iso(info.mtime),
    }
    _show(fields, args.json)
    return 0


def cmd_remote_rm(args: argparse.Namespace) -> int:
    async def go() -> None:
        async with _remote(args) as c:
            await c.delete(args.pool, args.name)

    _run_async(go())
    _say(args, f"removed {args.pool}/{args.name}")
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

    _run_async(go())
    return 0


def cmd_daemon(args: argparse.Namespace) -> int:
    from shoal.cli_cluster import cmd_daemon_admin
    from shoal.daemon.main import DaemonConfig, run

    if args.action:
        return cmd_daemon_admin(args)
    if not args.dir:
        raise InvalidArgument("shoal daemon needs --dir (its folder)")
    return run(
        DaemonConfig(
            dir=args.dir,
            device=args.device,
            size=args.size,
            listen=args.listen,
            peer=args.peer_address,
            http=args.http,
            threads=args.threads,
            master=args.master,
            peer_cert=args.peer_cert,
            peer_key=args.peer_key,
            peer_ca=args.peer_ca_cert,
            host=args.host,
            recovery_interval=args.recovery_interval,
            recovery_rate=args.recovery_rate * 1e6,
            scrub_interval=args.scrub_interval,
        )
    )


# -- parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shoal", description="shoal: a distributed storage system")
    p.add_argument("-v", "--verbose", action="store_true", help="say more")
    p.add_argument("--version", action="version", version=f"shoal {__version__}")
    top = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def remote(
        name: str, fn: Callable[[argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        v = top.add_parser(name, help=help, description=help)
        v.add_argument(
            "--storage-daemon",
            metavar="HOST:PORT",
            help="talk to this daemon directly (default: $SHOAL_DAEMON; else the cluster of "
            "the client config, placement finding the daemons; else 127.0.0.1:4148)",
        )
        v.add_argument("--pool", default=DEFAULT_NAMESPACE, help="the pool (namespace)")
        add_cluster_options(v)
        v.set_defaults(func=fn)
        return v

    v = remote("write", cmd_write, "store an object on a daemon")
    v.add_argument("name", help="the object's name")
    g = v.add_mutually_exclusive_group()
    g.add_argument("--data-file", "-f", dest="file", help="read the data from FILE ('-': stdin)")
    g.add_argument("--data-literal", help="the data itself, as text")
    v = remote("read", cmd_read, "read an object (or a range of it) from a daemon")
    v.add_argument("name")
    v.add_argument("--offset", type=_nonneg, default=0)
    v.add_argument("--length", type=_nonneg)
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

    for alias in ("daemon", "file-store"):
        v = top.add_parser(
            alias,
            help="serve one disk; or ls, out, in, rm: the cluster's daemons"
            if alias == "daemon"
            else "= daemon",
        )
        v.add_argument("action", nargs="?", choices=["ls", "out", "in", "rm"], help="an admin verb")
        v.add_argument("ids", nargs="*", help="daemon ids (out, in, rm)")
        v.add_argument("--dir", help="the daemon's folder (key store, data file)")
        v.add_argument("--device", help="a formatted block device or file to hold the data")
        v.add_argument("--size", type=parse_size, default=4 << 30, help="size of a new data file")
        v.add_argument(
            "--listen",
            "--listen-address",
            dest="listen",
            default="127.0.0.1:4148",
            metavar="HOST:PORT",
            help="where clients connect (port 0: any free)",
        )
        v.add_argument("--peer-address", metavar="HOST:PORT", help="where other daemons connect")
        v.add_argument(
            "--http",
            metavar="HOST:PORT",
            help="read-only HTTP endpoint (default: the next port; 'off' for none)",
        )
        v.add_argument("--threads", type=int, default=16, help="engine threads")
        v.add_argument("--master", metavar="HOST:PORT", help="join the cluster of this master")
        v.add_argument("--peer-cert", "-peer-cert", help="this daemon's certificate (mTLS)")
        v.add_argument("--peer-key", "-peer-key", help="its private key")
        v.add_argument("--peer-ca-cert", "-peer-ca-cert", help="the cluster's CA certificate")
        v.add_argument("--host", help="failure domain name (default: this machine's hostname)")
        v.add_argument(
            "--recovery-interval",
            type=float,
            default=10.0,
            metavar="S",
            help="seconds between recovery passes (and on every map change)",
        )
        v.add_argument(
            "--recovery-rate",
            type=float,
            default=200.0,
            metavar="MB/S",
            help="at most this many MB/s fetched by recovery (0: no limit)",
        )
        v.add_argument(
            "--scrub-interval",
            type=float,
            default=86400.0,
            metavar="S",
            help="seconds between background scrubs",
        )
        v.add_argument("--access-key", help="(admin verbs) the key to use")
        v.add_argument("--secret-key")
        v.add_argument("--ca-cert", help="(admin verbs) the cluster's CA certificate")
        v.add_argument("--config", help="(admin verbs) a client config file")
        v.add_argument("--json", action="store_true", help="(ls) as JSON")
        v.set_defaults(func=cmd_daemon)

    add_commands(top, _nonneg)
    add_gateway_commands(top)

    disk = top.add_parser("disk", help="operate one disk's engine directly")
    verbs = disk.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(
        name: str, fn: Callable[[argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        v = verbs.add_parser(name, help=help, description=help)
        v.add_argument("device", help="the device: a file or a block device such as /dev/loop0")
        v.add_argument("--keys", help="the key store's path (default: DEVICE.keys)")
        v.set_defaults(func=fn)
        return v

    def named(v: argparse.ArgumentParser, uuid: bool = True) -> None:
        v.add_argument(
            "name", help="the object's name" + (" (or uuid with --uuid)" if uuid else "")
        )
        v.add_argument("-n", "--namespace", default=DEFAULT_NAMESPACE)
        if uuid:
            v.add_argument("--uuid", action="store_true", help="NAME is the object's uuid")

    def source(v: argparse.ArgumentParser) -> None:
        g = v.add_mutually_exclusive_group()
        g.add_argument(
            "-f",
            "--file",
            "--data-file",
            dest="file",
            help="read the data from FILE ('-' for stdin)",
        )
        g.add_argument("--data-literal", help="the data itself, as text")

    v = verb("format", cmd_format, "format a device (creating a file of --size if it is new)")
    v.add_argument("--size", type=parse_size, help="size of a new device file (e.g. 1G)")
    v.add_argument("--force", action="store_true", help="erase whatever the device holds")
    v.add_argument(
        "--sparse", action="store_true", help="do not reserve a new file's space up front"
    )

    v = verb("put", cmd_put, "store an object (from --file, --data-literal or stdin)")
    v.add_argument("name", nargs="?", help="its name (default: its uuid)")
    v.add_argument("-n", "--namespace", default=DEFAULT_NAMESPACE)
    v.add_argument("--permanent", action="store_true", help="it can never be deleted")
    v.add_argument("--ref", type=_ref_id, action="append", default=[], help="a consumer id (hex)")
    source(v)

    v = verb("get", cmd_get, "write an object (or a range of it) to stdout or -o FILE")
    named(v)
    v.add_argument("--offset", type=_nonneg, default=0)
    v.add_argument("--length", type=_nonneg)
    v.add_argument("-o", "--output", help="write to FILE instead of stdout")

    v = verb("stat", cmd_stat, "show an object's key, size, version and references")
    named(v)
    v.add_argument("--json", action="store_true")

    v = verb("ls", cmd_ls, "list objects by name prefix")
    v.add_argument("prefix", nargs="?", default="")
    v.add_argument("-n", "--namespace", default=DEFAULT_NAMESPACE)
    v.add_argument("--start-after", default="", help="list names after this one")
    v.add_argument("--limit", type=_nonneg, help="at most this many")
    v.add_argument("-l", "--long", action="store_true", help="size, hash and version too")
    v.add_argument("--json", action="store_true")

    v = verb("rm", cmd_rm, "delete an object")
    named(v)
    g = v.add_mutually_exclusive_group()
    g.add_argument("--zero", action="store_true", help="write zeros over its blocks")
    g.add_argument("--discard", action="store_true", help="discard its blocks (punch/TRIM)")

    v = verb("write-at", cmd_write_at, "write data at a byte offset of an object, growing it")
    named(v, uuid=False)
    v.add_argument("--offset", type=_nonneg, required=True)
    v.add_argument("--no-create", action="store_true", help="fail if the object does not exist")
    source(v)

    v = verb("ref", cmd_ref, "add or remove consumer references (the last removed deletes)")
    v.add_argument("action", choices=["add", "rm"])
    named(v, uuid=False)
    v.add_argument("ids", nargs="+", type=_ref_id, metavar="ID", help="32 hex digits")

    v = verb("check", cmd_check, "verify every checksum and the block allocation")
    v = verb("info", cmd_info, "show the device's format and space")
    v.add_argument("--json", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse gives an optional positional (put's NAME) nothing when options stand between
    # it and the device; take it back from the leftovers.
    if len(extra) == 1 and not extra[0].startswith("-") and getattr(args, "name", "") is None:
        args.name = extra[0]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        rc: int = args.func(args)
    except ShoalError as exc:
        print(f"shoal: error: {exc}", file=sys.stderr)
        return 1
    except (BrokenPipeError, KeyboardInterrupt):
        return 1
    except OSError as exc:
        print(f"shoal: error: {exc}", file=sys.stderr)
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
