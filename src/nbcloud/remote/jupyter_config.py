"""The Jupyter server's config file (non-secret: the token, password hash and TLS key stay in the secrets dir).

Current jupyter_server 2.x APIs only (``ServerApp``, ``IdentityProvider``, ``PasswordIdentityProvider``). The token
comes from ``JUPYTER_TOKEN_FILE`` set in the service unit, so it appears in neither this file nor a command line.
"""

from __future__ import annotations

from .machine_root import JUPYTER_IP_ENV
from .spec import BootstrapSpec

__all__ = ["CONFIG_PATH", "render_jupyter_config"]

CONFIG_PATH = "/opt/nbcloud/etc/jupyter_server_config.py"


def render_jupyter_config(spec: BootstrapSpec) -> str:
    secrets = spec.secrets_dir
    lines = [
        "# Written by nbcloud's bootstrap. No secrets here: see " + secrets,
        "import os",
        "c = get_config()  # noqa: F821",
        # A machine whose instances share one network (the sandbox without root: each on its own 127.x address)
        # names the address to listen on; elsewhere the variable is unset.
        f"c.ServerApp.ip = os.environ.get({JUPYTER_IP_ENV!r}) or {'0.0.0.0' if spec.public else '127.0.0.1'!r}",
        f"c.ServerApp.port = {spec.jupyter_port}",
        # The client's tunnel targets this exact port: fail loudly rather than drift to port+1.
        "c.ServerApp.port_retries = 0",
        "c.ServerApp.open_browser = False",
        # a sandbox without namespaces logs its instances in as whoever runs it: root too, when forced to
        "c.ServerApp.allow_root = os.environ.get('NBCLOUD_JUPYTER_ALLOW_ROOT') == '1'",
        f"c.ServerApp.root_dir = {spec.home!r}",
    ]
    if spec.cull_idle_minutes:
        lines += [
            f"c.MappingKernelManager.cull_idle_timeout = {int(spec.cull_idle_minutes) * 60}",
            "c.MappingKernelManager.cull_interval = 60",
            # A kernel with a tab open or a long computation is the user's work: never cull it.
            "c.MappingKernelManager.cull_connected = False",
            "c.MappingKernelManager.cull_busy = False",
        ]
    if spec.public:
        lines += [
            "c.ServerApp.allow_remote_access = True",
            f"c.ServerApp.certfile = {secrets + '/jupyter.crt'!r}",
            f"c.ServerApp.keyfile = {secrets + '/jupyter.key'!r}",
            "c.ServerApp.identity_provider_class = 'jupyter_server.auth.identity.PasswordIdentityProvider'",
            # Read at start-up so the hash never lands in this (world-readable) file.
            f"with open({secrets + '/password.hash'!r}) as _fh:",
            "    c.PasswordIdentityProvider.hashed_password = _fh.read().strip()",
            "c.PasswordIdentityProvider.password_required = True",
        ]
    if spec.durable_outputs:
        lines += [
            # jupyter-collaboration keeps the notebook on the server; jupyter_server_nbmodel runs cells there and
            # writes outputs into that document, so they survive a closed tab or a dropped tunnel.
            # (both enable themselves through the venv's jupyter_server_config.d; update, never replace, that dict)
            "c.ServerApp.jpserver_extensions.update({'jupyter_server_ydoc': True, 'jupyter_server_nbmodel': True})",
            "c.YDocExtension.server_side_execution = True",
            "c.YDocExtension.document_save_delay = 1.0",
            # Keep a document (and its outputs) in memory for a day after the last tab closed.
            "c.YDocExtension.document_cleanup_delay = 86400.0",
            f"c.YDocExtension.session_store_path = {spec.home + '/.local/share/nbcloud/collaboration_sessions.json'!r}",
        ]
    return "\n".join(lines) + "\n"
