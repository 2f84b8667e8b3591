"""`shoal up`: a local cluster in one command (shoal.up starts and supervises it)."""

from __future__ import annotations

import argparse
from typing import Any

from shoal.config import DEFAULT_DATA


def cmd_up(args: argparse.Namespace) -> int:
    from shoal.up import run

    return run(args.data, args.daemons, args.size, args.base_port, args.http_port, args.s3_port)


def register(top: Any) -> None:
    v = top.add_parser("up", help="start a local cluster: a master, daemons and the gateways")
    v.add_argument("--data", default=DEFAULT_DATA, help=f"its folder (default: ./{DEFAULT_DATA})")
    v.add_argument("--daemons", type=int, default=3)
    v.add_argument("--size", default="4G", help="each daemon's data file, when new")
    v.add_argument("--base-port", type=int, default=4140, help="0: any free ports")
    v.add_argument("--http-port", type=int,
                   help="the HTTP gateway's port (default 3000; -1: no gateway)")  # fmt: skip
    v.add_argument("--s3-port", type=int,
                   help="the S3 gateway's port (default 9000; -1: no gateway)")  # fmt: skip
    v.set_defaults(func=cmd_up)
