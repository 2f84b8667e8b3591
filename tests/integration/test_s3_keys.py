"""What an S3 gateway asks a real master (`shoal master`, TLS on its client address) about
its users' keys: a key made now gives the SigV4 signing key derived from its secret (and the
SigV2 signature), with its rights; only a gateway key (g on "*") or an admin key may ask; an
unknown key is NotFound (S3's InvalidAccessKeyId). A master.db made by the master before it
kept secrets keeps working, and its keys become S3-capable after one AUTH; the admin key
handed to the master with --admin-key-file (as `shoal up` does) is S3-capable from the start.
"""

from __future__ import annotations

import datetime
import json
import sqlite3
from pathlib import Path

import pytest

from shoal.client.cluster import ClusterClient
from shoal.cluster.auth import new_key, s3_sign_v2, s3_signing_key
from shoal.errors import Forbidden, NotFound
from shoal.gateway.s3keys import S3Keys, UnknownAccessKey
from tests.integration.cluster_helpers import (
    FAST,
    MasterProcess,
    TidyClusterClient,
    Tls,
    map_at,
    shoal,
    shoal_env,
    start_master,
    start_member,
    stop_all,
    wait_registered,
)
from tests.old_master import old_master_db


def today() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y%m%d")


def client(m: MasterProcess, access: str, secret: str) -> ClusterClient:
    return TidyClusterClient(m.client, access, secret, ca=m.ca, timeout=20.0)


async def expect_signing_key(gw: ClusterClient, access: str, secret: str,
                             rights: dict[str, str]) -> None:  # fmt: skip
    """`gw` gets `access`'s signing key and SigV2 signatures, as derived from `secret`."""
    for region in ("us-east-1", "garage"):
        got = await gw.s3_signing_key(access, today(), region)
        assert got.access_key == access and got.rights == rights
        assert got.value == s3_signing_key(secret, today(), region, "s3")
    sts = b"PUT\n\ntext/plain\nTue, 27 Mar 2007 21:15:45 +0000\n/bucket/key"
    got = await gw.s3_sign_v2(access, sts)
    assert got.value == s3_sign_v2(secret, sts) and got.rights == rights


@pytest.mark.asyncio
async def test_keys_made_now(tmp_path: Path) -> None:
    m = start_master(tmp_path / "master", tls=Tls(tmp_path / "tls"))
    try:
        assert m.access_key and m.secret  # (printed at the first start)
        home = tmp_path / "home"
        out = shoal("key", "create", "--rights", "photos=rw,*=r", env=shoal_env(home, m),
                    cwd=home).stdout.decode()  # fmt: skip
        user, user_secret = (line.split(": ")[1] for line in out.splitlines()[:2])
        async with m.client_for() as admin:
            made = await admin.admin("key_create", rights={"*": "g"}, comment="s3 gateway")
            ls = {k["access_key"]: k for k in (await admin.admin("key_ls"))["keys"]}
            assert ls[user]["s3"] and ls[made["access_key"]]["s3"] and ls[m.access_key]["s3"]
            # an admin key may ask (and is S3-capable itself: made at the first start)
            await expect_signing_key(admin, user, user_secret, {"photos": "rw", "*": "r"})
            await expect_signing_key(admin, m.access_key, m.secret, {"*": "rwda"})
        async with client(m, made["access_key"], made["secret"]) as gw:
            await expect_signing_key(gw, user, user_secret, {"photos": "rw", "*": "r"})
            await expect_signing_key(gw, made["access_key"], made["secret"], {"*": "g"})
            for ask in (gw.s3_signing_key("SKNOSUCHKEY", today(), "us-east-1"),
                        gw.s3_sign_v2("SKNOSUCHKEY", b"x")):  # fmt: skip
                with pytest.raises(NotFound, match="no key SKNOSUCHKEY"):
                    await ask
            with pytest.raises(Forbidden, match="not an admin key"):  # g is that only
                await gw.admin("key_ls")
            # through the gateway's memory of keys (shoal.gateway.s3keys)
            known = S3Keys.of(gw)
            got = await known.signing_key(user, today(), "us-east-1")
            assert got.value == s3_signing_key(user_secret, today(), "us-east-1")
            with pytest.raises(UnknownAccessKey, match="no key SKNOSUCHKEY"):
                await known.sign_v2("SKNOSUCHKEY", b"x")
        async with client(m, user, user_secret) as plain:  # a key without g may not ask
            for ask in (plain.s3_signing_key(user, today(), "us-east-1"),
                        plain.s3_sign_v2(m.access_key, b"x")):  # fmt: skip
                with pytest.raises(Forbidden, match="may not check S3 signatures"):
                    await ask
        db = sqlite3.connect(m.dir / "state" / "master.db")
        try:
            stored = b"".join(bytes(r[0]) for r in db.execute("SELECT secret_sealed FROM "
                                                              "client_keys"))  # fmt: skip
        finally:
            db.close()
        assert user_secret.encode() not in stored and m.secret.encode() not in stored
        assert "refused for key" in m.log  # (the refusals are logged)
    finally:
        assert not stop_all(m)


