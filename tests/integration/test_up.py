"""`shoal up`, as a new user runs it: in an empty folder, a local cluster with TLS comes up,
the admin key is shown once and kept in ./shoal-data/client.json (mode 0600), `shoal write`
and `shoal read` work there with no flags, Ctrl-C stops everything (exit status 0, no process
left), and the next `shoal up` keeps the data and the key."""

from __future__ import annotations

import json
import re
import socket
import stat
import subprocess
from pathlib import Path

from tests.conftest import SHOAL
from tests.integration.cluster_helpers import (
    eventually_sync,
    pids_under,
    shoal,
)
from tests.integration.up_helpers import Up, up_fixture  # noqa: F401 - (the fixture `up`)

_UP = re.compile(
    r"shoal is up: master (127\.0\.0\.1:\d+) \(TLS\), 3 of 3 daemons up, pools: default\b.*\n"
)
_KEY = re.compile(r"admin key \(shown once; also in shoal-data/client\.json, mode 0600\):\n"
                  r"  access key: (\S+)\n  secret key: (\S+)\n")  # fmt: skip


def test_shoal_up_first_start_stop_and_restart(up: Up, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[bytes]:
        return shoal(*args, env=up.env, cwd=tmp_path)

    # first start: the admin key, shown once, and a client config only we can read
    out = up.start()
    key = _KEY.search(out)
    assert key, out
    m = _UP.search(out)
    assert m, out
    data = tmp_path / "shoal-data"
    config = data / "client.json"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    cfg = json.loads(config.read_text())
    assert (cfg["master"], cfg["access_key"], cfg["secret_key"]) == (m[1], key[1], key[2])
    assert (tmp_path / cfg["ca_cert"]).is_file()
    assert len(up.children) == 6, "a master, three daemons, the HTTP and the S3 gateway"

    # the HTTP gateway, as the seed's curl commands use it
    gw = re.search(r"HTTP gateway \(minikeyvalue API\) on http://(\S+)/", out)
    assert gw, out
    base = f"http://{gw[1]}"
    curl = ["curl", "-sS", "-w", "%{http_code}"]
    put = subprocess.run([*curl, "-d", "bar", "-X", "PUT", f"{base}/foo"], capture_output=True)
    assert put.stdout == b"201", put
    got = subprocess.run([*curl, "-L", f"{base}/foo"], capture_output=True)
    assert got.stdout == b"bar200", got
    listed = subprocess.run(["curl", "-sS", f"{base}/?list"], capture_output=True)
    assert json.loads(listed.stdout) == {"next": "", "keys": ["/foo"]}  # (before S3's)
    assert (data / "index.db").is_file()
    log = data / "http.log"  # (the request log is written out in batches)
    eventually_sync(lambda: log.read_text(), lambda t: '"key": "foo"' in t, timeout=5)

    # the S3 gateway, with the admin key, over the same pool and index
    s3 = re.search(r"S3 gateway on http://(\S+)/ \(region us-east-1\), pool default", out)
    assert s3, out
    import boto3

    c = boto3.client("s3", endpoint_url=f"http://{s3[1]}", aws_access_key_id=key[1],
                     aws_secret_access_key=key[2], region_name="us-east-1")  # fmt: skip
    c.create_bucket(Bucket="from-up")
    c.put_object(Bucket="from-up", Key="s3/key", Body=b"through S3")
    got = subprocess.run([*curl, "-L", f"{base}/from-up/s3/key"], capture_output=True)
    assert got.stdout == b"through S3200", got
    assert [o["Key"] for o in c.list_objects_v2(Bucket="from-up")["Contents"]] == ["s3/key"]

    # the README's pool on shoal up's one host (its pools' failure domain is the daemon)
    made = run("pool", "create", "photos", "--replicas", "3", "--pg-num", "256").stdout
    assert b"failure domain daemon" in made, made
    run("write", "--pool", "photos", "p", "--data-literal", "in photos")
    assert run("read", "--pool", "photos", "p").stdout == b"in photos"

    # from that folder, with no flags at all
    run("write", "hello", "--data-literal", "hello world")
    assert run("read", "hello").stdout == b"hello world"
    status = eventually_sync(  # (the daemons catch up with the new pool's map first)
        lambda: [line.strip() for line in run("status").stdout.decode().splitlines()],
        lambda st: "health: HEALTH_OK" in st, timeout=20,
    )  # fmt: skip
    assert "daemons: 3 daemons: 3 up, 3 in" in status
    assert "pools:   2 pools, 384 pgs" in status

    # Ctrl-C: exit status 0, nothing left running
    assert up.interrupt() == 0
    assert "stopping ..." in up.stderr()
    assert pids_under(tmp_path) == []

    # the next start: no key shown (it is kept), the same data
    out = up.start()
    assert "admin key" not in out and "secret" not in out, out
    m = _UP.search(out)
    assert m, out
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    cfg2 = json.loads(config.read_text())
    assert (cfg2["master"], cfg2["access_key"], cfg2["secret_key"]) == (m[1], key[1], key[2])
    assert run("read", "hello").stdout == b"hello world"

    def counts() -> list[str]:
        text = run("status").stdout.decode()
        return re.findall(r"daemons: \d+ daemons: \d+ up, \d+ in", text)

    eventually_sync(counts, lambda c: c == ["daemons: 3 daemons: 3 up, 3 in"], timeout=10)
    for i in range(3):  # (each daemon's data file was made once)
        assert (data / f"daemon{i}.log").read_text().count("creating ") == 1
    assert up.interrupt() == 0
    assert pids_under(tmp_path) == []


def test_client_config_works_from_another_folder(up: Up, tmp_path: Path) -> None:
    up.start()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**up.env, "SHOAL_CONFIG": str(tmp_path / "shoal-data" / "client.json")}
    try:
        p = shoal("status", env=env, cwd=elsewhere, ok=False)
        assert p.returncode == 0, p.stderr.decode()
    finally:
        assert up.interrupt() == 0


