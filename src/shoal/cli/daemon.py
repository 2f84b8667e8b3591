"""`shoal daemon` (alias `shoal file-store`): serve one disk; and its admin verbs, `shoal
daemon ls|out|in|rm`, about the cluster's daemons.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from shoal.cli.common import admin, human, parse_size
from shoal.errors import InvalidArgument


def cmd_daemon(args: argparse.Namespace) -> int:
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


def cmd_daemon_admin(args: argparse.Namespace) -> int:
    if args.action == "ls":
        out = admin(args, "daemon_ls")
        if args.json:
            print(json.dumps(out["daemons"], indent=2))
            return 0
        print(f"{'id':>4}  {'state':<9} {'weight':>7}  {'address':<22} {'host':<16} used")
        for d in out["daemons"]:
            state = f"{'up' if d['up'] else 'down'},{'in' if d['in'] else 'out'}"
            used = f"{human(d['used'])} of {human(d['capacity'])}"
            print(f"{d['id']:>4}  {state:<9} {d['weight'] / 65536:>7.2f}  {d['address']:<22} "
                  f"{d['host']:<16} {used}")  # fmt: skip
        return 0
    if not args.ids:
        raise InvalidArgument(f"shoal daemon {args.action} needs one or more daemon ids")
    for i in args.ids:
        if args.action == "reweight":
            raise InvalidArgument("use: shoal daemon reweight ID WEIGHT")
        out = admin(args, f"daemon_{args.action}", id=int(i))
        print(f"daemon {i}: {args.action} (epoch {out['epoch']})")
    return 0


def register(top: Any) -> None:
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
