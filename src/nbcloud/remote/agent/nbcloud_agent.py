#!/usr/bin/env python3
"""nbcloud's agent on the instance: idle stop, cost cap, spot-interruption watch. Standard library only.

Installed at /opt/nbcloud/agent/nbcloud_agent.py by the bootstrap and run as root by nbcloud-agent.service
(Restart=always). It never imports nbcloud: the instance's Python may be anything from 3.8 up.

Every ``check_period`` seconds it samples activity (Jupyter's kernels, status and terminals, queried with
``no_track_activity=1`` so the agent is not itself activity; established SSH connections from /proc/net/tcp*,
which counts users who only hold a tunnel) and asks the pure ``decide()`` whether to stop. When Jupyter cannot be
read the machine counts as busy: the agent never stops on a guess. Every <= 5 s it polls IMDSv2 for a spot
interruption notice; on one it lets the server save what it holds, syncs the disk and records the notice.

What a spot notice can save: with durable outputs (jupyter-collaboration + jupyter_server_nbmodel) the server owns
the notebook document, outputs included, and writes it to disk within ``document_save_delay`` (1 s). Without them the
server only has what the browser last saved: unsaved edits and outputs that reached only the browser are lost; the
agent records which notebooks were open and how old their saved copy is, so the client can say so.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

# On the instance the agent is a script beside this module (its directory is on sys.path; no __pycache__ is
# written there: /opt/nbcloud/agent holds exactly what the bootstrap put); in the nbcloud package (the tests)
# the two are modules of nbcloud.remote.agent.
if __package__:
    from .nbcloud_activity import (
        Decision,
        ProcStat,
        Sample,
        Settings,
        count_ssh,
        cpu_cores,
        decide,
        descendants,
        next_period,
        parse_iso,
        parse_stat,
        prune,
        pts_number,
        summarize_jupyter,
        unreadable_count,
    )
else:
    sys.dont_write_bytecode = True
    from nbcloud_activity import (  # type: ignore[no-redef]
        Decision,
        ProcStat,
        Sample,
        Settings,
        count_ssh,
        cpu_cores,
        decide,
        descendants,
        next_period,
        parse_iso,
        parse_stat,
        prune,
        pts_number,
        summarize_jupyter,
        unreadable_count,
    )

CONFIG_PATH = os.environ.get("NBCLOUD_AGENT_CONFIG", "/opt/nbcloud/etc/agent-config.json")
SPOT_PERIOD = 5.0


# ------------------------------------------------------------------------------------------------------------ I/O


@dataclass
class Config:
    jupyter_url: str = "http://127.0.0.1:8888"
    token_file: str = "/home/ubuntu/.config/nbcloud/token"
    settings_file: str = "/home/ubuntu/.config/nbcloud/agent.json"
    state_file: str = "/var/lib/nbcloud/agent-state.json"
    interruption_file: str = "/var/lib/nbcloud/interruption.json"
    check_period: float = 10.0
    #: the shortest idle limit honoured (the product's floor is 60 s; a test instance may be given less)
    idle_floor: int = 60
    ssh_port: int = 22
    #: count only ssh connections to this local address (None: any)
    ssh_address: str | None = None
    durable_outputs: bool = False
    imds_url: str = "http://169.254.169.254"
    proc_net: list[str] = field(default_factory=lambda: ["/proc/net/tcp", "/proc/net/tcp6"])
    #: `nbcloud hold NAME` writes it, `nbcloud release NAME` removes it (default: beside the settings file)
    hold_file: str | None = None
    shutdown: list[str] = field(default_factory=lambda: ["shutdown", "-h", "now"])


def log(msg: str) -> None:
    print("{} agent: {}".format(time.strftime("%Y-%m-%dT%H:%M:%S%z"), msg), flush=True)


def load_config(path: str = CONFIG_PATH) -> Config:
    try:
        with open(path) as fh:
            raw = json.load(fh)
    except (OSError, ValueError) as exc:
        log(f"config {path} unreadable ({exc}): using defaults")
        raw = {}
    known = {k: v for k, v in raw.items() if k in Config.__dataclass_fields__}
    known.update(_env_overrides(known))
    config = Config(**known)
    config.check_period = min(15.0, max(1.0, float(config.check_period)))
    config.idle_floor = min(60, max(20, int(config.idle_floor)))
    return config


def _env_overrides(known: dict[str, Any], environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Where IMDS and Jupyter are when the machine says so in the environment (the config file's values win).

    ``AWS_EC2_METADATA_SERVICE_ENDPOINT`` is the variable AWS SDKs honour (a sandbox instance without root
    serves IMDS on its own address); ``NBCLOUD_JUPYTER_IP`` is the address Jupyter listens on when it is not
    127.0.0.1 (instances sharing one network, each on its own loopback address).
    """
    env = os.environ if environ is None else environ
    found: dict[str, Any] = {}
    endpoint = env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT", "").strip().rstrip("/")
    if endpoint and "imds_url" not in known:
        found["imds_url"] = endpoint
    address = env.get("NBCLOUD_JUPYTER_IP", "").strip()
    url = known.get("jupyter_url", Config.jupyter_url)
    if address and "//127.0.0.1:" in url:
        found["jupyter_url"] = url.replace("//127.0.0.1:", f"//{address}:", 1)
    if address and "ssh_address" not in known:
        found["ssh_address"] = address  # the machine's own address: its sshd listens there too
    ssh_port = env.get("NBCLOUD_SSH_PORT", "").strip()
    if ssh_port.isdigit() and "ssh_port" not in known:
        found["ssh_port"] = int(ssh_port)
    return found


