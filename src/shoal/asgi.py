"""ASGI plumbing shared by the daemon's read endpoint and the gateways: the types, and an
HTTP server (uvicorn with httptools) started inside the caller's event loop on a socket it
makes, so that port 0 works and the real address is known."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from shoal.errors import InvalidArgument

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def split_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise InvalidArgument(f"an address is HOST:PORT, not {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


async def start_http(app: App, address: str) -> tuple[Any, tuple[str, int]]:
    """Serve `app` on `address` (HOST:PORT, port 0 for any); the uvicorn server (stop it with
    `stop_http`) and the address it listens on."""
    import uvicorn

    host, port = split_address(address)
    sock = socket.create_server((host, port), reuse_port=False, backlog=1024)
    config = uvicorn.Config(
        app, http="httptools", lifespan="off", log_level="warning", access_log=False,
        proxy_headers=False,  # (X-Forwarded-* are not ours to trust)
    )  # fmt: skip
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=[sock])
    name = sock.getsockname()
    return server, (name[0], name[1])


async def stop_http(server: Any) -> None:
    server.should_exit = True
    await server.shutdown()
