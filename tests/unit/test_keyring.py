"""Client keys' secrets kept sealed by the master (shoal.master.keyring): sealed per key and
per keyring key, never in master.db as they are; a master.db made before (tests/old_master.py)
gets the column, and its keys their sealed secret when they next authenticate (AUTH); a lost
keyring key is said, and healed the same way."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from shoal.errors import InvalidArgument, NotAuthenticated
from shoal.master.keyring import Keyring
from shoal.master.server import CLIENT, Master
from shoal.master.state import MasterState
from shoal.proto.frames import Op
from tests.old_master import old_master_db


def test_keyring_seals_per_key_and_per_keyring(tmp_path: Path) -> None:
    k = Keyring.load(str(tmp_path / "secrets.key"))
    assert stat.S_IMODE((tmp_path / "secrets.key").stat().st_mode) == 0o600
    assert Keyring.load(str(tmp_path / "secrets.key")).id == k.id  # the same key, read back
    sealed = k.seal("SKA", "the secret")
    assert b"the secret" not in sealed and k.seal("SKA", "the secret") != sealed  # (nonces)
    assert k.open("SKA", sealed) == "the secret"
    assert k.open("SKB", sealed) is None  # moved to another key's row: does not open
    altered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    assert k.open("SKA", altered) is None and not k.sealed_by_another(altered)
    other = Keyring(os.urandom(32))
    assert other.open("SKA", sealed) is None and other.sealed_by_another(sealed)
    assert k.open("SKA", None) is None and not k.sealed_by_another(None)


def test_a_keyring_file_that_is_not_one(tmp_path: Path) -> None:
    (tmp_path / "secrets.key").write_bytes(b"short")
    with pytest.raises(InvalidArgument, match="not the master's keyring key"):
        MasterState(str(tmp_path / "master.db"))


def test_new_keys_are_sealed_and_the_secret_is_not_in_the_db(tmp_path: Path) -> None:
    st = MasterState(str(tmp_path / "master.db"))
    access, secret = st.create_key({"p": "rw"})
    st.add_key("SKADMIN", "admin-secret", {"*": "rwda"})
    assert st.secret(access) == (secret, {"p": "rw"})
    row = st.key(access)
    assert row is not None and row.s3
    listed = st.keys()
    assert {k["access_key"]: k["s3"] for k in listed} == {access: True, "SKADMIN": True}
    st.close()
    raw = (tmp_path / "master.db").read_bytes() + b"".join(
        p.read_bytes() for p in tmp_path.glob("master.db-*")
    )
    assert secret.encode() not in raw and b"admin-secret" not in raw


def test_old_db_migrates_and_keys_become_s3_capable_at_auth(tmp_path: Path) -> None:
    db = tmp_path / "master.db"
    old_master_db(db, {"SKOLD": ("old-secret", {"p": "rw"})})
    st = MasterState(str(db))
    assert not st.created
    row = st.key("SKOLD")
    assert row is not None and row.rights == {"p": "rw"} and not row.s3
    assert st.secret("SKOLD") == (None, {"p": "rw"})
    st.seal_secret("SKOLD", "old-secret")
    assert st.secret("SKOLD") == ("old-secret", {"p": "rw"})
    st.close()
    st = MasterState(str(db))  # (opened again: the column is there, added once)
    assert st.secret("SKOLD") == ("old-secret", {"p": "rw"})
    st.close()


@pytest.mark.asyncio
async def test_a_lost_keyring_key_is_said_and_healed_by_auth(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    st = MasterState(str(tmp_path / "master.db"))
    st.add_key("SKA", "sa", {"p": "r"})
    st.close()
    (tmp_path / "secrets.key").unlink()
    with caplog.at_level(logging.WARNING, "shoal.master"):
        m = Master(MasterState(str(tmp_path / "master.db")))
    assert "1 key(s) have their secret sealed under another keyring key" in caplog.text
    try:
        row = m.state.key("SKA")
        assert row is not None and not row.s3 and m.state.secret("SKA") == (None, {"p": "r"})
        await m.handle(CLIENT, Op.AUTH, {"access_key": "SKA", "secret": "sa"})
        assert m.state.secret("SKA") == ("sa", {"p": "r"})
    finally:
        await m.close()
        m.state.close()


@pytest.mark.asyncio
async def test_auth_seals_an_old_key(tmp_path: Path) -> None:
    old_master_db(tmp_path / "master.db", {"SKOLD": ("sold", {"p": "rw"})})
    m = Master(MasterState(str(tmp_path / "master.db")))
    try:
        assert m.state.secret("SKOLD") == (None, {"p": "rw"})
        with pytest.raises(NotAuthenticated):  # (a wrong secret: nothing kept)
            await m.handle(CLIENT, Op.AUTH, {"access_key": "SKOLD", "secret": "nope"})
        assert m.state.secret("SKOLD") == (None, {"p": "rw"})
        await m.handle(CLIENT, Op.AUTH, {"access_key": "SKOLD", "secret": "sold"})
        assert m.state.secret("SKOLD") == ("sold", {"p": "rw"})
    finally:
        await m.close()
        m.state.close()