@pytest.mark.asyncio
async def test_an_old_master_db(tmp_path: Path) -> None:
    admin_key, user_key = new_key(), new_key()
    old_master_db(tmp_path / "master" / "state" / "master.db", {
        admin_key[0]: (admin_key[1], {"*": "rwda"}),
        user_key[0]: (user_key[1], {"p": "rw"}),
    })  # fmt: skip
    m = start_master(tmp_path / "master", *FAST, tls=Tls(tmp_path / "tls"))
    try:
        assert m.access_key is None  # (no new admin key: the state has its keys)
        start_member(m, tmp_path / "daemon0", "h0")
        async with client(m, *admin_key) as admin:  # (its AUTH keeps its secret)
            await wait_registered(admin, 1)
            out = await admin.admin("pool_create", name="p", replicas=1, pg_num=8,
                                    failure_domain="daemon")  # fmt: skip
            await map_at(admin, out["epoch"])
            ls = {k["access_key"]: k["s3"] for k in (await admin.admin("key_ls"))["keys"]}
            assert ls == {admin_key[0]: True, user_key[0]: False}
            with pytest.raises(NotFound, match="made before the master kept secrets"):
                await admin.s3_signing_key(user_key[0], today(), "us-east-1")
            home = tmp_path / "home"
            env = shoal_env(home, SHOAL_MASTER=m.client, SHOAL_ACCESS_KEY=admin_key[0],
                            SHOAL_SECRET_KEY=admin_key[1], SHOAL_CA_CERT=str(m.ca))  # fmt: skip
            listed = shoal("key", "ls", env=env, cwd=home).stdout.decode().splitlines()
            assert [line.endswith("(not S3-capable until it is used once)")
                    for line in listed] == [False, True]  # fmt: skip
            async with client(m, *user_key) as user:  # the native protocol, as before
                await user.put("p", "x", b"written with an old key")
                assert await user.get("p", "x") == b"written with an old key"
            await expect_signing_key(admin, user_key[0], user_key[1], {"p": "rw"})
            await expect_signing_key(admin, *admin_key, {"*": "rwda"})
        m.stop()  # kept: a master started again on the same state has them
        m2 = start_master(tmp_path / "master", *FAST, tls=Tls(tmp_path / "tls"))
        m2.daemons = m.daemons
        m = m2
        async with client(m, *admin_key) as admin:
            await expect_signing_key(admin, user_key[0], user_key[1], {"p": "rw"})
            async with client(m, *user_key) as user:
                assert await user.get("p", "x") == b"written with an old key"
        assert "Traceback" not in m.log
    finally:
        assert not stop_all(m)


@pytest.mark.asyncio
async def test_admin_key_file(tmp_path: Path) -> None:
    access, secret = new_key()
    key_file = tmp_path / "client.json"
    key_file.write_text(json.dumps({"access_key": access, "secret_key": secret}))
    m = start_master(tmp_path / "master", "--admin-key-file", str(key_file))
    try:
        assert m.access_key is None  # (not printed: the caller has it)
        async with client(m, access, secret) as admin:
            await expect_signing_key(admin, access, secret, {"*": "rwda"})
    finally:
        assert not stop_all(m)
