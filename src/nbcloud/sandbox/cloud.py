"""moto's EC2/SSM API in the daemon process, with the sandbox's hooks, seed data and API fault injection.

Import this module only in the daemon: it sets moto's validation switches before moto reads them.
"""

from __future__ import annotations

import functools
import io
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

os.environ.setdefault("MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION", "true")
os.environ.setdefault("MOTO_ENABLE_AMI_VALIDATION", "true")

from moto.core import DEFAULT_ACCOUNT_ID
from moto.ec2.models import EC2Backend, ec2_backends
from moto.ec2.models.amis import Ami
from moto.server import DomainDispatcherApplication, create_backend_app
from moto.ssm.models import Parameter, ssm_backends
from werkzeug.serving import BaseWSGIServer, make_server

__all__ = ["REGION", "ApiFaults", "CloudListener", "MotoCloud", "fault_message", "install_hooks", "seed_images"]

REGION = "us-east-1"
UBUNTU_PARAM = "/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id"
DLAMI_PARAM = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
UBUNTU_NAME = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-20250610"
DLAMI_NAME = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 20250620"
THROTTLING = {"RequestLimitExceeded", "Throttling", "ThrottlingException", "RequestThrottled",
              "ServiceUnavailable", "Unavailable"}


class CloudListener(Protocol):
    """What the daemon does when moto changes an instance (called with moto's objects, synchronously)."""

    def on_run(self, backend: Any, instances: list[Any]) -> None: ...
    def on_start(self, backend: Any, instances: list[Any]) -> None: ...
    def on_stop(self, backend: Any, instances: list[Any]) -> None: ...
    def on_terminate(self, backend: Any, instances: list[Any]) -> None: ...
    def on_reboot(self, backend: Any, instances: list[Any]) -> None: ...
    def on_attach(self, backend: Any, volume_id: str, instance_id: str) -> None: ...
    def on_detach(self, backend: Any, volume_id: str, instance_id: str) -> None: ...
    def on_delete_volume(self, backend: Any, volume_id: str) -> None: ...
    def on_create_volume(self, backend: Any, volume: Any, snapshot_id: str | None) -> None: ...
    def on_create_snapshot(self, backend: Any, snapshot: Any) -> None: ...
    def on_delete_snapshot(self, backend: Any, snapshot_id: str) -> None: ...
    def on_create_image(self, backend: Any, ami: Any, instance_id: str) -> None: ...
    def on_deregister_image(self, backend: Any, ami_id: str) -> None: ...


def _instances(result: Iterable[Any]) -> list[Any]:
    return [item[0] if isinstance(item, tuple) else item for item in result]


def _on_attach(listener: CloudListener, backend: Any, attachment: Any) -> None:
    if attachment:  # moto answers None when the attachment was refused
        listener.on_attach(backend, attachment.volume.id, attachment.instance.id)


