"""BlockDevice: one file or raw block device cut into fixed-size blocks.

Block 0 holds the superblock (magic, format version, block size, block count, device uuid,
crc32c of the rest); blocks 1..count-1 are the data area. A device without our superblock, of
another format version or with a damaged superblock is refused with a message that says which.
While open, the device is locked (flock) so a second process cannot open it and corrupt it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import stat
import struct
import time
import uuid as uuidlib
from collections.abc import Sequence
from dataclasses import dataclass

import crc32c

from shoal.errors import DeviceBusy, FormatError, InvalidArgument, NoSpace

BLOCK_SIZE = 4096
MAGIC = b"SHOAL\x00BD"
FORMAT_VERSION = 1
_SB = struct.Struct("<8sIIQ16sd")  # magic, version, block size, block count, uuid, created
_SB_CRC = struct.Struct("<I")

_BLKDISCARD = 0x1277
_BLKZEROOUT = 0x127F
_BLKGETSIZE64 = 0x80081272
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]

# Signatures of other formats, so that a refusal can say what is on the device.
_FOREIGN = (
    (1080, b"\x53\xef", "an ext2/3/4 filesystem"),
    (65600, b"_BHRfS_M", "a btrfs filesystem"),
    (0, b"XFSB", "an XFS filesystem"),
    (510, b"\x55\xaa", "a partition table (MBR)"),
    (512, b"EFI PART", "a partition table (GPT)"),
    (4086, b"SWAPSPACE2", "swap space"),
)


@dataclass(frozen=True, slots=True)
class Superblock:
    block_size: int
    block_count: int
    device_uuid: bytes
    created: float
    version: int = FORMAT_VERSION

    def encode(self) -> bytes:
        body = _SB.pack(
            MAGIC, self.version, self.block_size, self.block_count, self.device_uuid, self.created
        )
        return body + _SB_CRC.pack(crc32c.crc32c(body))

    @classmethod
    def decode(cls, raw: bytes, where: str) -> Superblock:
        if len(raw) < _SB.size + _SB_CRC.size:
            raise FormatError(f"{where} is too small to be a shoal device")
        body = raw[: _SB.size]
        (stored,) = _SB_CRC.unpack_from(raw, _SB.size)
        if raw[:8] != MAGIC:
            if crc32c.crc32c(MAGIC + body[8:]) == stored:
                raise FormatError(f"{where}: the shoal superblock is damaged (its magic number)")
            raise FormatError(f"{where} is not a shoal device: {_describe(raw)}")
        if crc32c.crc32c(body) != stored:
            raise FormatError(f"{where}: the shoal superblock is damaged (checksum mismatch)")
        _, version, block_size, block_count, dev_uuid, created = _SB.unpack(body)
        if version != FORMAT_VERSION:
            raise FormatError(
                f"{where} has shoal device format version {version}; "
                f"this shoal reads version {FORMAT_VERSION}"
            )
        if block_size != BLOCK_SIZE:
            raise FormatError(f"{where} uses block size {block_size}; expected {BLOCK_SIZE}")
        return cls(block_size, block_count, dev_uuid, created, version)


def _describe(raw: bytes) -> str:
    for offset, sig, what in _FOREIGN:
        if raw[offset : offset + len(sig)] == sig:
            return f"it holds {what}"
    if not raw.strip(b"\x00"):
        return "it is unformatted (all zeros); run `shoal disk format` first"
    return (
        "it holds data shoal does not recognise; if none of it is needed, "
        "`shoal disk format --force` erases it"
    )


def _size_of(fd: int, is_blockdev: bool) -> int:
    if is_blockdev:
        buf = bytearray(8)
        fcntl.ioctl(fd, _BLKGETSIZE64, buf)
        return int(struct.unpack("<Q", buf)[0])
    return os.fstat(fd).st_size


class BlockDevice:
    """An open, locked device. Offsets and counts in the public methods are in blocks."""

    def __init__(self, path: str, fd: int, sb: Superblock, is_blockdev: bool) -> None:
        self.path = path
        self.fd = fd
        # A second descriptor for large writes that bypass the page cache (O_DIRECT); -1
        # where the filesystem has no O_DIRECT (tmpfs), and then every write is buffered.
        try:
            self.direct_fd = os.open(path, os.O_RDWR | os.O_DIRECT | os.O_CLOEXEC)
        except OSError:
            self.direct_fd = -1
        self.superblock = sb
        self.block_size = sb.block_size
        self.block_count = sb.block_count
        self.is_blockdev = is_blockdev
        self.zero_block = bytes(sb.block_size)

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    def format(
        cls, path: str, size: int | None = None, *, force: bool = False, sparse: bool = False
    ) -> BlockDevice:
        """Write a fresh superblock. A file of `size` bytes is made if `path` is new (and the
        folders it goes in), its space reserved on the filesystem (unless `sparse`), so that
        a full filesystem can never fail a write the device has room for."""
        exists = os.path.exists(path)
        if not exists and size is None:
            raise InvalidArgument(f"{path} does not exist: give a size to create it")
        if not exists:
            make_parent(path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            _lock(fd, path)
            is_blockdev = stat.S_ISBLK(os.fstat(fd).st_mode)
            if exists and not force:
                head = os.pread(fd, 2 * 65536, 0)
                if head.strip(b"\x00"):
                    what = "it holds a shoal device" if head[:8] == MAGIC else _describe(head)
                    raise FormatError(f"{path} is not empty ({what}); use --force to erase it")
            if size is not None and not is_blockdev:
                os.ftruncate(fd, size)
                if not sparse:
                    _reserve(fd, path, size)
            total = _size_of(fd, is_blockdev)
            count = total // BLOCK_SIZE
            if count < 2:
                raise InvalidArgument(f"{path}: {total} bytes is too small for a device")
            sb = Superblock(BLOCK_SIZE, count, uuidlib.uuid4().bytes, time.time())
            block = sb.encode().ljust(BLOCK_SIZE, b"\x00")
            os.pwrite(fd, block, 0)
            os.fsync(fd)
            if not exists:
                _fsync_dir(path)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, sb, is_blockdev)

    @classmethod
    def open(cls, path: str) -> BlockDevice:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise FormatError(f"{path} does not exist; run `shoal disk format` first") from None
        try:
            _lock(fd, path)
            is_blockdev = stat.S_ISBLK(os.fstat(fd).st_mode)
            sb = Superblock.decode(os.pread(fd, 2 * 65536, 0), path)
            if _size_of(fd, is_blockdev) < sb.block_count * sb.block_size:
                raise FormatError(
                    f"{path} is smaller than its superblock says "
                    f"({sb.block_count} blocks): truncated or the wrong device"
                )
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, sb, is_blockdev)

    def close(self) -> None:
        if self.direct_fd >= 0:
            os.close(self.direct_fd)
            self.direct_fd = -1
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # -- I/O (offsets in blocks) -----------------------------------------------------------

    @property
    def data_start(self) -> int:
        return 1

    def pread(self, block: int, nbytes: int) -> bytes:
        return os.pread(self.fd, nbytes, block * self.block_size)

    def preadv(self, buffers: Sequence[memoryview | bytearray], block: int) -> int:
        return os.preadv(self.fd, buffers, block * self.block_size)

    def pwritev(self, buffers: Sequence[bytes | memoryview], block: int) -> None:
        _write_all(self.fd, buffers, block * self.block_size)

    def pwrite_direct(self, buf: memoryview, block: int) -> None:
        """Write an aligned buffer (whole blocks, page-aligned memory) bypassing the cache."""
        offset = block * self.block_size
        try:
            done = os.pwrite(self.direct_fd, buf, offset)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise NoSpace("the filesystem holding this (sparse) device file is full") from None
            raise
        if done != len(buf):
            _write_all(self.fd, [buf[done:]], offset + done)

    def flush(self) -> None:
        os.fdatasync(self.fd)

    def zero(self, block: int, count: int) -> None:
        """Write zeros over the blocks (durable once `flush` returns)."""
        if self.is_blockdev:
            try:
                fcntl.ioctl(self.fd, _BLKZEROOUT, struct.pack("<QQ", *self._range(block, count)))
                return
            except OSError:
                pass
        chunk = bytes(min(count, 256) * self.block_size)
        end = block + count
        while block < end:
            n = min(end - block, 256)
            os.pwrite(self.fd, memoryview(chunk)[: n * self.block_size], block * self.block_size)
            block += n

    def discard(self, block: int, count: int) -> None:
        """Tell the device the blocks are unused (punch a hole in a file, BLKDISCARD on a disk).

        Falls back to writing zeros where the device cannot discard, so that afterwards the
        blocks read as zeros either way."""
        start, length = self._range(block, count)
        try:
            if self.is_blockdev:
                fcntl.ioctl(self.fd, _BLKDISCARD, struct.pack("<QQ", start, length))
                self.zero(block, count)  # discarded blocks need not read as zeros
            else:
                mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
                if _libc.fallocate(self.fd, mode, start, length) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err))
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL):
                raise
            self.zero(block, count)

    def _range(self, block: int, count: int) -> tuple[int, int]:
        return block * self.block_size, count * self.block_size


def _write_all(fd: int, buffers: Sequence[bytes | memoryview], offset: int) -> None:
    want = sum(len(b) for b in buffers)
    try:
        done = os.pwritev(fd, buffers, offset)
        if done != want:  # a short write: finish it with plain writes of the rest
            rest = b"".join(bytes(b) for b in buffers)[done:]
            while rest:
                n = os.pwrite(fd, rest, offset + done)
                done += n
                rest = rest[n:]
    except OSError as exc:
        if exc.errno == errno.ENOSPC:  # only a sparse device file on a full filesystem
            raise NoSpace("the filesystem holding this (sparse) device file is full") from None
        raise


def _reserve(fd: int, path: str, size: int) -> None:
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise NoSpace(
                f"the filesystem under {path} has no room for {size} bytes "
                "(--sparse makes the file without reserving its space)"
            ) from None
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise


def _lock(fd: int, path: str) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise DeviceBusy(f"{path} is open in another process") from None


def make_parent(path: str) -> None:
    """Make the folder a new file `path` goes in, and any missing above it, each flushed so
    that the file's name survives a crash. Not under /dev: a missing /dev/... is a device
    that is not there (a mistyped name, a disk not attached), never a folder to make."""
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(parent):
        return
    if parent == "/dev" or parent.startswith("/dev/"):
        raise InvalidArgument(f"{path}: there is no folder {parent} (is the device attached?)")
    missing, p = [], parent
    while not os.path.isdir(p) and p != os.path.dirname(p):
        missing.append(p)
        p = os.path.dirname(p)
    try:
        os.makedirs(parent, exist_ok=True)
        for made in reversed(missing):
            _fsync_dir(made)  # (its entry in the folder above)
    except OSError as exc:
        raise InvalidArgument(f"{path}: cannot make the folder {parent} ({exc.strerror})") from None


def _fsync_dir(path: str) -> None:
    dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
