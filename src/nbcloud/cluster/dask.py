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

__all__ = ["DASK_PACKAGES", "DaskEngine", "render_dask_config"]

# pinned together (checked to resolve with the Jupyter set for the instances' Python); bokeh serves the dashboard
DASK_PACKAGES: tuple[str, ...] = ("dask[array]==2026.8.0", "distributed==2026.8.0", "bokeh==3.9.2")
SCHEDULER_UNIT = "nbcloud-cluster-scheduler.service"
WORKER_UNIT = "nbcloud-cluster-worker.service"
WATCHDOG_UNIT = "nbcloud-cluster-watchdog.service"
WORKER_LAUNCHER = "/opt/nbcloud/bin/cluster-worker.py"
WATCHDOG = "/opt/nbcloud/bin/cluster-watchdog.py"
WATCHDOG_CONFIG = "/opt/nbcloud/etc/cluster-watchdog.json"


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
import os, socket, sys, time
cfg = {cfg}
while not os.path.exists(cfg["key"]):
    time.sleep(0.5)
probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
probe.connect((cfg["scheduler_ip"], cfg["port"]))  # no packet is sent: picks the route's source address
host = probe.getsockname()[0]
probe.close()
argv = [cfg["dask"], "worker", cfg["address"], "--host", host, "--nworkers", "1", "--nthreads", str(cfg["threads"]),
        "--worker-port", str(cfg["worker_port"]), "--nanny-port", str(cfg["nanny_port"]), "--no-dashboard",
        "--name", cfg["name"], "--death-timeout", "120",
        "--tls-ca-file", cfg["ca"], "--tls-cert", cfg["cert"], "--tls-key", cfg["key"]]
os.execv(argv[0], argv)
'''


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
               "ca": f"{d}/ca.pem", "cert": f"{d}/worker.pem", "key": f"{d}/worker.key"}
        return _WORKER_LAUNCHER.replace("{cfg}", json.dumps(cfg, sort_keys=True))

    def watchdog_config(self, layout: Layout) -> str:
        from .remote import SPOT_NOTICE_MARKER

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

    def probe(self, expected: int, timeout: float) -> str:
        """Python run on the scheduler's instance as the login user: waits for ``expected`` workers, prints JSON."""
        return (
            "import json, time\nfrom dask.distributed import Client\n"
            f"deadline = time.monotonic() + {timeout}\n"
            "with Client(timeout=30) as c:\n"
            f"    while len(c.nthreads()) < {expected} and time.monotonic() < deadline:\n"
            "        time.sleep(0.2)\n"
            "    print(json.dumps({'address': c.scheduler.address, 'workers': sorted(c.nthreads())}))\n"
        )
