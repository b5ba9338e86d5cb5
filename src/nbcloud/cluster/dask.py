"""Dask (``distributed``) as nbcloud's cluster engine: TLS-only configs, the scheduler and worker units.

Every peer presents a certificate of the cluster's own CA and checks the other's (``require-encryption``), so a
plain-TCP or foreign client is refused by Dask itself, on top of the security group. The notebook's user gets
``~/.config/dask/distributed.yaml`` with ``scheduler-address``: ``Client()`` with no argument connects.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..remote.units import VENV
from .certs import ClusterCerts, Identity
from .engine import FileSpec, Layout
from .onhost import SPOT_NOTICE_MARKER, SPOT_NOTICE_PROBE

__all__ = ["DASK_PACKAGES", "DaskEngine", "render_dask_config"]

# pinned together (checked to resolve with the Jupyter set for the instances' Python); bokeh serves the dashboard
DASK_PACKAGES: tuple[str, ...] = ("dask[array]==2026.8.0", "distributed==2026.8.0", "bokeh==3.9.2")
SCHEDULER_UNIT = "nbcloud-cluster-scheduler.service"
WORKER_UNIT = "nbcloud-cluster-worker.service"
WATCHDOG_UNIT = "nbcloud-cluster-watchdog.service"
WORKER_LAUNCHER = "/opt/nbcloud/bin/cluster-worker.py"
WATCHDOG = "/opt/nbcloud/bin/cluster-watchdog.py"
WATCHDOG_CONFIG = "/opt/nbcloud/etc/cluster-watchdog.json"
SPOT_PRELOAD = "/opt/nbcloud/bin/cluster-spot.py"
#: the scheduler's event topic on which a worker says it got a spot notice (the keeper replaces it)
NOTICE_TOPIC = "nbcloud-spot-notice"


def render_dask_config(layout: Layout, role: str, scheduler_address: str | None) -> str:
    """distributed.yaml (JSON is YAML) for one role: scheduler (+ client), or worker."""
    d = layout.cert_dir
    tls: dict[str, object] = {"ca-file": f"{d}/ca.pem"}
    if role == "scheduler":
        tls["scheduler"] = {"cert": f"{d}/scheduler.pem", "key": f"{d}/scheduler.key"}
        tls["client"] = {"cert": f"{d}/client.pem", "key": f"{d}/client.key"}
    tls["worker"] = {"cert": f"{d}/worker.pem", "key": f"{d}/worker.key"}
    config: dict[str, object] = {"distributed": {"comm": {"require-encryption": True, "tls": tls}}}
    if scheduler_address:
        config["scheduler-address"] = scheduler_address
    return json.dumps(config, indent=1, sort_keys=True) + "\n"


def _unit(description: str, user: str | None, home: str, exec_start: str, log: str) -> str:
    who = f"User={user}\nGroup={user}\nWorkingDirectory={home}\nEnvironment=HOME={home}\n" if user else ""
    return (f"[Unit]\nDescription={description}\nAfter=network.target\n\n[Service]\nType=simple\n{who}"
            f"ExecStart={exec_start}\nRestart=always\nRestartSec=2\n"
            f"StandardOutput=append:/var/log/nbcloud/{log}.log\nStandardError=append:/var/log/nbcloud/{log}.log\n"
            "\n[Install]\nWantedBy=multi-user.target\n")


_WORKER_LAUNCHER = '''"""Start the Dask worker once its certificates are there, on its address towards the scheduler."""
import os, socket, sys, time, urllib.request
cfg = {cfg}

{spot_notice}
while not os.path.exists(cfg["key"]):
    time.sleep(0.5)
while spot_notice():  # the machine will be reclaimed: a worker that left gracefully must not rejoin
    time.sleep(3600)
probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
probe.connect((cfg["scheduler_ip"], cfg["port"]))  # no packet is sent: picks the route's source address
host = probe.getsockname()[0]
probe.close()
argv = [cfg["dask"], "worker", cfg["address"], "--host", host, "--nworkers", "1", "--nthreads", str(cfg["threads"]),
        "--worker-port", str(cfg["worker_port"]), "--nanny-port", str(cfg["nanny_port"]), "--no-dashboard",
        "--name", cfg["name"], "--death-timeout", "120",
        "--tls-ca-file", cfg["ca"], "--tls-cert", cfg["cert"], "--tls-key", cfg["key"], "--preload", cfg["preload"]]
os.execv(argv[0], argv)
'''.replace("{spot_notice}", SPOT_NOTICE_PROBE)

# Loaded into the worker process (``--preload``): on a spot machine it polls the IMDS every second; on the
# interruption notice it tells the scheduler (an event on NOTICE_TOPIC, which the keeper on the user's machine
# follows) and retires through it, so the scheduler copies the worker's results elsewhere before the reclaim.
_SPOT_PRELOAD = '''"""nbcloud: a spot worker leaves Dask gracefully on the interruption notice, and says so first."""
import asyncio, json, time, urllib.request

IMDS = "http://169.254.169.254/latest"
TOPIC = "{topic}"


def _get(path, token):
    req = urllib.request.Request(IMDS + path, headers={"X-aws-ec2-metadata-token": token})
    with urllib.request.urlopen(req, timeout=2) as reply:
        return reply.read().decode()


def _token():
    req = urllib.request.Request(IMDS + "/api/token", method="PUT",
                                 headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"})
    with urllib.request.urlopen(req, timeout=2) as reply:
        return reply.read().decode()


def _identity():
    token = _token()
    return _get("/meta-data/instance-id", token), _get("/meta-data/instance-life-cycle", token)


def _notice():
    try:
        return json.loads(_get("/meta-data/spot/instance-action", _token()))
    except Exception:  # 404 until the notice; a timeout is no notice either
        return None


async def _watch(worker):
    loop = asyncio.get_running_loop()
    try:
        instance_id, lifecycle = await loop.run_in_executor(None, _identity)
    except Exception:
        return
    if lifecycle != "spot":
        return
    while worker.status.name == "init":  # preloads start before the worker registers with the scheduler
        await asyncio.sleep(0.2)
    while worker.status.name == "running":
        notice = await loop.run_in_executor(None, _notice)
        if notice:
            worker.log_event(TOPIC, {"instance_id": instance_id, "worker": worker.address, "name": str(worker.name),
                                    "action": notice, "seen": time.time()})
            await worker.close_gracefully(restart=False, reason="spot-interruption-notice")
            return
        await asyncio.sleep(1)


def dask_setup(worker):
    worker._nbcloud_spot_watch = asyncio.get_running_loop().create_task(_watch(worker))
'''

# Run on the scheduler's instance by the keeper, over one SSH session: prints one JSON line per notice, and a beat
# every 5 s so it dies of SIGPIPE soon after the session goes; it also exits when its stdin (the session) closes.
_NOTICE_WATCHER = """import json, os, sys, threading, time
from dask.distributed import Client

