"""What every use case needs: paths, the state store, settings, and providers made on demand."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Paths, Settings, ensure_private_dir, load_settings, paths
from ..errors import ConflictError, NotFoundError, UsageError
from ..state import Record, Store, open_store

if TYPE_CHECKING:
    from ..providers.base import Provider

__all__ = ["Context", "Progress", "no_progress"]

Progress = Callable[[str], None]


def no_progress(_message: str) -> None:
    return None


@dataclass
class Context:
    paths: Paths
    settings: Settings
    store: Store
    _providers: dict[tuple[str, str | None, str | None], Provider] = field(default_factory=dict)

    @classmethod
    def create(cls) -> Context:
        p = paths()
        ensure_private_dir(p.data_dir)
        return cls(paths=p, settings=load_settings(p), store=open_store(p))

    def provider(self, name: str | None = None, region: str | None = None, profile: str | None = None) -> Provider:
        from ..providers.registry import get_provider

        key = (name or self.settings.provider, region or self.settings.region, profile or self.settings.profile)
        if key not in self._providers:
            self._providers[key] = get_provider(*key)
        return self._providers[key]

    def listing_provider(self, name: str | None = None, region: str | None = None,
                         profile: str | None = None) -> Provider:
        """For listings across instances (volumes, images, orphans): see :func:`registry.listing_provider`."""
        return self.provider(name or self.listing_cloud(), region, profile)

    def listing_cloud(self) -> str:
        """The cloud a listing asks when the user named none. Once every instance is gone, the clouds of the
        launches this machine still remembers count: after the last `down` on the sandbox, `volumes` and `doctor
        --orphans` asked AWS ("no AWS credentials") instead of the sandbox that may still hold volumes."""
        from ..providers.registry import listing_provider

        configured = self.settings.provider if "provider" in self.settings.configured else None
        used = [r.provider for r in self.store.all()]
        if not used:
            used = [i.provider for i in self.store.launches(outcomes=("pending", "done", "kept", "rolled-back"))]
        return listing_provider(configured, used, self.settings.provider)

    def provider_for(self, record: Record) -> Provider:
        return self.provider(record.provider, record.region, record.profile)

    def record(self, name: str) -> Record:
        found = self.store.get(name)
        if found is None:
            raise NotFoundError(f"no instance named {name!r} on this machine",
                                "`nbcloud status` lists them; `nbcloud up NAME` makes one")
        return found

    def key_path(self, name: str) -> Path:
        """The private login key of ``name``; a missing key is a clear error, not ssh's 'Permission denied'."""
        self.record(name)
        path = self.paths.keys_dir / name
        if not path.exists():
            raise UsageError(
                f"the private key for {name!r} is missing ({path})",
                f"restore it from a backup; without it nbcloud cannot log in (`nbcloud down {name}` then "
                f"`nbcloud up {name}` makes a new instance, keeping data volumes)")
        return path

    @contextmanager
    def name_lock(self, name: str, wait: bool = True) -> Iterator[None]:
        """One `up`/`down` per name at a time on this machine, so two concurrent `up NAME` make one instance."""
        lock_dir = ensure_private_dir(self.paths.data_dir / "locks")
        fd = os.open(lock_dir / f"{name}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError as exc:
                raise ConflictError(f"another nbcloud command is working on {name!r}",
                                    "wait for it to finish") from exc
            yield
        finally:
            os.close(fd)
