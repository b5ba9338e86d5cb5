"""Render the bootstrap: one self-contained bash script (printable for ``up --dry-run``) with every file inlined.

The script carries the agent, the Jupyter config, the units and the pinned package list, so re-running
``/opt/nbcloud/bootstrap.sh`` needs nothing from the client. It carries no secret.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from importlib import resources

from ..errors import UsageError
from .jupyter_config import CONFIG_PATH, render_jupyter_config
from .secrets import agent_settings_json
from .spec import BootstrapSpec
from .units import (
    AGENT_ACTIVITY_PATH,
    AGENT_CONFIG_PATH,
    AGENT_PATH,
    GATEWAY_WRAPPER,
    JUPYTER_LAUNCHER,
    VENV,
    jupyter_launcher_source,
    render_gateway_wrapper,
    render_units,
)

__all__ = ["agent_config", "agent_source", "package_hash", "render_bootstrap"]

_EOF = "NBCLOUD_EOF"

#: Shell lines that re-run a rendered bootstrap arriving on stdin, as the login user with sudo (``$root`` set
#: before: the instance's root directory, empty on a real machine). Written to a file first so the bootstrap
#: installs itself as /opt/nbcloud/bootstrap.sh; on failure the log's last lines go to stderr, exit 3.
RERUN_FROM_STDIN = r"""t=$(mktemp /tmp/nbcloud-bootstrap.XXXXXX)
trap 'rm -f "$t"' EXIT
cat > "$t"
if ! sudo bash "$t" > /dev/null 2>&1; then
  echo "nbcloud: the bootstrap failed:" >&2
  sudo tail -n 5 "$root/var/log/nbcloud/bootstrap.log" >&2 || true
  exit 3
fi
"""
# JupyterLab's defaults for every user of the venv: no news popup, no outbound request for it.
LAB_OVERRIDES = {"@jupyterlab/apputils-extension:notification": {"fetchNews": "false"}}


def agent_source(module: str = "nbcloud_agent.py") -> str:
    """One of the agent's files as the instance gets it: without docstrings and comment lines (it travels in
    user-data, which EC2 caps at 16 KB; the commented source is nbcloud/remote/agent/)."""
    return strip_docs(resources.files("nbcloud.remote.agent").joinpath(module).read_text())


def strip_docs(source: str) -> str:
    """``source`` minus its docstrings and full-line comments (the shebang stays); the code is untouched."""
    import ast

    drop: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and len(node.body) > 1:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                drop.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    kept = [line for number, line in enumerate(source.splitlines(), 1)
            if number not in drop and (number == 1 or not line.lstrip().startswith("#"))]
    return "\n".join(kept) + "\n"


def agent_config(spec: BootstrapSpec) -> dict[str, object]:
    scheme = "https" if spec.public else "http"
    return {
        "jupyter_url": f"{scheme}://127.0.0.1:{spec.jupyter_port}",
        "token_file": f"{spec.secrets_dir}/token",
        "settings_file": f"{spec.secrets_dir}/agent.json",
        "check_period": spec.check_period,
        "idle_floor": spec.idle_floor,
        "durable_outputs": spec.durable_outputs,
    }


def package_hash(spec: BootstrapSpec) -> str:
    """Identifies the venv's content: a baked image whose venv has this hash skips the install."""
    text = "\n".join(spec.packages()) + "\n--requirements--\n" + (spec.requirements or "")
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _put(path: str, mode: str, content: str) -> str:
    if _EOF in content:
        raise UsageError(f"{path}: content contains the marker {_EOF}")
    if not content.endswith("\n"):
        content += "\n"
    return f"  put {path} {mode} <<'{_EOF}'\n{content}{_EOF}\n"


def shipped_template() -> str:
    """The bootstrap template as instances get it: its header (what the script is, how to re-run it) kept, its
    other full-line comments dropped. User-data is capped at 16 KB and every option on nearly fills it; the
    commented script is nbcloud/remote/templates/bootstrap.sh."""
    lines = resources.files("nbcloud.remote").joinpath("templates/bootstrap.sh").read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    return "\n".join(lines[:header] + [line for line in lines[header:] if not line.lstrip().startswith("#")]) + "\n"


def render_bootstrap(spec: BootstrapSpec) -> str:
    template = shipped_template()
    env = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(spec.package_env.items()))
    files = [
        _put(CONFIG_PATH, "0644", render_jupyter_config(spec)),
        _put(AGENT_CONFIG_PATH, "0644", json.dumps(agent_config(spec), indent=1, sort_keys=True)),
        _put(AGENT_PATH, "0755", agent_source()),
        _put(AGENT_ACTIVITY_PATH, "0644", agent_source("nbcloud_activity.py")),
        _put(JUPYTER_LAUNCHER, "0644", jupyter_launcher_source()),
        _put(f"{VENV}/share/jupyter/lab/settings/overrides.json", "0644",
             json.dumps(LAB_OVERRIDES, indent=1, sort_keys=True)),
    ]
    if spec.gateway:
        files.append(_put(GATEWAY_WRAPPER, "0755", render_gateway_wrapper(spec)))
    units = render_units(spec)
    unit_files = [_put(f"/etc/systemd/system/{name}", "0644", text) for name, text in units.items()]
    requirements = _put("/opt/nbcloud/etc/requirements.txt", "0644", spec.requirements) if spec.requirements else ""
    settings = agent_settings_json(spec.idle_stop_seconds, spec.max_cost_usd, spec.hourly_usd)
    values = {
        "@@NAME@@": spec.name,
        "@@SECRETS@@": spec.secrets_dir,
        "@@ENV@@": env.rstrip("\n"),
        "@@USER@@": spec.login_user,
        "@@HOME@@": spec.home,
        "@@VOLUME@@": shlex.quote(spec.data_volume_id or ""),
        "@@PKG_HASH@@": package_hash(spec),
        "@@PKGS@@": " ".join(shlex.quote(p) for p in spec.packages()),
        "@@HAS_REQUIREMENTS@@": "1" if spec.requirements else "0",
        "@@UNITS@@": " ".join(units),
        "@@AGENT_SETTINGS@@": shlex.quote(settings),
        "@@FILES@@": "".join(files).rstrip("\n"),
        "@@UNIT_FILES@@": "".join(unit_files).rstrip("\n"),
        "@@REQUIREMENTS@@": requirements,
    }
    for key, value in values.items():
        template = template.replace(key, value)
    leftover = re.search(r"@@[A-Z_]+@@", template)
    if leftover:
        raise AssertionError(f"unfilled placeholder in the bootstrap template: {leftover.group()}")
    return template
