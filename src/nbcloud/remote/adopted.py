"""Shell run on a machine the user already has: check it, install the bootstrap, remove what nbcloud put there.

Pure functions returning script text (run with ``ssh nb-NAME -- <script>``). Everything nbcloud installs lives in
/opt/nbcloud, /var/lib/nbcloud, /var/log/nbcloud, the nbcloud-*.service units and the login user's
~/.config/nbcloud; uninstall removes exactly that and never the user's home, notebooks or ~/data.
"""

from __future__ import annotations

import shlex

__all__ = ["MARKER", "PREFLIGHT_CODES", "install_script", "preflight_script", "uninstall_script"]

#: names the instance this machine was adopted as; a second adoption of the same machine is refused
MARKER = "/var/lib/nbcloud/adopted-by"

#: exit code of the preflight → (what is wrong, how to fix it); {user} {host} {name} are filled in
PREFLIGHT_CODES: dict[int, tuple[str, str]] = {
    10: ("{user} on {host} cannot use sudo without a password",
         "allow it (a sudoers line `{user} ALL=(ALL) NOPASSWD:ALL`) or log in as a user who can"),
    11: ("{host} has no systemd (systemctl not found); nbcloud runs Jupyter as a service",
         "use a machine with systemd"),
    12: ("{host} has no curl, which nbcloud uses to install uv and to check Jupyter", "install curl on it"),
    13: ("the home directory of {user} on {host} is not /home/{user}",
         "log in as a user whose home is /home/USER"),
    14: ("{host} already runs a Jupyter that nbcloud installed for another name or machine",
         "`nbcloud down` it where it was made, or pick another machine"),
}


def preflight_script(name: str, user: str) -> str:
    """Checks that need nothing installed; prints the adoption marker's content when this name owns the host."""
    home = shlex.quote(f"/home/{user}")
    return f"""set -u
sudo -n true 2>/dev/null || exit 10
command -v systemctl >/dev/null 2>&1 || exit 11
command -v curl >/dev/null 2>&1 || exit 12
[ "$HOME" = {home} ] || exit 13
if [ -e {MARKER} ]; then
  [ "$(cat {MARKER})" = {shlex.quote(name)} ] || exit 14
elif [ -e /opt/nbcloud ]; then
  exit 14
fi
exit 0
"""


def install_script(name: str) -> str:
    """Run as the login user with the bootstrap on stdin: sudo writes it to /opt/nbcloud and runs it as root.

    The marker is written first, so a failed or interrupted bootstrap still leaves a host that `down` (or the
    rollback) recognises as ours to clean.
    """
    inner = (
        "set -eu; umask 022; mkdir -p /opt/nbcloud /var/lib/nbcloud; "
        f"printf '%s\\n' {shlex.quote(name)} > {MARKER}; "
        "cat > /opt/nbcloud/bootstrap.sh.new; chmod 0700 /opt/nbcloud/bootstrap.sh.new; "
        "mv -f /opt/nbcloud/bootstrap.sh.new /opt/nbcloud/bootstrap.sh; "
        "exec /bin/bash /opt/nbcloud/bootstrap.sh"
    )
    return f"sudo -n /bin/sh -c {shlex.quote(inner)}"


def uninstall_script(name: str, user: str) -> str:
    """Stop and remove nbcloud's services and files, only on a host adopted as ``name`` (idempotent)."""
    secrets = shlex.quote(f"/home/{user}/.config/nbcloud")
    runtime = shlex.quote(f"/home/{user}/.local/share/jupyter/runtime")
    inner = f"""set -u
if [ -e {MARKER} ] && [ "$(cat {MARKER})" != {shlex.quote(name)} ]; then
  echo "nbcloud: this host was adopted as $(cat {MARKER}), not {name}; leaving it alone" >&2; exit 14
fi
for unit in /etc/systemd/system/nbcloud-*.service; do
  [ -e "$unit" ] || continue
  systemctl disable --now "$(basename "$unit")" >/dev/null 2>&1 || true
  rm -f "$unit"
done
systemctl daemon-reload >/dev/null 2>&1 || true
rm -rf /opt/nbcloud /var/lib/nbcloud /var/log/nbcloud {secrets}
rm -f {runtime}/jpserver-*
echo "nbcloud: removed"
"""
    return f"sudo -n /bin/sh -c {shlex.quote(inner)}"
