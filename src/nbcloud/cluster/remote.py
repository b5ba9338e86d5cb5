"""What runs on the cluster's instances: the worker's user-data, its watchdog, and the file installer (rendering
only; stdlib-only programs, so nothing of nbcloud's client is needed on a worker)."""

from __future__ import annotations

import gzip
import json
import shlex
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

from ..errors import UsageError
from ..remote.units import VENV
from .engine import Layout
from .onhost import DONE_MARKER, FREEZE_PATH, SPOT_NOTICE_PROBE

__all__ = ["INSTALL_FILES", "WATCHDOG_SOURCE", "extra_wheels_dir", "install_command", "render_worker_user_data"]

USER_DATA_LIMIT = 16384


def extra_wheels_dir(engine_name: str) -> str:
    """The wheelhouse subdirectory with an engine's packages (only a cluster installs them)."""
    return f"cluster-{engine_name}"


# Reads {"files": [[path, mode, owner, content]], "run": [[argv]]} on stdin: contents (keys included) never appear
# on a command line. Each file is written beside its target and renamed into place.
INSTALL_FILES = r'''
import json, os, pwd, subprocess, sys
spec = json.load(sys.stdin)
for path, mode, owner, content in spec["files"]:
    d = os.path.dirname(path)
    os.makedirs(d, exist_ok=True)
    if owner:
        pw = pwd.getpwnam(owner)
        top = pw.pw_dir
        cur = d
        while cur.startswith(top + "/"):
            os.chown(cur, pw.pw_uid, pw.pw_gid)
            cur = os.path.dirname(cur)
        if d.endswith("/.config/nbcloud/cluster"):
            os.chmod(d, 0o700)
    tmp = path + ".nbcloud-new"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(content)
    os.chmod(tmp, mode)
    if owner:
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
    os.replace(tmp, path)
for argv in spec.get("run", []):
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)}: {done.stderr.strip() or done.stdout.strip()}")
'''


def install_command() -> str:
    return f"sudo /usr/bin/python3 -c {shlex.quote(INSTALL_FILES)}"


WATCHDOG_SOURCE = r'''"""nbcloud cluster watchdog: no scheduler for a while: power off; spot notice: leave."""
import json, subprocess, sys, time, urllib.request
cfg = json.load(open(sys.argv[1]))
ip, port, idle = cfg["scheduler_ip"], cfg["port"], cfg["idle_seconds"]
target = "".join(f"{int(p):02X}" for p in reversed(ip.split("."))) + f":{port:04X}"

def connected():
    with open("/proc/net/tcp") as f:
        return any(p[2] == target and p[3] == "01" for p in (line.split() for line in f.readlines()[1:]))

@@SPOT_NOTICE@@
def log(msg):
    print(time.strftime("%Y-%m-%dT%H:%M:%S"), msg, flush=True)

GRACE = 20  # s: time for the graceful retire, well inside the 2-minute notice
last, noticed, stopped = time.monotonic(), None, False
log(f"watching {ip}:{port}, idle limit {idle} s")
while True:
    now = time.monotonic()
    if connected():
        last = now
    elif now - last > idle:
        log(f"no scheduler connection for {idle} s: powering off")
        subprocess.run(["shutdown", "-h", "now"])
        time.sleep(30)
    if noticed is None and spot_notice():
        # the worker retires itself through the scheduler (its preload): its results move first
        log("spot notice: the worker leaves the cluster gracefully")
        open(cfg["notice_marker"], "w").write(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))
        noticed = now
    if noticed is not None and not stopped and now - noticed > GRACE:
        log(f"stopping the worker unit {GRACE} s after the notice (whatever it still holds is rerun elsewhere)")
        subprocess.run(["systemctl", "stop", cfg["worker_unit"]])
        stopped = True
    time.sleep(5)
'''.replace("@@SPOT_NOTICE@@", SPOT_NOTICE_PROBE)

