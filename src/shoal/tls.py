"""TLS contexts from certificate files (made by `shoal certs`): mutual TLS between the master
and the daemons and between daemons, server-authenticated TLS from clients to the master."""

from __future__ import annotations

import ssl

from shoal.errors import InvalidArgument


def server_context(cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    """A listener's context; with `client_ca`, peers must show a certificate it signed."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(ctx, cert, key)
    if client_ca:
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(ca: str, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    """A connecting side's context: the server must show a certificate `ca` signed; with
    `cert` and `key`, it shows its own (mutual TLS)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_verify_locations(ca)
    except (OSError, ssl.SSLError) as exc:
        raise InvalidArgument(f"cannot load the CA certificate {ca}: {exc}") from None
    ctx.check_hostname = False  # certificates name the cluster's nodes; the CA is the trust
    if cert and key:
        _load(ctx, cert, key)
    return ctx


def _load(ctx: ssl.SSLContext, cert: str, key: str) -> None:
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise InvalidArgument(f"cannot load the certificate {cert} / key {key}: {exc}") from None
