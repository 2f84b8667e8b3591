"""`shoal disk ...`: the operator's tool over one engine (one disk): format, put, get, stat,
ls, rm, write-at, ref, check, info. It opens the device itself; no daemon is involved.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any, BinaryIO

from shoal.cli.common import iso, nonneg, parse_size, progress, show
from shoal.engine import ObjectStore, Record, check
from shoal.engine.objectstore import DEFAULT_NAMESPACE

_CHUNK = 4 << 20


def _ref_id(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 16:
        raise argparse.ArgumentTypeError(f"a reference id is 32 hex digits (16 bytes): {text!r}")
    return raw


def _meta_item(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"metadata is KEY=VALUE, not {text!r}")
    return key, value


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
        "created": iso(rec.ctime),
        "modified": iso(rec.mtime),
        "meta": dict(rec.meta),
    }


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
                meta=dict(args.meta),
            )
        else:
            w = store.writer(
                args.namespace, args.name, size=size, refs=args.ref, permanent=args.permanent,
                meta=dict(args.meta),
            )  # fmt: skip
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


def cmd_stat(args: argparse.Namespace) -> int:
    with _open(args) as store:
        show(_info(_record(store, args)), args.json)
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
    show(info, args.json, width=14)
    return 0


# -- parser ---------------------------------------------------------------------------------


def register(top: Any) -> None:
    disk = top.add_parser("disk", help="operate one disk's engine directly")
    verbs = disk.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(
        name: str, fn: Callable[[argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        v: argparse.ArgumentParser = verbs.add_parser(name, help=help, description=help)
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
    v.add_argument(
        "--meta", type=_meta_item, action="append", default=[], metavar="KEY=VALUE",
        help="metadata kept with the object (repeat for more)",
    )  # fmt: skip
    source(v)

    v = verb("get", cmd_get, "write an object (or a range of it) to stdout or -o FILE")
    named(v)
    v.add_argument("--offset", type=nonneg, default=0)
    v.add_argument("--length", type=nonneg)
    v.add_argument("-o", "--output", help="write to FILE instead of stdout")

    v = verb("stat", cmd_stat, "show an object's key, size, version and references")
    named(v)
    v.add_argument("--json", action="store_true")

    v = verb("ls", cmd_ls, "list objects by name prefix")
    v.add_argument("prefix", nargs="?", default="")
    v.add_argument("-n", "--namespace", default=DEFAULT_NAMESPACE)
    v.add_argument("--start-after", default="", help="list names after this one")
    v.add_argument("--limit", type=nonneg, help="at most this many")
    v.add_argument("-l", "--long", action="store_true", help="size, hash and version too")
    v.add_argument("--json", action="store_true")

    v = verb("rm", cmd_rm, "delete an object")
    named(v)
    g = v.add_mutually_exclusive_group()
    g.add_argument("--zero", action="store_true", help="write zeros over its blocks")
    g.add_argument("--discard", action="store_true", help="discard its blocks (punch/TRIM)")

    v = verb("write-at", cmd_write_at, "write data at a byte offset of an object, growing it")
    named(v, uuid=False)
    v.add_argument("--offset", type=nonneg, required=True)
    v.add_argument("--no-create", action="store_true", help="fail if the object does not exist")
    source(v)

    v = verb("ref", cmd_ref, "add or remove consumer references (the last removed deletes)")
    v.add_argument("action", choices=["add", "rm"])
    named(v, uuid=False)
    v.add_argument("ids", nargs="+", type=_ref_id, metavar="ID", help="32 hex digits")

    v = verb("check", cmd_check, "verify every checksum and the block allocation")
    v = verb("info", cmd_info, "show the device's format and space")
    v.add_argument("--json", action="store_true")
