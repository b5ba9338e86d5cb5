"""The sandbox daemon's firewall sweep (once a second, every running instance) looks each instance up in moto once.

Built per host, the group membership made a sweep ask moto N² times, and moto's lookup by id scans every instance:
with 50 instances the daemon kept a quarter of a core busy at idle, on the machine the instances' sshd and
`nbcloud status` share. Here moto is real (in process); its lookups are counted.
"""

from __future__ import annotations

import threading
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID
from moto.ec2.models import ec2_backends

from nbcloud.sandbox.daemon import Host, Sandbox
from nbcloud.sandbox.hosts import Network


class OneSweep:
    """A `stopped` event that lets the sweep loop run once."""

    def __init__(self) -> None:
        self.waits = 0

    def wait(self, _timeout: float) -> bool:
        self.waits += 1
        return self.waits > 1


def test_a_sweep_looks_each_instance_up_once(monkeypatch: pytest.MonkeyPatch) -> None:
    with mock_aws():
        ec2 = boto3.client("ec2", region_name="us-east-1")
        image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        ids = [i["InstanceId"] for i in ec2.run_instances(ImageId=image, MinCount=6, MaxCount=6)["Instances"]]
        backend = ec2_backends[DEFAULT_ACCOUNT_ID]["us-east-1"]
        looked_up: list[str] = []
        real = backend.get_instance

        def counted(instance_id: str) -> Any:
            looked_up.append(instance_id)
            return real(instance_id)

        monkeypatch.setattr(backend, "get_instance", counted)
        sandbox = object.__new__(Sandbox)  # only what the sweep uses: no daemon, namespaces or processes
        sandbox.lock = threading.Lock()
        sandbox.network = Network("10.251.0.0/16")
        sandbox.stopped = OneSweep()  # type: ignore[assignment]
        sandbox.hosts = {iid: Host(iid, backend, address=f"10.251.128.{n + 2}", state="running")
                         for n, iid in enumerate(ids)}
        sandbox.firewall_forever()  # the namespaces do not exist: each load fails, as for a stopped instance
        assert sorted(looked_up) == sorted(ids)
