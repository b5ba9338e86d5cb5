"""Replacing the instance's host key once the client is in, so the key in user-data stops being the machine's.

User-data is readable on the instance (IMDS) and through ``ec2:DescribeInstanceAttribute``: the host key handed
over there is only a bootstrap credential. Over the first pinned session the instance makes a new ed25519 key
(ssh-keygen, on the instance: the private half never travels), sshd is reloaded, and the new public key comes back
on that authenticated channel for the client to pin.
"""

from __future__ import annotations

import shlex

from .machine_root import SH_ROOT

__all__ = ["ROTATE_SCRIPT", "parse_rotated_key", "rotate_host_key_command"]

# Runs as root (through sudo). $1: the instance's "/" (NBCLOUD_ROOT, set only where "/" is a directory: a sandbox
# instance without root). SIGHUP makes sshd re-exec with the new key; sessions already open are not touched.
ROTATE_SCRIPT = r"""set -eu
r="${1:-}"
k="$r/etc/ssh/ssh_host_ed25519_key"
t="$r/etc/ssh/.nbcloud-host-key-new"
rm -f "$t" "$t.pub"
ssh-keygen -q -t ed25519 -N '' -C nbcloud-host-rotated -f "$t" </dev/null >/dev/null
chmod 0600 "$t"; chmod 0644 "$t.pub"
mv -f "$t.pub" "$k.pub"
mv -f "$t" "$k"
if [ -s "$r/run/sshd.pid" ] && kill -HUP "$(cat "$r/run/sshd.pid")" 2>/dev/null; then :
else systemctl reload ssh.service 2>/dev/null || systemctl reload sshd.service; fi
printf 'nbcloud-host-key %s\n' "$(cut -d' ' -f1,2 "$k.pub")"
"""


def rotate_host_key_command() -> str:
    """The command for ``ssh nb-NAME``: the login user runs the script as root, naming its root directory."""
    return f'sudo -n bash -c {shlex.quote(ROTATE_SCRIPT)} rotate "{SH_ROOT}"'


def parse_rotated_key(output: str) -> str | None:
    """``ssh-ed25519 AAAA…`` from the script's output, or None when it did not say one."""
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "nbcloud-host-key" and parts[1] == "ssh-ed25519":
            return f"{parts[1]} {parts[2]}"
    return None