def load_settings(path: str, previous: Settings, floor: int = 60) -> Settings:
    """Re-read every check so `nbcloud autostop` takes effect within one period; keep the last good on error."""
    try:
        with open(path) as fh:
            raw = json.load(fh)
    except FileNotFoundError:
        return previous
    except (OSError, ValueError) as exc:
        log(f"settings {path} unreadable ({exc}): keeping the previous ones")
        return previous
    idle = raw.get("idle_stop_seconds", previous.idle_stop_seconds)
    return Settings(
        idle_stop_seconds=None if idle is None else max(floor, int(idle)),
        max_cost_usd=None if raw.get("max_cost_usd") is None else float(raw["max_cost_usd"]),
        hourly_usd=None if raw.get("hourly_usd") is None else float(raw["hourly_usd"]),
    )


def write_json(path: str, data: dict[str, Any], mode: int = 0o644) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.write("\n")
    os.chmod(tmp, mode)
    os.replace(tmp, path)


class Processes:
    """The instance's own processes: their CPU use between two scans and the ptys they hold.

    Which processes are the instance's: all of them on a machine of its own. A sandbox instance shares the host's
    process table: in its own network namespace (netns mode) those in that namespace; else (loopback mode) the
    processes carrying the instance's marker and everything below them. The agent itself is left out.
    """

    def __init__(self, proc: str = "/proc", dev_pts: str = "/dev/pts") -> None:
        self.proc, self.dev_pts = proc, dev_pts
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.before: dict[int, ProcStat] | None = None
        self.before_uptime = 0.0
        self.before_mono = 0.0
        self.own_netns = self._netns("self")
        host_netns = self._netns(self._host_pid())
        self.netns_scope = host_netns is not None and self.own_netns is not None and host_netns != self.own_netns
        self.marker = os.environ.get("NBCLOUD_SANDBOX_INSTANCE", "")

    def _host_pid(self) -> str:
        """A process in the machine's own network namespace: kthreadd (a kernel thread, always there and readable;
        a Firecracker guest's PID 1 refuses even root), else PID 1."""
        try:
            with open(f"{self.proc}/2/stat") as fh:
                return "2" if "(kthreadd)" in fh.read() else "1"
        except OSError:
            return "1"

    def _netns(self, pid: str) -> str | None:
        try:
            return os.readlink(f"{self.proc}/{pid}/ns/net")
        except OSError:
            return None

    def _scan(self) -> dict[int, ProcStat]:
        found: dict[int, ProcStat] = {}
        for entry in os.listdir(self.proc):
            if not entry.isdigit():
                continue
            try:
                with open(f"{self.proc}/{entry}/stat") as fh:
                    stat = parse_stat(fh.read())
            except (OSError, ValueError):
                continue  # exited meanwhile
            if stat is not None:
                found[int(entry)] = stat
        return found

    def _has_marker(self, pid: int) -> bool:
        try:
            with open(f"{self.proc}/{pid}/environ", "rb") as fh:
                return f"NBCLOUD_SANDBOX_INSTANCE={self.marker}".encode() in fh.read().split(b"\0")
        except OSError:
            return False

    def _own(self, stats: dict[int, ProcStat]) -> dict[int, ProcStat]:
        me = os.getpid()
        if self.netns_scope:
            keep = {pid for pid in stats if self._netns(str(pid)) == self.own_netns}
        elif self.marker:
            marked = {pid for pid in stats if self._has_marker(pid)}
            keep = descendants(marked, {pid: st.ppid for pid, st in stats.items()})
        else:
            keep = set(stats)
        return {pid: st for pid, st in stats.items() if pid in keep and me not in (pid, st.ppid)}

    def _uptime_ticks(self) -> float:
        with open(f"{self.proc}/uptime") as fh:
            return float(fh.read().split()[0]) * self.hz

    def sample(self) -> tuple[float | None, float | None]:
        """(cores used since the previous call or None the first time, latest keystroke on an own pty)."""
        uptime, mono = self._uptime_ticks(), time.monotonic()
        own = self._own(self._scan())
        cores = None
        if self.before is not None:
            cores = cpu_cores(self.before, own, self.before_uptime, mono - self.before_mono, self.hz)
        self.before, self.before_uptime, self.before_mono = own, uptime, mono
        inputs = []
        for number in {pts_number(st.tty_nr) for st in own.values()} - {None}:
            with contextlib.suppress(OSError):  # the session ended meanwhile
                inputs.append(os.stat(f"{self.dev_pts}/{number}").st_atime)
        return cores, (max(inputs) if inputs else None)


