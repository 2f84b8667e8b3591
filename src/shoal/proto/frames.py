"""The native protocol's frames, sans-IO: bytes in, events out; values in, bytes out.

A frame is a 32-byte header, a msgpack map ("meta") and a raw payload:

    magic "SHL" | version u8 | flags u8 | op u8 | status u16 | request id u32 | epoch u64
    | meta length u32 | payload length u64        (little-endian)

Requests and responses are both frames (flag RESPONSE on the latter) and carry the request id
the client chose, so many requests can be in flight on one connection and the replies come
back in any order. `FrameReader.feed` takes whatever arrived on the socket and returns events:
`FrameStart` (header and meta), then the payload as `Payload` pieces that are views into the
bytes fed (never copied here, never assembled whole, so a 1 GiB payload streams), then
`FrameEnd`. Anything that is not a frame (bad magic, another version, an oversized meta or
payload, meta that is not a msgpack map) raises ProtocolError: the connection cannot be
trusted after it and is closed by the caller. Nothing here touches a socket.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import msgpack

from shoal.errors import (
    Conflict,
    DeviceBusy,
    Forbidden,
    FormatError,
    IntegrityError,
    InvalidArgument,
    NoSpace,
    NotAuthenticated,
    NotFound,
    ShoalError,
    StaleMap,
    StoreFailed,
    Unavailable,
)

MAGIC = b"SHL"
VERSION = 1
HEADER = struct.Struct("<3sBBBHIQIQ")
HEADER_SIZE = HEADER.size  # 32
FLAG_RESPONSE = 1
MAX_META = 1 << 20
MAX_PAYLOAD = 1 << 42  # 4 TiB: a sanity bound, servers set their own lower one


class ProtocolError(ShoalError):
    """The peer sent something that is not a valid frame; the connection is closed."""


class Op(IntEnum):
    PING = 0
    PUT = 1
    GET = 2
    WRITE_AT = 3
    STAT = 4
    DELETE = 5
    LIST = 6
    REFS = 7
    # between daemons: recovery and scrub
    SCAN = 8
    HAVE = 9
    PLAN = 10
    # the master's
    REGISTER = 16
    HEARTBEAT = 17
    MAP = 18
    AUTH = 19
    ADMIN = 20


class Status(IntEnum):
    OK = 0
    NOT_FOUND = 1
    NO_SPACE = 2
    INTEGRITY = 3
    FORBIDDEN = 4
    INVALID = 5
    CONFLICT = 6
    FAILED = 7
    BUSY = 8
    FORMAT = 9
    PROTOCOL = 10
    INTERNAL = 11
    STALE = 12
    AUTH = 13
    UNAVAILABLE = 14


_ERRORS: dict[Status, type[ShoalError]] = {
    Status.NOT_FOUND: NotFound,
    Status.NO_SPACE: NoSpace,
    Status.INTEGRITY: IntegrityError,
    Status.FORBIDDEN: Forbidden,
    Status.INVALID: InvalidArgument,
    Status.CONFLICT: Conflict,
    Status.FAILED: StoreFailed,
    Status.BUSY: DeviceBusy,
    Status.FORMAT: FormatError,
    Status.PROTOCOL: ProtocolError,
    Status.STALE: StaleMap,
    Status.AUTH: NotAuthenticated,
    Status.UNAVAILABLE: Unavailable,
}
_STATUS = {cls: status for status, cls in _ERRORS.items()}


def status_of(exc: BaseException) -> Status:
    """The status that carries `exc` to the peer (INTERNAL for anything unexpected)."""
    for cls in type(exc).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return Status.INTERNAL


def error_of(status: int, message: str, meta: dict[str, Any] | None = None) -> ShoalError:
    """The exception a client raises for an error status from the peer."""
    if status == Status.STALE:
        return StaleMap(message, int((meta or {}).get("epoch", 0)))
    try:
        cls = _ERRORS.get(Status(status), ShoalError)
    except ValueError:
        cls = ShoalError
    return cls(message)


@dataclass(frozen=True, slots=True)
class Header:
    op: int
    request_id: int
    meta_len: int
    payload_len: int
    response: bool = False
    status: int = 0
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class FrameStart:
    header: Header
    meta: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Payload:
    request_id: int
    data: memoryview


@dataclass(frozen=True, slots=True)
class FrameEnd:
    request_id: int


Event = FrameStart | Payload | FrameEnd


def encode(
    op: int,
    request_id: int,
    meta: dict[str, Any] | None = None,
    payload_len: int = 0,
    *,
    response: bool = False,
    status: int = 0,
    epoch: int = 0,
) -> bytes:
    """The header and meta of a frame; its `payload_len` payload bytes follow it."""
    packed: bytes = msgpack.packb(meta or {}, use_bin_type=True)
    if len(packed) > MAX_META:
        raise InvalidArgument(f"frame meta of {len(packed)} bytes is over {MAX_META}")
    flags = FLAG_RESPONSE if response else 0
    header = HEADER.pack(
        MAGIC, VERSION, flags, op, status, request_id, epoch, len(packed), payload_len
    )
    return header + packed


def encode_error(op: int, request_id: int, exc: BaseException, epoch: int = 0) -> bytes:
    """An error response carrying `exc`'s message."""
    message = str(exc) or type(exc).__name__
    meta: dict[str, Any] = {"error": message}
    if isinstance(exc, StaleMap):
        meta["epoch"] = exc.epoch
    return encode(op, request_id, meta, response=True, status=status_of(exc), epoch=epoch)


