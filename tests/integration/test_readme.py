"""README.md, run: every command line it shows is run as a user would run it, against what it
describes, and what the README says of it is checked, so that the README cannot drift from
the code.

What is a command line: each line of README.md's ```sh blocks (a line ending in `\\` goes on
with the next; a line that is only a comment adds to the comment above it), its ```python
block as a whole, and each command it names in its prose (a backquoted `shoal ...`, `make ...`,
`python ...` or `curl ...` of two words or more). A line's comment (`# 201`, `# bar`, `# prints
the admin key once`) is its claim: the plan below holds, for each line, that comment word for
word and what checks it. The lines are read from README.md when the tests run, section by
section in README order, and each section's test runs them in that order. A line that the
plan neither runs nor lists in NOT_RUN (with the reason) fails
test_every_readme_line_is_run_or_excused, and its section's test; so does a comment that
changed, or an entry of the plan that the README no longer has.

How: bash (`set -e -o pipefail`, so `a; b; c` fails if any fails), from a temporary folder
(with `.venv` there a link to this venv, for `. .venv/bin/activate`), with the venv's bin
first on PATH and HOME a folder of the test's own (no SHOAL_* variables, no XDG_CONFIG_HOME:
cluster_helpers.shoal_env). `export ...` and `. .venv/bin/activate` carry over to the lines
after them, as in one terminal. Servers (`shoal master`, `shoal file-store`, `shoal daemon`,
`shoal http`, `shoal up`) are started as processes of their own (bash exec's them), waited for
by what they print when they listen, and stopped by PID (shoal up with SIGINT, as Ctrl-C).
HOME/.curlrc makes curl quiet and end its output with the request's status (`<<status
201>>`), which the README's comments name; the lines themselves are run as written.

What is rewritten, before a line runs (SUBSTITUTIONS, per section; APPEND): the README's
fixed ports (3000, 4000, 4010, 4148-4150, 6379, 5432) become free ports or port 0 and its
folders (/srv, /var, /tmp/storage, /path/to/local, /fast) ones under the test's temporary
folder; disks are made small (--size); values the README leaves to the reader (`...`,
`5f0c...-uuid`, ACCESS:SECRET) are what the earlier command printed; hosts named `master`,
`gateway` and `db` are 127.0.0.1. `{pN}` is a free port standing for the README's port N:
README ports one or two apart stay as far apart (a daemon's HTTP endpoint defaults to the
port after its native one), chosen below Linux's ephemeral range so that the port-0
listeners of other tests cannot take them meanwhile. A README port that no substitution
rewrites fails the test instead of being used. Addresses 0.0.0.0 stay: the cluster by hand
listens on every interface (on free ports), and the gateway that takes keys is the one that
does not listen on loopback. /dev/loop0 becomes a loop device on a file when the test runs
as root and losetup works; otherwise that line alone is not run. `make up` runs the
Makefile's recipe for `up` (checked to be `$(BIN)/shoal up`, after `install`: this venv).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import blake3
import pytest

from tests.integration.cluster_helpers import all_exited, children_of, shoal_env, stop_process
from tests.servers import postgres_server, redis_server

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
VENV = Path(sys.prefix)
PASSWD = Path("/etc/passwd").read_bytes()
DISK, DISK_BYTES = "64M", 64 << 20  # each new disk (the README's: 1G to 20G, space reserved)
UP_ARGS = f" --base-port 0 --size {DISK}"  # shoal up: free ports (the gateway's too), small disks
CURLRC = 'silent\nshow-error\nwrite-out = "\\n<<status %{http_code}>>\\n"\n'

SECTION_TWO = "Two commands"
SECTION_BY_HAND = "A cluster by hand"
SECTION_HTTP = "The HTTP gateway (minikeyvalue's API)"
SECTION_DAEMON = "One daemon and its client, without a master"
SECTION_ENGINE = "The engine, by hand"
SECTION_S3 = "The S3 gateway"

# README text -> what runs instead, in each section ({NAME}: a free port, or a value printed
# by an earlier line or made by the test; see the docstring).
SUBSTITUTIONS: dict[str, list[tuple[str, str]]] = {
    SECTION_TWO: [
        ("--size 20G", f"--size {DISK}"),
        ("/srv/shoal", "{tmp}/srv/shoal"),
    ],
    SECTION_BY_HAND: [
        ("/var/lib/shoal/", "{tmp}/var/lib/shoal/"),
        ("0.0.0.0:4000", "0.0.0.0:{p4000}"),
        ("0.0.0.0:4010", "0.0.0.0:{p4010}"),
        ("master:4000", "127.0.0.1:{p4000}"),
        ("master:4010", "127.0.0.1:{p4010}"),
        ("0.0.0.0:4148", "0.0.0.0:{p4148}"),
        ("0.0.0.0:4150", "0.0.0.0:{p4150}"),
        ("/tmp/storage", "{tmp}/tmp/storage{disk}"),  # (and tls/daemon1 -> daemonN: one per disk)
        ("SHOAL_ACCESS_KEY=...", "SHOAL_ACCESS_KEY={access}"),
        ("SHOAL_SECRET_KEY=...", "SHOAL_SECRET_KEY={secret}"),
    ],
    SECTION_HTTP: [
        ("localhost:3000", "localhost:{up_port}"),  # shoal up's gateway
        ("/path/to/local/", "{tmp}/path/to/local/"),
        ("--port 3000", "--port 0"),  # (3000 is shoal up's gateway's here)
        ("--port 3001", "--port 0"),
        ("redis://127.0.0.1:6379/0", "{redis}"),
        ("postgresql://shoal@db:5432/shoal", "{postgresql}"),
        ("/var/log/", "{tmp}/var/log/"),
        ("--index ...", "--index {redis}"),  # the index of the lines before
        ("ACCESS:SECRET", "{access}:{secret}"),
        ("gateway:3000", "127.0.0.1:{gateway_port}"),
    ],
    SECTION_S3: [
        ("localhost:9000", "localhost:{s3_port}"),  # shoal up's S3 gateway
        ("localhost:3000", "localhost:{up_port}"),  # and its HTTP gateway
        ("--port 9000", "--port 0"),  # (9000 is shoal up's S3 gateway's here)
        ("--pool P", "--pool default"),
        ("--index URL", "--index shoal-data/index.db"),  # (shoal up's gateways' index)
        ("[--domain D] ", ""),
        ("[--region us-east-1]", "--region us-east-1"),
        ("[--log FILE]", "--log {tmp}/s3.log"),
        ("AWS_ACCESS_KEY_ID=ACCESS", "AWS_ACCESS_KEY_ID={access}"),  # shoal up's admin key
        ("AWS_SECRET_ACCESS_KEY=SECRET", "AWS_SECRET_ACCESS_KEY={secret}"),
        ('"ACCESS"', '"{access}"'),
        ('"SECRET"', '"{secret}"'),
    ],
    SECTION_DAEMON: [
        ("/tmp/storage", "{tmp}/tmp/storage"),
        ("127.0.0.1:4148", "127.0.0.1:{p4148}"),
        ("127.0.0.1:4149", "127.0.0.1:{p4149}"),
        ("--listen-address ...", "--listen-address 127.0.0.1:0"),
        ("--peer-address ...", "--peer-address 127.0.0.1:0"),
        ("--dir ...", "--dir {tmp}/file-store"),
    ],
    SECTION_ENGINE: [
        ("--size 1G", f"--size {DISK}"),
        ("5f0c...-uuid", "{uuid}"),
        ("/dev/loop0", "{loop}"),
        ("/fast/", "{tmp}/fast/"),
    ],
}
# Options added at the end of a line: free ports where the README leaves the default (a fixed
# port), small disks where it leaves the default size (4G, reserved), and, for the cluster by
# hand on one machine, a failure domain per disk as if each were on a machine of its own.
APPEND = {
    "shoal up": UP_ARGS,
    "shoal up --daemons 5 --size 20G --data /srv/shoal": " --base-port 0",
    "shoal http --host 0.0.0.0 --pool photos": " --port 0",
    "shoal http --redirect": " --port 0",
    "shoal daemon --dir /tmp/storage --listen 127.0.0.1:4148": f" --size {DISK}",
    "shoal file-store --listen-address ... --peer-address ... --dir ...": f" --size {DISK}",
    # (+ --host machineN: see file_store_per_disk)
    "shoal file-store --master master:4000 --peer-address 0.0.0.0:4150 "
    "--peer-cert tls/daemon1.crt --peer-key tls/daemon1.key --peer-ca-cert tls/ca.crt "
    "--listen-address 0.0.0.0:4148 --dir /tmp/storage": f" --size {DISK}",
}

NOT_RUN = {
    "make test": "runs every test, this one among them (and installs Debian packages)",
    "shoal up": "named in the introduction; run as `make up`'s recipe, and for the HTTP "
    "gateway's section",
    "shoal -q": "an option named in prose, not a command line",
    "curl -L": "an option named in prose; the HTTP gateway's lines use it",
    "shoal daemon": "names the command; its lines are run in the one-daemon section",
    "shoal write": "names the command (bench.cli's); its lines are run in the first section",
    "shoal pool create NAME --replicas N": "a form (NAME, N); run as `shoal pool create "
    "photos --replicas 3 --pg-num 256` in the first section",
    "shoal pool create NAME --daemons 0,1,...": "a form; run as `shoal pool create scratch "
    "--replicas 2 --daemons 0,1` in the first section",
    "shoal up --daemons N": "a form; run as `shoal up --daemons 5 ...` in the first section",
    "shoal http --pool NAME": "a form; run as `shoal http ... --pool photos`",
    "python -m bench.placement": "a benchmark (placement at 1,000 daemons), not a claim to check",
    "make bench": "the benchmarks: minutes of load, with fio, nginx and wrk installed",
    "aws s3 presign": "named in prose: it presigns with SigV2 (test_s3_gateway presigns so)",
    "python -c pass": "bench.cli's baseline, named in prose",
}


# -- reading the README -----------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    section: str
    text: str  # as in the README, its comment taken off (continuation lines kept)
    says: str  # its comment, whitespace collapsed ("" if none)
    kind: str  # "sh", "python" or "prose"

    @property
    def key(self) -> str:
        return " ".join(self.text.replace("\\\n", " ").split())


def _split_comment(line: str) -> tuple[str, str]:
    """A shell line's code and its comment (a `#` that starts a word, outside quotes)."""
    quote, i = "", 0
    while i < len(line):
        c = line[i]
        if quote:
            if c == quote:
                quote = ""
            elif c == "\\" and quote == '"':
                i += 1
        elif c in "'\"":
            quote = c
        elif c == "\\":
            i += 1
        elif c == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), " ".join(line[i + 1 :].split())
        i += 1
    return line.rstrip(), ""


