"""EC2 user-data: gzip of a MIME multipart with cloud-config (host keys) and the bootstrap script.

The client generates the instance's ed25519 host key and pins it before the first connection, so the first SSH
contact is verified (no trust-on-first-use). The host key is the only private material in user-data, and only a
bootstrap credential: over that first session the instance replaces it with a key it makes itself
(remote/hostkey.py), and the bootstrap lets only root reach IMDS, where user-data can be read.
"""

from __future__ import annotations

import gzip
import json
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

from ..errors import UsageError
from .bootstrap import render_bootstrap
from .spec import BootstrapSpec

__all__ = ["USER_DATA_LIMIT", "render_cloud_config", "render_user_data"]

USER_DATA_LIMIT = 16384  # EC2 rejects larger user-data (before base64)
BOOTSTRAP_PART = "nbcloud-bootstrap.sh"  # cloud-init writes the part under this name


def render_cloud_config(spec: BootstrapSpec) -> str:
    config: dict[str, object] = {}
    if spec.host_key_private and spec.host_key_public:
        config["ssh_keys"] = {"ed25519_private": spec.host_key_private, "ed25519_public": spec.host_key_public}
        # Drop the image's own host keys: only the pinned one may answer. cloud-init generates none when ssh_keys
        # is given; the list names only the type given (an empty one fails cloud-init's schema: "[] is too short",
        # a warning in every boot's log and `cloud-init schema --system` failing on the instance).
        config["ssh_deletekeys"] = True
        config["ssh_genkeytypes"] = ["ed25519"]
    # The bootstrap (the x-shellscript part, written out before the network stage's modules run) is started from
    # there instead of waiting for the final stage (bootstrap.sh's `early`); once per instance, not at every boot.
    config["bootcmd"] = [["cloud-init-per", "instance", "nbcloud-bootstrap-early", "/bin/bash",
                          f"/var/lib/cloud/instance/scripts/{BOOTSTRAP_PART}", "early"]]
    # JSON is YAML: no YAML emitter needed, and cloud-init accepts it after the #cloud-config line.
    return "#cloud-config\n" + json.dumps(config, indent=1, sort_keys=True) + "\n"


def _part(text: str, subtype: str, filename: str) -> MIMEText:
    # us-ascii keeps the part in 7bit instead of base64, which gzip would compress far worse
    try:
        text.encode("ascii")
        part = MIMEText(text, subtype, "us-ascii")
    except UnicodeEncodeError:
        part = MIMEText(text, subtype, "utf-8")
    part.add_header("Content-Disposition", "attachment", filename=filename)
    return part


def render_user_data(spec: BootstrapSpec) -> bytes:
    message = MIMEMultipart(boundary="==nbcloud-boundary==")
    message.attach(_part(render_cloud_config(spec), "cloud-config", "cloud-config.txt"))
    message.attach(_part(render_bootstrap(spec), "x-shellscript", BOOTSTRAP_PART))
    data = gzip.compress(message.as_bytes(), compresslevel=9, mtime=0)
    if len(data) > USER_DATA_LIMIT:
        raise UsageError(
            f"the instance's user-data is {len(data)} bytes gzip'd, over EC2's {USER_DATA_LIMIT}",
            "shorten the requirements file or the package list (install more from ~/data after boot)",
        )
    return data
