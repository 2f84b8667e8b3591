"""Signed read URLs (shoal.cluster.auth.sign_read / check_read) and the HTTP gateway's key
check (shoal.gateway.auth), without sockets."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from urllib.parse import parse_qsl

import pytest

from shoal.cluster.auth import (
    Ticket,
    check_read,
    contents,
    is_loopback,
    issue,
    sign_read,
    verify,
)
from shoal.errors import Forbidden, NotAuthenticated
from shoal.gateway.auth import KeyCheck, KeyRefused, auth_required, credentials

KEY = b"k" * 32
TICKET = issue(KEY, "SKREADER", {"photos": "r", "other": "rw"})


def _params(query: str) -> dict[str, str]:
    return dict(parse_qsl(query))


def _query(p: dict[str, str]) -> str:
    return "&".join(f"{k}={v}" for k, v in p.items())


def test_a_signed_url_reads_its_object_and_no_other() -> None:
    q = sign_read(TICKET, "photos", "dir/a b.jpg")
    t = check_read(KEY, "photos", "dir/a b.jpg", q)
    assert (t.access_key, t.rights) == ("SKREADER", {"photos": "r", "other": "rw"})
    assert check_read(KEY, "photos#stripes", "x", sign_read(TICKET, "photos#stripes", "x"))
    for ns, name in (("photos", "dir/a b.jpgx"), ("photos", "dir/a"), ("other", "dir/a b.jpg")):
        with pytest.raises(NotAuthenticated, match="does not match this object"):
            check_read(KEY, ns, name, q)


def test_unsigned_expired_tampered_and_foreign_urls_are_refused() -> None:
    name = "a"
    with pytest.raises(NotAuthenticated, match="unsigned"):
        check_read(KEY, "photos", name, "")
    q = sign_read(TICKET, "photos", name)
    p = _params(q)
    for drop in ("ticket", "expires", "sig"):
        with pytest.raises(NotAuthenticated, match="unsigned"):
            check_read(KEY, "photos", name, _query({k: v for k, v in p.items() if k != drop}))
    old = sign_read(TICKET, "photos", name, ttl=60, now=time.time() - 61.5)
    with pytest.raises(NotAuthenticated, match="expired"):
        check_read(KEY, "photos", name, old)
    assert check_read(KEY, "photos", name, old, now=time.time() - 10)  # (then it was good)
    later = {**p, "expires": str(int(p["expires"]) + 3600)}
    with pytest.raises(NotAuthenticated, match="does not match"):
        check_read(KEY, "photos", name, _query(later))
    flipped = p["sig"][:-2] + ("A" if p["sig"][-2] != "A" else "B") + p["sig"][-1]
    with pytest.raises(NotAuthenticated, match="does not match"):
        check_read(KEY, "photos", name, _query({**p, "sig": flipped}))
    for bad in ("!!!", "A"):
        with pytest.raises(NotAuthenticated):
            check_read(KEY, "photos", name, _query({**p, "sig": bad}))
    with pytest.raises(NotAuthenticated):
        check_read(KEY, "photos", name, _query({**p, "expires": "soon"}))
    # more rights written into the ticket's body: another MAC, so another signing key
    richer = issue(b"x" * 32, "SKREADER", {"*": "rwda"})
    body = base64.urlsafe_b64encode(richer[:-32]).rstrip(b"=").decode()
    with pytest.raises(NotAuthenticated, match="does not match"):
        check_read(KEY, "photos", name, _query({**p, "ticket": body}))
    with pytest.raises(NotAuthenticated, match="does not match"):  # another cluster's daemon
        check_read(b"y" * 32, "photos", name, q)


def test_the_ticket_must_be_current_and_may_read() -> None:
    with pytest.raises(Forbidden, match="may not read"):
        check_read(KEY, "secret", "a", sign_read(TICKET, "secret", "a"))
    writer = issue(KEY, "SKWRITER", {"photos": "wd"})
    with pytest.raises(Forbidden, match="may not read"):
        check_read(KEY, "photos", "a", sign_read(writer, "photos", "a"))
    short = issue(KEY, "SKSHORT", {"photos": "r"}, ttl=1)
    q = sign_read(short, "photos", "a", ttl=600)
    assert check_read(KEY, "photos", "a", q)
    with pytest.raises(NotAuthenticated, match="has expired"):
        check_read(KEY, "photos", "a", q, now=time.time() + 5)


def test_a_url_does_not_carry_a_ticket() -> None:
    """The ticket's MAC is not in the URL: what the URL holds is no ticket a daemon's native
    port takes."""
    p = _params(sign_read(TICKET, "photos", "a"))
    body = base64.urlsafe_b64decode(p["ticket"] + "==")
    assert body == TICKET[:-32] and TICKET[-32:] not in base64.urlsafe_b64decode(p["sig"] + "=")
    for guess in (body, body + base64.urlsafe_b64decode(p["sig"] + "=")):
        with pytest.raises(NotAuthenticated):
            verify(KEY, guess)
    # the signature is an HMAC under a key derived from the MAC, not the MAC itself
    mac = TICKET[-32:]
    assert hmac.new(KEY, body, hashlib.sha256).digest() == mac
    assert contents(TICKET) == verify(KEY, TICKET)


def test_loopback_and_when_a_gateway_takes_keys() -> None:
    for host in ("127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost", "LOCALHOST",
                 "::ffff:127.0.0.1"):  # fmt: skip
        assert is_loopback(host), host
        assert not auth_required(host, False) and not auth_required(host, True)
    for host in ("0.0.0.0", "::", "", "10.1.2.3", "192.168.0.1", "example.com", "128.0.0.1"):
        assert not is_loopback(host), host
        assert auth_required(host, False) and not auth_required(host, True)


def _scope(method: str = "GET", auth: bytes | None = None) -> dict[str, object]:
    headers = [(b"host", b"x")] + ([(b"authorization", auth)] if auth is not None else [])
    return {"type": "http", "method": method, "headers": headers}


def test_credentials_basic_and_bearer() -> None:
    basic = b"Basic " + base64.b64encode(b"SKA:sec:ret")
    assert credentials(_scope(auth=basic)) == ("SKA", "sec:ret")
    assert credentials(_scope(auth=b"Bearer SKA:secret")) == ("SKA", "secret")
    assert credentials(_scope(auth=b"bearer  SKA:secret ")) == ("SKA", "secret")
    for bad in (None, b"", b"Basic", b"Basic !!!", b"Basic " + base64.b64encode(b"SKA"),
                b"Bearer SKA", b"Bearer :secret", b"Digest x", b"SKA:secret"):  # fmt: skip
        with pytest.raises(KeyRefused):
            credentials(_scope(auth=bad))


class Master:
    """Stands in for ClusterClient.authenticate: two keys, counting the questions."""

    def __init__(self) -> None:
        self.asked = 0
        self.down = False
        self.keys = {("SKRW", "s1"): {"pool": "rw"}, ("SKALL", "s2"): {"*": "rwda"}}

    async def authenticate(self, access: str, secret: str) -> Ticket:
        self.asked += 1
        await asyncio.sleep(0.01)
        if self.down:
            raise ConnectionError("cannot reach the master")
        rights = self.keys.get((access, secret))
        if rights is None:
            raise NotAuthenticated("unknown access key or wrong secret")
        return Ticket(access, rights, time.time() + 3600)


@pytest.mark.asyncio
async def test_key_check_rights_and_remembering() -> None:
    m = Master()
    check = KeyCheck(m.authenticate, "pool", good_for=0.3, bad_for=0.1, remembered=2)
    rw = b"Bearer SKRW:s1"
    assert (await check.check(_scope("GET", rw))).access_key == "SKRW"
    await check.check(_scope("PUT", rw))
    await check.check(_scope("HEAD", rw))
    with pytest.raises(Forbidden, match="may not delete"):
        await check.check(_scope("DELETE", rw))
    assert m.asked == 1  # remembered
    await check.check(_scope("DELETE", b"Bearer SKALL:s2"))
    with pytest.raises(KeyRefused, match="wrong secret"):
        await check.check(_scope("GET", b"Bearer SKRW:wrong"))
    with pytest.raises(KeyRefused):
        await check.check(_scope("GET", b"Bearer SKRW:wrong"))
    assert m.asked == 3  # the refusal remembered too, and the oldest key forgotten (2 kept)
    await check.check(_scope("GET", rw))
    assert m.asked == 4
    await asyncio.sleep(0.35)  # remembered for a while only: a removed key is seen
    del m.keys[("SKRW", "s1")]
    with pytest.raises(KeyRefused):
        await check.check(_scope("GET", rw))
    # many requests with a new key at once: one question
    before = m.asked
    await asyncio.gather(*(check.check(_scope("GET", b"Bearer SKALL:s2")) for _ in range(20)))
    assert m.asked == before + 1
    # the master unreachable: an error (503), not remembered
    m.down = True
    with pytest.raises(ConnectionError):
        await check.check(_scope("GET", b"Bearer SKNEW:x"))
    m.down = False
    m.keys[("SKNEW", "x")] = {"pool": "r"}
    await check.check(_scope("GET", b"Bearer SKNEW:x"))