_BOOT = r'''#!/bin/bash
# nbcloud cluster worker @@WORKER@@ of @@NAME@@: the notebook's exact Python environment, then the engine's units.
set -Eeuo pipefail
umask 022
mkdir -p /var/log/nbcloud /var/lib/nbcloud /opt/nbcloud/etc /opt/nbcloud/bin
exec >>/var/log/nbcloud/cluster-boot.log 2>&1
echo "$(date -u +%FT%TZ) start"
@@ENV@@
put() { mkdir -p "$(dirname "$1")"; cat > "$1"; chmod "$2" "$1"; }
@@FILES@@
PY="${NBCLOUD_PYTHON:-/usr/bin/python3}"
if [ -n "${NBCLOUD_UV:-}" ]; then UV=$NBCLOUD_UV
elif [ -x /opt/nbcloud/bin/uv ]; then UV=/opt/nbcloud/bin/uv
elif command -v uv >/dev/null 2>&1; then UV=$(command -v uv)
else
  curl -LsSf https://astral.sh/uv/install.sh | env UV_INSTALL_DIR=/opt/nbcloud/bin UV_NO_MODIFY_PATH=1 sh
  UV=/opt/nbcloud/bin/uv
fi
args=(pip install -q -p @@VENV@@ -r @@FREEZE@@)
if [ "${NBCLOUD_NO_INDEX:-0}" = 1 ]; then
  args+=(--no-index --find-links "$NBCLOUD_FIND_LINKS" --find-links "$NBCLOUD_FIND_LINKS/@@EXTRA@@")
fi
[ -x @@VENV@@/bin/python ] || "$UV" venv -q @@VENV@@ -p "$PY"
"$UV" "${args[@]}"
systemctl daemon-reload
systemctl enable --now --no-block @@UNITS@@
date -u +%FT%TZ > @@DONE@@
echo "$(date -u +%FT%TZ) done"
'''


def _heredoc(path: str, mode: str, content: str) -> str:
    if "NBCLOUD_EOF" in content:
        raise UsageError(f"{path}: content contains the heredoc marker")
    return f"put {path} {mode} <<'NBCLOUD_EOF'\n{content.rstrip(chr(10))}\nNBCLOUD_EOF\n"


def render_worker_boot(layout: Layout, worker_name: str, freeze: str, package_env: dict[str, str],
                       engine_files: dict[str, str], units: dict[str, str], extra: str) -> str:
    files = [_heredoc(FREEZE_PATH, "0644", freeze)]
    files += [_heredoc(path, "0644", text) for path, text in engine_files.items()]
    files += [_heredoc(f"/etc/systemd/system/{name}", "0644", text) for name, text in units.items()]
    env = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(package_env.items()))
    values = {"@@WORKER@@": worker_name, "@@NAME@@": layout.name, "@@ENV@@": env.rstrip("\n"),
              "@@FILES@@": "".join(files).rstrip("\n"), "@@VENV@@": VENV, "@@FREEZE@@": FREEZE_PATH,
              "@@EXTRA@@": extra, "@@UNITS@@": " ".join(units), "@@DONE@@": DONE_MARKER}
    text = _BOOT
    for key, value in values.items():
        text = text.replace(key, value)
    return text


def render_worker_user_data(boot: str, host_key_private: str, host_key_public: str) -> bytes:
    """cloud-config with the cluster's pinned host key (as `up` does) + the worker's boot script, gzip'd MIME."""
    config = {"ssh_keys": {"ed25519_private": host_key_private, "ed25519_public": host_key_public},
              "ssh_deletekeys": True, "ssh_genkeytypes": ["ed25519"]}  # [] fails the schema
    message = MIMEMultipart(boundary="==nbcloud-boundary==")
    for text, subtype, filename in (("#cloud-config\n" + json.dumps(config, indent=1) + "\n", "cloud-config",
                                     "cloud-config.txt"), (boot, "x-shellscript", "nbcloud-cluster-worker.sh")):
        part = MIMEText(text, subtype, "us-ascii")
        part.add_header("Content-Disposition", "attachment", filename=filename)
        message.attach(part)
    data = gzip.compress(message.as_bytes(), compresslevel=9, mtime=0)
    if len(data) > USER_DATA_LIMIT:
        raise UsageError(f"the worker's user-data is {len(data)} bytes gzip'd, over EC2's {USER_DATA_LIMIT}",
                         "install fewer packages in the notebook's environment")
    return data
