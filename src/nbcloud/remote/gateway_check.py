"""Turn gateway mode on for a running instance: re-run the instance's own bootstrap with the gateway in its spec.

Adapter over :mod:`nbcloud.remote.bootstrap`: the bootstrap is idempotent and installs exactly what a
``up --mode gateway`` launch would (jupyter-kernel-gateway into ``/opt/nbcloud/venv`` from the provider's package
source, ``/opt/nbcloud/bin/nbcloud-gateway`` which reads the token into ``KG_AUTH_TOKEN``, and
``nbcloud-gateway.service``), so an instance switched later is the same as one launched in gateway mode. The
gateway token goes first, through :func:`nbcloud.remote.secrets.install_secrets_script` (stdin, never argv).
"""

from __future__ import annotations

from .bootstrap import RERUN_FROM_STDIN
from .machine_root import SH_JUPYTER_IP, SH_ROOT
from .spec import BootstrapSpec

__all__ = ["GATEWAY_UNIT", "enable_script"]

GATEWAY_UNIT = "nbcloud-gateway.service"

# Run as the login user; the rendered bootstrap arrives on stdin (it holds no secret). Written to a file first so
# the bootstrap installs itself as /opt/nbcloud/bootstrap.sh (a later boot's `mount-data` runs the new copy).
_ENABLE = r"""set -euo pipefail
# NBCLOUD_ROOT / NBCLOUD_JUPYTER_IP: set only on a sandbox instance without root (its "/" is a directory and it
# listens on its own loopback address); empty / 127.0.0.1 on a real machine
root="@@ROOT@@"
export NBCLOUD_GATEWAY_PROBE="http://@@JUPYTER_IP@@:{port}/api"
""".replace("@@ROOT@@", SH_ROOT).replace("@@JUPYTER_IP@@", SH_JUPYTER_IP) + RERUN_FROM_STDIN + (
    r"""# restart: a gateway already running keeps the token it read at start
sudo systemctl restart {unit}
for _ in $(seq 1 240); do
  if "$root/opt/nbcloud/venv/bin/python" - <<'PY'
import os, sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(os.environ["NBCLOUD_GATEWAY_PROBE"], timeout=2)
except urllib.error.HTTPError:
    pass  # 401 without the token: it answers
except OSError:
    sys.exit(1)
PY
  then echo "nbcloud: gateway up on $NBCLOUD_GATEWAY_PROBE"; exit 0; fi
  sleep 0.25
done
echo "nbcloud: the Kernel Gateway did not answer on $NBCLOUD_GATEWAY_PROBE within 60 s" >&2
sudo tail -n 5 "$root/var/log/nbcloud/gateway.log" >&2 || true
exit 4
""")


def enable_script(spec: BootstrapSpec) -> tuple[str, bytes]:
    """(script, stdin) for ``ssh nb-NAME <script>``: the bootstrap of ``spec`` (with ``gateway=True``) on stdin."""
    from .bootstrap import render_bootstrap

    if not spec.gateway:
        raise ValueError("enable_script needs a spec with gateway=True")
    script = _ENABLE.replace("{unit}", GATEWAY_UNIT).replace("{port}", str(int(spec.gateway_port)))
    return script, render_bootstrap(spec).encode()
