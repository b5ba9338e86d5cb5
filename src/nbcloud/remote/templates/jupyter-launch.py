"""nbcloud's Jupyter launcher: import the server while the token is on its way, start it once the token is there.

The client sends the token over SSH after boot. Importing JupyterLab and its server extensions takes ~2 s, the
start itself after that ~0.2 s: doing the imports first takes them off the path from "the token arrived" to
"Jupyter answers" (a new instance of a baked image, whose image keeps this unit enabled, waits only for its
first SSH session and its bootstrap, not for Python too).
Runs under systemd as the login user: `python jupyter-launch.py JUPYTERLAB-ARGS...`.
"""

import contextlib
import importlib
import os
import sys
import time
from pathlib import Path

from jupyterlab.labapp import main

# What the server loads at start-up anyway; a missing one is the server's business, not the launcher's.
for module in ("jupyter_server.serverapp", "jupyterlab_server", "jupyter_lsp", "jupyter_lsp.serverextension",
               "jupyter_server_terminals", "notebook_shim", "ipykernel", "jupyter_collaboration",
               "jupyter_server_ydoc", "jupyter_server_nbmodel"):
    with contextlib.suppress(Exception):
        importlib.import_module(module)

# The token, and this instance's bootstrap done: an instance of a baked image starts this unit at boot, before
# its bootstrap has written its own config (read by main() below, so the waiting process picks it up).
token = Path(os.environ["JUPYTER_TOKEN_FILE"])
# Under NBCLOUD_ROOT when the machine's "/" is a directory; a live root's bootstrap has already put the prefix in
# this very line (NBCLOUD_ROOT_LIVE): never twice.
root, done_path = os.environ.get("NBCLOUD_ROOT", ""), "/var/lib/nbcloud/bootstrap.done"
bootstrap_done = Path(done_path if root and done_path.startswith(root + "/") else root + done_path)
while not (token.exists() and token.stat().st_size > 0 and bootstrap_done.exists()):
    time.sleep(0.05)
sys.argv = ["jupyter-lab", *sys.argv[1:]]
sys.exit(main())
