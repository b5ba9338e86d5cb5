"""What the instance should become: one frozen value that every renderer in ``nbcloud.remote`` reads."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import UsageError

__all__ = ["LOGIN_USER", "SECRETS_DIR", "BootstrapSpec"]

LOGIN_USER = "ubuntu"
#: The shortest idle stop a user can set: shorter would stop an instance between two cells of thought.
IDLE_STOP_FLOOR = 60
#: The idle limit of a new instance when the user gives none (the agent keeps its own copy: it imports nothing).
IDLE_STOP_DEFAULT = 3600
#: How far NBCLOUD_IDLE_STOP_FLOOR (a hidden knob for the test suite and benches) may lower it.
MIN_IDLE_FLOOR = 20
SECRETS_DIR = "/home/ubuntu/.config/nbcloud"  # for the default login user; BootstrapSpec.secrets_dir in general

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_VOLUME = re.compile(r"^vol-[0-9a-f]{8,17}$")
_ENV_KEY = re.compile(r"^[A-Z_][A-Z0-9_]*$")
# A requirement line goes into a shell word; refuse anything that could break out of the quoting.
_REQUIREMENT = re.compile(r"^[A-Za-z0-9_.\-\[\],<>=!~*;:@/+ ']+$")


def _pep508(text: str) -> bool:
    """A requirement pip/uv would take (PEP 508: name, extras, version, markers): `numpy;rm -rf /` passes the
    character check above but is no requirement, and would only fail on the instance, at launch."""
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        Requirement(text)
    except InvalidRequirement:
        return False
    return True


@dataclass(frozen=True)
class BootstrapSpec:
    name: str
    host_key_private: str = ""
    host_key_public: str = ""
    login_user: str = LOGIN_USER
    jupyter_port: int = 8888
    gateway: bool = False
    gateway_port: int = 8889
    durable_outputs: bool = False
    public: bool = False
    cull_idle_minutes: int | None = None
    idle_stop_seconds: int | None = IDLE_STOP_DEFAULT
    max_cost_usd: float | None = None
    hourly_usd: float | None = None
    python_packages: tuple[str, ...] = ()
    requirements: str | None = None
    data_volume_id: str | None = None
    package_env: dict[str, str] = field(default_factory=dict)
    check_period: int = 10
    #: the shortest idle stop accepted (IDLE_STOP_FLOOR; tests lower it to finish sooner)
    idle_floor: int = 60

    def __post_init__(self) -> None:
        # Validate here so a bad value fails on the laptop, not half-way through a boot.
        if not _NAME.match(self.name):
            raise UsageError(f"bad instance name {self.name!r}", "use letters, digits, '.', '_' or '-'")
        if not _USER.match(self.login_user):
            raise UsageError(f"bad login user {self.login_user!r}")
        for port in (self.jupyter_port, self.gateway_port):
            if not 1024 <= port <= 65535 or port == 22:
                raise UsageError(f"port {port} is out of range", "pick a port in 1024-65535")
        if self.gateway and self.gateway_port == self.jupyter_port:
            raise UsageError("the gateway port equals the Jupyter port", "pick another --gateway-port")
        if self.data_volume_id is not None and not _VOLUME.match(self.data_volume_id):
            raise UsageError(f"bad volume id {self.data_volume_id!r}", "volume ids look like vol-0123456789abcdef0")
        for pkg in self.python_packages:
            if not pkg.strip() or not _REQUIREMENT.match(pkg) or pkg.startswith("-") or not _pep508(pkg):
                raise UsageError(f"bad package requirement {pkg!r}", "give requirement specifiers like 'pandas>=2'")
        for key, value in self.package_env.items():
            if not _ENV_KEY.match(key) or "\n" in value or "\0" in value:
                raise UsageError(f"bad bootstrap environment entry {key!r}")
        if self.cull_idle_minutes is not None and self.cull_idle_minutes <= 0:
            raise UsageError("cull_idle_minutes must be positive")
        if not MIN_IDLE_FLOOR <= self.idle_floor <= IDLE_STOP_FLOOR:
            raise UsageError(f"idle_floor must be {MIN_IDLE_FLOOR}-{IDLE_STOP_FLOOR} s")
        if self.idle_stop_seconds is not None and self.idle_stop_seconds < self.idle_floor:
            raise UsageError(f"the idle stop must be at least {self.idle_floor} s",
                             "use e.g. `--idle-stop 30m` or `off`")
        if self.max_cost_usd is not None and self.max_cost_usd <= 0:
            raise UsageError("the cost cap must be positive")
        if not 1 <= self.check_period <= 15:
            raise UsageError("check_period must be 1-15 s")
        if self.requirements is not None and "\0" in self.requirements:
            raise UsageError("the requirements file contains NUL bytes")

    @property
    def home(self) -> str:
        return f"/home/{self.login_user}"

    @property
    def secrets_dir(self) -> str:
        return f"{self.home}/.config/nbcloud"

    def packages(self) -> list[str]:
        """Pinned server packages first, then the user's: uv resolves them together."""
        from .packages import DURABLE_OUTPUTS, GATEWAY, JUPYTER

        pkgs = list(JUPYTER)
        if self.durable_outputs:
            pkgs += DURABLE_OUTPUTS
        if self.gateway:
            pkgs += GATEWAY
        return pkgs + list(self.python_packages)
