"""The cluster's commands: `shoal master` (serve the map), `pool`, `key`, `status`, `scrub`,
`rebalance` (admin calls to the master) and `certs` (a CA and the nodes' certificates).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from shoal.cli.common import (
    add_cluster_options,
    admin,
    cluster_client,
    human,
    need_config,
    nonneg,
    progress,
    run_async,
)
from shoal.config import DEFAULT_DATA
from shoal.errors import ShoalError


def cmd_master(args: argparse.Namespace) -> int:
    from shoal.master.main import MasterConfig, run

    return run(
        MasterConfig(
            dir=args.dir, peer=args.peer_address, listen=args.listen_address,
            peer_cert=args.peer_cert, peer_key=args.peer_key, peer_ca=args.peer_ca_cert,
            listen_cert=args.listen_cert, listen_key=args.listen_key,
            heartbeat=args.heartbeat, down_after=args.down_after, out_after=args.out_after,
            ticket_ttl=args.ticket_ttl, admin_key_file=args.admin_key_file,
            failure_domain=args.failure_domain,
        )
    )  # fmt: skip


def cmd_pool(args: argparse.Namespace) -> int:
    if args.action == "create":
        out = admin(args, "pool_create", name=args.name, replicas=args.replicas,
                     pg_num=args.pg_num, min_size=args.min_size,
                     failure_domain=args.failure_domain, daemons=args.daemons)  # fmt: skip
        p = out["pool"]
        print(f"pool {p['name']} created: replicas {p['replicas']} (min {p['min_size']}), "
              f"pg_num {p['pg_num']}, failure domain {p['failure_domain']}, "
              f"daemons {_daemons(p)}")  # fmt: skip
    elif args.action == "rm":
        admin(args, "pool_rm", name=args.name)
        print(f"pool {args.name} removed")
    else:
        pools = admin(args, "pool_ls")["pools"]
        if args.json:
            print(json.dumps(pools, indent=2))
        for p in [] if args.json else pools:
            print(f"{p['name']:<24} replicas {p['replicas']} min {p['min_size']} "
                  f"pg_num {p['pg_num']} {p['failure_domain']} daemons {_daemons(p)}")  # fmt: skip
    return 0


def _daemons(pool: dict[str, Any]) -> str:
    return ",".join(map(str, pool.get("daemons") or ())) or "all"


def _id_list(text: str) -> list[int]:
    try:
        ids = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"daemon ids, as 0,1,2: not {text!r}") from None
    if not ids or min(ids) < 0:
        raise argparse.ArgumentTypeError(f"daemon ids, as 0,1,2: not {text!r}")
    return ids


def cmd_key(args: argparse.Namespace) -> int:
    if args.action == "create":
        from shoal.cluster.auth import parse_rights

        out = admin(args, "key_create", rights=parse_rights(args.rights), comment=args.comment)
        print(f"access key: {out['access_key']}\nsecret key: {out['secret']}")
        print("(the secret is shown this once)", file=sys.stderr)
    elif args.action == "rm":
        admin(args, "key_rm", access_key=args.access)
        print(f"key {args.access} removed")
    else:
        for k in admin(args, "key_ls")["keys"]:
            rights = ",".join(f"{ns}={r}" for ns, r in sorted(k["rights"].items()))
            s3 = "" if k.get("s3", True) else "  (not S3-capable until it is used once)"
            print(f"{k['access_key']}  {rights}  {k['comment']}{s3}")
    return 0


def _processes(doc: dict[str, Any] | None) -> None:
    """The `shoal up` section of the status: its processes, those not running first."""
    if doc is None:
        return
    procs = doc.get("processes", [])
    up = sum(1 for p in procs if p["state"] == "up")
    print(f"  processes (shoal up, pid {doc['pid']}): {up} of {len(procs)} running")
    for p in procs:
        if p["state"] != "up":
            why = p.get("reason") or p.get("last_exit") or ""
            tries = f", restarted {p['restarts']} times" if p.get("restarts") else ""
            print(f"    {p['name']}: {p['state']}{': ' + why if why else ''}{tries}")


def cmd_status(args: argparse.Namespace) -> int:
    from shoal.config import config_file, local_processes

    explicit = args.master or os.environ.get("SHOAL_MASTER")
    config = None if explicit else config_file(args.config)
    try:
        s = admin(args, "status")
    except (ShoalError, OSError):
        _processes(local_processes(config))  # (the master may be the one being restarted)
        raise
    procs = local_processes(config)
    if args.json:
        print(json.dumps({**s, "processes": procs}, indent=2))
        return 0
    r, sc = s.get("recovery") or {}, s.get("scrub") or {}
    moving = r.get("degraded_objects") or r.get("misplaced_objects") or r.get("recovering")
    health = "HEALTH_OK"
    if s["up"] < s["daemons"] or set(s["pgs"]) - {"active+clean"} or moving or s.get("problems"):
        health = "HEALTH_WARN"
    if "inactive" in s["pgs"] or (s["daemons"] and not s["up"]):
        health = "HEALTH_ERR"
    pgs = sum(s["pgs"].values())
    print("  cluster:")
    print(f"    health: {health}")
    for problem in s.get("problems") or ():
        print(f"            {problem}")
    print(f"    epoch:  {s['epoch']}")
    print("  services:")
    print(f"    daemons: {s['daemons']} daemons: {s['up']} up, {s['in']} in")
    _processes(procs)
    print("  data:")
    print(f"    pools:   {len(s['pools'])} pools, {pgs} pgs")
    print(f"    usage:   {human(s['used'])} used, {human(s['capacity'] - s['used'])} / "
          f"{human(s['capacity'])} avail")  # fmt: skip
    if s["pgs"]:
        print("    pgs:     " + "\n             ".join(
            f"{n} {state}" for state, n in sorted(s["pgs"].items())))  # fmt: skip
    if moving:
        print("  recovery:")
        print(f"    degraded:  {r['degraded_objects']} objects ({human(r['degraded_bytes'])})")
        print(f"    misplaced: {r['misplaced_objects']} objects ({human(r['misplaced_bytes'])})")
        eta = r.get("eta")
        print(f"    rate:      {human(r['rate'])}/s, eta "
              f"{'unknown' if eta is None else f'{eta:.0f} s'}; {r['recovering']} daemons "
              "catching up")  # fmt: skip
    if r.get("recovered_objects"):
        print(f"    recovered: {r['recovered_objects']} objects "
              f"({human(r['recovered_bytes'])}) since the daemons started")  # fmt: skip
    if sc.get("objects") or sc.get("running"):
        print(f"  scrub:     {sc['objects']} objects checked, {sc['errors']} errors, "
              f"{sc['repaired']} repaired{'; running' if sc.get('running') else ''}")  # fmt: skip
    return 0


def cmd_scrub(args: argparse.Namespace) -> int:
    """Ask every daemon for a scrub now and, unless --no-wait, follow it until each daemon up
    has made a whole pass since (a progress bar of the objects checked, on a terminal)."""
    got = admin(args, "scrub", pool=args.pool or "")
    which = f" for pool {args.pool}" if args.pool else ""
    if args.no_wait:
        print(f"scrub {got['scrub']} requested{which}; `shoal status` shows what it finds")
        return 0
    print(f"scrub {got['scrub']} requested{which}; following it (Ctrl-C stops following, not "
          "the scrub)", flush=True)  # fmt: skip
    sc = run_async(_follow_scrub(need_config(args), int(got["scrub"])))
    print(f"scrub {got['scrub']} done: {sc['objects']} objects checked, {sc['errors']} errors, "
          f"{sc['repaired']} repaired since the daemons started")  # fmt: skip
    return 0


async def _follow_scrub(cfg: Any, request: int) -> dict[str, Any]:
    import asyncio

    c = cluster_client(cfg)
    try:
        with progress(None, "scrub", unit="objects") as advance:
            checked = 0
            while True:
                status = await c.admin("status")
                if not status["up"]:
                    raise ShoalError("no daemon is up: the scrub waits for them")
                sc: dict[str, Any] = status["scrub"]
                if sc["pass"] > checked:
                    advance(sc["pass"] - checked)
                checked = sc["pass"]
                if sc.get("done", 0) >= request:
                    return sc
                await asyncio.sleep(0.5)
    finally:
        await c.close()


async def _follow_recovery(cfg: Any) -> bool:
    """Until nothing is degraded or misplaced and no daemon is catching up: a progress bar of
    the objects left to move on a terminal, nothing in a pipe or with -q."""
    import asyncio

    c = cluster_client(cfg)

    def left(r: dict[str, Any]) -> int:
        return int(r["degraded_objects"]) + int(r["misplaced_objects"])

    def stuck(s: dict[str, Any]) -> bool:
        """All that is left waits for daemons that are down: nothing moves until they are
        back or out."""
        r = s["recovery"]
        return s["up"] < s["daemons"] and not r["misplaced_objects"] and not r["recovering"]

    try:
        s = await c.admin("status")
        before = left(s["recovery"])
        with progress(before or None, "rebalance", unit="objects") as advance:
            while (left(s["recovery"]) or s["recovery"]["recovering"]) and not stuck(s):
                await asyncio.sleep(0.5)
                s = await c.admin("status")
                if left(s["recovery"]) < before:
                    advance(before - left(s["recovery"]))
                    before = left(s["recovery"])
        if stuck(s) and left(s["recovery"]):
            down = s["daemons"] - s["up"]
            print(f"{s['recovery']['degraded_objects']} objects stay degraded while {down} "
                  "daemon(s) are down: they get their copies back when those daemons return, or "
                  "on others once they are out (`shoal daemon out ID`, or by themselves after "
                  "--out-after)")  # fmt: skip
            return False
        return True
    finally:
        await c.close()


def cmd_rebalance(args: argparse.Namespace) -> int:
    """The copies that would move (--dry-run), or a recovery pass on every daemon now,
    followed until nothing is degraded or misplaced."""

    cfg = need_config(args)
    if not args.dry_run:
        admin(args, "rebalance")
        print("rebalance requested; following it (Ctrl-C stops following, not the move)")
        if run_async(_follow_recovery(cfg)):
            print("done: every object is where the map puts it")
        return 0

    async def plan() -> dict[int, dict[str, Any]]:
        from shoal.client.cluster import ClusterClient
        from shoal.proto.frames import Op

        c = ClusterClient(cfg.master, cfg.access_key, cfg.secret, ca=cfg.ca)
        try:
            await c.connect()
            out = {}
            for i, d in sorted(c.map.daemons.items()):
                if d.up:
                    daemon = await c._daemon(d.address)
                    out[i], _ = await daemon._call(Op.PLAN, {"ticket": c.ticket},
                                                   idempotent=True)  # fmt: skip
            return out
        finally:
            await c.close()

    plans: dict[int, dict[str, Any]] = run_async(plan())
    total = [0, 0]
    print("copies to move (from -> to: objects, bytes):")
    for src, p in plans.items():
        for dst, (n, size) in p["moves"].items():
            print(f"  daemon {src} -> daemon {dst}: {n} objects, {human(size)}")
            total[0] += n
            total[1] += size
    print(f"total: {total[0]} copies, {human(total[1])}; each source drops its copy once "
          "every daemon of the object's set holds it")  # fmt: skip
    return 0


def cmd_certs(args: argparse.Namespace) -> int:
    from shoal.certs import ensure_ca, issue

    d = Path(args.dir)
    ensure_ca(d)
    print(f"{d / 'ca.crt'} (the CA; {d / 'ca.key'} signs, keep it safe)")
    for name in args.names:
        crt, key = issue(d, name, args.host, force=args.force)
        print(f"{crt} {key}")
    return 0


def register(top: Any) -> None:
    v = top.add_parser("master", help="serve the cluster map (the seed's master)")
    v.add_argument("--dir", default=os.path.join(DEFAULT_DATA, "master"), help="state folder")
    v.add_argument(
        "--peer-address",
        default="127.0.0.1:4140",
        metavar="HOST:PORT",
        help="where daemons connect (mutual TLS with the --peer-* files)",
    )
    v.add_argument(
        "--listen-address",
        default="127.0.0.1:4141",
        metavar="HOST:PORT",
        help="where clients connect (TLS with --listen-cert/--listen-key)",
    )
    v.add_argument("--peer-cert", "-peer-cert")
    v.add_argument("--peer-key", "-peer-key")
    v.add_argument("--peer-ca-cert", "-peer-ca-cert")
    v.add_argument("--listen-cert", "-listen-cert")
    v.add_argument("--listen-key", "-listen-key")
    v.add_argument("--heartbeat", type=float, default=1.0, help="seconds between heartbeats")
    v.add_argument(
        "--down-after", type=float, default=6.0, help="a daemon silent this long is down (s)"
    )
    v.add_argument(
        "--out-after", type=float, default=60.0, help="a daemon down this long is out (s)"
    )
    v.add_argument("--failure-domain", choices=["host", "daemon"], default="host",
                   help="of a pool created without one: host (copies on distinct machines) or "
                   "daemon (one machine: `shoal up`)")  # fmt: skip
    v.add_argument("--admin-key-file", metavar="FILE",
                   help="on the first start, take the admin key from this client config "
                   "(JSON: access_key, secret_key) instead of making one")  # fmt: skip
    v.add_argument("--ticket-ttl", type=float, default=3600.0,
                   help="how long a client's ticket is good for (s)")  # fmt: skip
    v.set_defaults(func=cmd_master)

    v = top.add_parser("pool", help="create, list or remove pools")
    v.add_argument("action", choices=["create", "ls", "rm"])
    v.add_argument("name", nargs="?")
    v.add_argument("--replicas", type=int, default=3)
    v.add_argument("--min-size", type=int, help="default: a majority of the replicas")
    v.add_argument("--pg-num", type=nonneg, default=128)
    v.add_argument("--failure-domain", choices=["host", "daemon"],
                   help="copies on distinct hosts or only distinct daemons (default: the "
                   "master's --failure-domain; host, or daemon under `shoal up`)")  # fmt: skip
    v.add_argument("--daemons", type=_id_list, metavar="ID,ID,...",
                   help="the daemons (disks) it may use (default: every one)")  # fmt: skip
    v.add_argument("--json", action="store_true")
    add_cluster_options(v)
    v.set_defaults(func=cmd_pool)

    v = top.add_parser("key", help="create, list or remove client keys")
    v.add_argument("action", choices=["create", "ls", "rm"])
    v.add_argument("access", nargs="?", help="the access key (rm)")
    v.add_argument("--rights", default="", help="e.g. 'photos=rw,logs=r' ('*' for every pool; "
                   "letters r w d a, and g on '*' only: an S3 gateway's key)")  # fmt: skip
    v.add_argument("--comment", default="")
    add_cluster_options(v)
    v.set_defaults(func=cmd_key)

    v = top.add_parser("certs", help="make the cluster's CA and its nodes' certificates")
    v.add_argument("names", nargs="*", help="one certificate per name (master, daemon0, ...)")
    v.add_argument("--dir", default="tls", help="where (default: ./tls)")
    v.add_argument("--host", action="append", default=[], help="an address or name it is for")
    v.add_argument("--force", action="store_true", help="replace existing certificates")
    v.set_defaults(func=cmd_certs)

    v = top.add_parser("scrub", help="verify every copy and compare replicas now")
    v.add_argument("--pool", help="only this pool")
    v.add_argument("--no-wait", action="store_true",
                   help="ask for it and return, without following it")  # fmt: skip
    add_cluster_options(v)
    v.set_defaults(func=cmd_scrub)

    v = top.add_parser("rebalance", help="move copies to where the map puts them now")
    v.add_argument("--dry-run", action="store_true", help="show the plan, move nothing")
    add_cluster_options(v)
    v.set_defaults(func=cmd_rebalance)

    v = top.add_parser("status", help="the cluster at a glance")
    v.add_argument("--json", action="store_true")
    add_cluster_options(v)
    v.set_defaults(func=cmd_status)
