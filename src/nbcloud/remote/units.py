"""systemd units for the instance, limited to the keys the sandbox's systemctl shim emulates.

Keys used: Type, User, Group, WorkingDirectory, Environment, ExecStartPre, ExecStart, Restart, RestartSec,
After/Wants, StandardOutput/StandardError=append: (plus TimeoutStartSec and [Install], which real systemd needs and
the shim ignores).
"""

from __future__ import annotations

from .jupyter_config import CONFIG_PATH
from .machine_root import SH_JUPYTER_IP
from .spec import BootstrapSpec

__all__ = [
    "AGENT_ACTIVITY_PATH", "AGENT_CONFIG_PATH", "GATEWAY_WRAPPER", "JUPYTER_LAUNCHER", "VENV",
    "jupyter_launcher_source", "render_gateway_wrapper", "render_units",
]

VENV = "/opt/nbcloud/venv"
AGENT_PATH = "/opt/nbcloud/agent/nbcloud_agent.py"
#: the agent's pure part, beside it (the agent imports it as a sibling script)
AGENT_ACTIVITY_PATH = "/opt/nbcloud/agent/nbcloud_activity.py"
AGENT_CONFIG_PATH = "/opt/nbcloud/etc/agent-config.json"
GATEWAY_WRAPPER = "/opt/nbcloud/bin/nbcloud-gateway"
JUPYTER_LAUNCHER = "/opt/nbcloud/bin/jupyter-launch.py"
_INSTALL = "\n[Install]\nWantedBy=multi-user.target\n"


def _logs(name: str) -> str:
    return f"StandardOutput=append:/var/log/nbcloud/{name}.log\nStandardError=append:/var/log/nbcloud/{name}.log\n"


def render_units(spec: BootstrapSpec) -> dict[str, str]:
    """``{unit file name: content}`` in start order."""
    user, home = spec.login_user, spec.home
    token = f"{spec.secrets_dir}/token"
    units = {
        "nbcloud-imds-guard.service": (
            # before the services that run user code; again at every boot (nft rules do not survive one)
            "[Unit]\nDescription=nbcloud: instance metadata for root only\nAfter=network-pre.target\n"
            "Before=nbcloud-jupyter.service nbcloud-gateway.service\n\n"
            # its log() lines already go to bootstrap.log (tee): only its errors are appended there, not its output
            "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/bash /opt/nbcloud/bootstrap.sh imds-guard\n"
            "StandardError=append:/var/log/nbcloud/bootstrap.log\n"
            + _INSTALL
        ),
        "nbcloud-data.service": (
            "[Unit]\nDescription=nbcloud data volume at ~/data\nAfter=local-fs.target\n\n"
            "[Service]\nType=oneshot\nExecStart=/bin/bash /opt/nbcloud/bootstrap.sh mount-data\n"
            # as the guard's: log() already writes bootstrap.log (its stdout too wrote each line twice at boot)
            "StandardError=append:/var/log/nbcloud/bootstrap.log\n"
            + _INSTALL
        ),
        "nbcloud-jupyter.service": (
            # After= without Wants=: at boot both are enabled and the volume comes first; a baked image's instance
            # starts this unit alone (its data unit is enabled by its own bootstrap, for its own volume)
            "[Unit]\nDescription=nbcloud Jupyter server\nAfter=network.target nbcloud-data.service\n"
            "\n[Service]\nType=simple\n"
            f"User={user}\nGroup={user}\nWorkingDirectory={home}\n"
            f"Environment=HOME={home}\nEnvironment=JUPYTER_TOKEN_FILE={token}\n"
            # The client writes the token over SSH after boot: the launcher imports Jupyter meanwhile and
            # starts it once the token is there.
            f"ExecStart={VENV}/bin/python {JUPYTER_LAUNCHER} --config={CONFIG_PATH}\n"
            "Restart=always\nRestartSec=1\nTimeoutStartSec=infinity\n" + _logs("jupyter") + _INSTALL
        ),
        "nbcloud-agent.service": (
            "[Unit]\nDescription=nbcloud agent (idle stop, cost cap, spot notice)\n"
            "After=network.target nbcloud-jupyter.service\n\n[Service]\nType=simple\n"
            # stdlib-only script: any Python does, the venv's is the one we know exists
            f"ExecStart={VENV}/bin/python {AGENT_PATH} {AGENT_CONFIG_PATH}\n"
            "Restart=always\nRestartSec=2\n" + _logs("agent") + _INSTALL
        ),
    }
    if spec.gateway:
        units["nbcloud-gateway.service"] = (
            "[Unit]\nDescription=nbcloud Jupyter kernel gateway\nAfter=network.target nbcloud-data.service\n"
            "Wants=nbcloud-data.service\n\n[Service]\nType=simple\n"
            f"User={user}\nGroup={user}\nWorkingDirectory={home}\nEnvironment=HOME={home}\n"
            f"ExecStart={GATEWAY_WRAPPER}\nRestart=always\nRestartSec=1\nTimeoutStartSec=infinity\n"
            + _logs("gateway")
            + _INSTALL
        )
    return units


def render_gateway_wrapper(spec: BootstrapSpec) -> str:
    """Reads the gateway token into KG_AUTH_TOKEN with shell builtins: it never becomes a process argument."""
    token = f"{spec.secrets_dir}/gateway-token"
    return (
        "#!/bin/sh\nset -eu\n"
        f"while [ ! -s {token} ]; do sleep 0.2; done\n"
        f"read -r KG_AUTH_TOKEN < {token} || [ -n \"$KG_AUTH_TOKEN\" ]\nexport KG_AUTH_TOKEN\n"
        # NBCLOUD_JUPYTER_IP: the address of its own an instance listens on when instances share one network
        f"exec {VENV}/bin/jupyter-kernelgateway --ip={SH_JUPYTER_IP} --port={spec.gateway_port} "
        "--JupyterWebsocketPersonality.list_kernels=True\n"
    )


def jupyter_launcher_source() -> str:
    from importlib import resources

    return resources.files("nbcloud.remote").joinpath("templates/jupyter-launch.py").read_text()
