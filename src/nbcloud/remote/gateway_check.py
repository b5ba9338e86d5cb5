"""Turn gateway mode on for a running instance: one bash script over ssh, its secrets on stdin.

The script (run as the login user, ``sudo`` for the system parts) writes the gateway token into the 0600 secrets
directory (the same way :mod:`nbcloud.remote.secrets` installs every secret), installs jupyter-kernel-gateway into
``/opt/nbcloud/venv`` when it is missing (with the provider's package environment: the sandbox's wheelhouse and
``--no-index``, the normal index on AWS), writes ``nbcloud-gateway.service`` unless the bootstrap already did, and
(re)starts it so it reads the new token. The token reaches the gateway through ``KG_AUTH_TOKEN`` in a small
wrapper, never through a command line or the unit file.
"""

from __future__ import annotations

import shlex

from .packages import GATEWAY
from .secrets import install_secrets_script
from .spec import LOGIN_USER

__all__ = ["GATEWAY_UNIT", "VENV", "enable_script", "gateway_unit", "gateway_wrapper"]

VENV = "/opt/nbcloud/venv"
GATEWAY_UNIT = "nbcloud-gateway.service"
WRAPPER = "/opt/nbcloud/bin/nbcloud-gateway"


def gateway_wrapper(port: int, login_user: str = LOGIN_USER) -> str:
    token = f"/home/{login_user}/.config/nbcloud/gateway-token"
    return (
        "#!/bin/sh\n"
        "# Written by `nbcloud gateway`: the Kernel Gateway reads its token from the environment, never argv.\n"
        "set -e\n"
        f"KG_AUTH_TOKEN=\"$(cat {token})\"\n"
        "export KG_AUTH_TOKEN\n"
        f"exec {VENV}/bin/jupyter-kernelgateway --ip=127.0.0.1 --port={int(port)} --port_retries=0 "
        "--JupyterWebsocketPersonality.list_kernels=True\n"
    )


def gateway_unit(login_user: str = LOGIN_USER) -> str:
    return (
        "[Unit]\n"
        "Description=nbcloud Kernel Gateway (kernels for a JupyterLab on the laptop)\n"
        "After=network-online.target\n"
        "Wants=network-online.target\n\n"
        "[Service]\n"
        "Type=simple\n"
        f"User={login_user}\n"
        f"WorkingDirectory=/home/{login_user}\n"
        f"ExecStart={WRAPPER}\n"
        "Restart=always\n"
        "RestartSec=2\n\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


_ENABLE = r"""
venv={venv}
if ! test -x "$venv/bin/jupyter-kernelgateway"; then
  echo "nbcloud: installing {pkg}"
  args=()
  if [ -n "${{NBCLOUD_FIND_LINKS:-}}" ]; then args+=(--find-links "$NBCLOUD_FIND_LINKS"); fi
  if [ "${{NBCLOUD_NO_INDEX:-0}}" = 1 ]; then args+=(--no-index); fi
  uv="${{NBCLOUD_UV:-$(command -v uv || true)}}"
  if [ -n "$uv" ]; then
    sudo env {env} "$uv" pip install --quiet --python "$venv/bin/python" "${{args[@]}}" {pkg_q}
  else
    sudo env {env} "$venv/bin/python" -m pip install --quiet "${{args[@]}}" {pkg_q}
  fi
fi
sudo mkdir -p {wrapper_dir}
printf '%s' {wrapper} | sudo tee {wrapper_path} > /dev/null
sudo chmod 0755 {wrapper_path}
if ! test -f /etc/systemd/system/{unit}; then
  printf '%s' {unit_text} | sudo tee /etc/systemd/system/{unit} > /dev/null
fi
sudo systemctl daemon-reload
sudo systemctl enable {unit} > /dev/null 2>&1 || true
sudo systemctl restart {unit}
for _ in $(seq 1 240); do
  if "$venv/bin/python" - <<'PY' 2>/dev/null; then
import urllib.request
urllib.request.urlopen("http://127.0.0.1:{port}/api", timeout=2)
PY
    echo "nbcloud: gateway up on 127.0.0.1:{port}"; exit 0
  fi
  sleep 0.25
done
echo "nbcloud: the Kernel Gateway did not answer on 127.0.0.1:{port} within 60 s" >&2
exit 3
"""


def enable_script(*, jupyter_token: str, gateway_token: str, port: int, package_env: dict[str, str] | None = None,
                  login_user: str = LOGIN_USER) -> tuple[str, bytes]:
    """(script, stdin) for ``ssh nb-NAME bash -c <script>``: secrets first (read from stdin), then the service."""
    secrets_script, stdin = install_secrets_script(jupyter_token, gateway_token=gateway_token, login_user=login_user)
    env = dict(package_env or {})
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(env.items()))
    env_words = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items())) or "NBCLOUD_GATEWAY=1"
    enable = _ENABLE.format(
        venv=shlex.quote(VENV), pkg=GATEWAY[0], pkg_q=shlex.quote(GATEWAY[0]), env=env_words,
        wrapper_dir=shlex.quote(WRAPPER.rsplit("/", 1)[0]), wrapper=shlex.quote(gateway_wrapper(port, login_user)),
        wrapper_path=shlex.quote(WRAPPER), unit=GATEWAY_UNIT, unit_text=shlex.quote(gateway_unit(login_user)),
        port=int(port))
    return secrets_script + exports + enable, stdin