def _sh_lines(section: str, body: list[str]) -> list[Line]:
    out: list[Line] = []
    pending: list[str] = []
    for raw in body:
        code, comment = _split_comment(raw)
        if not code.strip() and not pending:
            if comment and out:  # a comment on its own goes on from the line above
                last = out[-1]
                out[-1] = Line(section, last.text, f"{last.says} {comment}".strip(), "sh")
            continue
        pending.append(code)
        if code.endswith("\\"):
            continue
        out.append(Line(section, "\n".join(pending).strip(), comment, "sh"))
        pending = []
    assert not pending, f"a line of {section!r} ends in a continuation: {pending}"
    return out


_COMMAND_WORDS = re.compile(r"(shoal|make|python3?|curl|aws)\s+\S")


def _prose_lines(section: str, prose: str) -> list[Line]:
    spans = (" ".join(m[1].split()) for m in re.finditer(r"`([^`]+)`", prose))
    return [Line(section, s, "", "prose") for s in spans if _COMMAND_WORDS.match(s)]


def readme_lines(text: str | None = None) -> list[Line]:
    """Every command line of the README, in order (a command named again in the prose of the
    same section, or shown in one of its blocks, counts once)."""
    lines = (README.read_text() if text is None else text).splitlines()
    out: list[Line] = []
    section, prose, i = "", [], 0

    def flush() -> None:
        out.extend(_prose_lines(section, "\n".join(prose)))
        prose.clear()

    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            flush()
            section = line[3:].strip()
        elif line.startswith("```"):
            flush()
            lang = line[3:].strip()
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            body = lines[i + 1 : end]
            assert lang in ("sh", "python", ""), (
                f"a ```{lang} block in {section!r}: teach tests/integration/test_readme.py "
                "to run it"
            )
            if lang == "sh":
                out += _sh_lines(section, body)
            elif lang == "python":
                out.append(Line(section, "\n".join(body), "", "python"))
            i = end
        else:
            prose.append(line)
        i += 1
    flush()
    seen: set[tuple[str, str]] = {(x.section, x.key) for x in out if x.kind != "prose"}
    kept = []
    for x in out:
        if x.kind == "prose":
            if (x.section, x.key) in seen:
                continue
            seen.add((x.section, x.key))
        kept.append(x)
    return kept


def makefile_recipe(target: str) -> list[str]:
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith(f"{target}:"))
    out = []
    for x in lines[start + 1 :]:
        if not x.startswith("\t"):
            break
        out.append(x.strip())
    return out


# -- running lines ----------------------------------------------------------------------------


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def free_run(n: int) -> int:
    """The first of `n` consecutive ports on which nothing listens."""
    top = min(_ephemeral_start(), 65536) - n
    for _ in range(500):
        base = random.randrange(20000 if top > 21000 else 1024, top)
        if all(_free(p) for p in range(base, base + n)):
            return base
    raise AssertionError(f"no {n} consecutive free ports found")


_PORT = re.compile(r"(?::|--port[ =]|--http-port[ =]|--base-port[ =])(\d{2,5})\b")


class Vars(dict[str, str]):
    """The values substituted into lines; `pN` is made on first use (a free port for the
    README's port N, as far from the ports made for its neighbours as N is from theirs)."""

    def __missing__(self, name: str) -> str:
        m = re.fullmatch(r"p(\d+)", name)
        if m is None:
            raise KeyError(f"{{{name}}} is not known yet: an earlier line prints it")
        n = int(m[1])
        for near in (n - 1, n - 2, n + 1, n + 2):
            if f"p{near}" in self:
                port = int(self[f"p{near}"]) + n - near
                assert _free(port), f"port {port} (for the README's {n}) is taken"
                break
        else:
            port = free_run(3)
        self[name] = str(port)
        return self[name]

    def fresh(self, *names: str) -> None:
        """New ports for `names` (together), in place of any made before."""
        for name in names:
            self.pop(name, None)
        for name in names:
            _ = self[name]  # (made by __missing__)


@dataclass
class Ran:
    cmd: str
    rc: int
    out: bytes
    err: bytes

    @property
    def text(self) -> str:
        return self.out.decode(errors="replace")

    def __str__(self) -> str:
        err = self.err.decode(errors="replace")
        return f"$ {self.cmd}\n(exit {self.rc})\n{self.text[-3000:]}\n{err[-3000:]}"

    @property
    def status(self) -> int:
        """The status of curl's (last) request, from the .curlrc's write-out."""
        found = re.findall(rb"<<status (\d{3})>>", self.out)
        assert found, f"no status in curl's output:\n{self}"
        return int(found[-1])

    @property
    def body(self) -> bytes:
        """What curl printed before the status."""
        return re.sub(rb"\n?<<status \d{3}>>\n$", b"", self.out)


