"""The S3 gateway judged by the tools people use from a shell: the aws CLI (`aws s3` and `aws
s3api`), s3cmd (SigV4 and SigV2) and rclone, against a cluster started by `shoal up` itself
(up_helpers.Up), with a key made as an operator makes one (`shoal key create --rights
default=rwd`). Each tool reads only the files the test writes (AWS_CONFIG_FILE and
AWS_SHARED_CREDENTIALS_FILE, s3cmd -c, RCLONE_CONFIG), with a HOME of the test's and no AWS_*
or RCLONE_* variable of ours; whatever comes back down is compared byte for byte with what
went up. The files stay under each tool's multipart threshold (8 MiB for the aws CLI; s3cmd
and rclone are told not to split), so one PUT carries each, except in the multipart tests: a
file of 23 MiB sent by each tool in parts of 5 MiB, and copied within the gateway in parts,
its ETag S3's (the MD5 of the parts' MD5s, -5)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest

from tests.integration.cluster_helpers import shoal, shoal_env
from tests.integration.up_helpers import Up

KiB, MiB = 1 << 10, 1 << 20
BIN = Path(sys.executable).parent  # (the venv's: its aws and s3cmd)
# rclone: one try per call (a failure is the test's, not a retry's)
RCLONE = ["rclone", "--retries", "1", "--low-level-retries", "1"]
PART = 5 * MiB  # each tool's part size in the multipart tests (S3's least)


@dataclass
class Tools:
    """The gateway's address, the key the tools sign with, and the environment they run in."""

    endpoint: str  # http://127.0.0.1:PORT
    access: str
    secret: str
    home: Path
    env: dict[str, str]

    def run(self, *argv: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(argv, env=self.env, cwd=self.home, capture_output=True, text=True,
                           timeout=300)  # fmt: skip
        if ok:
            assert p.returncode == 0, (
                f"{shlex.join(argv)}: exit {p.returncode}\n{p.stdout}{p.stderr}"
            )
        return p

    def aws(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("aws", "--endpoint-url", self.endpoint, *args, ok=ok)

    def api(self, *args: str) -> dict[str, Any]:
        """`aws s3api ...`: its JSON answer."""
        out = self.aws("s3api", *args).stdout
        doc: dict[str, Any] = json.loads(out) if out.strip() else {}
        return doc

    def s3cmd(self, sigv2: bool, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        config = self.home / ("s3cfg-v2" if sigv2 else "s3cfg-v4")
        return self.run("s3cmd", "-c", str(config), *args, ok=ok)

    def rclone(
        self, *args: str, ok: bool = True, cutoff: str = "1G"
    ) -> subprocess.CompletedProcess[str]:
        """rclone, with files up to `cutoff` sent in one PUT, larger ones in parts of PART."""
        return self.run(*RCLONE, "--s3-upload-cutoff", cutoff, "--s3-chunk-size", "5M", *args,
                        ok=ok)  # fmt: skip


def _write_configs(home: Path, port: str, access: str, secret: str) -> dict[str, str]:
    """Each tool's config, in `home`; the variables that point the tools at them."""
    aws = home / "aws"
    aws.mkdir()
    (aws / "config").write_text(  # (files from 8 MiB in parts of PART; the default is 8 MiB)
        "[default]\nregion = us-east-1\noutput = json\n"
        "s3 =\n    multipart_threshold = 8MB\n    multipart_chunksize = 5MB\n"
    )
    (aws / "credentials").write_text(
        f"[default]\naws_access_key_id = {access}\naws_secret_access_key = {secret}\n"
    )
    for name, v2 in (("s3cfg-v4", False), ("s3cfg-v2", True)):
        (home / name).write_text(
            f"[default]\naccess_key = {access}\nsecret_key = {secret}\n"
            f"host_base = 127.0.0.1:{port}\nhost_bucket = 127.0.0.1:{port}\n"
            f"use_https = False\nsignature_v2 = {v2}\nbucket_location = us-east-1\n"
        )
    (home / "rclone.conf").write_text(
        f"[shoal]\ntype = s3\nprovider = Other\naccess_key_id = {access}\n"
        f"secret_access_key = {secret}\nendpoint = http://127.0.0.1:{port}\n"
        "region = us-east-1\nforce_path_style = true\n"
    )
    return {
        "HOME": str(home),
        "AWS_CONFIG_FILE": str(aws / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(aws / "credentials"),
        "RCLONE_CONFIG": str(home / "rclone.conf"),
    }


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tools]:
    """`shoal up` (its S3 gateway on a free port), a key with r, w and d on the pool default,
    and the tools' configs for it."""
    for tool in ("aws", "s3cmd", "rclone"):
        assert shutil.which(tool, path=f"{BIN}:{os.environ['PATH']}"), (
            f"{tool} is not installed: `make install-test` installs it"
        )
    folder = tmp_path_factory.mktemp("up")
    up = Up(folder, shoal_env(folder / "home"))
    try:
        out = up.start()
        m = re.search(r"S3 gateway on http://(127\.0\.0\.1:(\d+))/", out)
        assert m, out
        config = str(up.data / "client.json")
        made = shoal("key", "create", "--rights", "default=rwd", "--config", config,
                     env=up.env, cwd=folder).stdout.decode()  # fmt: skip
        key = re.search(r"access key: (\S+)\nsecret key: (\S+)", made)
        assert key, made
        home = folder / "tools-home"
        home.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))}
        env.update(_write_configs(home, m[2], key[1], key[2]), PATH=f"{BIN}:{env['PATH']}")
        yield Tools(f"http://{m[1]}", key[1], key[2], home, env)
    finally:
        up.kill()
        for blocks in up.data.glob("daemon*/blocks"):
            blocks.unlink()


