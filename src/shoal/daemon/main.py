"""`shoal daemon` (alias `shoal file-store`): open one disk and serve it until told to stop.

`--dir DIR` holds the key store (`DIR/keys.db`) and, unless `--device` names a block device
or file, the data (`DIR/blocks`, created with `--size` on first start). A device given with
`--device` must already be formatted (`shoal disk format DEV --keys DIR/keys.db`): a daemon
never formats a disk it did not create. On start it prints one line per listener, e.g.
`shoal daemon listening on 127.0.0.1:4148 (native), 127.0.0.1:4149 (peer),
127.0.0.1:4150 (http)`, so that scripts and tests can use port 0 and learn the real ports.
SIGTERM or SIGINT stop it cleanly: listeners close, in-flight requests finish, the store
closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from shoal.asgi import split_address, start_http, stop_http
from shoal.cluster.auth import is_loopback
from shoal.daemon.http import make_app
from shoal.daemon.membership import Membership
from shoal.daemon.replication import Replication
from shoal.daemon.server import Daemon
from shoal.engine import ObjectStore
from shoal.errors import InvalidArgument
from shoal.tls import client_context, server_context

log = logging.getLogger("shoal.daemon")

DEFAULT_SIZE = 4 << 30


@dataclass
class DaemonConfig:
    dir: str
    device: str | None = None
    size: int = DEFAULT_SIZE
    listen: str = "127.0.0.1:4148"
    peer: str | None = None
    http: str | None = None
    threads: int = 16
    master: str | None = None  # HOST:PORT of the master's peer address: join its cluster
    peer_cert: str | None = None
    peer_key: str | None = None
    peer_ca: str | None = None
    host: str | None = None  # the failure domain it reports (default: this machine's name)
    recovery_interval: float = 10.0
    recovery_rate: float = 200e6  # bytes/s
    scrub_interval: float = 86400.0


def open_store(cfg: DaemonConfig) -> ObjectStore:
    os.makedirs(cfg.dir, exist_ok=True)
    keys = os.path.join(cfg.dir, "keys.db")
    device = cfg.device or os.path.join(cfg.dir, "blocks")
    if cfg.device is None and not os.path.exists(device):
        log.info("creating %s (%d bytes)", device, cfg.size)
        return ObjectStore.format(device, keys, size=cfg.size)
    return ObjectStore.open(device, keys)


async def serve(cfg: DaemonConfig, ready: asyncio.Event | None = None) -> None:
    store = await asyncio.to_thread(open_store, cfg)
    daemon = Daemon(store, threads=cfg.threads)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    http_server = None
    try:
        lines = []
        want_host, want_port = split_address(cfg.listen)
        host, port = await daemon.start(want_host, want_port)
        lines.append(f"{host}:{port} (native)")
        if cfg.peer:  # other daemons: mutual TLS when certificates are given
            peer_ssl = None
            if cfg.peer_cert and cfg.peer_key and cfg.peer_ca:
                peer_ssl = server_context(cfg.peer_cert, cfg.peer_key, cfg.peer_ca)
            phost, pport = await daemon.start(*split_address(cfg.peer), peer_ssl)
            lines.append(f"{phost}:{pport} (peer)")
        http_addr = cfg.http or f"{host}:{want_port + 1 if want_port else 0}"
        if http_addr != "off":
            app = make_app(
                daemon.store, daemon.run, lambda ns, n: _current(daemon, ns, n),
                ticket_key=(lambda: _ticket_key(daemon)) if cfg.master else None,
                open_unsigned=is_loopback(split_address(http_addr)[0]),
            )  # fmt: skip
            http_server, (hhost, hport) = await start_http(app, http_addr)
            lines.append(f"{hhost}:{hport} (http)")
        print("shoal daemon listening on " + ", ".join(lines), flush=True)
        if cfg.master:
            daemon.cluster = _membership(cfg, store, lines)
            daemon.replication = Replication(
                daemon, daemon.cluster, daemon.cluster.ssl, interval=cfg.recovery_interval,
                rate=cfg.recovery_rate, scrub_interval=cfg.scrub_interval,
            )  # fmt: skip
            daemon.replication.start()
            daemon.cluster.start()
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("stopping")
    finally:
        if http_server is not None:
            with contextlib.suppress(Exception):
                await stop_http(http_server)
        if daemon.replication is not None:
            await daemon.replication.close()
        if daemon.cluster is not None:
            await daemon.cluster.close()
        await daemon.close()
        store.close()
        log.info("stopped")


def _membership(cfg: DaemonConfig, store: ObjectStore, lines: list[str]) -> Membership:
    ctx = None
    if cfg.peer_cert or cfg.peer_key or cfg.peer_ca:
        if not (cfg.peer_cert and cfg.peer_key and cfg.peer_ca):
            raise InvalidArgument("--peer-cert, --peer-key and --peer-ca-cert go together")
        ctx = client_context(cfg.peer_ca, cfg.peer_cert, cfg.peer_key)
    served = {kind.strip("()"): addr for addr, kind in (line.split(" ") for line in lines)}
    uuid = str(store.device.superblock.device_uuid)
    host = cfg.host or socket.gethostname()

    def info() -> dict[str, object]:
        capacity = store.data_blocks * store.block_size
        return {
            "uuid": uuid, "host": host, "address": served["native"],
            "peer_address": served.get("peer", ""), "http_address": served.get("http", ""),
            "capacity": capacity, "used": capacity - store.free_blocks * store.block_size,
        }  # fmt: skip

    return Membership(split_address(cfg.master or ""), info, ctx)


def _ticket_key(daemon: Daemon) -> bytes:
    return daemon.cluster.ticket_key if daemon.cluster is not None else b""


def _current(daemon: Daemon, namespace: str, name: str) -> None:
    if daemon.replication is not None:
        daemon.replication.require_current(namespace, name)


def run_service(main: Coroutine[Any, Any, None]) -> int:
    """Run a server's main coroutine under uvloop, logging to stderr (daemon, master)."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        import uvloop

        uvloop.run(main)
    except ImportError:
        asyncio.run(main)
    return 0


def run(cfg: DaemonConfig) -> int:
    return run_service(serve(cfg))
