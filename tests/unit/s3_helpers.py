"""Helpers for the S3 proto tests: AWS's example key, and requests as boto3 really sends them
(captured before they would reach the network, turned into sigv4.Request values)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
from typing import Any
from urllib.parse import urlsplit

from shoal.proto.s3.sigv2 import signer
from shoal.proto.s3.sigv4 import Request, derive_signing_key

ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def keys(access_key: str, date: str, region: str, service: str) -> bytes | None:
    """The signing_key callable of a gateway that knows only AWS's example key."""
    if access_key != ACCESS_KEY:
        return None
    return derive_signing_key(SECRET, date, region, service)


def secrets(access_key: str) -> str | None:
    return SECRET if access_key == ACCESS_KEY else None


sign_v2 = signer(secrets)  # what the master's s3_sign_v2 does for a gateway


def to_request(method: str, url: str, headers: Any) -> Request:
    parts = urlsplit(url)
    pairs = []
    for k, v in headers.items():
        value = v.decode() if isinstance(v, bytes) else str(v)
        pairs.append((k.lower(), value))
    return Request(method, parts.path, parts.query, tuple(pairs))


def boto_request(
    operation: str, endpoint: str = "https://s3.example.com:9000", **params: Any
) -> tuple[Request, bytes]:
    """The request boto3's client sends for `operation`, and its body, as the wire has them."""
    client = _client(endpoint)
    with contextlib.suppress(_Captured):
        getattr(client, operation)(**params)
    request = _sent.pop()
    body = request.body
    if body is None:
        data = b""
    elif isinstance(body, bytes | bytearray):
        data = bytes(body)
    elif isinstance(body, str):
        data = body.encode()
    else:
        data = body.read()
    return to_request(request.method, request.url, request.headers), data


_sent: list[Any] = []


@functools.cache
def _client(endpoint: str, capture: bool = True) -> Any:
    import boto3
    from botocore.config import Config

    def send(request: Any, **_: Any) -> None:
        _sent.append(request)
        raise _Captured

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )
    if capture:
        client.meta.events.register("before-send.s3.*", send)
    return client


class _Captured(Exception):
    pass


def encode_chunked(
    payload: bytes,
    sizes: list[int],
    *,
    key: bytes | None = None,
    seed: str = "",
    timestamp: str = "",
    scope: str = "",
    trailer: tuple[str, str] | None = None,
) -> bytes:
    """An aws-chunked body as a client writes it: chunks of `sizes` (then the rest), signed
    with `key` from `seed` when a key is given, and one trailer when given."""
    from shoal.proto.s3.chunked import chunk_signature, trailer_signature

    pieces, rest = [], payload
    for n in sizes:
        if rest:
            pieces.append(rest[:n])
            rest = rest[n:]
    if rest:
        pieces.append(rest)
    pieces.append(b"")
    out, previous = bytearray(), seed
    for piece in pieces:
        out += b"%x" % len(piece)
        if key is not None:
            previous = chunk_signature(
                key, timestamp, scope, previous, hashlib.sha256(piece).hexdigest()
            )
            out += b";chunk-signature=" + previous.encode()
        out += b"\r\n" + piece
        if piece:
            out += b"\r\n"
    if trailer is not None:
        line = f"{trailer[0]}:{trailer[1]}".encode()
        out += line + b"\r\n"
        if key is not None:
            signature = trailer_signature(key, timestamp, scope, previous, line + b"\n")
            out += b"x-amz-trailer-signature:" + signature.encode() + b"\r\n"
    out += b"\r\n"
    return bytes(out)


def boto_parse(operation: str, body: bytes, status: int = 200) -> dict[str, Any]:
    """`body` as boto3's client would read it in the answer to `operation`."""
    from botocore.parsers import RestXMLParser

    model = _client("https://s3.example.com:9000").meta.service_model.operation_model(operation)
    response = {"body": body, "headers": {}, "status_code": status, "context": {}}
    parsed: dict[str, Any] = RestXMLParser().parse(response, model.output_shape)
    return parsed


def boto_answer(
    operation: str, body: bytes, status: int = 200, **params: Any
) -> tuple[Request, dict[str, Any]]:
    """What boto3's client makes of `body` as the answer to `operation` (its handlers run:
    a listing's url-encoded names decoded), and the request it sent."""
    from botocore.awsrequest import AWSResponse

    client = _client("https://answers.example.com:9000", capture=False)
    sent: list[Any] = []

    class Raw:
        def stream(self, **_: Any) -> Any:
            yield body

    def answer(request: Any, **_: Any) -> AWSResponse:
        sent.append(request)
        return AWSResponse(request.url, status, {"content-type": "application/xml"}, Raw())

    client.meta.events.register("before-send.s3.*", answer)
    try:
        parsed: dict[str, Any] = getattr(client, operation)(**params)
    finally:
        client.meta.events.unregister("before-send.s3.*", answer)
    return to_request(sent[0].method, sent[0].url, sent[0].headers), parsed
