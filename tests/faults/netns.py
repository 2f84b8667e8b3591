"""A network namespace joined to ours by a veth pair, for the fault tests that cut a network.

`veth_namespace()` makes a namespace and a veth pair with unique names (HOST_IP/24 on our
end, NS_IP/24 on its end, both up, and the namespace's loopback up), and removes them when
it ends, even on failure: first every process still in the namespace (ours: only the test
starts processes there), then the veth pair, then the namespace. `Link.cut()` drops every
packet either way on the link without taking it down (a `pfifo` queue of length 0 on both
ends: nothing is refused, nothing arrives, as when a switch dies; `tc qdisc netem` and
iptables need kernel modules that a small VM may lack, a zero-length pfifo does not); the
addresses and routes stay, and traffic inside each side goes on. `Link.heal()` removes the
queues. `spawn_in` starts a `shoal daemon` inside the namespace (`ip netns exec`).

Needs root and iproute2 (`ip`, `tc`, `ss`). Traffic goes only over the veth pair this module
makes (and each namespace's loopback).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from shoal.daemon.process import DaemonProcess, read_until

_ROLE = re.compile(rb"(\S+) \((native|peer|http)\)")
TOOLS = ("ip", "tc", "ss")


def run(*cmd: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """An iproute2 command (in namespace `ns` if given); with `check`, a failure raises with
    the command and what it printed."""
    argv = ["ip", "netns", "exec", ns, *cmd] if ns else list(cmd)
    p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({p.returncode}): {p.stderr.strip()}")
    return p


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


@dataclass
class Link:
    ns: str  # the namespace's name
    host_if: str  # our end of the veth pair
    ns_if: str  # its end, in the namespace
    host_ip: str  # the address of our end
    ns_ip: str  # the address of its end
    is_cut: bool = False

    def argv(self, *cmd: str) -> list[str]:
        """`cmd` run inside the namespace."""
        return ["ip", "netns", "exec", self.ns, *cmd]

    def cut(self) -> None:
        """Drop every packet on the link, both ways (silently: no refusal, no error)."""
        run("tc", "qdisc", "replace", "dev", self.host_if, "root", "pfifo", "limit", "0")
        run("tc", "qdisc", "replace", "dev", self.ns_if, "root", "pfifo", "limit", "0", ns=self.ns)
        self.is_cut = True

    def heal(self) -> None:
        """Let packets through again (idempotent)."""
        for cmd, ns in (
            (("tc", "qdisc", "del", "dev", self.host_if, "root"), None),
            (("tc", "qdisc", "del", "dev", self.ns_if, "root"), self.ns),
        ):
            p = run(*cmd, ns=ns, check=False)
            if p.returncode != 0 and "handle of zero" not in p.stderr:  # (none there: fine)
                raise RuntimeError(f"{' '.join(cmd)} failed: {p.stderr.strip()}")
        self.is_cut = False

    def unsent(self) -> list[str]:
        """TCP connections across the link that still hold bytes the other side has not
        acknowledged (as `ss` shows them, ours then the namespace's): after a heal, such
        bytes may still arrive, late, with the retransmission timer."""
        out = []
        for ns in (None, self.ns):
            p = run("ss", "-tnH", ns=ns)
            for line in p.stdout.splitlines():
                f = line.split()
                if (
                    len(f) >= 5
                    and f[0] not in ("SYN-SENT", "SYN-RECV")  # (a SYN counts as 1, no data)
                    and f[2] != "0"
                    and any(x.startswith(f"{self.ns_ip}:") for x in f[3:5])
                ):
                    out.append(f"{'ns' if ns else 'host'}: {line}")
        return out


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.77.0.0/16 that no interface of ours uses yet."""
    used = run("ip", "-o", "-4", "addr", "show").stdout + run("ip", "-4", "route", "show").stdout
    nets = [ipaddress.IPv4Network(f"10.77.{i}.0/24") for i in range(256)]
    free = [n for n in nets if f"10.77.{n.network_address.packed[2]}." not in used]
    if not free:
        raise RuntimeError("every 10.77.X.0/24 is in use on this machine")
    return random.choice(free)


@contextmanager
def veth_namespace(prefix: str = "shoal") -> Iterator[Link]:
    """A namespace and a veth pair to it, removed on the way out (see the module's doc)."""
    if missing := missing_tools():
        raise RuntimeError(
            f"this test needs iproute2 ({', '.join(missing)} not found on PATH): "
            "apt-get install iproute2"
        )
    tag = secrets.token_hex(3)
    net = _free_subnet()
    host_ip, ns_ip = str(net.network_address + 1), str(net.network_address + 2)
    link = Link(f"{prefix}-{os.getpid()}-{tag}", f"sh{tag}h", f"sh{tag}n", host_ip, ns_ip)
    made_ns = False
    try:
        run("ip", "netns", "add", link.ns)
        made_ns = True
        run("ip", "link", "add", link.host_if, "type", "veth", "peer", "name", link.ns_if,
            "netns", link.ns)  # fmt: skip
        run("ip", "addr", "add", f"{host_ip}/24", "dev", link.host_if)
        run("ip", "link", "set", link.host_if, "up")
        run("ip", "addr", "add", f"{ns_ip}/24", "dev", link.ns_if, ns=link.ns)
        run("ip", "link", "set", link.ns_if, "up", ns=link.ns)
        run("ip", "link", "set", "lo", "up", ns=link.ns)
        yield link
    finally:
        if made_ns:
            for pid in run("ip", "netns", "pids", link.ns, check=False).stdout.split():
                # (a leftover of this test: only it starts processes in there)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        if run("ip", "link", "show", link.host_if, check=False).returncode == 0:
            run("ip", "link", "del", link.host_if, check=False)  # (both ends go)
        if made_ns:
            run("ip", "netns", "del", link.ns, check=False)
        leftover = [
            what
            for what, p in (
                (f"namespace {link.ns}", run("ip", "netns", "list", check=False)),
                (f"interface {link.host_if}", run("ip", "-o", "link", "show", check=False)),
            )
            if (link.ns if what.startswith("namespace") else link.host_if + "@") in p.stdout
        ]
        if leftover:
            raise RuntimeError(f"could not remove {', '.join(leftover)}")


def spawn_in(
    link: Link,
    directory: Path,
    *,
    size: str,
    extra: Sequence[str] = (),
    timeout: float = 60.0,
) -> DaemonProcess:
    """`shoal daemon` inside the namespace, listening (native and peer) on its address, no
    HTTP; waited for until it listens. Its stderr goes to DIR/daemon.log. (`ip netns exec`
    execs the command: the child's PID is the daemon's.)"""
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "daemon.log"
    cmd = link.argv(sys.executable, "-m", "shoal.cli", "daemon", "--dir", str(directory),
                    "--size", size, "--listen", f"{link.ns_ip}:0", "--peer-address",
                    f"{link.ns_ip}:0", "--http", "off", *extra)  # fmt: skip
    with open(log, "ab") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    line = read_until(proc, lambda out: b"\n" in out, timeout)
    proc.stdout.close()
    proc.stdout = None
    roles = {role.decode(): addr.decode() for addr, role in _ROLE.findall(line)}
    if "native" not in roles:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        text = log.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"shoal daemon in {link.ns} did not start: {line!r}\n{text}")
    return DaemonProcess(proc, directory, roles["native"], roles.get("http"), roles.get("peer"))
