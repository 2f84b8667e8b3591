"""An S3 gateway's memory of its users' keys (shoal.gateway.s3keys): signing keys remembered
per (access key, date, region) for a while and within a size, refusals briefly (an unknown
key whatever is asked next), one question for concurrent lookups, nothing remembered when
the master cannot say or the gateway may not ask. A fake master here; the real one answers
in tests/integration/test_s3_keys.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shoal.client.cluster import S3Grant
from shoal.cluster.auth import s3_sign_v2, s3_signing_key
from shoal.errors import Forbidden, InvalidArgument, NotFound
from shoal.gateway.s3keys import S3Keys, UnknownAccessKey


class Master:
    def __init__(self) -> None:
        self.asked: list[tuple[object, ...]] = []
        self.down = False
        self.forbidden = False
        self.keys = {"SKA": ("sa", {"photos": "rw"}), "SKB": ("sb", {"*": "r"})}

    def _key(self, access: str) -> tuple[str, dict[str, str]]:
        if self.down:
            raise ConnectionError("cannot reach the master")
        if self.forbidden:
            raise Forbidden("key SKGW may not check S3 signatures")
        if access not in self.keys:
            raise NotFound(f"no key {access}")  # (as the master: the cache makes it unknown)
        return self.keys[access]

    async def signing_key(self, access: str, date: str, region: str) -> S3Grant:
        self.asked.append(("v4", access, date, region))
        await asyncio.sleep(0.01)
        secret, rights = self._key(access)
        if region == "bad/region":
            raise InvalidArgument(f"not a region: {region!r}")
        return S3Grant(access, rights, s3_signing_key(secret, date, region))

    async def sign_v2(self, access: str, string_to_sign: bytes) -> S3Grant:
        self.asked.append(("v2", access))
        await asyncio.sleep(0.01)
        secret, rights = self._key(access)
        return S3Grant(access, rights, s3_sign_v2(secret, string_to_sign))


def keys(m: Master, **kw: Any) -> S3Keys:
    return S3Keys(m.signing_key, m.sign_v2, **kw)


@pytest.mark.asyncio
async def test_signing_keys_remembered_per_scope() -> None:
    m = Master()
    k = keys(m, good_for=0.3, bad_for=0.1, remembered=3)
    got = await k.signing_key("SKA", "20260101", "us-east-1")
    assert got.value == s3_signing_key("sa", "20260101", "us-east-1") and got.allows("photos", "w")
    with pytest.raises(Forbidden):
        got.require("photos", "d")
    await k.signing_key("SKA", "20260101", "us-east-1")
    assert len(m.asked) == 1  # remembered
    await k.signing_key("SKA", "20260102", "us-east-1")
    await k.signing_key("SKA", "20260101", "eu-west-1")
    assert len(m.asked) == 3  # another day, another region: another key
    await k.signing_key("SKB", "20260101", "us-east-1")  # (4 answers: the oldest forgotten)
    await k.signing_key("SKA", "20260101", "us-east-1")
    assert len(m.asked) == 5
    await asyncio.sleep(0.35)  # a while only: a key removed (or whose rights change) is seen
    del m.keys["SKB"]
    with pytest.raises(UnknownAccessKey, match="no key SKB"):
        await k.signing_key("SKB", "20260101", "us-east-1")
    # SigV2: per string to sign
    sig = await k.sign_v2("SKA", b"GET\n\n\n1\n/b/k")
    assert sig.value == s3_sign_v2("sa", b"GET\n\n\n1\n/b/k")
    await k.sign_v2("SKA", b"GET\n\n\n1\n/b/k")
    before = len(m.asked)
    await k.sign_v2("SKA", b"GET\n\n\n2\n/b/k")
    assert len(m.asked) == before + 1


@pytest.mark.asyncio
async def test_refusals() -> None:
    m = Master()
    k = keys(m, good_for=5, bad_for=0.2)
    with pytest.raises(UnknownAccessKey, match="no key SKX"):
        await k.signing_key("SKX", "20260101", "us-east-1")
    # unknown whatever is asked next, for bad_for: no question
    with pytest.raises(UnknownAccessKey):
        await k.signing_key("SKX", "20260102", "eu-west-1")
    with pytest.raises(UnknownAccessKey):
        await k.sign_v2("SKX", b"anything")
    assert len(m.asked) == 1
    await asyncio.sleep(0.25)
    m.keys["SKX"] = ("sx", {"p": "r"})  # made meanwhile
    assert (await k.sign_v2("SKX", b"anything")).value == s3_sign_v2("sx", b"anything")
    # a region the master refuses: InvalidArgument, remembered for that region
    for _ in range(2):
        with pytest.raises(InvalidArgument):
            await k.signing_key("SKA", "20260101", "bad/region")
    assert m.asked.count(("v4", "SKA", "20260101", "bad/region")) == 1
    await k.signing_key("SKA", "20260101", "us-east-1")  # (the key itself is fine)
    # the master unreachable, or the gateway's key not allowed: not remembered
    for flag, error in (("down", ConnectionError), ("forbidden", Forbidden)):
        setattr(m, flag, True)
        for _ in range(2):
            with pytest.raises(error):
                await k.signing_key("SKB", "20260101", "us-east-1")
        setattr(m, flag, False)
    assert m.asked.count(("v4", "SKB", "20260101", "us-east-1")) == 4
    await k.signing_key("SKB", "20260101", "us-east-1")


@pytest.mark.asyncio
async def test_concurrent_lookups_share_one_question() -> None:
    m = Master()
    k = keys(m)
    got = await asyncio.gather(*(k.signing_key("SKA", "20260101", "r") for _ in range(20)))
    assert len(m.asked) == 1 and len({g.value for g in got}) == 1
    got_v2 = await asyncio.gather(*(k.sign_v2("SKB", b"s") for _ in range(20)))
    assert len(m.asked) == 2 and len({g.value for g in got_v2}) == 1
    # one that goes away does not cancel the question for the others
    first = asyncio.ensure_future(k.signing_key("SKB", "20260101", "r"))
    second = asyncio.ensure_future(k.signing_key("SKB", "20260101", "r"))
    await asyncio.sleep(0)
    first.cancel()
    assert (await second).value == s3_signing_key("sb", "20260101", "r")
    assert len(m.asked) == 3
