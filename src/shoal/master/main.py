"""`shoal master`: serve the cluster map until told to stop.

State lives in `--dir` (`master.db`, SQLite). On its first start the master makes an admin
key and prints it once (`admin key: ACCESS SECRET`); keep it. With certificates (from
`shoal certs`), daemons must show one signed by `--peer-ca-cert` and clients talk TLS.
Prints `shoal master listening on H:P (peer), H:P (client)`; SIGTERM or SIGINT stop it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from dataclasses import dataclass

from shoal.asgi import split_address
from shoal.daemon.main import run_service
from shoal.errors import InvalidArgument
from shoal.master.server import Master
from shoal.master.state import MasterState
from shoal.tls import server_context


@dataclass
class MasterConfig:
    dir: str
    peer: str = "127.0.0.1:4140"
    listen: str = "127.0.0.1:4141"
    peer_cert: str | None = None
    peer_key: str | None = None
    peer_ca: str | None = None
    listen_cert: str | None = None
    listen_key: str | None = None
    heartbeat: float = 1.0
    down_after: float = 6.0
    out_after: float = 60.0
    ticket_ttl: float = 3600.0
    # A client config (JSON, as `shoal up` writes) whose key becomes the admin key when the
    # state has no key yet, instead of a new one printed once: the caller keeps the secret
    # before the master starts, so no failure of the first start can lose it.
    admin_key_file: str | None = None
    failure_domain: str = "host"  # of a pool made without one ("daemon": `shoal up`'s one host)


async def serve(cfg: MasterConfig) -> None:
    state = MasterState(os.path.join(cfg.dir, "master.db"))
    if cfg.admin_key_file and not state.keys():
        access, secret = _read_key(cfg.admin_key_file)
        state.add_key(access, secret, {"*": "rwda"}, f"admin, from {cfg.admin_key_file}")
    elif state.created:
        access, secret = state.create_key({"*": "rwda"}, "admin, made at the first start")
        print(f"admin key: {access} {secret}", flush=True)
    peer_ssl = client_ssl = None
    if cfg.peer_cert or cfg.peer_key or cfg.peer_ca:
        if not (cfg.peer_cert and cfg.peer_key and cfg.peer_ca):
            raise InvalidArgument("--peer-cert, --peer-key and --peer-ca-cert go together")
        peer_ssl = server_context(cfg.peer_cert, cfg.peer_key, cfg.peer_ca)
    if cfg.listen_cert or cfg.listen_key:
        if not (cfg.listen_cert and cfg.listen_key):
            raise InvalidArgument("--listen-cert and --listen-key go together")
        client_ssl = server_context(cfg.listen_cert, cfg.listen_key)
    if peer_ssl is None:
        logging.getLogger("shoal.master").warning(
            "no --peer-cert: any process that reaches the peer address can join as a daemon "
            "and learn the ticket key; use certificates (shoal certs) beyond a test machine"
        )
    master = Master(
        state, heartbeat=cfg.heartbeat, down_after=cfg.down_after, out_after=cfg.out_after,
        ticket_ttl=cfg.ticket_ttl, failure_domain=cfg.failure_domain,
    )  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        (ph, pp), (ch, cp) = await master.start(
            split_address(cfg.peer), split_address(cfg.listen), peer_ssl, client_ssl
        )
        print(f"shoal master listening on {ph}:{pp} (peer), {ch}:{cp} (client)", flush=True)
        await stop.wait()
    finally:
        await master.close()
        state.close()


def _read_key(path: str) -> tuple[str, str]:
    try:
        with open(path) as f:
            doc = json.load(f)
        return str(doc["access_key"]), str(doc["secret_key"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument(
            f"--admin-key-file {path}: no access_key and secret_key ({exc})"
        ) from None


def run(cfg: MasterConfig) -> int:
    return run_service(serve(cfg))
