"""The undo list a command that makes several cloud resources keeps: `up`, adopting a host, a cluster's workers."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

from ..errors import NbcloudError
from .context import Progress, no_progress

__all__ = ["Rollback", "main_thread"]


class Rollback:
    """Undo steps registered as resources are made; run in reverse on failure, shielded from a second Ctrl-C."""

    def __init__(self, progress: Progress = no_progress) -> None:
        self._steps: list[tuple[str, Callable[[], None]]] = []
        self._progress = progress
        self.failures: list[str] = []

    def add(self, label: str, undo: Callable[[], None]) -> None:
        self._steps.append((label, undo))

    def run(self) -> None:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread() else None
        try:
            for label, undo in reversed(self._steps):
                self._progress(f"rolling back: {label}")
                try:
                    undo()
                except Exception as exc:  # keep undoing the rest; report what could not be undone
                    self.failures.append(f"{label}: {exc}")
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

    def undo_after(self, exc: BaseException, leftovers_fix: str) -> None:
        """Run the undo steps for a failed `up`; what could not be undone goes into the error's hint."""
        self.run()
        if self.failures and isinstance(exc, NbcloudError):
            exc.hint = (exc.hint + "; " if exc.hint else "") + (
                f"some resources could not be removed ({'; '.join(self.failures)}): {leftovers_fix}")


def main_thread() -> bool:
    """Signal handlers can only be set from the main thread: elsewhere (a worker thread) they are left alone."""
    return threading.current_thread() is threading.main_thread()