class FrameReader:
    """Incremental decoder. `feed(data)` returns the events completed by `data`."""

    def __init__(self, max_payload: int = MAX_PAYLOAD, max_meta: int = MAX_META) -> None:
        self.max_payload = max_payload
        self.max_meta = max_meta
        self._pending = bytearray()  # a header or meta split across feeds
        self._header: Header | None = None  # set while the meta is awaited
        self._in_payload: Header | None = None  # set while payload bytes are awaited
        self._left = 0

    @property
    def idle(self) -> bool:
        """True between frames (no partial frame buffered)."""
        return not self._pending and self._header is None and self._in_payload is None

    @property
    def payload_left(self) -> int:
        """Payload bytes of the current frame still to come (0 outside a payload)."""
        return self._left if self._in_payload is not None else 0

    @property
    def payload_of(self) -> int | None:
        """The request id of the frame whose payload is coming, or None."""
        return self._in_payload.request_id if self._in_payload is not None else None

    def took(self, n: int) -> list[Event]:
        """`n` payload bytes of the current frame were taken elsewhere (read straight into
        the receiver's buffer): [FrameEnd] once the payload is complete."""
        if self._in_payload is None or not 0 < n <= self._left:
            raise ProtocolError(f"{n} payload bytes taken where {self.payload_left} were due")
        self._left -= n
        if self._left:
            return []
        end, self._in_payload = FrameEnd(self._in_payload.request_id), None
        return [end]

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        events: list[Event] = []
        mv = memoryview(data).cast("B")
        pos = 0
        end = len(mv)
        while pos < end or (self._in_payload is not None and self._left == 0):
            if self._in_payload is not None:
                take = min(self._left, end - pos)
                if take:
                    events.append(Payload(self._in_payload.request_id, mv[pos : pos + take]))
                    pos += take
                    self._left -= take
                if self._left == 0:
                    events.append(FrameEnd(self._in_payload.request_id))
                    self._in_payload = None
                continue
            want = HEADER_SIZE if self._header is None else self._header.meta_len
            if self._header is None:  # refuse garbage as soon as its first bytes show it
                head = bytes(self._pending[:3]) + bytes(mv[pos : pos + 3 - len(self._pending)])
                if not MAGIC.startswith(head[:3]):
                    raise ProtocolError(f"not a shoal frame (starts with {head!r})")
            if self._pending or end - pos < want:
                take = min(want - len(self._pending), end - pos)
                self._pending += mv[pos : pos + take]
                pos += take
                if len(self._pending) < want:
                    break
                chunk: bytes | memoryview = bytes(self._pending)
                self._pending.clear()
            else:
                chunk = mv[pos : pos + want]
                pos += want
            if self._header is None:
                self._header = self._parse_header(chunk)
                if self._header.meta_len:
                    continue
                chunk = b""
            header, self._header = self._header, None
            events.append(FrameStart(header, self._parse_meta(chunk) if chunk else {}))
            self._in_payload, self._left = header, header.payload_len
        return events

    def _parse_header(self, raw: bytes | memoryview) -> Header:
        magic, version, flags, op, status, rid, epoch, meta_len, payload_len = HEADER.unpack(raw)
        if magic != MAGIC:
            raise ProtocolError(f"not a shoal frame (starts with {bytes(raw[:8])!r})")
        if version != VERSION:
            raise ProtocolError(f"protocol version {version}; this shoal speaks {VERSION}")
        if meta_len > self.max_meta:
            raise ProtocolError(f"frame meta of {meta_len} bytes is over {self.max_meta}")
        if payload_len > self.max_payload:
            raise ProtocolError(
                f"frame payload of {payload_len} bytes is over the limit of {self.max_payload}"
            )
        return Header(op, rid, meta_len, payload_len, bool(flags & FLAG_RESPONSE), status, epoch)

    @staticmethod
    def _parse_meta(raw: bytes | memoryview) -> dict[str, Any]:
        try:
            meta = msgpack.unpackb(raw, raw=False, strict_map_key=True)
        except Exception as exc:  # msgpack raises several unrelated types
            raise ProtocolError(f"frame meta is not valid msgpack ({exc})") from None
        if not isinstance(meta, dict):
            raise ProtocolError("frame meta is not a map")
        return meta