def say(**event):
    print(json.dumps(event), flush=True)

threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
with Client(timeout=30) as client:
    client.subscribe_topic("{topic}", lambda event: say(event="notice", at=event[0], **event[1]))
    for at, msg in client.get_events("{topic}"):  # notices while no keeper listened (it skips handled ones)
        say(event="notice", at=at, past=True, **msg)
    say(event="ready", address=client.scheduler.address, workers=len(client.nthreads()))
    while True:
        time.sleep(5)
        say(event="beat", workers=len(client.nthreads()))
"""


@dataclass(frozen=True)
class DaskEngine:
    name: str = "dask"
    scheduler_port: int = 8786
    dashboard_port: int = 8787
    worker_ports: tuple[int, int] = (8788, 8789)  # worker, nanny: one worker process per instance

    def requirements(self) -> tuple[str, ...]:
        return DASK_PACKAGES

    def address(self, layout: Layout) -> str:
        return f"tls://{layout.scheduler_ip}:{self.scheduler_port}"

    def scheduler_files(self, layout: Layout, certs: ClusterCerts) -> list[FileSpec]:
        d, u = layout.cert_dir, layout.login_user
        files = [
            FileSpec(f"{d}/ca.pem", 0o600, certs.ca_cert_pem, u),
            FileSpec(f"{d}/scheduler.pem", 0o600, certs.scheduler.cert_pem, u),
            FileSpec(f"{d}/scheduler.key", 0o600, certs.scheduler.key_pem, u),
            FileSpec(f"{d}/client.pem", 0o600, certs.client.cert_pem, u),
            FileSpec(f"{d}/client.key", 0o600, certs.client.key_pem, u),
            # the notebook's own process may start a LocalCluster too: it finds a worker identity as well
            FileSpec(f"{d}/worker.pem", 0o600, certs.worker.cert_pem, u),
            FileSpec(f"{d}/worker.key", 0o600, certs.worker.key_pem, u),
            FileSpec(f"{layout.home}/.config/dask/distributed.yaml", 0o644,
                     render_dask_config(layout, "scheduler", self.address(layout)), u),
        ]
        name, text = self.scheduler_unit(layout)
        return [*files, FileSpec(f"/etc/systemd/system/{name}", 0o644, text)]

    def worker_files(self, layout: Layout, ca_cert_pem: str, worker: Identity) -> list[FileSpec]:
        d, u = layout.cert_dir, layout.login_user
        return [
            FileSpec(f"{d}/ca.pem", 0o600, ca_cert_pem, u),
            FileSpec(f"{d}/worker.pem", 0o600, worker.cert_pem, u),
            FileSpec(f"{d}/worker.key", 0o600, worker.key_pem, u),
            FileSpec(f"{layout.home}/.config/dask/distributed.yaml", 0o644,
                     render_dask_config(layout, "worker", None), u),
        ]

    def scheduler_unit(self, layout: Layout) -> tuple[str, str]:
        d = layout.cert_dir
        cmd = (f"{VENV}/bin/dask scheduler --host {layout.scheduler_ip} --port {self.scheduler_port} "
               f"--protocol tls --dashboard-address 127.0.0.1:{self.dashboard_port} "
               f"--tls-ca-file {d}/ca.pem --tls-cert {d}/scheduler.pem --tls-key {d}/scheduler.key")
        return SCHEDULER_UNIT, _unit(f"nbcloud Dask scheduler of {layout.name}", layout.login_user, layout.home,
                                     cmd, "cluster-scheduler")

    def worker_launcher(self, layout: Layout, worker_name: str) -> str:
        d = layout.cert_dir
        cfg = {"scheduler_ip": layout.scheduler_ip, "port": self.scheduler_port, "address": self.address(layout),
               "threads": layout.worker_threads, "worker_port": self.worker_ports[0],
               "nanny_port": self.worker_ports[1], "name": worker_name, "dask": f"{VENV}/bin/dask",
               "ca": f"{d}/ca.pem", "cert": f"{d}/worker.pem", "key": f"{d}/worker.key", "preload": SPOT_PRELOAD}
        return _WORKER_LAUNCHER.replace("{cfg}", json.dumps(cfg, sort_keys=True))

    def worker_extra_files(self) -> dict[str, str]:
        """Programs every worker carries besides its launcher: the spot preload (inert on on-demand machines)."""
        return {SPOT_PRELOAD: _SPOT_PRELOAD.replace("{topic}", NOTICE_TOPIC)}

    def notice_watcher(self) -> str:
        """Python for the scheduler's instance (login user): JSON lines, one per worker's spot notice."""
        return _NOTICE_WATCHER.replace("{topic}", NOTICE_TOPIC)

    def watchdog_config(self, layout: Layout) -> str:
        return json.dumps({"scheduler_ip": layout.scheduler_ip, "port": self.scheduler_port,
                           "idle_seconds": layout.idle_minutes * 60, "worker_unit": WORKER_UNIT,
                           "notice_marker": SPOT_NOTICE_MARKER}, sort_keys=True)

    def worker_units(self, layout: Layout) -> dict[str, str]:
        return {
            WORKER_UNIT: _unit(f"nbcloud Dask worker of {layout.name}", layout.login_user, layout.home,
                               f"{VENV}/bin/python {WORKER_LAUNCHER}", "cluster-worker"),
            # root: it powers the machine off (no scheduler for a while) and reads the spot notice
            WATCHDOG_UNIT: _unit(f"nbcloud cluster watchdog of {layout.name}", None, "/",
                                 f"/usr/bin/python3 {WATCHDOG} {WATCHDOG_CONFIG}", "cluster-watchdog"),
        }

    def probe(self, expected: int, timeout: float, hosts: tuple[str, ...] = ()) -> str:
        """Python run on the scheduler's instance as the login user: waits for ``expected`` workers (among them
        one on each of ``hosts``: new ones, when a leaving worker may still be counted), prints JSON."""
        return (
            "import json, time\nfrom dask.distributed import Client\n"
            f"deadline = time.monotonic() + {timeout}\nhosts = {sorted(hosts)!r}\n"
            "def short(c):\n"
            "    on = {a.split('://')[-1].rsplit(':', 1)[0] for a in c.nthreads()}\n"
            f"    return len(c.nthreads()) < {expected} or not on.issuperset(hosts)\n"
            "with Client(timeout=30) as c:\n"
            "    while short(c) and time.monotonic() < deadline:\n"
            "        time.sleep(0.2)\n"
            "    print(json.dumps({'address': c.scheduler.address, 'workers': sorted(c.nthreads())}))\n"
        )
