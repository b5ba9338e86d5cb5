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

import json
import os
import re
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

CONFIG_PATH = os.environ.get("NBCLOUD_AGENT_CONFIG", "/opt/nbcloud/etc/agent-config.json")
BUSY_STATES = {"busy", "starting", "restarting"}
MARGIN_SECONDS = 60.0  # cost cap: stop this much (plus two checks) before the cap is reached
SPOT_PERIOD = 5.0


# ---------------------------------------------------------------------------------------------------------- pure


@dataclass(frozen=True)
class Sample:
    """What one check saw. ``jupyter_error`` set means Jupyter could not be read (then the rest is unknown)."""

    t: float
    jupyter_error: str | None = None
    busy_kernels: int = 0
    connections: int = 0  # open kernel websockets (a tab with a notebook)
    last_activity: float | None = None  # latest of the server's, the kernels' and the terminals' last_activity
    terminals: int = 0
    ssh_connections: int = 0


@dataclass(frozen=True)
class Settings:
    idle_stop_seconds: int | None = 3600
    max_cost_usd: float | None = None
    hourly_usd: float | None = None


@dataclass(frozen=True)
class Decision:
    action: str  # "none" | "stop"
    idle_seconds: float
    reason: str


def _activity(sample: Sample) -> tuple[float | None, str]:
    """(time of the latest activity this sample proves, why). ``sample.t`` when something is going on now."""
    if sample.jupyter_error:
        return sample.t, f"jupyter unreadable ({sample.jupyter_error}): counted as busy"
    if sample.busy_kernels:
        return sample.t, f"{sample.busy_kernels} kernel(s) busy"
    if sample.ssh_connections:
        return sample.t, f"{sample.ssh_connections} ssh connection(s) (terminal or tunnel)"
    if sample.connections:
        return sample.t, f"{sample.connections} notebook connection(s) open"
    if sample.last_activity is not None:
        return min(sample.last_activity, sample.t), "jupyter activity"
    return None, ""


def decide(
    samples: list[Sample], now: float, settings: Settings, accrued_seconds: float = 0.0, check_period: float = 10.0
) -> Decision:
    """Stop or not, from the samples recorded since the agent started (oldest first). Pure."""
    latest, why = None, "no activity seen"
    for sample in samples:
        at, reason = _activity(sample)
        if at is not None and (latest is None or at >= latest):
            latest, why = at, reason
    baseline = samples[0].t if samples else now  # idleness is never claimed beyond what the agent observed
    idle = max(0.0, now - max(baseline, latest if latest is not None else baseline))

    if settings.max_cost_usd is not None and settings.hourly_usd:
        # Stop while there is still margin: the next two checks and the shutdown itself cost money too.
        projected = (accrued_seconds + 2 * check_period + MARGIN_SECONDS) * settings.hourly_usd / 3600.0
        if projected >= settings.max_cost_usd:
            accrued = accrued_seconds * settings.hourly_usd / 3600.0
            why = f"accrued ${accrued:.2f} at ${settings.hourly_usd:.4f}/h"
            return Decision("stop", idle, f"cost cap ${settings.max_cost_usd:.2f} reached ({why})")
    if samples and samples[-1].jupyter_error:
        return Decision("none", 0.0, _activity(samples[-1])[1])
    if settings.idle_stop_seconds is None:
        return Decision("none", idle, f"idle stop off ({why})")
    if idle >= settings.idle_stop_seconds:
        return Decision("stop", idle, f"idle for {idle:.0f}s (limit {settings.idle_stop_seconds}s; last: {why})")
    return Decision("none", idle, f"idle {idle:.0f}s of {settings.idle_stop_seconds}s (last: {why})")


def prune(samples: list[Sample]) -> list[Sample]:
    """Drop samples before the latest one that shows activity now: they cannot change ``decide``."""
    for index in range(len(samples) - 1, -1, -1):
        at, _ = _activity(samples[index])
        if at is not None and at >= samples[index].t:
            return samples[index:]
    return samples


