"""The `shoal` command: parses arguments, calls the layers below, prints.

One module per command group, loaded only when one of its commands runs, so that `shoal read`
imports the client and not the engine, the master or the gateways:

    disk      shoal disk ...: one disk's engine, by hand
    objects   write, read, stat, rm, ls: objects over the native protocol
    daemon    daemon (file-store): serve one disk; ls, out, in, rm: the cluster's daemons
    cluster   master, pool, key, status, scrub, rebalance, certs
    up        up: a local cluster in one command (shoal.up supervises it)
    gateway   http, s3, index: minikeyvalue's API, S3's, and their name index

Each module has `register(subparsers)`, which adds its commands with their full options; the
others appear in `shoal --help` by name and summary only. Shared helpers live in `common`.
Errors are printed as one line on stderr with exit status 1; bad usage exits 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from shoal import __version__
from shoal.errors import ShoalError

# command: (module, summary), in the order `shoal --help` lists them
COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("up", "start a local cluster: a master, daemons and the HTTP gateway, TLS on"),
    "write": ("objects", "store an object"),
    "read": ("objects", "read an object (or a range of it)"),
    "stat": ("objects", "show an object's size, hash, version and references"),
    "rm": ("objects", "delete an object"),
    "ls": ("objects", "list a pool's objects by name prefix"),
    "status": ("cluster", "the cluster at a glance"),
    "pool": ("cluster", "create, list or remove pools"),
    "key": ("cluster", "create, list or remove client keys"),
    "scrub": ("cluster", "verify every copy and compare replicas now"),
    "rebalance": ("cluster", "move copies to where the map puts them now"),
    "master": ("cluster", "serve the cluster map (the seed's master)"),
    "certs": ("cluster", "make the cluster's CA and its nodes' certificates"),
    "daemon": ("daemon", "serve one disk; or ls, out, in, rm: the cluster's daemons"),
    "file-store": ("daemon", "= daemon"),
    "http": ("gateway", "serve minikeyvalue's HTTP API over a pool (port 3000)"),
    "s3": ("gateway", "serve S3's API over a pool (port 9000)"),
    "index": ("gateway", "the name index behind the gateways' listings"),
    "disk": ("disk", "operate one disk's engine directly"),
}


def _command(argv: list[str]) -> str | None:
    """The command word: the first argument that is not a top-level option."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shoal", description="shoal: a distributed storage system")
    p.add_argument("-v", "--verbose", action="store_true", help="say more")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--version", action="version", version=f"shoal {__version__}")
    top = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = COMMANDS.get(_command(argv) or "", ("", ""))[0]
    for name, (module, summary) in COMMANDS.items():
        if module != wanted:
            top.add_parser(name, help=summary, add_help=False)
        elif name == next(n for n, (m, _) in COMMANDS.items() if m == module):
            importlib.import_module(f"shoal.cli.{module}").register(top)
    for name, sub in top.choices.items():  # -q after the command too (`shoal scrub -q`)
        if COMMANDS[name][0] == wanted:
            sub.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                             help="no progress bars")  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    # argparse gives an optional positional (disk put's NAME) nothing when options stand
    # between it and the device; take it back from the leftovers.
    if len(extra) == 1 and not extra[0].startswith("-") and getattr(args, "name", "") is None:
        args.name = extra[0]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.quiet:
        from shoal.cli import common

        common.QUIET = True
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
