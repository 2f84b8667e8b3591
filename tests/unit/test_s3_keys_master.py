"""The master answers S3 gateways (keys with g on "*", or admin keys) with SigV4 signing
keys and SigV2 signatures, never the secret; other keys may not ask; an unknown key, or one
whose secret the master does not know yet, is NotFound. The master in this process, without
sockets (a real master process: tests/integration/test_s3_keys.py)."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from shoal.cluster.auth import issue, s3_sign_v2, s3_signing_key
from shoal.errors import Forbidden, InvalidArgument, NotFound
from shoal.master.server import CLIENT, Master
from shoal.master.state import MasterState
from shoal.proto.frames import Op
from tests.old_master import old_master_db


def today() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y%m%d")


async def a_master(tmp_path: Path) -> Master:
    m = Master(MasterState(str(tmp_path / "master.db")))
    m.state.add_key("SKADMIN", "sadmin", {"*": "rwda"})
    m.state.add_key("SKGW", "sgw", {"*": "g"})
    m.state.add_key("SKUSER", "suser", {"photos": "rw", "*": "r"})
    return m


async def ask(m: Master, who: str, cmd: str, **args: object) -> dict[str, object]:
    row = m.state.key(who)
    assert row is not None
    ticket = issue(m.ticket_key, who, row.rights)
    out: dict[str, object] = await m.handle(
        CLIENT, Op.ADMIN, {"ticket": ticket, "cmd": cmd, "args": args}
    )
    return out


@pytest.mark.asyncio
async def test_gateway_commands(tmp_path: Path) -> None:
    m = await a_master(tmp_path)
    try:
        for who in ("SKGW", "SKADMIN"):
            got = await ask(m, who, "s3_signing_key", access_key="SKUSER", date=today(),
                            region="us-east-1")  # fmt: skip
            assert got == {
                "access_key": "SKUSER", "rights": {"photos": "rw", "*": "r"},
                "signing_key": s3_signing_key("suser", today(), "us-east-1", "s3"),
            }  # fmt: skip
            got = await ask(m, who, "s3_sign_v2", access_key="SKUSER", string_to_sign=b"x\ny")
            assert got["signature"] == s3_sign_v2("suser", b"x\ny")
            assert "secret" not in got
        with pytest.raises(Forbidden, match="may not check S3 signatures"):
            await ask(m, "SKUSER", "s3_signing_key", access_key="SKUSER", date=today(),
                      region="us-east-1")  # fmt: skip
        with pytest.raises(Forbidden, match="may not check S3 signatures"):
            await ask(m, "SKUSER", "s3_sign_v2", access_key="SKUSER", string_to_sign=b"x")
        with pytest.raises(Forbidden, match="not an admin key"):  # g is no admin right
            await ask(m, "SKGW", "key_ls")
        with pytest.raises(NotFound, match="no key SKNONE"):
            await ask(m, "SKGW", "s3_signing_key", access_key="SKNONE", date=today(),
                      region="us-east-1")  # fmt: skip
        day = datetime.datetime.now(datetime.UTC).date()
        for days, ok in ((-8, True), (1, True), (-9, False), (2, False)):
            date = (day + datetime.timedelta(days=days)).strftime("%Y%m%d")
            if ok:
                await ask(m, "SKGW", "s3_signing_key", access_key="SKUSER", date=date,
                          region="r")  # fmt: skip
            else:
                with pytest.raises(InvalidArgument, match="from 8 days ago to tomorrow"):
                    await ask(m, "SKGW", "s3_signing_key", access_key="SKUSER", date=date,
                              region="r")  # fmt: skip
        for date, region in (("2024-01-01", "r"), (today(), ""), (today(), "a/b")):
            with pytest.raises(InvalidArgument):
                await ask(m, "SKGW", "s3_signing_key", access_key="SKUSER", date=date,
                          region=region)  # fmt: skip
    finally:
        await m.close()
        m.state.close()


@pytest.mark.asyncio
async def test_an_old_key_is_s3_capable_after_auth(tmp_path: Path) -> None:
    old_master_db(tmp_path / "master.db", {"SKGW": ("sgw", {"*": "g"}),
                                           "SKOLD": ("sold", {"p": "rw"})})  # fmt: skip
    m = Master(MasterState(str(tmp_path / "master.db")))
    try:
        with pytest.raises(NotFound, match="made before the master kept secrets"):
            await ask(m, "SKGW", "s3_signing_key", access_key="SKOLD", date=today(),
                      region="us-east-1")  # fmt: skip
        await m.handle(CLIENT, Op.AUTH, {"access_key": "SKOLD", "secret": "sold"})
        got = await ask(m, "SKGW", "s3_signing_key", access_key="SKOLD", date=today(),
                        region="us-east-1")  # fmt: skip
        assert got["signing_key"] == s3_signing_key("sold", today(), "us-east-1")
    finally:
        await m.close()
        m.state.close()
