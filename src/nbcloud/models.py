"""The nouns nbcloud passes between its layers: frozen dataclasses, no I/O."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from datetime import datetime

from .remote.spec import IDLE_STOP_DEFAULT

__all__ = [
    "CLUSTER_TAG",
    "IMAGE_NAME_TAG",
    "LAUNCH_TAG",
    "MANAGED_TAG",
    "NAME_TAG",
    "ROLE_TAG",
    "VOLUME_NAME_TAG",
    "ImageInfo",
    "Instance",
    "InstanceSpec",
    "InstanceTypeInfo",
    "Volume",
    "cluster_tags",
    "default_durable_outputs",
    "normalize_cidr",
    "parse_duration",
    "parse_usd",
    "validate_name",
]

# Every cloud resource nbcloud makes carries these tags; they are the truth, the local state a cache.
NAME_TAG = "nbcloud:name"
LAUNCH_TAG = "nbcloud:launch-id"
MANAGED_TAG = "nbcloud:managed"
ROLE_TAG = "nbcloud:role"  # instance | security-group | key-pair | data-volume | image
#: a data volume's own name (`--data-volume NAME`): it outlives the instances that use it
VOLUME_NAME_TAG = "nbcloud:volume"
#: a baked image's name (`nbcloud bake`)
IMAGE_NAME_TAG = "nbcloud:image-name"
#: a cluster's workers and security group: the notebook instance's name (`nbcloud cluster`)
CLUSTER_TAG = "nbcloud:cluster"


def cluster_tags(name: str, launch_id: str | None, role: str) -> dict[str, str]:
    """Workers carry their own name tag (``NAME/workers``: never a valid instance name), so `find NAME` and `down
    NAME`'s tag scan never mistake one for the notebook's instance; the launch id is the notebook's, so the orphan
    scan sees the cluster's group as owned while the notebook lives."""
    return {NAME_TAG: f"{name}/workers", CLUSTER_TAG: name, ROLE_TAG: role, MANAGED_TAG: "true",
            LAUNCH_TAG: launch_id or ""}

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,39}$")


def normalize_cidr(text: str) -> str:
    """An address or range the security group may admit (`--allow-cidr`), as a network; never the whole internet."""
    from .errors import UsageError

    try:
        network = ipaddress.ip_network(text if "/" in text else f"{text}/32", strict=False)
    except ValueError as exc:
        raise UsageError(f"invalid address range {text!r}", "write it like 203.0.113.7/32") from exc
    if network.prefixlen == 0:
        raise UsageError("refusing to open the instance to the whole internet (/0)",
                         "pass your own address, e.g. --allow-cidr 203.0.113.7/32")
    return str(network)


def validate_name(name: str) -> str:
    from .errors import UsageError

    if not _NAME.match(name):
        raise UsageError(
            f"invalid instance name {name!r}",
            "use 1–40 lowercase letters, digits and dashes, starting with a letter (it becomes the ssh host nb-NAME)",
        )
    return name


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd]?)$")


#: The longest idle limit an option accepts: more is a typo, not a limit (a limit of 1e40 minutes was taken, and
#: every later `status` failed turning the agent's stop time into a date).
MAX_DURATION_SECONDS = 366 * 86400


def parse_duration(text: str, upper: int | None = MAX_DURATION_SECONDS) -> int | None:
    """'90s', '30m', '2h', '1d', '45' (minutes) → seconds; 'off'/'none'/'0' → None (disabled). At most ``upper``."""
    from .errors import UsageError

    value = text.strip().lower()
    if value in {"off", "none", "never", "0", "false"}:
        return None
    match = _DURATION.match(value)
    if not match:
        raise UsageError(f"invalid duration {text!r}", "write it like 90s, 30m, 2h or off")
    number, unit = float(match.group(1)), match.group(2) or "m"
    seconds = int(number * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit])
    if seconds < 30:
        raise UsageError(f"duration {text!r} is too short", "use at least 30s")
    if upper is not None and seconds > upper:
        raise UsageError(f"duration {text!r} is too long", f"use at most {upper // 86400}d, or off")
    return seconds


#: The largest amount of money an option accepts: a cap above this is a typo, not a budget.
MAX_USD = 1_000_000.0