def gpu_percent() -> float | None:
    """The busiest GPU's utilisation per nvidia-smi; None without it (or when it fails)."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=10, check=False)
        values = [float(v) for v in done.stdout.split() if v.replace(".", "", 1).isdigit()]
    except (OSError, subprocess.SubprocessError):
        return None
    return max(values) if values else None


def read_hold(path: str) -> str | None:
    """Why the user holds the instance (the file's first line), or None when it is not held."""
    try:
        with open(path) as fh:
            return fh.readline().strip()[:200] or "nbcloud hold"
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"hold file unreadable: {exc}"  # kept up: a hold is never lost to a permission problem


class Jupyter:
    def __init__(self, config: Config) -> None:
        self.config = config
        # 127.0.0.1 with the instance's own self-signed certificate (public mode): nothing to verify against.
        self.ssl = ssl.create_default_context()
        self.ssl.check_hostname = False
        self.ssl.verify_mode = ssl.CERT_NONE

    def _token(self) -> str:
        with open(self.config.token_file) as fh:
            return fh.read().strip()

    def get(self, path: str, timeout: float = 5.0) -> Any:
        sep = "&" if "?" in path else "?"
        req = urllib.request.Request(self.config.jupyter_url + path + sep + "no_track_activity=1",
                                     headers={"Authorization": "token " + self._token()})
        with urllib.request.urlopen(req, timeout=timeout, context=self.ssl) as resp:
            return json.loads(resp.read().decode())

    def saved_times(self) -> list[str | None]:
        """The last save of each notebook open in a session (an edit autosaves within two minutes)."""
        times: list[str | None] = []
        for session in self.get("/api/sessions"):
            path = session.get("path") or (session.get("notebook") or {}).get("path")
            if path and session.get("type", "notebook") == "notebook":
                try:
                    times.append(self.get(f"/api/contents/{urllib.parse.quote(path)}?content=0").get("last_modified"))
                except urllib.error.HTTPError:
                    times.append(None)  # renamed or deleted since: no save time
        return times

    def sample(self, now: float) -> Sample:
        """Jupyter's part of a sample (the rest is filled in by :meth:`Agent.sample`)."""
        try:
            status = self.get("/api/status")
            kernels = self.get("/api/kernels")
            try:
                terminals = self.get("/api/terminals")
            except urllib.error.HTTPError as exc:
                if exc.code != 404:  # terminals disabled: nothing to count
                    raise
                terminals = []
            saved = self.saved_times()
        except FileNotFoundError:
            return Sample(t=now, jupyter_error="no token file yet")
        except urllib.error.URLError as exc:
            # the first check of a boot comes before Jupyter listens: `status` said "<urlopen error [Errno 111]…>"
            if not isinstance(exc.reason, ConnectionRefusedError):
                return Sample(t=now, jupyter_error=str(exc)[:200] or type(exc).__name__)
            return Sample(t=now, jupyter_error="not listening (starting, or stopped)")
        except (OSError, ValueError) as exc:
            return Sample(t=now, jupyter_error=str(exc)[:200] or type(exc).__name__)
        busy, connections, last, terms = summarize_jupyter(status, kernels, terminals, saved)
        return Sample(t=now, busy_kernels=busy, connections=connections, last_activity=last, terminals=terms)


def ssh_connections(config: Config) -> int:
    count = 0
    for path in config.proc_net:
        try:
            with open(path) as fh:
                count += count_ssh(fh.read(), config.ssh_port, config.ssh_address)
        except OSError:
            pass  # no IPv6 on this kernel
    return count


class Imds:
    """IMDSv2: a session token by PUT, then GETs with it. 404 on spot/instance-action means no notice."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.token = ""
        self.expires = 0.0

    def _session(self) -> str:
        if time.time() >= self.expires:
            req = urllib.request.Request(self.base + "/latest/api/token", method="PUT",
                                         headers={"X-aws-ec2-metadata-token-ttl-seconds": "21600"})
            with urllib.request.urlopen(req, timeout=2) as resp:
                self.token = resp.read().decode().strip()
            self.expires = time.time() + 21000
        return self.token

    def spot_notice(self) -> dict[str, Any] | None:
        req = urllib.request.Request(self.base + "/latest/meta-data/spot/instance-action",
                                     headers={"X-aws-ec2-metadata-token": self._session()})
        try:
            with urllib.request.urlopen(req, timeout=2) as resp:
                return json.loads(resp.read().decode() or "{}")
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                self.expires = 0.0  # token expired early: fetch a new one next time
            if exc.code in (401, 404):
                return None
            raise


def save_for_interruption(jupyter: Jupyter, config: Config, notice: dict[str, Any], now: float) -> dict[str, Any]:
    record: dict[str, Any] = {"notice": notice, "seen_at": now, "durable_outputs": config.durable_outputs,
                              "notebooks": []}
    try:
        sessions = jupyter.get("/api/sessions")
    except (OSError, ValueError) as exc:
        sessions = []
        record["error"] = f"sessions unreadable: {exc}"
    for session in sessions:
        path = session.get("path") or (session.get("notebook") or {}).get("path")
        if not path:
            continue
        entry: dict[str, Any] = {"path": path}
        try:
            model = jupyter.get(f"/api/contents/{urllib.parse.quote(path)}?content=0")
            saved = parse_iso(model.get("last_modified"))
            entry["saved_seconds_before_notice"] = None if saved is None else round(now - saved, 1)
        except (OSError, ValueError) as exc:
            entry["error"] = str(exc)[:200]
        record["notebooks"].append(entry)
    if config.durable_outputs:
        time.sleep(2.0)  # jupyter-collaboration writes its documents within document_save_delay (1 s)
        record["note"] = "the server held each open notebook with its outputs and saved it"
    else:
        record["note"] = "only what the browser last saved is on disk; unsaved edits and outputs are lost"
    subprocess.run(["sync"], check=False, timeout=30)
    return record


class Agent:
    def __init__(self, config: Config, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.jupyter = Jupyter(config)
        self.processes = Processes()
        self.hold_file = config.hold_file or os.path.join(os.path.dirname(config.settings_file), "hold")
        self.imds = Imds(config.imds_url)
        self.settings = Settings()
        self.samples: list[Sample] = []
        self.state = self._load_state()
        self.last_reason = ""
        self.stopping = False

    def _load_state(self) -> dict[str, Any]:
        try:
            with open(self.config.state_file) as fh:
                state = json.load(fh)
        except (OSError, ValueError):
            state = {}
        # accrued_seconds survives reboots (the disk persists); the rest is per boot
        return {"accrued_seconds": float(state.get("accrued_seconds") or 0.0), "idle_seconds": 0,
                "last_check": None, "reason": "starting", "spot_notice": state.get("spot_notice")}

    def check(self, elapsed: float) -> Decision:
        now = self.clock()
        self.state["accrued_seconds"] += max(0.0, elapsed)
        settings = load_settings(self.config.settings_file, self.settings, int(self.config.idle_floor))
        changed = settings.idle_stop_seconds != self.settings.idle_stop_seconds
        if changed and self.samples and getattr(self, "_settings_read", False):
            # `nbcloud autostop NAME 30m` after hours idle must not stop the machine at the next check
            log(f"idle limit now {settings.idle_stop_seconds}s: idle time counts from now")
            self.samples = []
        self._settings_read = True  # the first read (at start or restart) is the limit, not a change of it
        self.settings = settings
        self.samples = prune([*self.samples, self.sample(now)], self.settings)
        decision = decide(self.samples, now, self.settings, self.state["accrued_seconds"], self.config.check_period)
        stop_in = decision.stop_in_seconds
        self.state.update(idle_seconds=int(decision.idle_seconds), last_check=now, reason=decision.reason,
                          action=decision.action, settings=asdict(self.settings), busy=decision.busy,
                          stop_in_seconds=None if stop_in is None else int(stop_in),
                          stop_at=None if stop_in is None or decision.busy else int(now + stop_in))
        write_json(self.config.state_file, self.state)
        summary = re.sub(r"[0-9.]+", "N", decision.reason)  # log when the kind of reason changes, not every tick
        if summary != self.last_reason:
            log(decision.reason)
            self.last_reason = summary
        if decision.action == "stop" and not self.stopping:
            log(f"stopping the instance: {decision.reason}")
            result = subprocess.run(self.config.shutdown, check=False, capture_output=True, text=True)
            if result.returncode == 0:
                self.stopping = True
            else:
                log("shutdown failed (%s): will retry next check" % (result.stderr.strip() or result.returncode))
        return decision

    def sample(self, now: float) -> Sample:
        try:
            cores, last_input = self.processes.sample()
        except OSError as exc:  # no /proc: nothing known about processes, so they prove nothing
            log(f"processes unreadable: {exc}")
            cores, last_input = None, None
        return replace(self.jupyter.sample(now), ssh_connections=ssh_connections(self.config), cpu_cores=cores,
                       last_input=last_input, gpu_percent=gpu_percent(), held=read_hold(self.hold_file))

    def watch_spot(self) -> None:
        try:
            notice = self.imds.spot_notice()
        except (OSError, ValueError) as exc:
            if not self.state.get("imds_error"):
                log(f"IMDS unreadable: {exc}")
            self.state["imds_error"] = str(exc)[:200]
            return
        self.state.pop("imds_error", None)
        if notice and notice != self.state.get("spot_notice"):
            log(f"spot interruption notice: {json.dumps(notice)}")
            self.state["spot_notice"] = notice
            write_json(self.config.state_file, self.state)
            record = save_for_interruption(self.jupyter, self.config, notice, self.clock())
            write_json(self.config.interruption_file, record)
            log(f"interruption recorded: {len(record['notebooks'])} open notebook(s); {record['note']}")

    def run(self) -> None:
        log(f"started (check every {self.config.check_period}s, jupyter {self.config.jupyter_url})")
        last_check = last_spot = time.monotonic() - 3600
        previous = time.monotonic()
        unreadable = 0  # checks in a row that could not read Jupyter
        while True:
            mono = time.monotonic()
            if mono - last_spot >= SPOT_PERIOD:
                last_spot = mono
                self.watch_spot()
            if mono - last_check >= next_period(self.last_sample(), self.config.check_period, unreadable):
                last_check = mono
                self.check(mono - previous)
                previous = mono
                unreadable = unreadable_count(self.last_sample(), unreadable)
            time.sleep(1.0)

    def last_sample(self) -> Sample | None:
        return self.samples[-1] if self.samples else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config = load_config(argv[0] if argv else CONFIG_PATH)
    try:
        Agent(config).run()
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
