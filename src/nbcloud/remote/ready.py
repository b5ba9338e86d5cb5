"""A script run over ssh that waits until the bootstrap finished and Jupyter answers (or says why not)."""

from __future__ import annotations

from .machine_root import SH_JUPYTER_IP, SH_ROOT

__all__ = ["wait_ready_script"]


def wait_ready_script(port: int, timeout: float, tls: bool = False) -> str:
    scheme = "https" if tls else "http"
    # /api answers without a token; the token is never sent from here. NBCLOUD_ROOT and NBCLOUD_JUPYTER_IP are
    # set only where the machine's "/" is a directory and Jupyter has an address of its own (sandbox, no root).
    return f"""
deadline=$(( $(date +%s) + {int(timeout)} ))
log="{SH_ROOT}/var/log/nbcloud/bootstrap.log"
while :; do
  if [ -e "{SH_ROOT}/var/lib/nbcloud/bootstrap.done" ] &&
     curl -ks -o /dev/null -w '%{{http_code}}' "{scheme}://{SH_JUPYTER_IP}:{port}/api" 2>/dev/null |
       grep -q 200; then
    echo ready; exit 0
  fi
  if [ -r "$log" ] && grep -q 'nbcloud-bootstrap: step .* failed' "$log"; then
    grep 'nbcloud-bootstrap' "$log" | tail -n 3; exit 3
  fi
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "timed out; last lines of the bootstrap log:"; tail -n 3 "$log" 2>/dev/null; exit 4
  fi
  sleep 0.2
done
"""