def parse_usd(text: str | float, option: str, upper: float = MAX_USD) -> float:
    """A money option's value: finite, above zero, at most ``upper`` USD. ``nan``, ``inf``, ``1e400``, ``-1`` and
    ``0`` are refused (a NaN cap compares false with everything, so it would silently turn the cap off)."""
    import math

    from .errors import UsageError

    try:
        value = float(str(text).strip())
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0 or value > upper:
        raise UsageError(f"invalid {option} {str(text).strip()!r}",
                         f"give an amount in USD above 0 and at most {upper:,.0f}, e.g. {option} 25")
    return value


@dataclass(frozen=True)
class InstanceTypeInfo:
    name: str
    vcpus: int
    memory_mib: int
    gpus: int = 0
    gpu_name: str | None = None
    gpu_memory_mib: int = 0
    architecture: str = "x86_64"

    def describe(self) -> str:
        text = f"{self.name}: {self.vcpus} vCPU, {self.memory_mib / 1024:g} GiB"
        if self.gpus:
            text += f", {self.gpus}× {self.gpu_name or 'GPU'} ({self.gpu_memory_mib / 1024:g} GiB)"
        return text


@dataclass(frozen=True)
class ImageInfo:
    image_id: str
    name: str
    description: str = ""
    root_device_name: str = "/dev/sda1"
    baked: bool = False


def default_durable_outputs(gateway: bool) -> bool:
    """`up` without --durable-outputs/--no-durable-outputs: server-side execution, except in gateway mode, whose
    kernels serve a JupyterLab on your machine (a Kernel Gateway holds no documents to write outputs into)."""
    return not gateway


@dataclass(frozen=True)
class InstanceSpec:
    """What the user asked `up` for."""

    name: str
    instance_type: str = "t3.medium"
    image: str = "ubuntu"
    disk_gb: int = 30
    data_volume: str | None = None  # "SIZE" or "NAME[:SIZE]"
    tags: tuple[tuple[str, str], ...] = ()
    spot: bool = False
    max_price: float | None = None
    spot_fallback: bool = False
    zone: str | None = None
    #: other instance types `up` may launch when ``instance_type`` has no capacity or quota (`--fallback-types`)
    fallback_types: tuple[str, ...] = ()
    allow_cidr: str | None = None
    public: bool = False
    # False: a stored record from before durable outputs were `up`'s default has none; `up` fills in its default
    durable_outputs: bool = False
    gateway: bool = False
    idle_stop_seconds: int | None = IDLE_STOP_DEFAULT
    max_cost_usd: float | None = None
    cull_idle_minutes: int | None = None
    python_packages: tuple[str, ...] = ()
    requirements: str | None = None


@dataclass(frozen=True)
class Instance:
    """An instance as the cloud reports it (plus what nbcloud knows locally)."""

    name: str
    instance_id: str
    state: str
    instance_type: str
    region: str
    provider: str
    host: str | None = None
    private_ip: str | None = None
    user: str = "ubuntu"
    ssh_port: int = 22  # not 22 only for a sandbox in loopback mode (an unprivileged sshd)
    # where Jupyter listens, as seen on the instance: the tunnel forwards there (a loopback sandbox's instances
    # share one network, so each listens on its own address instead)
    jupyter_host: str = "127.0.0.1"
    zone: str | None = None
    launch_id: str | None = None
    launched_at: datetime | None = None
    lifecycle: str = "on-demand"
    image_id: str | None = None
    security_group_id: str | None = None
    key_name: str | None = None
    volume_ids: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    # When the current stop (or termination) began, from the cloud's own record (EC2's StateTransitionReason):
    # a stop the on-instance agent made is billed up to here, not up to when nbcloud happened to look.
    stopped_at: datetime | None = None
    # Why the last state change happened, the cloud's code (EC2's StateReason.Code), e.g.
    # Server.SpotInstanceTermination when EC2 reclaimed a spot instance
    state_reason: str | None = None

    @property
    def ssh_alias(self) -> str:
        return f"nb-{self.name}"


@dataclass(frozen=True)
class Volume:
    volume_id: str
    name: str | None
    size_gb: int
    zone: str
    state: str
    volume_type: str = "gp3"
    encrypted: bool = True
    attached_to: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
