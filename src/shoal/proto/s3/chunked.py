"""A sans-IO decoder of `Content-Encoding: aws-chunked` bodies (SigV4 streaming uploads).

    decoder = ChunkedDecoder.for_context(ctx)     # ctx: sigv4.Context of a STREAMING-* request
    for data in transport_body:
        for piece in decoder.feed(data):          # payload bytes: memoryviews into `data`
            ...write piece...
    trailers = decoder.end()                      # the transport's body ended: checks it all
    decoder.checksum                              # (algorithm, base64) of a trailing checksum

The body, as AWS documents it (sizes in hex, lines end with CRLF):

    signed (STREAMING-AWS4-HMAC-SHA256-PAYLOAD):
        SIZE;chunk-signature=SIG CRLF  DATA CRLF   ...   0;chunk-signature=SIG CRLF  CRLF
    signed with trailer (STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER): the last chunk is
        0;chunk-signature=SIG CRLF  x-amz-checksum-ALG:B64 CRLF
        x-amz-trailer-signature:SIG CRLF  CRLF
    unsigned with trailer (STREAMING-UNSIGNED-PAYLOAD-TRAILER, boto3's default over TLS):
        SIZE CRLF  DATA CRLF   ...   0 CRLF  x-amz-checksum-ALG:B64 CRLF  CRLF

A chunk's signature is HMAC(signing key, "AWS4-HMAC-SHA256-PAYLOAD" \\n timestamp \\n scope \\n
previous signature \\n SHA-256("") \\n SHA-256(DATA)), chained from the request's seed
signature; the trailer's is HMAC(key, "AWS4-HMAC-SHA256-TRAILER" \\n timestamp \\n scope \\n
previous signature \\n SHA-256(the trailer lines, each ending in one \\n)). A trailer line may
end in LF CRLF (some clients send it so): the LF is not part of its value.

THE RULE: every byte `feed` gives out is provisional until `end()` returns. The decoder does
not hold a chunk back until its signature is checked (chunks may be 16 MiB or more: memory
stays bounded by one header line, 4 KiB, and the trailers, 16 KiB); it raises at the end of a
chunk whose signature is wrong, and `end()` raises for a wrong trailing checksum, a wrong
length or a body cut short. So the caller writes the bytes where nothing sees them yet, and
commits nothing (no index entry, no manifest, no part) before `end()` returns; on any S3Error
it throws the written bytes away. `verified` counts the payload bytes whose chunk signatures
have been checked, for a caller that wants to know. Pieces are views into the data fed: use
them before reusing that buffer.

Refusals: bad framing (a size that is not hex, a missing or malformed chunk-signature, no CRLF
after a chunk, an over-long line, a trailer not declared in x-amz-trailer, bytes after the
end): InvalidRequest; a wrong chunk or trailer signature: SignatureDoesNotMatch; a body that
ends early or decodes to other than x-amz-decoded-content-length bytes: IncompleteBody; a
trailing checksum that does not match: BadDigest; a declared trailer that never came:
InvalidRequest. After a refusal every call raises the same error.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
from collections.abc import Sequence

from shoal.proto.s3.checksums import ALGORITHMS, Checksum, decode_declared, verify
from shoal.proto.s3.errors import S3Error
from shoal.proto.s3.sigv4 import Context, Payload

__all__ = ["MAX_LINE", "MAX_TRAILERS", "ChunkedDecoder", "chunk_signature", "trailer_signature"]

MAX_LINE = 4096
MAX_TRAILERS = 16 * 1024
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_SIZE = re.compile(rb"[0-9a-fA-F]{1,16}")
_SIG = re.compile(rb"[0-9a-f]{64}")


def chunk_signature(key: bytes, timestamp: str, scope: str, previous: str, data_sha256: str) -> str:
    sts = f"AWS4-HMAC-SHA256-PAYLOAD\n{timestamp}\n{scope}\n{previous}\n{EMPTY_SHA256}\n"
    return hmac.new(key, (sts + data_sha256).encode(), hashlib.sha256).hexdigest()


def trailer_signature(key: bytes, timestamp: str, scope: str, previous: str, lines: bytes) -> str:
    digest = hashlib.sha256(lines).hexdigest()
    sts = f"AWS4-HMAC-SHA256-TRAILER\n{timestamp}\n{scope}\n{previous}\n{digest}"
    return hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()


class _State(enum.Enum):
    SIZE = "size line"
    DATA = "chunk data"
    CRLF = "CRLF after chunk data"
    TRAILER = "trailer"
    DONE = "done"


def _malformed(why: str) -> S3Error:
    return S3Error("InvalidRequest", f"Malformed aws-chunked body: {why}")


class ChunkedDecoder:
    """aws-chunked bytes in, payload bytes out (see the module's rule on provisional bytes)."""

    def __init__(
        self,
        *,
        signed: bool,
        trailers: Sequence[str] = (),
        signed_trailer: bool = False,
        seed_signature: str = "",
        signing_key: bytes = b"",
        timestamp: str = "",
        scope: str = "",
        decoded_length: int | None = None,
    ) -> None:
        self._signed = signed
        self._signed_trailer = signed_trailer
        self._previous = seed_signature
        self._key = signing_key
        self._timestamp = timestamp
        self._scope = scope
        self._decoded_length = decoded_length
        self._declared = tuple(t.lower() for t in trailers)
        self._checksum: Checksum | None = None
        for name in self._declared:
            algorithm = name.removeprefix("x-amz-checksum-")
            if not name.startswith("x-amz-checksum-") or algorithm not in ALGORITHMS:
                raise S3Error("InvalidRequest", f"Unsupported x-amz-trailer: {name}")
            if self._checksum is not None:
                raise S3Error("InvalidRequest", "Expecting a single trailing x-amz-checksum-")
            self._checksum = Checksum(algorithm)
        self._state = _State.SIZE
        self._line = bytearray()
        self._remaining = 0
        self._chunk_signature = ""
        self._chunk_hash: hashlib._Hash | None = None
        self._trailer_lines: list[bytes] = []
        self._trailer_bytes = 0
        self._error: S3Error | None = None
        self.received = 0  # payload bytes given out
        self.verified = 0  # payload bytes whose chunk signatures are checked
        self.trailers: dict[str, str] = {}
        self.checksum: tuple[str, str] | None = None

    @classmethod
    def for_context(cls, ctx: Context) -> ChunkedDecoder:
        """The decoder of a verified STREAMING-* request; one without
        x-amz-decoded-content-length is refused (MissingContentLength, 411)."""
        if not ctx.payload.streaming:
            raise ValueError(f"not a streaming payload: {ctx.payload}")
        if ctx.decoded_length is None:
            raise S3Error(
                "MissingContentLength",
                "An aws-chunked upload must send x-amz-decoded-content-length.",
            )
        return cls(
            signed=ctx.payload is not Payload.STREAMING_UNSIGNED_TRAILER,
            trailers=ctx.trailers,
            signed_trailer=ctx.payload is Payload.STREAMING_SIGNED_TRAILER,
            seed_signature=ctx.seed_signature,
            signing_key=ctx.signing_key,
            timestamp=ctx.timestamp,
            scope=ctx.scope,
            decoded_length=ctx.decoded_length,
        )

    @property
    def done(self) -> bool:
        """The body's last CRLF has been read (and everything checked but the transport's end)."""
        return self._state is _State.DONE

    def feed(self, data: bytes | bytearray | memoryview) -> list[memoryview]:
        """The payload bytes in `data` (views into it), provisional until `end()`."""
        if self._error is not None:
            raise self._error
        try:
            return self._feed(memoryview(data).cast("B"))
        except S3Error as e:
            self._error = e
            raise

    def end(self) -> dict[str, str]:
        """The transport's body has ended: the trailers, once everything checks out."""
        if self._error is not None:
            raise self._error
        if self._state is not _State.DONE:
            self._error = S3Error(
                "IncompleteBody", f"The aws-chunked body ended in its {self._state.value}."
            )
            raise self._error
        return self.trailers

    def _feed(self, view: memoryview) -> list[memoryview]:
        out: list[memoryview] = []
        pos, size = 0, len(view)
        while pos < size:
            state = self._state
            if state is _State.DATA:
                n = min(self._remaining, size - pos)
                piece = view[pos : pos + n]
                pos += n
                self._remaining -= n
                self.received += n
                if self._chunk_hash is not None:
                    self._chunk_hash.update(piece)
                if self._checksum is not None:
                    self._checksum.update(piece)
                out.append(piece)
                if self._remaining == 0:
                    self._end_chunk()
                    self._state = _State.CRLF
            elif state is _State.CRLF:
                take = 2 - len(self._line)
                self._line += view[pos : pos + take]
                pos += take
                if not b"\r\n".startswith(self._line):
                    raise _malformed("no CRLF after a chunk's data")
                if len(self._line) == 2:
                    self._line.clear()
                    self._state = _State.SIZE
            elif state is _State.DONE:
                raise _malformed("bytes after its end")
            else:
                line, pos = self._take_line(view, pos)
                if line is None:
                    break
                if state is _State.SIZE:
                    self._size_line(line)
                else:
                    self._trailer_line(line)
        return out

    def _take_line(self, view: memoryview, pos: int) -> tuple[bytes | None, int]:
        """A whole line (without its CRLF) from the pending bytes and `view`, or None. A bare
        LF inside a trailer line is kept (some clients end a trailer's value with one)."""
        room = MAX_LINE + 2 - len(self._line)
        window = bytes(view[pos : pos + room])
        start = 0
        while True:
            nl = window.find(b"\n", start)
            if nl < 0:
                if len(window) >= room:
                    raise _malformed("a line longer than 4 KiB")
                self._line += window
                return None, pos + len(window)
            before = window[nl - 1 : nl] if nl else bytes(self._line[-1:])
            if before == b"\r":
                break
            if self._state is not _State.TRAILER:
                raise _malformed("a line not ended by CRLF")
            start = nl + 1
        self._line += window[: nl + 1]
        line = bytes(self._line)
        self._line.clear()
        return line[:-2], pos + nl + 1

    def _size_line(self, line: bytes) -> None:
        size_text, _, extension = line.partition(b";")
        if not _SIZE.fullmatch(size_text):
            raise _malformed(f"chunk size {size_text[:20]!r} is not hex")
        size = int(size_text, 16)
        if self._signed:
            name, eq, signature = extension.partition(b"=")
            if name != b"chunk-signature" or not eq or not _SIG.fullmatch(signature):
                raise _malformed("a chunk without its chunk-signature")
            self._chunk_signature = signature.decode()
            self._chunk_hash = hashlib.sha256()
        if self._decoded_length is not None and self.received + size > self._decoded_length:
            raise S3Error(
                "IncompleteBody",
                "The aws-chunked body holds more than x-amz-decoded-content-length bytes.",
            )
        self._remaining = size
        if size:
            self._state = _State.DATA
        else:
            self._end_chunk()
            self._state = _State.TRAILER

    def _end_chunk(self) -> None:
        if self._chunk_hash is None:
            return
        expected = chunk_signature(
            self._key, self._timestamp, self._scope, self._previous, self._chunk_hash.hexdigest()
        )
        if not hmac.compare_digest(expected, self._chunk_signature):
            raise S3Error("SignatureDoesNotMatch", "A chunk's signature does not match.")
        self._previous = expected
        self._chunk_hash = None
        self.verified = self.received

    def _trailer_line(self, line: bytes) -> None:
        if line:
            self._trailer_bytes += len(line) + 2
            if self._trailer_bytes > MAX_TRAILERS:
                raise _malformed("trailers longer than 16 KiB")
            self._trailer_lines.append(line)
            return
        self._finish()

    def _finish(self) -> None:
        lines = self._trailer_lines
        if self._signed_trailer:
            if not lines or not lines[-1].startswith(b"x-amz-trailer-signature:"):
                raise _malformed("no x-amz-trailer-signature")
            signature = lines.pop()[len(b"x-amz-trailer-signature:") :].strip()
            expected = trailer_signature(
                self._key,
                self._timestamp,
                self._scope,
                self._previous,
                b"".join(line.rstrip(b"\n") + b"\n" for line in lines),
            )
            if not hmac.compare_digest(expected.encode(), signature):
                raise S3Error("SignatureDoesNotMatch", "The trailer's signature does not match.")
        for line in lines:
            name, colon, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if not colon or name not in self._declared or name in self.trailers:
                raise _malformed(f"a trailer not declared in x-amz-trailer: {name!r}")
            self.trailers[name] = value.strip()
        missing = [name for name in self._declared if name not in self.trailers]
        if missing:
            raise S3Error("InvalidRequest", f"The trailing {missing[0]} was not sent.")
        if self._decoded_length is not None and self.received != self._decoded_length:
            raise S3Error(
                "IncompleteBody",
                "The aws-chunked body holds fewer than x-amz-decoded-content-length bytes.",
            )
        if self._checksum is not None:
            name = f"x-amz-checksum-{self._checksum.algorithm}"
            expected_digest = decode_declared(self._checksum.algorithm, self.trailers[name])
            self.checksum = verify(self._checksum, expected_digest)
        self._state = _State.DONE