def install_hooks(listener: CloudListener) -> None:
    """Wrap moto's EC2 backend methods (class-wide: every account and region) so the listener sees changes.

    Spot requests and fleets launch through ``run_instances`` too, so they are covered.
    """
    if getattr(EC2Backend, "_nbcloud_hooked", False):
        EC2Backend._nbcloud_listener = listener  # type: ignore[attr-defined]
        return
    EC2Backend._nbcloud_listener = listener  # type: ignore[attr-defined]
    EC2Backend._nbcloud_hooked = True  # type: ignore[attr-defined]

    def wrap(name: str, after: Callable[[Any, Any, tuple[Any, ...], dict[str, Any]], Any]) -> None:
        original = getattr(EC2Backend, name)

        @functools.wraps(original)
        def hooked(self: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(self, *args, **kwargs)
            after(self, result, args, kwargs)
            return result

        setattr(EC2Backend, name, hooked)

    def lst() -> CloudListener:
        return EC2Backend._nbcloud_listener  # type: ignore[attr-defined,no-any-return]

    wrap("run_instances", lambda b, r, a, k: lst().on_run(b, list(r.instances)))
    wrap("start_instances", lambda b, r, a, k: lst().on_start(b, _instances(r)))
    wrap("stop_instances", lambda b, r, a, k: lst().on_stop(b, _instances(r)))
    wrap("terminate_instances", lambda b, r, a, k: lst().on_terminate(b, _instances(r)))
    wrap("reboot_instances", lambda b, r, a, k: lst().on_reboot(b, _instances(r)))
    wrap("attach_volume", lambda b, r, a, k: _on_attach(lst(), b, r))
    wrap("delete_volume", lambda b, r, a, k: lst().on_delete_volume(b, k.get("volume_id") or a[0]))


    def arg(name: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        import inspect

        bound = inspect.signature(getattr(EC2Backend, method).__wrapped__).bind_partial(None, *args, **kwargs)
        return bound.arguments.get(name)

    wrap("create_volume", lambda b, r, a, k: lst().on_create_volume(b, r, arg("snapshot_id", "create_volume", a, k)))
    wrap("create_snapshot", lambda b, r, a, k: lst().on_create_snapshot(b, r))
    wrap("delete_snapshot", lambda b, r, a, k: lst().on_delete_snapshot(b, r.id))
    wrap("create_image", lambda b, r, a, k: lst().on_create_image(b, r, arg("instance_id", "create_image", a, k)))
    wrap("deregister_image", lambda b, r, a, k: lst().on_deregister_image(b, arg("ami_id", "deregister_image", a, k)))

    original_detach = EC2Backend.detach_volume

    @functools.wraps(original_detach)
    def detach_volume(self: Any, volume_id: str, instance_id: str | None = None, device_path: str | None = None,
                      *args: Any, **kwargs: Any) -> Any:
        if not instance_id:  # moto answers 500 without InstanceId; AWS takes it from the attachment
            volume = self.get_volume(volume_id)
            if volume.attachment is not None:
                instance_id = volume.attachment.instance.id
        result = original_detach(self, volume_id, instance_id, device_path, *args, **kwargs)  # type: ignore
        lst().on_detach(self, volume_id, instance_id or "")
        return result

    EC2Backend.detach_volume = detach_volume  # type: ignore[method-assign]
    _idempotent_run_instances()
    _no_start_while_stopping()


def _no_start_while_stopping() -> None:
    """StartInstances of an instance still stopping is refused, as on AWS (moto starts it; the sandbox would then
    boot it while its old host is still going down)."""
    from moto.ec2.exceptions import EC2ClientError

    hooked = EC2Backend.start_instances

    @functools.wraps(hooked)
    def start_instances(self: Any, instance_ids: list[str]) -> Any:
        for instance_id in instance_ids:
            if self.get_instance(instance_id).state == "stopping":
                raise EC2ClientError("IncorrectInstanceState",
                                     f"The instance '{instance_id}' is not in a state from which it can be started.")
        return hooked(self, instance_ids)

    EC2Backend.start_instances = start_instances  # type: ignore[method-assign]


def _idempotent_run_instances() -> None:
    """RunInstances with a ClientToken already used answers with that launch's reservation and makes nothing, as
    on AWS (moto makes a second instance): a retried call after a lost answer must not double the bill."""
    hooked = EC2Backend.run_instances

    @functools.wraps(hooked)
    def run_instances(self: Any, *args: Any, **kwargs: Any) -> Any:
        token = kwargs.get("client_token")
        if token and token != "ABCDE":  # moto's stand-in when the request carries none
            for reservation in list(self.reservations.values()):
                if any(getattr(i, "client_token", None) == token for i in reservation.instances):
                    return reservation
        return hooked(self, *args, **kwargs)

    EC2Backend.run_instances = run_instances  # type: ignore[method-assign]


def seed_images(region: str = REGION, account_id: str = DEFAULT_ACCOUNT_ID) -> dict[str, str]:
    """Register an Ubuntu 24.04 and a Deep Learning AMI and point the SSM public parameters at them."""
    ec2 = ec2_backends[account_id][region]
    ssm = ssm_backends[account_id][region]
    made: dict[str, str] = {}
    for param, name, owner, desc in (
        (UBUNTU_PARAM, UBUNTU_NAME, "099720109477", "Canonical, Ubuntu, 24.04, amd64 noble image"),
        (DLAMI_PARAM, DLAMI_NAME, "898082745236", "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04)"),
    ):
        ami_id = "ami-" + uuid.uuid5(uuid.NAMESPACE_URL, name).hex[:17]
        if ami_id not in ec2.amis:
            ec2.amis[ami_id] = Ami(
                ec2, ami_id, name=name, description=desc, owner_id=owner, owner_alias="amazon", public=True,
                virtualization_type="hvm", architecture="x86_64", root_device_type="ebs",
                root_device_name="/dev/sda1", hypervisor="xen", boot_mode="uefi-preferred",
                creation_date=datetime(2025, 6, 10, tzinfo=UTC),
            )
        params = ssm._parameters
        if not dict.get(params, param):
            dict.__setitem__(params, param, [
                Parameter(  # type: ignore[abstract]  # moto's own class, made the way moto makes it
                          account_id=account_id, name=param, value=ami_id, parameter_type="String",
                          description=None, allowed_pattern=None, keyid=None,
                          last_modified_date=datetime.now(UTC), version=1,
                          data_type="aws:ec2:image")
            ])
        made[param] = ami_id
    return made


def _subnet_zone(subnet_id: str) -> str | None:
    for account in ec2_backends.values():
        for backend in account.values():
            for zone, subnets in getattr(backend, "subnets", {}).copy().items():  # moto keys subnets by zone
                if subnet_id in subnets:
                    return str(zone)
    return None


def call_zone(params: dict[str, list[str]]) -> str | None:
    """The availability zone an EC2 query call names: ``Placement.AvailabilityZone`` or its subnet's zone."""
    zone = (params.get("Placement.AvailabilityZone") or params.get("AvailabilityZone") or [None])[0]
    if zone:
        return zone
    subnet = next((v[0] for k, v in params.items() if k == "SubnetId" or k.endswith(".SubnetId")), None)
    return _subnet_zone(subnet) if subnet else None


# What EC2 says with these codes (its wording: clients such as nbcloud's failover read the message, not only the
# code; InvalidParameterValue is the answer for a type a zone does not offer)
_AWS_WORDING = {
    "InsufficientInstanceCapacity": "We currently do not have sufficient {type} capacity in the Availability Zone "
                                    "you requested ({zone}). Our system will be working on provisioning additional "
                                    "capacity.",
    "Unsupported": "Your requested instance type ({type}) is not supported in your requested Availability Zone "
                   "({zone}). Please retry your request by not specifying an Availability Zone.",
    "InvalidParameterValue": "Your requested instance type ({type}) is not supported in your requested "
                             "Availability Zone ({zone}).",
    "VcpuLimitExceeded": "You have requested more vCPU capacity than your current vCPU limit of 0 allows for the "
                         "instance bucket that the specified instance type belongs to.",
}


def fault_message(operation: str, code: str, params: dict[str, list[str]]) -> str:
    """The message of an injected error: EC2's own wording for the capacity and quota codes, then where it came
    from."""
    origin = f"injected by `nbcloud sandbox fault-api {operation} {code}`"
    wording = _AWS_WORDING.get(code)
    if wording is None:
        return origin
    itype = (params.get("InstanceType") or ["the requested type"])[0]
    return wording.format(type=itype, zone=call_zone(params) or "chosen for you") + f" ({origin})"


class ApiFaults:
    """The next N calls of an operation (optionally: only those in one zone) answer with an AWS error code.

    A WSGI middleware around moto. A zone fault matches calls that name that zone (``Placement`` or a subnet's);
    it is taken before a fault for every zone of the same operation.
    """

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._faults: dict[tuple[str, str | None], list[Any]] = {}

    def add(self, operation: str, code: str, count: int = 1, zone: str | None = None) -> None:
        with self._lock:
            if count <= 0:  # count 0 clears a pending fault
                self._faults.pop((operation, zone or None), None)
            else:
                self._faults[(operation, zone or None)] = [code, count]

    def pending(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {op + (f"@{zone}" if zone else ""): {"code": c, "count": n, "zone": zone}
                    for (op, zone), (c, n) in self._faults.items()}

    def _take(self, operation: str | None, zone: str | None) -> str | None:
        if not operation:
            return None
        with self._lock:
            key = (operation, zone) if zone and (operation, zone) in self._faults else (operation, None)
            fault = self._faults.get(key)
            if not fault:
                return None
            fault[1] -= 1
            if fault[1] <= 0:
                del self._faults[key]
            return str(fault[0])

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if not self._faults:
            return self.app(environ, start_response)
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        operation: str | None = target.split(".")[-1] if target else None
        zone: str | None = None
        query: dict[str, list[str]] = {}
        if operation is None:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = io.BytesIO(body)
            query = parse_qs(body.decode("utf-8", "replace")) or parse_qs(environ.get("QUERY_STRING", ""))
            operation = (query.get("Action") or [None])[0]
            zone = call_zone(query)
        code = self._take(operation, zone)
        if code is None:
            return self.app(environ, start_response)
        if code.startswith("delay:"):  # the call is carried out, its answer held back: a slow or lost response
            body = list(self.app(environ, start_response))
            time.sleep(float(code.split(":", 1)[1]))
            return body
        status = "503 Service Unavailable" if code in THROTTLING else "400 Bad Request"
        message = fault_message(str(operation), code, query)
        if target:
            body_out = json.dumps({"__type": code, "message": message}).encode()
            ctype = "application/x-amz-json-1.1"
        else:
            body_out = (
                '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
                f"<Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error></Errors>"
                f"<RequestID>{uuid.uuid4()}</RequestID></Response>"
            ).encode()
            ctype = "text/xml"
        start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(body_out))),
                                ("x-amzn-RequestId", str(uuid.uuid4()))])
        return [body_out]


class MotoCloud:
    """moto's server app behind the fault middleware, served by werkzeug on 127.0.0.1 (a random port)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.faults = ApiFaults(DomainDispatcherApplication(create_backend_app))
        self.server: BaseWSGIServer = make_server(host, port, self.faults, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, name="moto", daemon=True)

    @property
    def endpoint_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host.decode() if isinstance(host, bytes) else host}:{port}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