def test_a_failed_first_start_can_be_run_again(up: Up, tmp_path: Path) -> None:
    """The gateway's port is taken at the first start: `shoal up` fails after the master has
    its admin key, says which port, and leaves nothing running; once the port is free the next
    `shoal up` works, with the key the first one showed."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = up.start("--http-port", str(port), ok=False)
        assert up.proc is not None
        assert up.proc.returncode == 1
        err = up.stderr()
        assert f"port {port}" in err and "--http-port chooses another" in err, err
        assert pids_under(tmp_path) == [], "a failed start leaves nothing running"
    key = _KEY.search(out)
    assert key, out + err  # (shown by the first start, and kept)
    cfg = json.loads((tmp_path / "shoal-data" / "client.json").read_text())
    assert (cfg["access_key"], cfg["secret_key"]) == (key[1], key[2])

    out = up.start("--http-port", str(port))
    assert "admin key" not in out, out
    p = shoal("status", env=up.env, cwd=tmp_path)  # (with the key of the first start)
    assert b"HEALTH_OK" in p.stdout
    assert up.interrupt() == 0


def test_a_failed_master_start_can_be_run_again(up: Up, tmp_path: Path) -> None:
    """The master's own port is taken: the admin key was made before it, and kept."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        base = taken.getsockname()[1]  # the master's peer port is --base-port itself
        out = up.start("--base-port", str(base), ok=False)
        assert up.proc is not None
        assert up.proc.returncode == 1
        assert "master did not start" in up.stderr(), up.stderr()
    assert pids_under(tmp_path) == []
    assert "admin key" in out  # (before the master was tried)
    out = up.start()
    assert "admin key" not in out, out
    assert b"HEALTH_OK" in shoal("status", env=up.env, cwd=tmp_path).stdout
    assert up.interrupt() == 0


def test_the_printed_commands_work_as_printed(up: Up, tmp_path: Path) -> None:
    """`shoal up --data DIR` from one folder: every "try:" line it prints works from there,
    as a user pastes it (bash), with no config in that folder."""
    data = tmp_path / "srv" / "shoal"
    out = up.start("--data", str(data))
    tries = re.search(r"  try:  (.*?)\nCtrl-C", out, re.S)
    assert tries, out
    lines = [line.strip() for line in tries[1].splitlines()]
    assert any(line.startswith("shoal write") for line in lines), lines
    script = "set -e\n" + "\n".join(lines)
    env = {**up.env, "PATH": f"{Path(SHOAL[0]).parent}:{up.env['PATH']}"}
    p = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                       timeout=120)  # fmt: skip
    assert p.returncode == 0, p.stderr.decode()
    assert b"bar" in p.stdout and b"hello world" in p.stdout, p.stdout
    assert b"HEALTH_OK" in p.stdout
    # and from yet another folder, a plain command finds the cluster too
    other = tmp_path / "other"
    other.mkdir()
    assert shoal("read", "hello", env=env, cwd=other).stdout == b"hello world"
    assert up.interrupt() == 0


def test_a_second_shoal_up_on_the_folder_is_refused(up: Up, tmp_path: Path) -> None:
    """A second `shoal up` on a running one's folder is refused, and leaves the first one's
    processes, status and config as they were (a third is refused as well)."""
    up.start()
    before = (up.data / "up.json").read_text(), (up.data / "client.json").read_text()
    assert up.proc is not None
    for _ in range(2):
        p = subprocess.run([*SHOAL, "up", "--base-port", "0", "--size", "256M"], cwd=tmp_path,
                           env=up.env, capture_output=True, timeout=60)  # fmt: skip
        assert p.returncode == 1, p
        assert f"another `shoal up` (pid {up.proc.pid}) is running".encode() in p.stderr
    assert ((up.data / "up.json").read_text(), (up.data / "client.json").read_text()) == before
    assert len([p for p in up.processes().values() if p["state"] == "up"]) == 6
    assert b"HEALTH_OK" in shoal("status", env=up.env, cwd=tmp_path).stdout
    assert up.interrupt() == 0
