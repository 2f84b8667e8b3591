"""`shoal disk ...` run as a user runs it: a real process per command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SHOAL = [sys.executable, "-m", "shoal.cli"]


def shoal(
    *args: str, stdin: bytes | None = None, ok: bool = True
) -> subprocess.CompletedProcess[bytes]:
    p = subprocess.run([*SHOAL, *args], input=stdin, capture_output=True, timeout=120)
    if ok:
        assert p.returncode == 0, p.stderr.decode()
    return p


@pytest.fixture
def dev(tmp_path: Path) -> str:
    path = str(tmp_path / "disk.img")
    out = shoal("disk", "format", path, "--size", "64M").stdout.decode()
    assert "formatted" in out
    return path


def test_put_get_stat_ls_rm(dev: str, tmp_path: Path) -> None:
    src = tmp_path / "blob.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)
    src.write_bytes(data)
    shoal("disk", "put", dev, "big", "--file", str(src))
    shoal("disk", "put", dev, "hello", "--data-literal", "hello world")
    shoal("disk", "put", dev, "piped", "-n", "other", stdin=b"from stdin")
    uid = shoal("disk", "put", dev, "--data-literal", "nameless").stdout.decode().strip()

    assert shoal("disk", "get", dev, "hello").stdout == b"hello world"
    assert shoal("disk", "get", dev, "hello", "--offset", "6", "--length", "3").stdout == b"wor"
    assert shoal("disk", "get", dev, "piped", "-n", "other").stdout == b"from stdin"
    assert shoal("disk", "get", dev, uid, "--uuid").stdout == b"nameless"
    out = tmp_path / "out.bin"
    shoal("disk", "get", dev, "big", "-o", str(out))
    assert out.read_bytes() == data

    info = json.loads(shoal("disk", "stat", dev, "big", "--json").stdout)
    assert info["size"] == len(data) and info["version"] == 1 and len(info["blake3"]) == 64

    names = shoal("disk", "ls", dev).stdout.decode().split()
    assert names == sorted(["big", "hello", uid])
    assert shoal("disk", "ls", dev, "he").stdout.decode().split() == ["hello"]
    assert shoal("disk", "ls", dev, "--limit", "1").stdout.decode().split() == names[:1]

    shoal("disk", "rm", dev, "big", "--discard")
    p = shoal("disk", "get", dev, "big", ok=False)
    assert p.returncode == 1 and b"not found" in p.stderr
    assert b"ok" in shoal("disk", "check", dev).stdout


def test_write_at_and_refs(dev: str) -> None:
    shoal("disk", "write-at", dev, "img", "--offset", "8190", "--data-literal", "XYZW")
    got = shoal("disk", "get", dev, "img").stdout
    assert got == bytes(8190) + b"XYZW"
    ref = "00112233445566778899aabbccddeeff"
    shoal("disk", "ref", dev, "add", "img", ref)
    assert ref in shoal("disk", "stat", dev, "img").stdout.decode()
    assert b"no references left" in shoal("disk", "ref", dev, "rm", "img", ref).stdout
    assert shoal("disk", "get", dev, "img", ok=False).returncode == 1
    p = shoal("disk", "ref", dev, "add", "img", "nothex", ok=False)
    assert p.returncode == 2 and b"32 hex digits" in p.stderr


def test_errors_are_one_clear_line(tmp_path: Path, dev: str) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a device" * 1000)
    p = shoal("disk", "ls", str(junk), ok=False)
    assert p.returncode == 1
    assert (
        p.stderr.decode().startswith("shoal: error:") and "not a shoal device" in p.stderr.decode()
    )
    assert b"Traceback" not in p.stderr
    p = shoal("disk", "get", dev, "hello", "--offset", "-1", ok=False)
    assert p.returncode == 2
    p = shoal("disk", "format", dev, "--size", "1M", ok=False)
    assert p.returncode == 1 and b"--force" in p.stderr
    p = shoal("disk", "put", dev, "x", "--file", str(tmp_path / "missing"), ok=False)
    assert p.returncode == 1 and b"No such file" in p.stderr


def test_format_makes_the_folders_a_new_file_goes_in(tmp_path: Path) -> None:
    """The README's `shoal disk format demo/disk.img --size 1G`, run in a fresh folder, makes
    demo/ (and a --keys path's folders); a folder that cannot be made, or one under /dev, is
    one clear line that names it, and nothing is made."""

    def run(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*SHOAL, "disk", *args], capture_output=True, timeout=120,
                              cwd=tmp_path)  # fmt: skip

    p = run("format", "demo/disk.img", "--size", "64M")
    assert p.returncode == 0, p.stderr.decode()
    assert p.stdout.startswith(b"formatted demo/disk.img: ") and p.stderr == b""
    assert (tmp_path / "demo" / "disk.img.keys").is_file()
    assert run("put", "demo/disk.img", "hello", "--data-literal", "hi").returncode == 0
    assert run("get", "demo/disk.img", "hello").stdout == b"hi"

    p = run("format", "a/b/data.img", "--keys", "fast/x/data.keys", "--size", "8M")
    assert p.returncode == 0, p.stderr.decode()
    assert (tmp_path / "a" / "b" / "data.img").is_file()
    assert (tmp_path / "fast" / "x" / "data.keys").is_file()

    (tmp_path / "plain").write_bytes(b"a file, not a folder")
    p = run("format", "plain/sub/disk.img", "--size", "8M")
    assert p.returncode == 1 and p.stdout == b""
    assert p.stderr == (f"shoal: error: plain/sub/disk.img: cannot make the folder "
                        f"{tmp_path.resolve()}/plain/sub (Not a directory)\n").encode()  # fmt: skip

    missing = "/dev/shoal-test-no-such-folder"
    assert not os.path.exists(missing)
    p = run("format", f"{missing}/disk", "--size", "8M")
    want = f"{missing}/disk: there is no folder {missing} (is the device attached?)"
    assert p.returncode == 1 and p.stderr == f"shoal: error: {want}\n".encode()
    assert not os.path.exists(missing), "no folder is made under /dev"
    p = run("format", "kept.img", "--keys", f"{missing}/kept.keys", "--size", "8M")
    assert p.returncode == 1 and f"there is no folder {missing}".encode() in p.stderr
    assert not (tmp_path / "kept.img").exists(), "a bad --keys is refused before the device"


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("losetup"), reason="needs root")
def test_loop_block_device(tmp_path: Path) -> None:
    backing = tmp_path / "backing.img"
    with open(backing, "wb") as f:
        f.truncate(64 << 20)
    loop = subprocess.run(
        ["losetup", "-f", "--show", str(backing)], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        keys = str(tmp_path / "loop.keys")
        p = shoal("disk", "format", loop, ok=False)
        assert p.returncode == 1 and b"--keys" in p.stderr, "keys never default to /dev/..."
        shoal("disk", "format", loop, "--keys", keys)
        data = os.urandom(5 << 20)
        shoal("disk", "put", loop, "--keys", keys, "obj", stdin=data)
        shoal("disk", "rm", loop, "--keys", keys, "obj", "--discard")
        shoal("disk", "put", loop, "--keys", keys, "obj2", stdin=data)
        assert shoal("disk", "get", loop, "--keys", keys, "obj2").stdout == data
        assert b"ok" in shoal("disk", "check", loop, "--keys", keys).stdout
        info = json.loads(shoal("disk", "info", loop, "--keys", keys, "--json").stdout)
        assert info["data_blocks"] == (64 << 20) // 4096 - 1
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)