# -- files -------------------------------------------------------------------------------------


def make_tree(root: Path, seed: int) -> dict[str, bytes]:
    """A folder of a few files, two levels deep, from a few bytes to a MiB, one with a name
    that each tool must encode (in its URL, its signature, its listing); what it holds."""
    rnd = random.Random(seed)
    files = {
        "a.bin": rnd.randbytes(3000),
        "notes.txt": b"a few words\n",
        "sub/odd name+é%~=&;.txt": b"odd",
        "sub/b.bin": rnd.randbytes(300 * KiB),
        "sub/deeper/c.bin": rnd.randbytes(MiB + 7),
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root`, by its path relative to it."""
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def sizes(files: dict[str, bytes], prefix: str = "") -> dict[str, int]:
    return {prefix + name: len(data) for name, data in files.items()}


# -- the aws CLI -------------------------------------------------------------------------------


def aws_ls(tools: Tools, *args: str) -> tuple[list[str], dict[str, int]]:
    """`aws s3 ls ...`: its PRE lines and its objects' sizes (by the name it shows)."""
    prefixes, objects = [], {}
    for line in tools.aws("s3", "ls", *args).stdout.splitlines():
        if m := re.fullmatch(r"\s+PRE (.+)", line):
            prefixes.append(m[1])
        elif m := re.fullmatch(r"\S+ \S+ +(\d+) (.+)", line):
            objects[m[2]] = int(m[1])
    return prefixes, objects


def sent(out: str, verb: str) -> list[str]:
    """The s3:// side of each `upload:`/`download:`/`delete:` line of `aws s3`'s output."""
    return sorted(re.findall(rf"^{verb}: (?:.* to )?(s3://.+?)(?: to .*)?$", out, re.M))


def test_aws_s3_mb_cp_ls_rm(tools: Tools, tmp_path: Path) -> None:
    files = make_tree(tmp_path / "up", seed=1)
    assert tools.aws("s3", "mb", "s3://aws-cp").stdout.strip() == "make_bucket: aws-cp"

    # one file up (with its content headers and metadata) and down
    tools.aws("s3", "cp", "--no-progress", str(tmp_path / "up/a.bin"), "s3://aws-cp/one/a.bin",
              "--content-type", "image/x-test", "--cache-control", "max-age=60",
              "--metadata", "camera=x100,lens=23mm")  # fmt: skip
    tools.aws("s3", "cp", "--no-progress", "s3://aws-cp/one/a.bin", str(tmp_path / "a.back"))
    assert (tmp_path / "a.back").read_bytes() == files["a.bin"]
    head = tools.api("head-object", "--bucket", "aws-cp", "--key", "one/a.bin")
    assert (head["ContentType"], head["CacheControl"], head["Metadata"], head["ETag"]) == (
        "image/x-test", "max-age=60", {"camera": "x100", "lens": "23mm"},
        f'"{md5(files["a.bin"])}"',
    ), head  # fmt: skip

    # a folder up and down, --recursive
    out = tools.aws("s3", "cp", "--recursive", "--no-progress", str(tmp_path / "up"),
                    "s3://aws-cp/tree/").stdout  # fmt: skip
    assert sent(out, "upload") == sorted(f"s3://aws-cp/tree/{name}" for name in files), out
    tools.aws("s3", "cp", "--recursive", "--no-progress", "s3://aws-cp/tree/",
              str(tmp_path / "down"))  # fmt: skip
    assert tree(tmp_path / "down") == files

    # ls: the buckets, the prefixes of one level, everything under one
    buckets = tools.aws("s3", "ls").stdout.splitlines()
    assert any(re.fullmatch(r"\S+ \S+ aws-cp", line) for line in buckets), buckets
    assert aws_ls(tools, "s3://aws-cp") == (["one/", "tree/"], {})
    assert aws_ls(tools, "s3://aws-cp/tree/") == (
        ["sub/"], {"a.bin": 3000, "notes.txt": len(files["notes.txt"])},
    )  # fmt: skip
    assert aws_ls(tools, "s3://aws-cp/tree/sub/") == (
        ["deeper/"], sizes({k[4:]: v for k, v in files.items() if k.count("/") == 1}),
    )  # fmt: skip
    everything = {"one/a.bin": 3000, **sizes(files, "tree/")}
    assert aws_ls(tools, "--recursive", "s3://aws-cp") == ([], everything)

    # cp and mv within the gateway (CopyObject: the content headers and metadata go along)
    out = tools.aws("s3", "cp", "--no-progress", "s3://aws-cp/one/a.bin",
                    "s3://aws-cp/copied/a.bin").stdout  # fmt: skip
    assert out.strip() == "copy: s3://aws-cp/one/a.bin to s3://aws-cp/copied/a.bin", out
    out = tools.aws("s3", "mv", "--no-progress", "s3://aws-cp/copied/a.bin",
                    "s3://aws-cp/moved/a.bin").stdout  # fmt: skip
    assert out.strip() == "move: s3://aws-cp/copied/a.bin to s3://aws-cp/moved/a.bin", out
    assert tools.api("head-object", "--bucket", "aws-cp", "--key", "moved/a.bin") == head | {
        "LastModified": ANY
    }
    tools.aws("s3", "cp", "--no-progress", "s3://aws-cp/moved/a.bin", str(tmp_path / "moved"))
    assert (tmp_path / "moved").read_bytes() == files["a.bin"]
    tools.aws("s3", "rm", "s3://aws-cp/moved/a.bin")

    # rm: one key, then a prefix --recursive
    out = tools.aws("s3", "rm", "s3://aws-cp/one/a.bin").stdout
    assert sent(out, "delete") == ["s3://aws-cp/one/a.bin"], out
    assert aws_ls(tools, "--recursive", "s3://aws-cp") == ([], sizes(files, "tree/"))
    out = tools.aws("s3", "rm", "--recursive", "s3://aws-cp/tree/sub/").stdout
    in_sub = sorted(f"s3://aws-cp/tree/{name}" for name in files if name.startswith("sub/"))
    assert sent(out, "delete") == in_sub, out
    assert aws_ls(tools, "--recursive", "s3://aws-cp") == (
        [], {"tree/a.bin": 3000, "tree/notes.txt": len(files["notes.txt"])},
    )  # fmt: skip


def test_aws_s3_sync_both_ways_sends_only_what_changed(tools: Tools, tmp_path: Path) -> None:
    local, down = tmp_path / "local", tmp_path / "down"
    files = make_tree(local, seed=2)
    tools.aws("s3", "mb", "s3://aws-sync")
    everything = sorted(f"s3://aws-sync/s/{name}" for name in files)

    out = tools.aws("s3", "sync", "--no-progress", str(local), "s3://aws-sync/s").stdout
    assert sent(out, "upload") == everything, out
    assert tools.aws("s3", "sync", "--no-progress", str(local), "s3://aws-sync/s").stdout == ""
    out = tools.aws("s3", "sync", "--no-progress", "s3://aws-sync/s", str(down)).stdout
    assert sent(out, "download") == everything, out
    assert tree(down) == files
    assert tools.aws("s3", "sync", "--no-progress", "s3://aws-sync/s", str(down)).stdout == ""

    # one file changed: only it goes up, and only it comes down
    (local / "sub/b.bin").write_bytes(b"changed " * 1000)
    out = tools.aws("s3", "sync", "--no-progress", str(local), "s3://aws-sync/s").stdout
    assert sent(out, "upload") == ["s3://aws-sync/s/sub/b.bin"], out
    out = tools.aws("s3", "sync", "--no-progress", "s3://aws-sync/s", str(down)).stdout
    assert sent(out, "download") == ["s3://aws-sync/s/sub/b.bin"], out
    assert tree(down) == tree(local)

    # one file removed: --delete removes it on the other side too
    (local / "a.bin").unlink()
    out = tools.aws("s3", "sync", "--no-progress", "--delete", str(local), "s3://aws-sync/s").stdout
    assert sent(out, "delete") == ["s3://aws-sync/s/a.bin"], out
    tools.aws("s3", "sync", "--no-progress", "--delete", "s3://aws-sync/s", str(down))
    assert tree(down) == tree(local)
    assert aws_ls(tools, "--recursive", "s3://aws-sync")[1] == sizes(tree(local), "s/")


def test_aws_s3_rb_refuses_a_bucket_with_keys_and_force_empties_it(
    tools: Tools, tmp_path: Path
) -> None:
    files = make_tree(tmp_path / "up", seed=3)
    tools.aws("s3", "mb", "s3://aws-rb")
    tools.aws("s3", "cp", "--recursive", "--no-progress", str(tmp_path / "up"), "s3://aws-rb/")
    p = tools.aws("s3", "rb", "s3://aws-rb", ok=False)
    assert p.returncode != 0 and "BucketNotEmpty" in p.stderr, p
    assert aws_ls(tools, "--recursive", "s3://aws-rb")[1] == sizes(files)

    out = tools.aws("s3", "rb", "--force", "s3://aws-rb").stdout
    assert sent(out, "delete") == sorted(f"s3://aws-rb/{name}" for name in files), out
    assert "remove_bucket: aws-rb" in out
    assert not any(line.endswith(" aws-rb") for line in tools.aws("s3", "ls").stdout.splitlines())
    p = tools.aws("s3", "rb", "s3://aws-rb", ok=False)
    assert p.returncode != 0 and "NoSuchBucket" in p.stderr, p


def test_aws_s3api_objects_and_paging(tools: Tools, tmp_path: Path) -> None:
    data = random.Random(4).randbytes(50 * KiB)
    (tmp_path / "body").write_bytes(data)
    tools.api("create-bucket", "--bucket", "aws-api")

    put = tools.api("put-object", "--bucket", "aws-api", "--key", "dir/one", "--body",
                    str(tmp_path / "body"), "--content-type", "text/x-test",
                    "--metadata", "camera=x100")  # fmt: skip
    assert put["ETag"] == f'"{md5(data)}"', put
    head = tools.api("head-object", "--bucket", "aws-api", "--key", "dir/one")
    assert (head["ContentLength"], head["ETag"], head["ContentType"], head["Metadata"]) == (
        len(data), f'"{md5(data)}"', "text/x-test", {"camera": "x100"},
    ), head  # fmt: skip
    got = tools.api("get-object", "--bucket", "aws-api", "--key", "dir/one", str(tmp_path / "got"))
    assert got["ContentLength"] == len(data)
    assert (tmp_path / "got").read_bytes() == data
    got = tools.api("get-object", "--bucket", "aws-api", "--key", "dir/one", "--range",
                    "bytes=100-1123", str(tmp_path / "part"))  # fmt: skip
    assert got["ContentRange"] == f"bytes 100-1123/{len(data)}", got
    assert (tmp_path / "part").read_bytes() == data[100:1124]

    # seven keys under p/, listed by pages of two: the CLI's --max-items and --starting-token
    # over the gateway's continuation tokens
    pages = tmp_path / "pages"
    pages.mkdir()
    keys = [f"p/{i}" for i in range(7)]
    for i in range(7):
        (pages / str(i)).write_bytes(b"x" * i)
    tools.aws("s3", "cp", "--recursive", "--no-progress", str(pages), "s3://aws-api/p/")
    listed: list[str] = []
    token: list[str] = []
    for want in (keys[0:3], keys[3:6], keys[6:]):
        page = tools.api("list-objects-v2", "--bucket", "aws-api", "--prefix", "p/",
                         "--max-items", "3", "--page-size", "2", *token)  # fmt: skip
        got_keys = [o["Key"] for o in page["Contents"]]
        assert got_keys == want, page
        listed += got_keys
        token = ["--starting-token", str(page["NextToken"])] if "NextToken" in page else []
    assert listed == keys and not token
    every = tools.api("list-objects-v2", "--bucket", "aws-api", "--page-size", "2")
    assert [(o["Key"], o["Size"]) for o in every["Contents"]] == (
        [("dir/one", len(data))] + [(k, i) for i, k in enumerate(keys)]
    )
    # and one page as the gateway sends it
    first = tools.api("list-objects-v2", "--bucket", "aws-api", "--prefix", "p/",
                      "--max-keys", "2", "--no-paginate")  # fmt: skip
    assert (first["KeyCount"], first["IsTruncated"]) == (2, True), first
    second = tools.api("list-objects-v2", "--bucket", "aws-api", "--prefix", "p/", "--max-keys",
                       "2", "--no-paginate", "--continuation-token",
                       str(first["NextContinuationToken"]))  # fmt: skip
    assert [o["Key"] for o in second["Contents"]] == keys[2:4], second

    # delete-object, then the key is gone; a missing bucket's head is a 404
    tools.api("delete-object", "--bucket", "aws-api", "--key", "dir/one")
    p = tools.aws("s3api", "head-object", "--bucket", "aws-api", "--key", "dir/one", ok=False)
    assert p.returncode != 0 and "(404)" in p.stderr, p
    left = tools.api("list-objects-v2", "--bucket", "aws-api")
    assert [o["Key"] for o in left["Contents"]] == keys
    p = tools.aws("s3api", "head-bucket", "--bucket", "no-such-bucket", ok=False)
    assert p.returncode != 0 and "(404)" in p.stderr, p


# -- s3cmd -------------------------------------------------------------------------------------


def s3cmd_sent(out: str, verb: str) -> list[str]:
    """The s3:// side of each `upload:`/`download:`/`delete:` line of s3cmd's output."""
    return sorted(re.findall(rf"^{verb}: '(?:[^']*' -> ')?(s3://[^']+)'", out, re.M))


@pytest.mark.parametrize("sigv2", [False, True], ids=["sigv4", "sigv2"])
def test_s3cmd(tools: Tools, tmp_path: Path, sigv2: bool) -> None:
    def s3cmd(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        return tools.s3cmd(sigv2, *args, ok=ok)

    b = "s3cmd-v2" if sigv2 else "s3cmd-v4"

    def ls_r() -> dict[str, int]:
        """`s3cmd ls -r` of the bucket: each key's size."""
        out = s3cmd("ls", "-r", f"s3://{b}").stdout
        return {m[2]: int(m[1]) for m in re.finditer(r"^\S+ \S+ +(\d+)  (s3://.+)$", out, re.M)}

    local, down = tmp_path / "local", tmp_path / "down"
    files = make_tree(local, seed=5)
    assert s3cmd("mb", f"s3://{b}").stdout.strip() == f"Bucket 's3://{b}/' created"

    # put and get: the bytes, what info says of them, a presigned URL of it fetched by curl
    s3cmd("put", "--disable-multipart", "--mime-type", "image/x-test", "--add-header",
          "x-amz-meta-camera:x100", str(local / "a.bin"), f"s3://{b}/one/a.bin")  # fmt: skip
    s3cmd("get", f"s3://{b}/one/a.bin", str(tmp_path / "a.back"))
    assert (tmp_path / "a.back").read_bytes() == files["a.bin"]
    info = s3cmd("info", f"s3://{b}/one/a.bin").stdout
    for line in ("File size: 3000", f"MD5 sum:   {md5(files['a.bin'])}",
                 "MIME type: image/x-test", "x-amz-meta-camera: x100"):  # fmt: skip
        assert f"   {line}\n" in info, info
    assert "   Location:  us-east-1\n" in s3cmd("info", f"s3://{b}").stdout
    url = s3cmd("signurl", f"s3://{b}/one/a.bin", "+600").stdout.strip()
    got = subprocess.run(["curl", "-sS", "--fail", url], capture_output=True, timeout=60)
    assert got.stdout == files["a.bin"], (url, got.stderr)

    # sync up and down, then again with one file changed: only it goes either way
    out = s3cmd("sync", "--disable-multipart", f"{local}/", f"s3://{b}/s/").stdout
    assert s3cmd_sent(out, "upload") == sorted(f"s3://{b}/s/{n}" for n in files), out
    out = s3cmd("sync", f"s3://{b}/s/", f"{down}/").stdout
    assert s3cmd_sent(out, "download") == sorted(f"s3://{b}/s/{n}" for n in files), out
    assert tree(down) == files
    (local / "notes.txt").write_bytes(b"other words, more of them\n")
    out = s3cmd("sync", "--disable-multipart", f"{local}/", f"s3://{b}/s/").stdout
    assert s3cmd_sent(out, "upload") == [f"s3://{b}/s/notes.txt"], out
    out = s3cmd("sync", f"s3://{b}/s/", f"{down}/").stdout
    assert s3cmd_sent(out, "download") == [f"s3://{b}/s/notes.txt"], out
    assert tree(down) == tree(local)

    # ls: the buckets, one level, everything; la: every bucket's first level
    assert f"  s3://{b}\n" in s3cmd("ls").stdout
    top = s3cmd("ls", f"s3://{b}").stdout.splitlines()
    assert [line.split() for line in top] == [["DIR", f"s3://{b}/one/"], ["DIR", f"s3://{b}/s/"]]
    assert ls_r() == {f"s3://{b}/one/a.bin": 3000, **sizes(tree(local), f"s3://{b}/s/")}
    everything = s3cmd("la").stdout
    assert f"DIR  s3://{b}/one/\n" in everything and f"DIR  s3://{b}/s/\n" in everything

    # the tool signs as it was told to
    debug = s3cmd("--debug", "ls", f"s3://{b}").stderr
    assert ("'Authorization': 'AWS " in debug) == sigv2, debug[-2000:]
    assert ("'Authorization': 'AWS4-HMAC-SHA256 " in debug) != sigv2, debug[-2000:]

    # cp and mv within the gateway (CopyObject)
    odd = "sub/odd name+é%~=&;.txt"
    s3cmd("cp", f"s3://{b}/s/{odd}", f"s3://{b}/copied/{odd}")
    s3cmd("mv", f"s3://{b}/one/a.bin", f"s3://{b}/moved/a.bin")
    s3cmd("get", f"s3://{b}/copied/{odd}", str(tmp_path / "copied"))
    s3cmd("get", f"s3://{b}/moved/a.bin", str(tmp_path / "moved"))
    assert (tmp_path / "copied").read_bytes() == files[odd]
    assert (tmp_path / "moved").read_bytes() == files["a.bin"]

    # deletes: sync --delete-removed and del --recursive (DeleteObjects), del of one key
    (local / "a.bin").unlink()
    out = s3cmd("sync", "--delete-removed", f"{local}/", f"s3://{b}/s/").stdout
    assert (s3cmd_sent(out, "delete"), s3cmd_sent(out, "upload")) == ([f"s3://{b}/s/a.bin"], [])
    out = s3cmd("del", f"s3://{b}/moved/a.bin").stdout
    assert s3cmd_sent(out, "delete") == [f"s3://{b}/moved/a.bin"], out
    out = s3cmd("del", "--recursive", "--force", f"s3://{b}/s/").stdout
    assert s3cmd_sent(out, "delete") == sorted(f"s3://{b}/s/{n}" for n in tree(local)), out
    assert ls_r() == {f"s3://{b}/copied/{odd}": len(files[odd])}

    # rb refuses a bucket with keys; rb --recursive empties it first
    p = s3cmd("rb", f"s3://{b}", ok=False)
    assert p.returncode != 0 and "BucketNotEmpty" in p.stderr, p
    out = s3cmd("rb", "--recursive", "--force", f"s3://{b}").stdout
    assert s3cmd_sent(out, "delete") == [f"s3://{b}/copied/{odd}"], out
    assert f"Bucket 's3://{b}/' removed" in out, out
    assert f"s3://{b}\n" not in s3cmd("ls").stdout


# -- rclone ------------------------------------------------------------------------------------


def rclone_files(tools: Tools, path: str) -> dict[str, int]:
    """`rclone lsjson -R`: each file's path and size (checked against its name)."""
    found = {}
    for e in json.loads(tools.rclone("lsjson", "-R", path).stdout):
        assert e["Name"] == e["Path"].rpartition("/")[2], e
        if not e["IsDir"]:
            found[e["Path"]] = e["Size"]
    return found


def copied(err: str) -> list[str]:
    """The files `rclone -v` says it copied."""
    return sorted(re.findall(r"INFO  : (.+?): Copied ", err))


def test_rclone(tools: Tools, tmp_path: Path) -> None:
    local, down = tmp_path / "local", tmp_path / "down"
    files = make_tree(local, seed=6)
    tools.rclone("mkdir", "shoal:rclone-b")
    buckets = json.loads(tools.rclone("lsjson", "shoal:").stdout)
    assert "rclone-b" in [e["Name"] for e in buckets if e["IsDir"]], buckets

    # copy, then check: every file the same (rclone compares sizes and MD5s with the ETags)
    err = tools.rclone("copy", "-v", str(local), "shoal:rclone-b/copy").stderr
    assert copied(err) == sorted(files), err
    err = tools.rclone("check", str(local), "shoal:rclone-b/copy").stderr
    assert "0 differences found" in err and f"{len(files)} matching files" in err, err
    assert rclone_files(tools, "shoal:rclone-b/copy") == sizes(files)
    assert rclone_files(tools, "shoal:rclone-b") == sizes(files, "copy/")

    # sync up, down, then with one file changed and one gone: only those go either way
    err = tools.rclone("sync", "-v", str(local), "shoal:rclone-b/sync").stderr
    assert copied(err) == sorted(files), err
    tools.rclone("sync", "shoal:rclone-b/sync", str(down))
    assert tree(down) == files
    (local / "sub/deeper/c.bin").write_bytes(b"shorter now")
    (local / "a.bin").unlink()
    err = tools.rclone("sync", "-v", str(local), "shoal:rclone-b/sync").stderr
    assert copied(err) == ["sub/deeper/c.bin"], err
    assert re.findall(r"INFO  : (.+?): Deleted", err) == ["a.bin"], err
    err = tools.rclone("check", str(local), "shoal:rclone-b/sync").stderr
    assert "0 differences found" in err, err
    err = tools.rclone("sync", "-v", "shoal:rclone-b/sync", str(down)).stderr
    assert copied(err) == ["sub/deeper/c.bin"], err
    assert tree(down) == tree(local)
    assert rclone_files(tools, "shoal:rclone-b/sync") == sizes(tree(local))

    # delete: the files under a path; purge: the bucket with what is left in it
    tools.rclone("delete", "shoal:rclone-b/copy")
    assert rclone_files(tools, "shoal:rclone-b") == sizes(tree(local), "sync/")
    tools.rclone("purge", "shoal:rclone-b")
    buckets = json.loads(tools.rclone("lsjson", "shoal:").stdout)
    assert "rclone-b" not in [e["Name"] for e in buckets], buckets


# -- multipart: a file above each tool's threshold, sent in parts of PART ----------------------


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with one file of 23 MiB and a bit (5 parts of PART), and a small one."""
    folder = tmp_path_factory.mktemp("big")
    (folder / "big.bin").write_bytes(random.Random(8).randbytes(23 * MiB + 12345))
    (folder / "small.txt").write_bytes(b"one PUT\n")
    return folder


def multipart_etag(data: bytes) -> str:
    """S3's ETag of `data` uploaded in parts of PART: the MD5 of the parts' MD5s, -COUNT."""
    digests = [hashlib.md5(data[i : i + PART]).digest() for i in range(0, len(data), PART)]
    return f'"{hashlib.md5(b"".join(digests)).hexdigest()}-{len(digests)}"'


def test_aws_s3_multipart(tools: Tools, big: Path, tmp_path: Path) -> None:
    data = (big / "big.bin").read_bytes()
    tools.aws("s3", "mb", "s3://aws-big")
    out = tools.aws("s3", "cp", "--no-progress", str(big / "big.bin"), "s3://aws-big/big.bin",
                    "--content-type", "application/x-big", "--metadata", "k=v").stdout  # fmt: skip
    assert sent(out, "upload") == ["s3://aws-big/big.bin"], out
    head = tools.api("head-object", "--bucket", "aws-big", "--key", "big.bin")
    assert (head["ContentLength"], head["ETag"], head["ContentType"], head["Metadata"]) == (
        len(data), multipart_etag(data), "application/x-big", {"k": "v"},
    ), head  # fmt: skip
    # down (the CLI asks for ranges of it at once), and copied within the gateway (in parts too:
    # UploadPartCopy with ranges of the source)
    tools.aws("s3", "cp", "--no-progress", "s3://aws-big/big.bin", str(tmp_path / "down"))
    assert (tmp_path / "down").read_bytes() == data
    tools.aws("s3", "cp", "--no-progress", "s3://aws-big/big.bin", "s3://aws-big/copy.bin")
    copy = tools.api("head-object", "--bucket", "aws-big", "--key", "copy.bin")
    assert (copy["ContentLength"], copy["ETag"]) == (len(data), multipart_etag(data)), copy
    tools.aws("s3", "cp", "--no-progress", "s3://aws-big/copy.bin", str(tmp_path / "copy"))
    assert (tmp_path / "copy").read_bytes() == data
    # sync: the folder goes up, in parts or not, and nothing again
    out = tools.aws("s3", "sync", "--no-progress", str(big), "s3://aws-big/s").stdout
    assert sent(out, "upload") == ["s3://aws-big/s/big.bin", "s3://aws-big/s/small.txt"], out
    assert tools.aws("s3", "sync", "--no-progress", str(big), "s3://aws-big/s").stdout == ""
    assert "Uploads" not in tools.api("list-multipart-uploads", "--bucket", "aws-big")
    tools.aws("s3", "rb", "--force", "s3://aws-big")


@pytest.mark.parametrize("sigv2", [False, True], ids=["sigv4", "sigv2"])
def test_s3cmd_multipart(tools: Tools, big: Path, tmp_path: Path, sigv2: bool) -> None:
    data = (big / "big.bin").read_bytes()
    b = "s3cmd-big-v2" if sigv2 else "s3cmd-big-v4"
    tools.s3cmd(sigv2, "mb", f"s3://{b}")
    tools.s3cmd(sigv2, "put", "--multipart-chunk-size-mb=5", str(big / "big.bin"),
                f"s3://{b}/big.bin")  # fmt: skip
    head = tools.api("head-object", "--bucket", b, "--key", "big.bin")
    assert (head["ContentLength"], head["ETag"]) == (len(data), multipart_etag(data)), head
    tools.s3cmd(sigv2, "get", f"s3://{b}/big.bin", str(tmp_path / "down"))
    assert (tmp_path / "down").read_bytes() == data
    info = tools.s3cmd(sigv2, "info", f"s3://{b}/big.bin").stdout
    assert f"   File size: {len(data)}\n" in info, info
    # sync compares the MD5 s3cmd kept in the object's metadata: nothing is sent again
    out = tools.s3cmd(sigv2, "sync", "--multipart-chunk-size-mb=5", f"{big}/", f"s3://{b}/").stdout
    assert s3cmd_sent(out, "upload") == [f"s3://{b}/small.txt"], out
    tools.s3cmd(sigv2, "rb", "--recursive", "--force", f"s3://{b}")


def test_rclone_multipart(tools: Tools, big: Path, tmp_path: Path) -> None:
    data = (big / "big.bin").read_bytes()
    tools.rclone("mkdir", "shoal:rclone-big")
    err = tools.rclone("copy", "-v", str(big), "shoal:rclone-big/up", cutoff="5M").stderr
    assert copied(err) == ["big.bin", "small.txt"], err
    head = tools.api("head-object", "--bucket", "rclone-big", "--key", "up/big.bin")
    assert (head["ContentLength"], head["ETag"]) == (len(data), multipart_etag(data)), head
    # check: sizes and the MD5 rclone kept in the object's metadata (the ETag is not one)
    err = tools.rclone("check", str(big), "shoal:rclone-big/up").stderr
    assert "0 differences found" in err and "2 matching files" in err, err
    assert rclone_files(tools, "shoal:rclone-big/up") == sizes(tree(big))
    # a copy within the gateway, in parts (UploadPartCopy), and down again
    err = tools.rclone("copy", "-v", "--s3-copy-cutoff", "5M", "shoal:rclone-big/up",
                       "shoal:rclone-big/copy").stderr  # fmt: skip
    assert sorted(re.findall(r"INFO  : (.+?): Copied \(server-side copy\)", err)) == [
        "big.bin", "small.txt",
    ], err  # fmt: skip
    copy = tools.api("head-object", "--bucket", "rclone-big", "--key", "copy/big.bin")
    assert (copy["ContentLength"], copy["ETag"]) == (len(data), multipart_etag(data)), copy
    tools.rclone("copy", "shoal:rclone-big/copy", str(tmp_path / "down"))
    assert tree(tmp_path / "down") == tree(big)
    tools.rclone("purge", "shoal:rclone-big")