@dataclass
class Server:
    name: str
    cmd: str
    proc: subprocess.Popen[bytes]
    out_path: Path
    err_path: Path
    stop_signal: int
    children: list[int] = field(default_factory=list)

    @property
    def out(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def err(self) -> str:
        return self.err_path.read_text(errors="replace")


class Session:
    """One user at one terminal (plus the other terminals that run the servers)."""

    def __init__(self, tmp: Path, section: str) -> None:
        self.tmp, self.section = tmp, section
        self.cwd = tmp / "user"
        self.cwd.mkdir()
        (self.cwd / ".venv").symlink_to(VENV)
        home = tmp / "home"
        self.env = shoal_env(home, PATH=f"{VENV / 'bin'}{os.pathsep}{os.environ['PATH']}")
        (home / ".curlrc").write_text(CURLRC)
        self.vars = Vars(tmp=str(tmp))
        self.prelude: list[str] = []
        self.servers: list[Server] = []
        self.later: list[Callable[[], None]] = []
        self.stack = contextlib.ExitStack()

    # -- lines

    def rewrite(self, line: Line) -> str:
        """The line as run here: SUBSTITUTIONS, then APPEND. A port of the README's that is
        still there (SUBSTITUTIONS lacks it) fails the test rather than being used."""
        text = line.text
        for old, new in SUBSTITUTIONS.get(self.section, []):
            if old in text:
                text = text.replace(old, new.format_map(self.vars))
        fixed = set(_PORT.findall(line.text)) & set(_PORT.findall(text))
        assert not fixed, f"the README's port {fixed} left in {text!r}: add it to SUBSTITUTIONS"
        return text + APPEND.get(line.key, "")

    def sh(self, cmd: str, *, cwd: Path | None = None, timeout: float = 120.0) -> Ran:
        script = "\n".join(["set -e -o pipefail", *self.prelude, cmd])
        p = subprocess.run(
            ["bash", "-c", script], cwd=cwd or self.cwd, env=self.env, capture_output=True,
            stdin=subprocess.DEVNULL, timeout=timeout,
        )  # fmt: skip
        return Ran(cmd, p.returncode, p.stdout, p.stderr)

    def run(self, cmd: str, *, cwd: Path | None = None) -> Ran:
        """`cmd`, which must succeed."""
        r = self.sh(cmd, cwd=cwd)
        assert r.rc == 0 and b"Traceback" not in r.err, str(r)
        return r

    def fails(self, cmd: str) -> Ran:
        r = self.sh(cmd)
        assert r.rc != 0 and b"Traceback" not in r.err, str(r)
        return r

    # -- servers

    def serve(
        self, name: str, cmd: str, ready: str, *, stop_signal: int = signal.SIGTERM,
        timeout: float = 60.0,
    ) -> Server:  # fmt: skip
        """`cmd` in a terminal of its own, until what it prints matches `ready`."""
        out, err = self.tmp / f"{name}.out", self.tmp / f"{name}.err"
        script = "\n".join([*self.prelude, f"exec {cmd}"])
        with open(out, "wb") as o, open(err, "wb") as e:
            proc = subprocess.Popen(
                ["bash", "-c", script], cwd=self.cwd, env=self.env, stdout=o, stderr=e,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        server = Server(name, cmd, proc, out, err, stop_signal)
        self.servers.append(server)
        deadline = time.monotonic() + timeout
        while not re.search(ready, server.out):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"$ {cmd}\ndid not print {ready!r} (exit {proc.poll()}):\n{server.out}\n"
                    f"{server.err[-4000:]}"
                )
            time.sleep(0.05)
        server.children = children_of(proc.pid)
        return server

    def stop(self, server: Server) -> int:
        """Stop it by its PID (SIGINT for shoal up, as Ctrl-C) and wait; its exit status. Its
        children must have ended with it."""
        rc = stop_process(server.proc, server.stop_signal, timeout=30)
        left = [p for p in server.children if not all_exited([p])]
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert not left, f"{server.name} left {left} running"
        return rc

    def close(self) -> None:
        for server in reversed(self.servers):
            if server.proc.poll() is None:
                with contextlib.suppress(AssertionError):
                    self.stop(server)
        self.stack.close()
        for blocks in self.tmp.rglob("blocks"):  # (the daemons' disk space, reserved)
            blocks.unlink()
        for img in self.tmp.rglob("*.img"):
            img.unlink()


@pytest.fixture
def session(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Session]:
    s = Session(tmp_path, request.function.section)
    try:
        yield s
    finally:
        s.close()


@dataclass(frozen=True)
class Step:
    says: str  # the README's comment on the line, word for word: what `run` checks
    run: Callable[[Session, Line], None]


def play(s: Session) -> None:
    """Run the lines of the session's section in README order, then what was left for the
    end."""
    lines = [x for x in readme_lines() if x.section == s.section]
    assert lines, f"README.md has no section {s.section!r} any more"
    plan = PLAN[s.section]
    for line in lines:
        if line.key in plan:
            step = plan[line.key]
            assert line.says == step.says, (line.key, line.says, step.says)
            step.run(s, line)
        else:
            assert line.key in NOT_RUN, f"README line not handled: {line.key!r}"
    for check in s.later:
        check()


def http_request(
    address: str, method: str, path: str, body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def listing(address: str, prefix: str = "/") -> list[str]:
    status, _, body = http_request(address, "GET", f"{prefix}?list")
    assert status == 200, (status, body)
    keys: list[str] = json.loads(body)["keys"]
    return keys


# -- the steps: generic -----------------------------------------------------------------------


def run(check: Callable[[Session, Ran], None] | None = None) -> Callable[[Session, Line], None]:
    """Run the line (it must succeed), then `check` what it did."""

    def go(s: Session, line: Line) -> None:
        r = s.run(s.rewrite(line))
        if check is not None:
            check(s, r)

    return go


def keep(check: Callable[[Session, Ran], None]) -> Callable[[Session, Line], None]:
    """Run the line, and keep what it does (variables) for the lines after it."""

    def go(s: Session, line: Line) -> None:
        cmd = s.rewrite(line)
        r = s.run(cmd)
        s.prelude.append(cmd)
        check(s, r)

    return go


def says_out(*parts: str) -> Callable[[Session, Ran], None]:
    def check(s: Session, r: Ran) -> None:
        for part in parts:
            assert part in r.text, f"{part!r} not in\n{r}"

    return check


def prints(expected: bytes) -> Callable[[Session, Ran], None]:
    def check(s: Session, r: Ran) -> None:
        assert r.out == expected, str(r)

    return check


def curl(status: int, body: bytes | None = None) -> Callable[[Session, Ran], None]:
    def check(s: Session, r: Ran) -> None:
        assert r.status == status, str(r)
        if body is not None:
            assert r.body == body, str(r)

    return check


def activated(s: Session, r: Ran) -> None:
    where = s.run("echo $VIRTUAL_ENV; command -v shoal").text.split()
    assert where == [str(VENV), str(VENV / "bin" / "shoal")], where


def read_back(cmd: str, expected: bytes) -> Callable[[Session, Ran], None]:
    def check(s: Session, r: Ran) -> None:
        got = s.run(cmd)
        assert got.out == expected, str(got)

    return check


def exported(s: Session, r: Ran) -> None:
    pass  # (what it exports is used by the lines after it)


def stopped_cleanly(s: Session, server: Server) -> Callable[[], None]:
    def check() -> None:
        rc = s.stop(server)
        assert rc == 0, f"{server.name} exited with {rc}:\n{server.err[-3000:]}"

    return check


def key_printed(s: Session, r: Ran) -> None:
    m = re.search(r"access key: (\S+)\nsecret key: (\S+)\n", r.text)
    assert m, str(r)
    s.vars.update(access=m[1], secret=m[2])


# -- Two commands -----------------------------------------------------------------------------


def up_started(server: Server, daemons: int) -> str:
    """What a started `shoal up` printed (checked); its gateway's HOST:PORT."""
    out = server.out
    assert f"(TLS), {daemons} of {daemons} daemons up, pools: default" in out, out
    m = re.search(r"HTTP gateway \(minikeyvalue API\) on http://(127\.0\.0\.1:\d+)/, pool default",
                  out)  # fmt: skip
    assert m, out
    return m[1]


def make_up(s: Session, line: Line) -> None:
    # `make up` is `install` (this venv is installed) then its recipe, run here with free
    # ports and small disks; with its fixed ports the gateway is on 3000.
    from shoal.up import LocalCluster

    assert "up: install" in (ROOT / "Makefile").read_text().splitlines()
    assert makefile_recipe("up") == ["$(BIN)/shoal up"], makefile_recipe("up")
    assert LocalCluster(s.tmp / "x", 3, DISK, 4140).http_port == 3000
    cmd = "shoal up" + UP_ARGS
    up = s.serve("make-up", cmd, "Ctrl-C stops it", stop_signal=signal.SIGINT)
    out = up.out
    assert re.search(r"admin key \(shown once.*\n  access key: \S+\n  secret key: \S+\n", out)
    up_started(up, 3)
    data = s.cwd / "shoal-data"
    for name in ("master", "daemon0", "daemon1", "daemon2", "tls", "client.json"):
        assert (data / name).exists(), name

    def ctrl_c_stops_it_data_kept() -> None:
        assert s.stop(up) == 0, up.err
        again = s.serve("make-up-again", cmd, "Ctrl-C stops it", stop_signal=signal.SIGINT)
        assert "admin key" not in again.out, "the admin key is printed once"
        up_started(again, 3)
        assert s.run("shoal read --pool default passwd").out == PASSWD
        assert s.stop(again) == 0, again.err

    s.later.append(ctrl_c_stops_it_data_kept)


def last_up_from_elsewhere(s: Session, line: Line) -> None:
    # "from any other folder the config of the last `shoal up`"
    elsewhere = s.tmp / "elsewhere"
    elsewhere.mkdir()
    r = s.run("shoal status", cwd=elsewhere)
    assert "3 daemons: 3 up, 3 in" in r.text, str(r)


def in_pool_default(s: Session, r: Ran) -> None:
    assert "size: 11" in s.run("shoal stat --pool default hello").text


def wrote_passwd(s: Session, r: Ran) -> None:
    said = r.text + r.err.decode()
    assert f"wrote default/passwd: {len(PASSWD)} bytes" in said, str(r)


def ls_stat_rm(s: Session, r: Ran) -> None:
    assert re.search(r"\b11 [0-9a-f]{16} v\d+\s+hello\n", r.text), str(r)
    assert re.search(rf"\b{len(PASSWD)} [0-9a-f]{{16}} v\d+\s+passwd\n", r.text), str(r)
    assert "name: hello" in r.text, str(r)
    assert "not found" in s.fails("shoal stat hello").err.decode()


def pool_ls_has(name: str, *parts: str) -> Callable[[Session, Ran], None]:
    def check(s: Session, r: Ran) -> None:
        row = next((x for x in s.run("shoal pool ls").text.splitlines() if x.startswith(name)), "")
        for part in parts:
            assert part in row, (part, row)

    return check


def app_key(s: Session, r: Ran) -> None:
    key_printed(s, r)
    with_key = f"SHOAL_ACCESS_KEY={s.vars['access']} SHOAL_SECRET_KEY={s.vars['secret']}"
    s.run(f"{with_key} shoal write --pool photos app --data-literal x")
    assert s.run(f"{with_key} shoal read --pool default passwd").out == PASSWD
    s.fails(f"{with_key} shoal write --pool default app --data-literal x")


def up_elsewhere(s: Session, line: Line) -> None:
    # "changes the defaults; the "try:" lines it prints work as printed, from where it was
    # started"
    up = s.serve("up-5", s.rewrite(line), "Ctrl-C stops it", stop_signal=signal.SIGINT)
    up_started(up, 5)
    assert (s.tmp / "srv" / "shoal" / "daemon4").is_dir()
    m = re.search(r"\n  try:  (.*?)\nCtrl-C stops it", up.out, re.S)
    assert m, up.out
    tries = [x.strip() for x in m[1].splitlines()]
    assert any(x.startswith("export SHOAL_CONFIG=") for x in tries), (
        "./shoal-data here is another cluster's: the try lines must say which"
    )
    r = s.run("\n".join(tries))
    assert "bar" in r.text and "hello world" in r.text, str(r)
    assert "5 daemons: 5 up, 5 in" in r.text, str(r)
    s.later.insert(0, stopped_cleanly(s, up))


# -- A cluster by hand ------------------------------------------------------------------------


def certs_made(s: Session, r: Ran) -> None:
    tls = s.cwd / "tls"
    assert (tls / "ca.crt").is_file() and (tls / "ca.key").is_file()
    names = s.vars["nodes"] = " ".join(r.cmd.split("--dir tls", 1)[1].split())
    for name in names.split():
        assert (tls / f"{name}.crt").is_file() and (tls / f"{name}.key").is_file(), name


def master(s: Session, line: Line) -> None:
    cmd = s.rewrite(line)
    m = s.serve("master", cmd, r"listening on \S+ \(peer\), \S+ \(client\)")
    key = re.search(r"admin key: (\S+) (\S+)", m.out)
    assert key, m.out
    s.vars.update(access=key[1], secret=key[2])

    def admin_key_once() -> None:
        for server in reversed(s.servers):  # the daemons, then the master
            assert s.stop(server) == 0, server.err[-3000:]
        again = s.serve("master-again", cmd, r"listening on")
        assert "admin key" not in again.out, again.out
        assert s.stop(again) == 0

    s.later.append(admin_key_once)


def file_store_per_disk(s: Session, line: Line) -> None:
    # "one per disk": one for each daemon certificate made above, each as if on a machine
    # of its own (--host: its failure domain)
    disks = [n for n in s.vars["nodes"].split() if n.startswith("daemon")]
    for n, name in enumerate(disks, 1):
        v = s.vars
        v.fresh("p4148", "p4149", "p4150")
        v["disk"] = str(n)
        cmd = s.rewrite(line).replace("tls/daemon1.", f"tls/{name}.") + f" --host machine{n}"
        d = s.serve(f"file-store{n}", cmd, r"listening on .*\(http\)")
        said = f"0.0.0.0:{v['p4148']} (native), 0.0.0.0:{v['p4150']} (peer), 0.0.0.0:{v['p4149']}"
        assert said in d.out, d.out
    s.vars["disks"] = str(len(disks))


def daemons_up(s: Session) -> None:
    n = int(s.vars["disks"])
    deadline = time.monotonic() + 20
    while True:
        rows = re.findall(r"^\s+\d+\s+up,in\s", s.run("shoal daemon ls").text, re.M)
        if len(rows) == n:
            return
        assert time.monotonic() < deadline, f"{len(rows)} of {n} daemons registered"
        time.sleep(0.2)


def pool_create_by_hand(s: Session, line: Line) -> None:
    daemons_up(s)  # ("makes pools once its daemons have registered (`shoal daemon ls`)")
    r = s.run(s.rewrite(line))
    assert "pool testpool created: replicas 3 (min 2), pg_num 128, failure domain host" in r.text


def gateway_key(s: Session, r: Ran) -> None:
    key_printed(s, r)
    s.vars["gateway_key"] = s.vars["access"]


def keys_listed(s: Session, r: Ran) -> None:
    assert re.search(rf"^{s.vars['gateway_key']}\s+\*=g\b", r.text, re.M), str(r)
    assert "admin" in r.text, str(r)


def status_by_hand(s: Session, r: Ran) -> None:
    n = s.vars["disks"]
    assert "health:" in r.text and f"{n} daemons: {n} up, {n} in" in r.text, str(r)


# -- The HTTP gateway -------------------------------------------------------------------------


FILE = b"".join(b"line %03d of the local file\n" % i for i in range(40))  # 1,120 bytes
PHOTO = bytes(range(256)) * 8


def up_for_http(s: Session, line: Line) -> None:
    up = s.serve("up", s.rewrite(line), "Ctrl-C stops it", stop_signal=signal.SIGINT)
    s.vars["up_port"] = up_started(up, 3).rsplit(":", 1)[1]
    local = s.tmp / "path" / "to" / "local"
    local.mkdir(parents=True)
    (local / "file.txt").write_bytes(FILE)
    (s.cwd / "photo.jpg").write_bytes(PHOTO)
    (s.tmp / "var" / "log").mkdir(parents=True)
    s.later.append(stopped_cleanly(s, up))


def curl_twice(status: int, again: int) -> Callable[[Session, Line], None]:
    def go(s: Session, line: Line) -> None:
        cmd = s.rewrite(line)
        assert s.run(cmd).status == status
        assert s.run(cmd).status == again

    return go


def as_listed(s: Session, r: Ran) -> None:
    assert r.status == 200 and json.loads(r.body) == {"next": "", "keys": ["/foo"]}, str(r)


def download(s: Session, line: Line) -> None:
    local = s.tmp / "path" / "to" / "local" / "file.txt"
    local.unlink()
    assert s.run(s.rewrite(line)).status == 200
    assert local.read_bytes() == FILE


def ranges(s: Session, line: Line) -> None:
    cmd = s.rewrite(line)
    r = s.run(cmd)
    assert (r.status, r.body) == (206, FILE[:100]), str(r)
    past = s.run(cmd.replace("-r 0-99", f"-r {len(FILE)}-{len(FILE) + 99}"))
    assert past.status == 416, str(past)


def a_page(s: Session, line: Line) -> None:
    # keys before `start` and more than `limit` from it
    address = f"127.0.0.1:{s.vars['up_port']}"
    names = ["/photos/a", *(f"/photos/x{i:03d}" for i in range(101))]
    host, port = address.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        for name in names:
            conn.request("PUT", name, body=b"p")
            reply = conn.getresponse()
            assert (reply.status, reply.read()) == (201, b""), name
    finally:
        conn.close()
    cmd = s.rewrite(line)
    r = s.run(cmd)
    page = json.loads(r.body)
    assert page == {"next": "/photos/x100", "keys": names[1:101]}, page
    rest = json.loads(s.run(cmd.replace("start=/photos/x", f"start={page['next']}")).body)
    assert rest == {"next": "", "keys": ["/photos/x100"]}, rest


def md5_header(s: Session, r: Ran) -> None:
    local = s.tmp / "path" / "to" / "local" / "file.txt"
    md5sum = s.run(f"md5sum {local}").text.split()[0]
    assert md5sum == hashlib.md5(FILE).hexdigest()
    assert r.status == 200 and f"\ncontent-md5: {md5sum}\r\n" in r.text, str(r)


def missing_head(s: Session, r: Ran) -> None:
    assert r.status == 404 and "\ncontent-length: 0\r\n" in r.text.lower(), str(r)


def gateway(name: str, index: str) -> Callable[[Session, Line], None]:
    """A second gateway over the pool photos (made here, as the first section does), with
    its index on a real server; it serves and lists what is PUT through it."""

    def go(s: Session, line: Line) -> None:
        if not re.search(r"^photos\s", s.run("shoal pool ls").text, re.M):
            s.run("shoal pool create photos --replicas 3")
        if index == "redis":
            s.vars["redis"] = s.stack.enter_context(redis_server(s.tmp / "redis")).url
        else:
            s.vars["postgresql"] = s.stack.enter_context(postgres_server(s.tmp / "pg")).url
        g = s.serve(name, s.rewrite(line), r"shoal http listening on \S+:\d+ ")
        m = re.search(
            r"listening on \S+:(\d+) \(pool photos, index (\S+), GET by proxy, open", g.out
        )
        assert m and m[2] == s.vars[index], g.out
        address = s.vars[name] = f"127.0.0.1:{m[1]}"
        key = f"/{name}-key"
        assert http_request(address, "PUT", key, b"v")[0] == 201
        assert listing(address) == [key]

    return go


def request_log(s: Session) -> None:
    log = s.tmp / "var" / "log" / "shoal-http.log"
    deadline = time.monotonic() + 5  # (written out in batches)
    while not log.exists() or not log.read_text().endswith("\n"):
        assert time.monotonic() < deadline, "no request log"
        time.sleep(0.05)
    first = json.loads(log.read_text().splitlines()[0])
    assert (first["method"], first["key"], first["status"]) == ("PUT", "redis-gw-key", 201), first


def redis_gateway(s: Session, line: Line) -> None:
    gateway("redis-gw", "redis")(s, line)
    request_log(s)


def rebuilt(s: Session, r: Ran) -> None:
    # the object PUT through the other gateway is in the daemons, not in this index
    assert "pool photos: 2 keys from the daemons" in r.text, str(r)
    assert listing(s.vars["redis-gw"]) == ["/pg-gw-key", "/redis-gw-key"]


def dropped(s: Session, r: Ran) -> None:
    assert "pool photos forgotten" in r.text, str(r)
    assert listing(s.vars["redis-gw"]) == []


def rebuilt_default(s: Session, r: Ran) -> None:
    n = len(listing(f"127.0.0.1:{s.vars['up_port']}"))
    assert f"pool default: {n} keys from the daemons" in r.text, str(r)


def redirect(s: Session, line: Line) -> None:
    g = s.serve("redirect-gw", s.rewrite(line), r"shoal http listening on \S+:\d+ ")
    m = re.search(r"listening on \S+:(\d+) \(pool default, .*GET by redirect", g.out)
    assert m, g.out
    status, headers, _ = http_request(f"127.0.0.1:{m[1]}", "GET", "/file.txt")
    assert status == 302, (status, headers)
    url = headers["location"]
    assert all(f"{q}=" in url for q in ("ticket", "expires", "sig")), url
    where = re.fullmatch(r"http://([^/]+)(/.*)", url)
    assert where, url
    daemon, path = where[1], where[2]
    status, _, body = http_request(daemon, "GET", path)
    assert (status, body) == (200, FILE)
    assert http_request(daemon, "GET", path.split("?")[0])[0] == 403, "unsigned"
    assert s.stop(g) == 0


def keyed_gateway(s: Session, line: Line) -> None:
    g = s.serve("keyed-gw", s.rewrite(line), r"shoal http listening on \S+:\d+ ")
    m = re.search(r"listening on 0\.0\.0\.0:(\d+) \(pool photos, .*keys required\)", g.out)
    assert m, g.out
    s.vars["gateway_port"] = m[1]
    assert http_request(f"127.0.0.1:{m[1]}", "PUT", "/2024/photo.jpg", b"x")[0] == 401


# -- The S3 gateway ---------------------------------------------------------------------------


A_JPG = random.Random(1).randbytes(5000)
BIG_ISO = random.Random(2).randbytes(9 << 20)  # (over boto3's 8 MiB multipart threshold)
# The Python block starts as the aws lines do, with no bucket photos: they are two ways to
# the same (shoal's CreateBucket of a bucket one owns is 409 BucketAlreadyOwnedByYou).
S3_RESET = """
import sys
import boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                  aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3])
s3.delete_object(Bucket="photos", Key="2024/a.jpg")
s3.delete_bucket(Bucket="photos")
"""


def up_for_s3(s: Session, line: Line) -> None:
    assert shutil.which("aws", path=s.env["PATH"]), (
        "the aws CLI is not installed (pip install awscli): the README's S3 lines use it"
    )
    up = s.serve("up", s.rewrite(line), "Ctrl-C stops it", stop_signal=signal.SIGINT)
    s.vars["up_port"] = up_started(up, 3).rsplit(":", 1)[1]
    m = re.search(r"S3 gateway on http://127\.0\.0\.1:(\d+)/ \(region us-east-1\), pool default",
                  up.out)  # fmt: skip
    assert m, up.out
    s.vars["s3_port"] = m[1]
    key = re.search(r"  access key: (\S+)\n  secret key: (\S+)\n", up.out)
    assert key, up.out
    s.vars.update(access=key[1], secret=key[2])
    (s.cwd / "a.jpg").write_bytes(A_JPG)
    (s.cwd / "big.iso").write_bytes(BIG_ISO)
    s.later.append(stopped_cleanly(s, up))


def aws_env(s: Session) -> str:
    v = s.vars
    return f"AWS_ACCESS_KEY_ID={v['access']} AWS_SECRET_ACCESS_KEY={v['secret']} "


def s3_by_hand(s: Session, line: Line) -> None:
    g = s.serve("s3-gw", s.rewrite(line), r"shoal s3 listening on \S+:\d+ ")
    m = re.search(r"listening on \S+:(\d+) \(pool default, index \S+, region us-east-1\)", g.out)
    assert m, g.out
    r = s.run(f"{aws_env(s)}aws --region us-east-1 --endpoint-url http://127.0.0.1:{m[1]} s3 ls")
    assert r.text == "", str(r)  # (no bucket yet)
    assert s.stop(g) == 0
    assert '"method": "GET"' in (s.tmp / "s3.log").read_text()


def one_put(s: Session, r: Ran) -> None:
    assert "upload: ./a.jpg to s3://photos/2024/a.jpg" in r.text, str(r)
    log = s.cwd / "shoal-data" / "s3.log"
    deadline = time.monotonic() + 5  # (written out in batches)
    while True:
        puts = [json.loads(x) for x in log.read_text().splitlines() if '"PUT"' in x]
        puts = [x for x in puts if x["key"] == "/photos/2024/a.jpg"]
        if puts or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert [x["status"] for x in puts] == [200], puts


def head_object(s: Session, r: Ran) -> None:
    head = json.loads(r.out)
    assert (head["ContentLength"], head["ContentType"]) == (len(A_JPG), "image/jpeg"), head
    assert head["ETag"] == f'"{hashlib.md5(A_JPG).hexdigest()}"', head


def boto3_block(s: Session, line: Line) -> None:
    reset = s.tmp / "s3_reset.py"
    reset.write_text(S3_RESET)
    v = s.vars
    s.run(f"python {reset} http://127.0.0.1:{v['s3_port']} {v['access']} {v['secret']}")
    (s.cwd / "example.py").write_text(s.rewrite(line) + "\n")
    s.run("python example.py")
    http = f"127.0.0.1:{v['up_port']}"
    assert http_request(http, "GET", "/photos/2024/a.jpg")[2] == A_JPG
    assert http_request(http, "GET", "/photos/big.iso")[2] == BIG_ISO
    log = s.cwd / "shoal-data" / "s3.log"
    deadline = time.monotonic() + 5  # (written out in batches)
    while True:  # sent in parts: created, 2 parts, completed
        lines = [json.loads(x) for x in log.read_text().splitlines()]
        sent = sorted((x["method"], x["status"]) for x in lines if x["key"] == "/photos/big.iso")
        if sent == [("POST", 200)] * 2 + [("PUT", 200)] * 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert sent == [("POST", 200)] * 2 + [("PUT", 200)] * 2, sent


def buckets_rebuilt(s: Session, r: Ran) -> None:
    assert "pool default: " in r.text, str(r)
    assert "/.s3/buckets/photos" in listing(f"127.0.0.1:{s.vars['up_port']}", "/.s3/buckets/")


# -- One daemon -------------------------------------------------------------------------------


def one_daemon(s: Session, line: Line) -> None:
    v = s.vars
    v.fresh("p4148", "p4149")  # (free, together: the HTTP endpoint is on the next port)
    d = s.serve("daemon", s.rewrite(line), r"listening on .*\(http\)")
    assert f"127.0.0.1:{v['p4148']} (native), 127.0.0.1:{v['p4149']} (http)" in d.out, d.out
    s.later.append(stopped_cleanly(s, d))


def stat_rm_ls(s: Session, line: Line) -> None:
    # `shoal stat|rm|ls ... --pool testpool ...`: each of the three, on the objects above
    cmd = s.rewrite(line)
    stat = s.run(cmd.replace("stat|rm|ls", "stat").replace(" ...", " testobj"))
    assert "name: testobj" in stat.text and "size: 11" in stat.text, str(stat)
    ls = s.run(cmd.replace("stat|rm|ls", "ls").replace(" ...", ""))
    assert ls.text.split() == ["passwd", "testobj"], str(ls)
    s.run(cmd.replace("stat|rm|ls", "rm").replace(" ...", " testobj"))
    s.fails(cmd.replace("stat|rm|ls", "stat").replace(" ...", " testobj"))


def python_block(s: Session, line: Line) -> None:
    (s.cwd / "example.py").write_text(s.rewrite(line) + "\n")
    s.run("python example.py")


def file_store_form(s: Session, line: Line) -> None:
    d = s.serve("file-store", s.rewrite(line), r"listening on .*\(http\)")
    m = re.search(r"listening on (\S+) \(native\), \S+ \(peer\), \S+ \(http\)", d.out)
    assert m, d.out
    s.run(f"shoal write --storage-daemon {m[1]} --pool p seed --data-literal same")
    assert s.run(f"shoal read --storage-daemon {m[1]} --pool p seed").out == b"same"
    assert s.stop(d) == 0


# -- The engine -------------------------------------------------------------------------------


BLOCK = random.Random(7).randbytes(8192)


def formatted(s: Session, r: Ran) -> None:
    (s.cwd / "block.bin").write_bytes(BLOCK)  # (the user's file of the write-at line)
    img = s.cwd / "demo" / "disk.img"
    size = DISK_BYTES
    assert img.stat().st_size == size and img.stat().st_blocks * 512 >= size, "space reserved"


def uuid_printed(s: Session, r: Ran) -> None:
    assert re.fullmatch(r"[0-9a-f-]{36}\n", r.text), str(r)
    s.vars["uuid"] = r.text.strip()


def got_by_uuid(s: Session, r: Ran) -> None:
    assert (s.cwd / "out.bin").read_bytes() == b"hello world"


def disk_stat(s: Session, r: Ran) -> None:
    for part in ("uuid: ", f"blake3: {blake3.blake3(PASSWD).hexdigest()}\n",
                 f"size: {len(PASSWD)}\n", "version: 1\n", "refs: []", "meta: {}"):  # fmt: skip
        assert part in r.text, (part, str(r))


def meta_kept(s: Session, r: Ran) -> None:
    stat = s.run("shoal disk stat demo/disk.img note").text
    assert "meta: {'content-type': 'text/plain'}" in stat, stat


def disk_listed(s: Session, r: Ran) -> None:
    names = [row.split()[-1] for row in r.text.splitlines()]
    assert names == [s.vars["uuid"], "note", "passwd"], str(r)


def blocks_used(s: Session) -> int:
    m = re.search(r"(\d+) blocks used", s.run("shoal disk check demo/disk.img").text)
    assert m
    return int(m[1])


def write_at(s: Session, line: Line) -> None:
    before = blocks_used(s)
    s.run(s.rewrite(line))
    assert blocks_used(s) == before + len(BLOCK) // 4096, "sparse: the hole takes no block"
    stat = s.run("shoal disk stat demo/disk.img image").text
    assert f"size: {1048576 + len(BLOCK)}\n" in stat, stat
    got = s.run(f"shoal disk get demo/disk.img image --offset 1048576 --length {len(BLOCK)}")
    assert got.out == BLOCK
    assert s.run("shoal disk get demo/disk.img image --length 4096").out == bytes(4096)


def ref_added(s: Session, r: Ran) -> None:
    stat = s.run("shoal disk stat demo/disk.img passwd").text
    assert "refs: ['00112233445566778899aabbccddeeff']" in stat, stat


def removed(s: Session, r: Ran) -> None:
    s.fails("shoal disk stat demo/disk.img passwd")
    s.run("shoal disk rm demo/disk.img note --zero")  # "or --zero"
    s.fails("shoal disk stat demo/disk.img note")


def checked(s: Session, r: Ran) -> None:
    assert r.text.endswith(": ok\n"), str(r)


def loop_device(s: Session, line: Line) -> None:
    # a loop device only as root with losetup; otherwise this line is not run here
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        return
    backing = s.tmp / "loop.img"
    with open(backing, "wb") as f:
        f.truncate(DISK_BYTES)
    made = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True,
                          text=True)  # fmt: skip
    if made.returncode != 0:  # (no loop devices in this container)
        return
    s.vars["loop"] = dev = made.stdout.strip()
    try:
        s.run(s.rewrite(line))
        keys = s.tmp / "fast" / "loop0.keys"
        assert keys.is_file()
        s.run(f"shoal disk put {dev} --keys {keys} obj --data-literal same")
        assert s.run(f"shoal disk get {dev} --keys {keys} obj").out == b"same"
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


# -- the plan: each README line, what it says, and how it is run and checked ------------------


PLAN: dict[str, dict[str, Step]] = {
    SECTION_TWO: {
        "make up": Step(
            "installs shoal in .venv and starts a local cluster: a master and 3 daemons under "
            "./shoal-data, TLS on, and the HTTP gateway on port 3000; prints an admin key "
            "once; Ctrl-C stops it, data kept",
            make_up,
        ),
        "shoal up": Step("", last_up_from_elsewhere),
        ". .venv/bin/activate": Step("", keep(activated)),
        'shoal write hello --data-literal "hello world"': Step(
            'pool "default"', run(in_pool_default)
        ),
        "shoal read hello": Step("", run(prints(b"hello world"))),
        "shoal -v write --pool default passwd --data-file /etc/passwd": Step("", run(wrote_passwd)),
        "shoal read --pool default passwd --offset 20 --length 40": Step(
            "", run(prints(PASSWD[20:60]))
        ),
        "shoal ls -l; shoal stat hello; shoal rm hello": Step("", run(ls_stat_rm)),
        "shoal status": Step(
            "like `ceph -s`", run(says_out("health: HEALTH_OK", "3 daemons: 3 up, 3 in"))
        ),
        "shoal pool create photos --replicas 3 --pg-num 256": Step(
            "", run(pool_ls_has("photos", "replicas 3", "pg_num 256"))
        ),
        "shoal pool create scratch --replicas 2 --daemons 0,1": Step(
            "only on these daemons (disks)", run(pool_ls_has("scratch", "daemons 0,1"))
        ),
        "shoal daemon ls; shoal daemon out 2; shoal daemon in 2": Step(
            "", run(says_out("  2  up,in", "daemon 2: out (epoch", "daemon 2: in (epoch"))
        ),
        "shoal rebalance --dry-run": Step(
            "which copies would move where", run(says_out("copies to move (from -> to"))
        ),
        "shoal scrub --pool photos": Step(
            "verify every copy now, and follow it",
            run(says_out("requested for pool photos", "done:")),
        ),
        "shoal key create --rights 'photos=rw,default=r'": Step(
            "a key for an application", run(app_key)
        ),
        "shoal up --daemons 5 --size 20G --data /srv/shoal": Step("", up_elsewhere),
    },
    SECTION_BY_HAND: {
        "shoal certs --dir tls master daemon1 daemon2 daemon3": Step(
            "a CA and the nodes' certificates", run(certs_made)
        ),
        "shoal master --dir /var/lib/shoal/master --peer-address 0.0.0.0:4000 "
        "--peer-cert tls/master.crt --peer-key tls/master.key --peer-ca-cert tls/ca.crt "
        "--listen-address 0.0.0.0:4010 --listen-cert tls/master.crt "
        "--listen-key tls/master.key": Step("prints the admin key once", master),
        "shoal file-store --master master:4000 --peer-address 0.0.0.0:4150 "
        "--peer-cert tls/daemon1.crt --peer-key tls/daemon1.key --peer-ca-cert tls/ca.crt "
        "--listen-address 0.0.0.0:4148 --dir /tmp/storage": Step(
            "one per disk", file_store_per_disk
        ),
        "export SHOAL_MASTER=master:4010 SHOAL_CA_CERT=tls/ca.crt SHOAL_ACCESS_KEY=... "
        "SHOAL_SECRET_KEY=...": Step("", keep(exported)),
        "shoal pool create testpool --replicas 3 --pg-num 128": Step("", pool_create_by_hand),
        'shoal -v write --pool testpool testobj --data-literal "hello world"': Step(
            "", run(read_back("shoal read --pool testpool testobj", b"hello world"))
        ),
        "shoal key create --rights '*=g'": Step("", run(gateway_key)),
        "shoal key ls": Step("", run(keys_listed)),
        "shoal status": Step("", run(status_by_hand)),
    },
    SECTION_HTTP: {
        "shoal up": Step("", up_for_http),
        "curl -d bar -X PUT http://localhost:3000/foo": Step("201", run(curl(201, b""))),
        "curl -L http://localhost:3000/foo": Step("bar", run(curl(200, b"bar"))),
        "curl -L http://localhost:3000/foo?list": Step(
            '{"next": "", "keys": ["/foo"]}', run(as_listed)
        ),
        "curl -X DELETE http://localhost:3000/foo": Step(
            "204 (404 if there is none)", curl_twice(204, 404)
        ),
        "curl -L -X PUT -T /path/to/local/file.txt localhost:3000/file.txt": Step(
            "", run(curl(201))
        ),
        "curl -L -o /path/to/local/file.txt localhost:3000/file.txt": Step("", download),
        "curl -r 0-99 localhost:3000/file.txt": Step("206; 416 past the end", ranges),
        "curl 'localhost:3000/photos/?list&limit=100&start=/photos/x'": Step(
            'a page; "next" starts the next', a_page
        ),
        "curl -I localhost:3000/file.txt": Step("content-md5: <md5sum's hex>", run(md5_header)),
        "curl -I localhost:3000/nothing": Step("404, content-length: 0", run(missing_head)),
        "shoal http --port 3000 --pool photos --index redis://127.0.0.1:6379/0 "
        "--log /var/log/shoal-http.log": Step("", redis_gateway),
        "shoal http --port 3001 --pool photos --index postgresql://shoal@db:5432/shoal": Step(
            "", gateway("pg-gw", "postgresql")
        ),
        "shoal index rebuild --pool photos --index redis://127.0.0.1:6379/0": Step(
            "from every daemon's key store", run(rebuilt)
        ),
        "shoal index drop --pool photos --index ...": Step(
            "forget the pool's entries", run(dropped)
        ),
        "shoal index rebuild": Step("", run(rebuilt_default)),
        "shoal rebalance": Step("", run(says_out("done: every object is where the map puts it"))),
        "shoal http --redirect": Step("", redirect),
        "shoal key create --rights 'photos=rw'": Step("prints ACCESS and SECRET", run(key_printed)),
        "shoal http --host 0.0.0.0 --pool photos": Step(
            "keys required (or --no-auth)", keyed_gateway
        ),
        "curl -u ACCESS:SECRET -T photo.jpg http://gateway:3000/2024/photo.jpg": Step(
            "", run(curl(201))
        ),
        "curl -H 'Authorization: Bearer ACCESS:SECRET' http://gateway:3000/2024/photo.jpg": Step(
            "", run(curl(200, PHOTO))
        ),
    },
    SECTION_S3: {
        "shoal up": Step("", up_for_s3),
        "shoal s3 --port 9000 --pool P --index URL [--domain D] [--region us-east-1] "
        "[--log FILE]": Step("", s3_by_hand),
        "shoal key create": Step("", run(says_out("access key: ", "secret key: "))),
        "export AWS_ACCESS_KEY_ID=ACCESS AWS_SECRET_ACCESS_KEY=SECRET "
        "AWS_DEFAULT_REGION=us-east-1": Step("", keep(exported)),
        "aws --endpoint-url http://localhost:9000 s3 mb s3://photos": Step(
            "", run(says_out("make_bucket: photos"))
        ),
        "aws --endpoint-url http://localhost:9000 s3 cp a.jpg s3://photos/2024/a.jpg": Step(
            "one PUT; in parts from 8 MiB", run(one_put)
        ),
        "aws --endpoint-url http://localhost:9000 s3 ls s3://photos/2024/": Step(
            "", run(says_out(f" {len(A_JPG)} a.jpg"))
        ),
        "aws --endpoint-url http://localhost:9000 s3api head-object --bucket photos "
        "--key 2024/a.jpg": Step("", run(head_object)),
        "curl http://localhost:3000/photos/2024/a.jpg": Step(
            "the same object, over HTTP", run(curl(200, A_JPG))
        ),
        "import boto3 from botocore.config import "
        'Config s3 = boto3.client("s3", endpoint_url="http://localhost:9000", '
        'region_name="us-east-1", aws_access_key_id="ACCESS", aws_secret_access_key="SECRET", '
        'config=Config(signature_version="s3v4")) # (presigned URLs: SigV4) '
        's3.create_bucket(Bucket="photos") s3.put_object(Bucket="photos", Key="2024/a.jpg", '
        'Body=open("a.jpg", "rb"), ContentType="image/jpeg", Metadata={"camera": "x100"}) '
        's3.get_object(Bucket="photos", Key="2024/a.jpg", Range="bytes=0-99")["Body"].read() '
        's3.upload_file("big.iso", "photos", "big.iso") # a multipart upload: parts of 8 MiB '
        's3.generate_presigned_url("get_object", Params={"Bucket": "photos", "Key": '
        '"2024/a.jpg"})': Step("", boto3_block),
        "shoal index rebuild": Step("", run(buckets_rebuilt)),
    },
    SECTION_DAEMON: {
        "shoal daemon --dir /tmp/storage --listen 127.0.0.1:4148": Step(
            "one per disk; --size for a new one", one_daemon
        ),
        "shoal -v write --storage-daemon 127.0.0.1:4148 --pool testpool testobj "
        '--data-literal "hello world"': Step("", run()),
        "shoal -v write --storage-daemon 127.0.0.1:4148 --pool testpool passwd "
        "--data-file /etc/passwd": Step("", run()),
        "shoal -v read --storage-daemon 127.0.0.1:4148 --pool testpool passwd --offset 20 "
        "--length 40": Step("", run(prints(PASSWD[20:60]))),
        "shoal stat|rm|ls --storage-daemon 127.0.0.1:4148 --pool testpool ...": Step(
            "", stat_rm_ls
        ),
        "curl -r 20-59 http://127.0.0.1:4149/testpool/passwd": Step(
            "the daemon's read-only HTTP endpoint", run(curl(206, PASSWD[20:60]))
        ),
        "shoal file-store --listen-address ... --peer-address ... --dir ...": Step(
            "", file_store_form
        ),
        'from shoal.client import Client with Client("127.0.0.1:4148") as c: '
        'c.put("testpool", "greeting", b"hello") '
        'assert c.get("testpool", "greeting", offset=1, length=3) == b"ell"': Step(
            "", python_block
        ),
    },
    SECTION_ENGINE: {
        "shoal disk format demo/disk.img --size 1G": Step(
            "a file (space reserved) or a block device", run(formatted)
        ),
        "shoal disk put demo/disk.img passwd --file /etc/passwd": Step("", run()),
        'shoal disk put demo/disk.img --data-literal "hello world"': Step(
            "unnamed: prints its uuid", run(uuid_printed)
        ),
        "shoal disk get demo/disk.img passwd --offset 20 --length 40": Step(
            "", run(prints(PASSWD[20:60]))
        ),
        "shoal disk get demo/disk.img 5f0c...-uuid --uuid -o out.bin": Step("", run(got_by_uuid)),
        "shoal disk stat demo/disk.img passwd": Step(
            "uuid, BLAKE3, size, version, references, meta", run(disk_stat)
        ),
        "shoal disk put demo/disk.img note --data-literal hi --meta content-type=text/plain": Step(
            "kept with it", run(meta_kept)
        ),
        "shoal disk ls -l demo/disk.img": Step("by name prefix, paginated", run(disk_listed)),
        "shoal disk write-at demo/disk.img image --offset 1048576 --file block.bin": Step(
            "grows, sparse", write_at
        ),
        "shoal disk ref demo/disk.img add passwd 00112233445566778899aabbccddeeff": Step(
            "", run(ref_added)
        ),
        "shoal disk rm demo/disk.img passwd --discard": Step("or --zero", run(removed)),
        "shoal disk check demo/disk.img": Step(
            "every checksum, hash and block accounted for", run(checked)
        ),
        "shoal disk format /dev/loop0 --keys /fast/loop0.keys": Step("", loop_device),
    },
}


# -- the tests --------------------------------------------------------------------------------


def section(title: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    def mark(fn: Callable[..., None]) -> Callable[..., None]:
        fn.section = title  # type: ignore[attr-defined]
        return fn

    return mark


def test_every_readme_line_is_run_or_excused() -> None:
    lines = readme_lines()
    missing = [
        f"{x.section}: {x.key!r}"
        for x in lines
        if x.key not in PLAN.get(x.section, {}) and x.key not in NOT_RUN
    ]
    assert not missing, "README lines neither run nor in NOT_RUN:\n" + "\n".join(missing)
    changed = [
        f"{x.key!r}: the README says {x.says!r}, the test checks {step.says!r}"
        for x in lines
        if (step := PLAN.get(x.section, {}).get(x.key)) is not None and step.says != x.says
    ]
    assert not changed, "\n".join(changed)
    have = {(x.section, x.key) for x in lines}
    stale = [f"{sec}: {key!r}" for sec, plan in PLAN.items() for key in plan
             if (sec, key) not in have]  # fmt: skip
    stale += [key for key in NOT_RUN if not any(x.key == key for x in lines)]
    for sec, subs in SUBSTITUTIONS.items():
        texts = [x.text for x in lines if x.section == sec]
        stale += [
            f"{sec}: rewrite of {old!r}" for old, _ in subs if not any(old in t for t in texts)
        ]
    stale += [f"{key!r} (APPEND)" for key in APPEND if not any(x.key == key for x in lines)]
    assert not stale, "not in README.md any more:\n" + "\n".join(stale)


def test_readme_lines_are_read_as_written() -> None:
    text = (
        "## S\n```sh\nmake up   # one\n          # two\n"
        "shoal x --a 'b # c' \\\n    --d e   # f\n```\n"
        "Prose names `shoal y --z` and `shoal-data/x`, `shoal`, `shoal x --a 'b # c' --d e`.\n"
    )
    got = [(x.key, x.says, x.kind) for x in readme_lines(text)]
    assert got == [
        ("make up", "one two", "sh"),
        ("shoal x --a 'b # c' --d e", "f", "sh"),
        ("shoal y --z", "", "prose"),
    ]


@section(SECTION_TWO)
def test_two_commands(session: Session) -> None:
    play(session)


@section(SECTION_BY_HAND)
def test_a_cluster_by_hand(session: Session) -> None:
    play(session)


@section(SECTION_HTTP)
def test_the_http_gateway(session: Session) -> None:
    play(session)


@section(SECTION_S3)
def test_the_s3_gateway(session: Session) -> None:
    play(session)


@section(SECTION_DAEMON)
def test_one_daemon_without_a_master(session: Session) -> None:
    play(session)


@section(SECTION_ENGINE)
def test_the_engine_by_hand(session: Session) -> None:
    play(session)