def parse_iso(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def summarize_jupyter(status: dict[str, Any], kernels: list[dict[str, Any]], terminals: list[dict[str, Any]]
                      ) -> tuple[int, int, float | None, int]:
    """(busy kernels, connections, latest last_activity, terminals) from jupyter_server 2.x answers."""
    busy = sum(1 for k in kernels if k.get("execution_state") in BUSY_STATES)
    connections = int(status.get("connections") or 0)
    stamps = [parse_iso(status.get("last_activity"))]
    stamps += [parse_iso(k.get("last_activity")) for k in kernels]
    stamps += [parse_iso(t.get("last_activity")) for t in terminals]
    known = [s for s in stamps if s is not None]
    return busy, connections, (max(known) if known else None), len(terminals)


def _ipv4_of(hex_address: str) -> str | None:
    """The dotted IPv4 address of a /proc/net/tcp{,6} field (host byte order: little-endian here); None for IPv6."""
    if len(hex_address) == 32 and hex_address[:24].upper() == "0000000000000000FFFF0000":
        hex_address = hex_address[24:]  # an IPv4-mapped IPv6 address
    if len(hex_address) != 8:
        return None
    return ".".join(str(b) for b in reversed(bytes.fromhex(hex_address)))


def count_ssh(proc_net_text: str, port: int = 22, address: str | None = None) -> int:
    """Established TCP connections whose local port is ``port``, from /proc/net/tcp or /proc/net/tcp6 text.

    With ``address``, only those to that local address: instances that share one network (the sandbox without
    root) each have their own address and must not count each other's ssh sessions.
    """
    count = 0
    for line in proc_net_text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or ":" not in fields[1]:
            continue
        local_address, local_port = fields[1].rsplit(":", 1)
        if int(local_port, 16) != port or fields[3] != "01":  # 01 = TCP_ESTABLISHED
            continue
        if address is not None and _ipv4_of(local_address) != address:
            continue
        count += 1
    return count


# ------------------------------------------------------------------------------------------------------------ I/O


@dataclass
class Config:
    jupyter_url: str = "http://127.0.0.1:8888"
    token_file: str = "/home/ubuntu/.config/nbcloud/token"
    settings_file: str = "/home/ubuntu/.config/nbcloud/agent.json"
    state_file: str = "/var/lib/nbcloud/agent-state.json"
    interruption_file: str = "/var/lib/nbcloud/interruption.json"
    check_period: float = 10.0
    ssh_port: int = 22
    #: count only ssh connections to this local address (None: any)
    ssh_address: str | None = None
    durable_outputs: bool = False
    imds_url: str = "http://169.254.169.254"
    proc_net: list[str] = field(default_factory=lambda: ["/proc/net/tcp", "/proc/net/tcp6"])
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


def load_settings(path: str, previous: Settings) -> Settings:
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
        idle_stop_seconds=None if idle is None else max(60, int(idle)),
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

    def sample(self, now: float) -> Sample:
        ssh = 0
        for path in self.config.proc_net:
            try:
                with open(path) as fh:
                    ssh += count_ssh(fh.read(), self.config.ssh_port, self.config.ssh_address)
            except OSError:
                pass  # no IPv6 on this kernel
        try:
            status = self.get("/api/status")
            kernels = self.get("/api/kernels")
            try:
                terminals = self.get("/api/terminals")
            except urllib.error.HTTPError as exc:
                if exc.code != 404:  # terminals disabled: nothing to count
                    raise
                terminals = []
        except FileNotFoundError:
            return Sample(t=now, jupyter_error="no token file yet", ssh_connections=ssh)
        except (OSError, ValueError) as exc:
            return Sample(t=now, jupyter_error=str(exc)[:200] or type(exc).__name__, ssh_connections=ssh)
        busy, connections, last, terms = summarize_jupyter(status, kernels, terminals)
        return Sample(t=now, busy_kernels=busy, connections=connections, last_activity=last, terminals=terms,
                      ssh_connections=ssh)


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
        settings = load_settings(self.config.settings_file, self.settings)
        changed = settings.idle_stop_seconds != self.settings.idle_stop_seconds
        if changed and self.samples and getattr(self, "_settings_read", False):
            # `nbcloud autostop NAME 30m` after hours idle must not stop the machine at the next check
            log(f"idle limit now {settings.idle_stop_seconds}s: idle time counts from now")
            self.samples = []
        self._settings_read = True  # the first read (at start or restart) is the limit, not a change of it
        self.settings = settings
        self.samples = prune([*self.samples, self.jupyter.sample(now)])
        decision = decide(self.samples, now, self.settings, self.state["accrued_seconds"], self.config.check_period)
        self.state.update(idle_seconds=int(decision.idle_seconds), last_check=now, reason=decision.reason,
                          action=decision.action, settings=asdict(self.settings))
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
        while True:
            mono = time.monotonic()
            if mono - last_spot >= SPOT_PERIOD:
                last_spot = mono
                self.watch_spot()
            if mono - last_check >= self.config.check_period:
                last_check = mono
                self.check(mono - previous)
                previous = mono
            time.sleep(1.0)


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
