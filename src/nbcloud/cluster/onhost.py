"""Fixed places and shared program text on a cluster's instances (a leaf: engines and renderers import it).

The markers are how the client learns what happened on a worker (``test -e MARKER`` over ssh); the spot-notice
probe is the one IMDSv2 check that the worker's launcher and its watchdog both embed.
"""

from __future__ import annotations

__all__ = ["DONE_MARKER", "FREEZE_PATH", "SPOT_NOTICE_MARKER", "SPOT_NOTICE_PROBE"]

DONE_MARKER = "/var/lib/nbcloud/cluster-worker.done"
SPOT_NOTICE_MARKER = "/var/lib/nbcloud/cluster-spot-notice"  # the watchdog saw the 2-minute notice
FREEZE_PATH = "/opt/nbcloud/etc/cluster-freeze.txt"

#: Python (stdlib; the embedding program imports ``urllib.request``) defining ``spot_notice()``: True once the
#: instance metadata service (IMDSv2) announces that this spot machine will be reclaimed.
SPOT_NOTICE_PROBE = '''def spot_notice():
    """IMDSv2: the machine will be reclaimed (the 2-minute spot interruption notice)."""
    try:
        put = urllib.request.Request("http://169.254.169.254/latest/api/token", method="PUT",
                                     headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
        token = urllib.request.urlopen(put, timeout=2).read().decode()
        get = urllib.request.Request("http://169.254.169.254/latest/meta-data/spot/instance-action",
                                     headers={"X-aws-ec2-metadata-token": token})
        return urllib.request.urlopen(get, timeout=2).status == 200
    except Exception:
        return False
'''
