"""The Python packages the bootstrap installs on an instance, pinned together.

One place for the versions: the bootstrap renders them, the sandbox warms its local wheelhouse with them
(instances in the sandbox have no internet), and tests check they resolve together.
"""

from __future__ import annotations

__all__ = ["DURABLE_OUTPUTS", "GATEWAY", "JUPYTER", "all_requirements"]

# The server the user's browser talks to, and a kernel for the same environment.
JUPYTER: tuple[str, ...] = (
    "jupyterlab==4.6.6",
    "jupyter_server==2.21.1",
    "ipykernel==7.4.0",
)

# Server-side execution: outputs land in the server's copy of the notebook even with no browser attached.
DURABLE_OUTPUTS: tuple[str, ...] = (
    "jupyter-collaboration==5.0.4",
    "jupyter_server_nbmodel==0.2.9",
)

# Kernels on the instance, notebooks and UI on the laptop.
GATEWAY: tuple[str, ...] = ("jupyter-kernel-gateway==3.0.1",)


def all_requirements() -> list[str]:
    return [*JUPYTER, *DURABLE_OUTPUTS, *GATEWAY]
