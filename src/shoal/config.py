"""Where a client finds its cluster: the client config file and the variables that override it.

A client finds its cluster from, in order: --master/--access-key/--secret-key/--ca-cert, the
SHOAL_MASTER / SHOAL_ACCESS_KEY / SHOAL_SECRET_KEY / SHOAL_CA_CERT variables, or a config file:
--config, $SHOAL_CONFIG, ./shoal-data/client.json (what `shoal up` writes by default),
~/.config/shoal/client.json, or the config of the last `shoal up` started by this user
(~/.config/shoal/last-up names it), so that the commands `shoal up --data /srv/shoal` prints
work from any folder. Small and free of heavy imports: every CLI command reads it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoal.errors import InvalidArgument

CONFIG_NAME = "client.json"
DEFAULT_DATA = "shoal-data"
STATUS_NAME = "up.json"  # beside the config: what `shoal up` says of its processes


@dataclass(frozen=True)
class ClusterConfig:
    master: str
    access_key: str
    secret: str
    ca: str | None = None


def user_dir() -> Path:
    """~/.config/shoal (or $XDG_CONFIG_HOME/shoal)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "shoal"


def last_up_path() -> Path:
    return user_dir() / "last-up"


def write_config(path: Path, cfg: ClusterConfig) -> None:
    """Write `path` (mode 0600) whole or not at all: a crash leaves the old file or the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(
            {"master": cfg.master, "access_key": cfg.access_key, "secret_key": cfg.secret,
             "ca_cert": cfg.ca}, f, indent=2)  # fmt: skip
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_config(path: Path) -> dict[str, Any]:
    try:
        out = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"cannot read the client config {path}: {exc}") from None
    if not isinstance(out, dict):
        raise InvalidArgument(f"the client config {path} is not a JSON object")
    return out


def remember_up(config: Path) -> None:
    """Name `config` as the last `shoal up`'s, for commands run from other folders."""
    try:
        path = last_up_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(str(config.resolve()) + "\n")
    except OSError:
        pass  # (a read-only home: the commands then need --config, and `shoal up` says so)


def config_file(explicit: str | None = None) -> Path | None:
    """The config file a command would read: `explicit`, $SHOAL_CONFIG, ./shoal-data/
    client.json, ~/.config/shoal/client.json, the last `shoal up`'s; None if there is none."""
    explicit = explicit or os.environ.get("SHOAL_CONFIG")
    if explicit:
        if not Path(explicit).is_file():
            raise InvalidArgument(f"no client config at {explicit}")
        return Path(explicit)
    for path in (Path(DEFAULT_DATA) / CONFIG_NAME, user_dir() / CONFIG_NAME):
        if path.is_file():
            return path
    try:
        last = Path(last_up_path().read_text().strip())
    except OSError:
        return None
    return last if last.is_file() else None


def find_config(options: Any = None, env: Mapping[str, str] | None = None) -> ClusterConfig | None:
    """The cluster a command talks to (`options` may carry master, access_key, secret_key,
    ca_cert and config attributes), or None if nothing names one."""
    env = os.environ if env is None else env
    master = getattr(options, "master", None) or env.get("SHOAL_MASTER")
    access = getattr(options, "access_key", None) or env.get("SHOAL_ACCESS_KEY")
    secret = getattr(options, "secret_key", None) or env.get("SHOAL_SECRET_KEY")
    ca = getattr(options, "ca_cert", None) or env.get("SHOAL_CA_CERT")
    path = config_file(getattr(options, "config", None))
    file = read_config(path) if path is not None else {}
    master = master or file.get("master")
    if not master:
        return None
    access = access or file.get("access_key")
    secret = secret or file.get("secret_key")
    if not access or not secret:
        raise InvalidArgument(
            f"a key is needed to talk to the master at {master}: --access-key and --secret-key "
            "(or SHOAL_ACCESS_KEY and SHOAL_SECRET_KEY, or a client config)"
        )
    return ClusterConfig(master, access, secret, ca or file.get("ca_cert"))


def local_processes(config: Path | None) -> dict[str, Any] | None:
    """What the `shoal up` that wrote `config` says of its processes (DATA/up.json), while it
    runs; None otherwise."""
    if config is None:
        return None
    try:
        doc = json.loads((config.parent / STATUS_NAME).read_text())
        os.kill(int(doc["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return doc if isinstance(doc, dict) else None
