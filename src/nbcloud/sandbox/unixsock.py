"""AF_UNIX addresses for sockets whose path may be long.

A socket path is limited to 107 bytes, and pytest's temporary directories (more so under xdist workers) make a
sandbox's paths longer than that: connect and bind then fail, and a failed connect to an instance's init once
looked like a volume that never attached. A long path is reached through ``/proc/self/fd/N`` of its directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["unix_address"]

_MAX = 100  # under the 107-byte limit, with room for the kernel's NUL


@contextmanager
def unix_address(path: str | os.PathLike[str]) -> Iterator[str]:
    """An address for ``connect``/``bind`` that reaches ``path``, valid inside the ``with`` block."""
    text = os.fspath(path)
    if len(text.encode()) <= _MAX:
        yield text
        return
    fd = os.open(os.path.dirname(text) or ".", os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{os.path.basename(text)}"
    finally:
        os.close(fd)
