"""The knobs of a machine whose "/" is a directory, named once (the sandbox's loopback mode, where instances share
one filesystem and one network; a real machine sets none of them, and every expansion below is the plain path).

- ``NBCLOUD_ROOT``: the directory that stands for the machine's "/" (empty: "/" itself);
- ``NBCLOUD_JUPYTER_IP``: the address of its own Jupyter and the gateway listen on (unset: 127.0.0.1);
- ``NBCLOUD_SSH_PORT``: the port its sshd listens on (unset: 22).

Scripts nbcloud sends over ssh use the shell and Python spellings below. The on-instance agent (standard library
only) and the shipped templates spell the names themselves.
"""

from __future__ import annotations

__all__ = ["JUPYTER_IP_ENV", "ROOT_ENV", "SH_JUPYTER_IP", "SH_ROOT", "SSH_PORT_ENV", "py_rooted"]

ROOT_ENV = "NBCLOUD_ROOT"
JUPYTER_IP_ENV = "NBCLOUD_JUPYTER_IP"
SSH_PORT_ENV = "NBCLOUD_SSH_PORT"

#: shell: the machine's "/" as a path prefix ("" on a real machine): ``"$SH_ROOT/var/lib/nbcloud"``
SH_ROOT = "${" + ROOT_ENV + ":-}"
#: shell: the address Jupyter listens on
SH_JUPYTER_IP = "${" + JUPYTER_IP_ENV + ":-127.0.0.1}"


def py_rooted(path: str) -> str:
    """A Python expression (for ``python3 -c`` one-liners that ``import os``): ``path`` below the machine's "/"."""
    return f"os.environ.get({ROOT_ENV!r},'')+{path!r}"
