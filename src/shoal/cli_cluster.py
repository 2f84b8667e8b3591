"""The cluster side of the `shoal` command: `master`, `pool`, `key`, `status`, the admin verbs
of `daemon`, and where a client finds its cluster.

A client finds its cluster from, in order: --master/--access-key/--secret-key/--ca-cert,
the SHOAL_MASTER / SHOAL_ACCESS_KEY / SHOAL_SECRET_KEY / SHOAL_CA_CERT variables, or a config
file: --config, $SHOAL_CONFIG, ./shoal-data/client.json (what `shoal up` writes), or
~/.config/shoal/client.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoal.cluster.auth import parse_rights
from shoal.errors import InvalidArgument

CONFIG_NAME = "client.json"
DEFAULT_DATA = "shoal-data"


@dataclass(frozen=True)
class ClusterConfig:
    master: str
    access_key: str
    secret: str
    ca: str | None = None


def write_config(path: Path, cfg: ClusterConfig) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(
            {"master": cfg.master, "access_key": cfg.access_key, "secret_key": cfg.secret,
             "ca_cert": cfg.ca}, f, indent=2)  # fmt: skip
        f.write("\n")


def find_config(args: argparse.Namespace) -> ClusterConfig | None:
    """The cluster this command talks to, or None if nothing names one."""
    env = os.environ
    master = getattr(args, "master", None) or env.get("SHOAL_MASTER")
    access = getattr(args, "access_key", None) or env.get("SHOAL_ACCESS_KEY")
    secret = getattr(args, "secret_key", None) or env.get("SHOAL_SECRET_KEY")
    ca = getattr(args, "ca_cert", None) or env.get("SHOAL_CA_CERT")
    file: dict[str, Any] = {}
    explicit = getattr(args, "config", None) or env.get("SHOAL_CONFIG")
    candidates = [Path(explicit)] if explicit else [
        Path(DEFAULT_DATA) / CONFIG_NAME, Path.home() / ".config" / "shoal" / CONFIG_NAME,
    ]  # fmt: skip
    for path in candidates:
        if path.is_file():
            try:
                file = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise InvalidArgument(f"cannot read the client config {path}: {exc}") from None
            break
    else:
        if explicit:
            raise InvalidArgument(f"no client config at {explicit}")
    master = master or file.get("master")
    if not master:
        return None
    access = access or file.get("access_key")
    secret = secret or file.get("secret_key")
    if not access or not secret:
        raise InvalidArgument(
            f"a key is needed to talk to the master at {master}: --access-key and --secret-key "
            "(or SHOAL_ACCESS_KEY and SHOAL_SECRET_KEY, or a client config)"
        )
    return ClusterConfig(master, access, secret, ca or file.get("ca_cert"))


def add_cluster_options(v: argparse.ArgumentParser) -> None:
    g = v.add_argument_group("cluster (when no --storage-daemon is given)")
    g.add_argument("--master", metavar="HOST:PORT", help="the master's client address")
    g.add_argument("--access-key")
    g.add_argument("--secret-key")
    g.add_argument("--ca-cert", help="the cluster's CA certificate (TLS to the master)")
    g.add_argument("--config", help="a client config file (JSON, as `shoal up` writes)")


def _need_config(args: argparse.Namespace) -> ClusterConfig:
    cfg = find_config(args)
    if cfg is None:
        raise InvalidArgument(
            "which cluster? give --master (or SHOAL_MASTER, or a client config; `shoal up` "
            "writes one)"
        )
    return cfg


def _admin(args: argparse.Namespace, cmd: str, **kw: Any) -> dict[str, Any]:
    from shoal.cli import _run_async

    cfg = _need_config(args)

    async def go() -> dict[str, Any]:
        from shoal.client.cluster import ClusterClient

        c = ClusterClient(cfg.master, cfg.access_key, cfg.secret, ca=cfg.ca)
        try:
            return await c.admin(cmd, **kw)
        finally:
            await c.close()

    out: dict[str, Any] = _run_async(go())
    return out


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# -- commands ----------------------------------------------------------------------------------


def cmd_master(args: argparse.Namespace) -> int:
    from shoal.master.main import MasterConfig, run

    return run(
        MasterConfig(
            dir=args.dir, peer=args.peer_address, listen=args.listen_address,
            peer_cert=args.peer_cert, peer_key=args.peer_key, peer_ca=args.peer_ca_cert,
            listen_cert=args.listen_cert, listen_key=args.listen_key,
            heartbeat=args.heartbeat, down_after=args.down_after, out_after=args.out_after,
            ticket_ttl=args.ticket_ttl,
        )
    )  # fmt: skip


def cmd_pool(args: argparse.Namespace) -> int:
    if args.action == "create":
        out = _admin(args, "pool_create", name=args.name, replicas=args.replicas,
                     pg_num=args.pg_num, min_size=args.min_size,
                     failure_domain=args.failure_domain, daemons=args.daemons)  # fmt: skip
        p = out["pool"]
        print(f"pool {p['name']} created: replicas {p['replicas']} (min {p['min_size']}), "
              f"pg_num {p['pg_num']}, failure domain {p['failure_domain']}, "
              f"daemons {_daemons(p)}")  # fmt: skip
    elif args.action == "rm":
        _admin(args, "pool_rm", name=args.name)
        print(f"pool {args.name} removed")
    else:
        pools = _admin(args, "pool_ls")["pools"]
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


def cmd_daemon_admin(args: argparse.Namespace) -> int:
    if args.action == "ls":
        out = _admin(args, "daemon_ls")
        if args.json:
            print(json.dumps(out["daemons"], indent=2))
            return 0
        print(f"{'id':>4}  {'state':<9} {'weight':>7}  {'address':<22} {'host':<16} used")
        for d in out["daemons"]:
            state = f"{'up' if d['up'] else 'down'},{'in' if d['in'] else 'out'}"
            used = f"{_human(d['used'])} of {_human(d['capacity'])}"
            print(f"{d['id']:>4}  {state:<9} {d['weight'] / 65536:>7.2f}  {d['address']:<22} "
                  f"{d['host']:<16} {used}")  # fmt: skip
        return 0
    if not args.ids:
        raise InvalidArgument(f"shoal daemon {args.action} needs one or more daemon ids")
    for i in args.ids:
        if args.action == "reweight":
            raise InvalidArgument("use: shoal daemon reweight ID WEIGHT")
        out = _admin(args, f"daemon_{args.action}", id=int(i))
        print(f"daemon {i}: {args.action} (epoch {out['epoch']})")
    return 0


def cmd_key(args: argparse.Namespace) -> int:
    if args.action == "create":
        out = _admin(args, "key_create", rights=parse_rights(args.rights), comment=args.comment)
        print(f"access key: {out['access_key']}\nsecret key: {out['secret']}")
        print("(the secret is shown this once)", file=sys.stderr)
    elif args.action == "rm":
        _admin(args, "key_rm", access_key=args.access)
        print(f"key {args.access} removed")
    else:
        for k in _admin(args, "key_ls")["keys"]:
            rights = ",".join(f"{ns}={r}" for ns, r in sorted(k["rights"].items()))
            print(f"{k['access_key']}  {rights}  {k['comment']}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    s = _admin(args, "status")
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    r, sc = s.get("recovery") or {}, s.get("scrub") or {}
    moving = r.get("degraded_objects") or r.get("misplaced_objects") or r.get("recovering")
    health = "HEALTH_OK"
    if s["up"] < s["daemons"] or set(s["pgs"]) - {"active+clean"} or moving:
        health = "HEALTH_WARN"
    if "inactive" in s["pgs"] or (s["daemons"] and not s["up"]):
        health = "HEALTH_ERR"
    pgs = sum(s["pgs"].values())
    print("  cluster:")
    print(f"    health: {health}")
    print(f"    epoch:  {s['epoch']}")
    print("  services:")
    print(f"    daemons: {s['daemons']} daemons: {s['up']} up, {s['in']} in")
    print("  data:")
    print(f"    pools:   {len(s['pools'])} pools, {pgs} pgs")
    print(f"    usage:   {_human(s['used'])} used, {_human(s['capacity'] - s['used'])} / "
          f"{_human(s['capacity'])} avail")  # fmt: skip
    if s["pgs"]:
        print("    pgs:     " + "\n             ".join(
            f"{n} {state}" for state, n in sorted(s["pgs"].items())))  # fmt: skip
    if moving:
        print("  recovery:")
        print(f"    degraded:  {r['degraded_objects']} objects ({_human(r['degraded_bytes'])})")
        print(f"    misplaced: {r['misplaced_objects']} objects ({_human(r['misplaced_bytes'])})")
        eta = r.get("eta")
        print(f"    rate:      {_human(r['rate'])}/s, eta "
              f"{'unknown' if eta is None else f'{eta:.0f} s'}; {r['recovering']} daemons "
              "catching up")  # fmt: skip
    if r.get("recovered_objects"):
        print(f"    recovered: {r['recovered_objects']} objects "
              f"({_human(r['recovered_bytes'])}) since the daemons started")  # fmt: skip
    if sc.get("objects") or sc.get("running"):
        print(f"  scrub:     {sc['objects']} objects checked, {sc['errors']} errors, "
              f"{sc['repaired']} repaired{'; running' if sc.get('running') else ''}")  # fmt: skip
    return 0


def cmd_scrub(args: argparse.Namespace) -> int:
    got = _admin(args, "scrub", pool=args.pool or "")
    print(f"scrub {got['scrub']} requested{f' for pool {args.pool}' if args.pool else ''}; "
          "`shoal status` shows what it finds")  # fmt: skip
    return 0


def cmd_rebalance(args: argparse.Namespace) -> int:
    """The copies that would move (--dry-run), or a recovery pass on every daemon now,
    followed until nothing is degraded or misplaced."""
    import time

    from shoal.cli import _run_async

    cfg = _need_config(args)
    if not args.dry_run:
        _admin(args, "rebalance")
        print("rebalance requested; following it (Ctrl-C stops following, not the move)")
        while True:
            time.sleep(1.0)
            r = _admin(args, "status")["recovery"]
            left = r["degraded_objects"] + r["misplaced_objects"]
            eta = r.get("eta")
            print(f"  {r['degraded_objects']} degraded, {r['misplaced_objects']} misplaced "
                  f"({_human(r['degraded_bytes'] + r['misplaced_bytes'])}), "
                  f"{_human(r['rate'])}/s, eta {'?' if eta is None else f'{eta:.0f} s'}",
                  flush=True)  # fmt: skip
            if not left and not r["recovering"]:
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

    plans: dict[int, dict[str, Any]] = _run_async(plan())
    total = [0, 0]
    print("copies to move (from -> to: objects, bytes):")
    for src, p in plans.items():
        for dst, (n, size) in p["moves"].items():
            print(f"  daemon {src} -> daemon {dst}: {n} objects, {_human(size)}")
            total[0] += n
            total[1] += size
    print(f"total: {total[0]} copies, {_human(total[1])}; each source drops its copy once "
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


def cmd_up(args: argparse.Namespace) -> int:
    from shoal.up import run

    return run(args.data, args.daemons, args.size, args.base_port, args.http_port)


def add_commands(top: Any, nonneg: Callable[[str], int]) -> None:
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
    v.add_argument("--ticket-ttl", type=float, default=3600.0,
                   help="how long a client's ticket is good for (s)")  # fmt: skip
    v.set_defaults(func=cmd_master)

    v = top.add_parser("pool", help="create, list or remove pools")
    v.add_argument("action", choices=["create", "ls", "rm"])
    v.add_argument("name", nargs="?")
    v.add_argument("--replicas", type=int, default=3)
    v.add_argument("--min-size", type=int, help="default: a majority of the replicas")
    v.add_argument("--pg-num", type=nonneg, default=128)
    v.add_argument("--failure-domain", choices=["host", "daemon"], default="host")
    v.add_argument("--daemons", type=_id_list, metavar="ID,ID,...",
                   help="the daemons (disks) it may use (default: every one)")  # fmt: skip
    v.add_argument("--json", action="store_true")
    add_cluster_options(v)
    v.set_defaults(func=cmd_pool)

    v = top.add_parser("key", help="create, list or remove client keys")
    v.add_argument("action", choices=["create", "ls", "rm"])
    v.add_argument("access", nargs="?", help="the access key (rm)")
    v.add_argument("--rights", default="", help="e.g. 'photos=rw,logs=r' ('*' for every pool; "
                   "letters r w d a)")  # fmt: skip
    v.add_argument("--comment", default="")
    add_cluster_options(v)
    v.set_defaults(func=cmd_key)

    v = top.add_parser("certs", help="make the cluster's CA and its nodes' certificates")
    v.add_argument("names", nargs="*", help="one certificate per name (master, daemon0, ...)")
    v.add_argument("--dir", default="tls", help="where (default: ./tls)")
    v.add_argument("--host", action="append", default=[], help="an address or name it is for")
    v.add_argument("--force", action="store_true", help="replace existing certificates")
    v.set_defaults(func=cmd_certs)

    v = top.add_parser("up", help="start a local cluster: a master and daemons, TLS on")
    v.add_argument("--data", default=DEFAULT_DATA, help=f"its folder (default: ./{DEFAULT_DATA})")
    v.add_argument("--daemons", type=int, default=3)
    v.add_argument("--size", default="4G", help="each daemon's data file, when new")
    v.add_argument("--base-port", type=int, default=4140, help="0: any free ports")
    v.add_argument("--http-port", type=int,
                   help="the HTTP gateway's port (default 3000; -1: no gateway)")  # fmt: skip
    v.set_defaults(func=cmd_up)

    v = top.add_parser("scrub", help="verify every copy and compare replicas now")
    v.add_argument("--pool", help="only this pool")
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
