"""Where nbcloud keeps its files, and the user's defaults.

Every path derives from ``$NBCLOUD_HOME`` when it is set (tests and scripts use it to get a private world),
otherwise from platformdirs under ``$HOME``/XDG. Directories are created 0700: they hold private keys,
tokens and the state database.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .remote.spec import IDLE_STOP_DEFAULT

__all__ = ["Paths", "Settings", "ensure_private_dir", "load_settings", "paths", "write_private"]


@dataclass(frozen=True)
class Paths:
    config_dir: Path
    data_dir: Path

    @property
    def config_file(self) -> Path:
        return self.config_dir / "config.toml"

    @property
    def state_db(self) -> Path:
        return self.data_dir / "state.db"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def known_hosts(self) -> Path:
        return self.data_dir / "known_hosts"

    @property
    def ssh_config(self) -> Path:
        return self.data_dir / "ssh_config"

    @property
    def tunnels_dir(self) -> Path:
        return self.data_dir / "tunnels"

    @property
    def secrets_dir(self) -> Path:
        return self.data_dir / "secrets"

    @property
    def sandbox_dir(self) -> Path:
        override = os.environ.get("NBCLOUD_SANDBOX_DIR")
        return Path(override) if override else self.data_dir / "sandbox"

    @property
    def user_ssh_config(self) -> Path:
        return Path(os.environ.get("NBCLOUD_USER_SSH_CONFIG") or Path.home() / ".ssh" / "config")


def paths() -> Paths:
    home = os.environ.get("NBCLOUD_HOME")
    if home:
        root = Path(home).expanduser()
        return Paths(config_dir=root, data_dir=root)
    import platformdirs

    return Paths(
        config_dir=Path(platformdirs.user_config_dir("nbcloud", appauthor=False)),
        data_dir=Path(platformdirs.user_data_dir("nbcloud", appauthor=False)),
    )


def local_port_base() -> int:
    """The first local port nbcloud tries for a new tunnel (8888; the gateway's is 1000 above, a local lab's 2 above).

    ``NBCLOUD_LOCAL_PORT`` moves it: for a second user or test run on the same machine, whose tunnels would otherwise
    take a port that a tunnel of the first one released during an outage and wants back.
    """
    raw = os.environ.get("NBCLOUD_LOCAL_PORT", "").strip()
    return int(raw) if raw.isdigit() and 1024 <= int(raw) <= 64000 else 8888


def ensure_private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def write_private(path: Path, data: str | bytes, mode: int = 0o600) -> None:
    """Write atomically with ``mode`` from the first byte (never world-readable, even for an instant).

    A missing parent is made 0700; an existing one keeps its mode (it may be the user's, e.g. ~/.ssh, or /tmp).
    """
    if not path.parent.is_dir():
        ensure_private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Settings:
    """User defaults from config.toml, overridden by NBCLOUD_* environment variables."""

    provider: str = "aws"
    region: str | None = None
    profile: str | None = None
    instance_type: str = "t3.medium"
    image: str = "ubuntu"
    idle_stop: str = f"{IDLE_STOP_DEFAULT // 60}m"
    extra: dict[str, object] = field(default_factory=dict)
    #: the keys the user set (config.toml or NBCLOUD_*), as opposed to the defaults above
    configured: frozenset[str] = frozenset()


_ENV = {
    "provider": "NBCLOUD_PROVIDER",
    "region": "NBCLOUD_REGION",
    "profile": "NBCLOUD_PROFILE",
    "instance_type": "NBCLOUD_INSTANCE_TYPE",
    "image": "NBCLOUD_IMAGE",
    "idle_stop": "NBCLOUD_IDLE_STOP",
}


def load_settings(p: Paths | None = None) -> Settings:
    p = p or paths()
    raw: dict[str, object] = {}
    if p.config_file.exists():
        from .errors import UsageError

        try:
            raw = tomllib.loads(p.config_file.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"{p.config_file} is not valid TOML: {exc}", "fix or delete the file") from exc
    known = {k: raw.pop(k) for k in list(raw) if k in _ENV}
    for key, env in _ENV.items():
        if os.environ.get(env):
            known[key] = os.environ[env]
    return Settings(**{k: str(v) for k, v in known.items()}, extra=raw, configured=frozenset(known))


def dumps(obj: object) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str)
