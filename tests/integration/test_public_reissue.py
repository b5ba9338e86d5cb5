"""Public mode across stop/start (issue 5): the instance comes back on a new address and its certificate follows.

`up --public`, `stop`, `start` (and `stop`, `up` reusing it): the certificate Jupyter serves must name the new
address (a browser or `curl --cacert NAME.crt` checks the address against it), nbcloud's pinned fingerprint must be
the one served, the password must still log in, and `connect` (which refuses anything but the pinned certificate)
must work. Without the re-issue on `start`, the served certificate still names the first address and this test
fails. A stop/start outside nbcloud (the AWS console) is caught by `connect`, which re-issues too; `down` then leaves
no file of the instance on this machine.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import time
import urllib.parse

import pytest
from tests.helpers import wait_until

pytestmark = [pytest.mark.sandbox, pytest.mark.slow, pytest.mark.timeout(600)]

NAME = "pubmove"
PASSWORD = "correct horse battery"


def _served(host: str) -> tuple[bytes, list[str]]:
    """The DER certificate Jupyter presents on host:8888 and the IP addresses its subjectAltName names."""
    from nbcloud.remote.secrets import cert_ip_addresses

    pem = ssl.get_server_certificate((host, 8888), timeout=10)
    return ssl.PEM_cert_to_DER_cert(pem), cert_ip_addresses(pem)


def _sha256(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def _pinned(name: str = NAME) -> str:
    from nbcloud.ops import Context
    from nbcloud.ops.public import pinned_fingerprint

    value = pinned_fingerprint(Context.create(), name)  # the world fixture points NBCLOUD_HOME at the test's home
    assert value, "no fingerprint pinned"
    return value.replace(":", "").lower()


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _logs_in(host: str, pin: str) -> bool:
    from nbcloud.ops.public import fetch_verified

    form = fetch_verified(f"https://{host}:8888/login", pin)
    xsrf = next(c for c in form.cookies if c.startswith("_xsrf=")).split(";", 1)[0].split("=", 1)[1]
    body = urllib.parse.urlencode({"password": PASSWORD, "_xsrf": xsrf}).encode()
    response = fetch_verified(f"https://{host}:8888/login?next=%2Flab", pin, method="POST", body=body,
                              headers={"Content-Type": "application/x-www-form-urlencoded", "Cookie": f"_xsrf={xsrf}"})
    return response.status == 302


def test_start_reissues_the_certificate_for_the_new_address(world) -> None:
    from nbcloud.ops.public import fetch_verified

    password_file = world.home.parent / "password"
    password_file.write_text(PASSWORD + "\n")
    first = world.up(NAME, "--public", "--password-file", str(password_file))["host"]
    der, names = _served(first)
    first_pin = _pinned()
    assert first in names and _sha256(der) == first_pin, (names, first)

    world.nb("stop", NAME)
    t0 = time.monotonic()
    started = world.nb_json("start", NAME)
    print(f"start (with the certificate re-issued): {time.monotonic() - t0:.1f} s", flush=True)
    second = started["host"]
    assert second and second != first, "a start gives a new address (as on AWS): nothing to test otherwise"

    der, names = _served(second)
    pin = _pinned()
    assert second in names and first not in names, f"the served certificate names {names}, the instance is {second}"
    assert _sha256(der) == pin != first_pin, "the pin is not the certificate the server presents"
    kept = (world.home / "secrets" / f"{NAME}.crt").read_text()
    assert ssl.PEM_cert_to_DER_cert(kept) == der, "the local copy (for a browser or curl) is not the served one"
    assert not list((world.home / "secrets").glob(f"{NAME}*.key")), "the TLS key must not stay on this machine"

    # The key went the secrets' way: 0600 in the secrets dir, never in a process list or a log.
    mode = world.ssh(f"nb-{NAME}", "stat -c %a ~/.config/nbcloud/jupyter.key ~/.config/nbcloud/jupyter.crt")
    assert mode.stdout.split() == ["600", "600"], mode
    key_line = world.ssh(f"nb-{NAME}", "sed -n 2p ~/.config/nbcloud/jupyter.key").stdout.strip()
    seen = world.ssh(f"nb-{NAME}", "ps -eo args; sudo cat /var/log/nbcloud/*.log").stdout
    assert key_line and key_line not in seen

    # nbcloud's own client: connect checks the pin; the password (untouched on the instance) still logs in.
    connected = world.nb_json("connect", NAME, "--no-browser")
    assert connected["url"] == f"https://{second}:8888/lab", connected
    assert fetch_verified(f"https://{second}:8888/api", pin).status == 200
    assert _logs_in(second, pin)
    row = world.nb_json("status", NAME)
    assert row["state"] == "running" and row["host"] == second, row

    # A start of a running instance whose certificate already names its address leaves it alone (no restart).
    world.nb("start", NAME)
    assert _pinned() == pin and _sha256(_served(second)[0]) == pin

    # `up` of a stopped instance reuses it through the same start: the certificate follows again.
    world.nb("stop", NAME)
    third = world.up(NAME)["host"]
    der, names = _served(third)
    assert third != second and names == [third] and _sha256(der) == _pinned() != pin, (third, names)
    assert _logs_in(third, _pinned())

    # Stopped and started outside nbcloud (the AWS console): `connect` finds the new address and re-issues.
    ec2, instance_id = world.ec2(), world.nb_json("status", NAME)["instance_id"]
    ec2.stop_instances(InstanceIds=[instance_id])
    ec2.get_waiter("instance_stopped").wait(InstanceIds=[instance_id], WaiterConfig={"Delay": 1})
    ec2.start_instances(InstanceIds=[instance_id])
    ec2.get_waiter("instance_running").wait(InstanceIds=[instance_id], WaiterConfig={"Delay": 1})
    fourth = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["PublicIpAddress"]
    assert fourth != third
    wait_until(lambda: _accepts(fourth, 22), 60, 0.2, "sshd on the new address")
    before = _pinned()
    connected = world.nb_json("connect", NAME, "--no-browser")
    assert connected["url"] == f"https://{fourth}:8888/lab", connected
    der, names = _served(fourth)
    assert names == [fourth] and _sha256(der) == _pinned() != before, (fourth, names)
    assert _logs_in(fourth, _pinned())

    # `down` leaves nothing of the instance on this machine (the certificate included) but empty lock files.
    world.nb_json("down", NAME, "--delete-data", "--yes")
    left = sorted(str(p.relative_to(world.home)) for p in world.home.rglob(f"{NAME}*") if not p.is_dir())
    assert [f for f in left if not f.endswith(".lock")] == [], left
    assert f"nb-{NAME}" not in (world.home / "ssh_config").read_text()


def test_spot_relaunch_in_public_mode_gets_a_certificate_and_the_password(world) -> None:
    """A reclaimed spot instance is relaunched on a new root disk: it needs the password hash again (without it the
    Jupyter config does not load, Jupyter falls back to plain HTTP on loopback and `up` fails) and a certificate for
    its new address."""
    from nbcloud.sandbox import client

    name = "pubspot"
    password_file = world.home.parent / "password"
    password_file.write_text(PASSWORD + "\n")
    first = world.up(name, "--public", "--spot", "--password-file", str(password_file), "--idle-stop", "off")
    client.fault(first["instance_id"], "spot-notice", world.sandbox.sandbox_dir, seconds=2)
    deadline = time.monotonic() + 90
    while world.nb_json("status", name)["state"] != "gone":
        assert time.monotonic() < deadline, "the spot instance was not reclaimed within 90 s"
        time.sleep(0.5)

    again = world.up(name)  # relaunch from the stored spec: spot, public
    assert again["instance_id"] != first["instance_id"] and not again["reused"], again
    host = again["host"]
    der, names = _served(host)
    pin = _pinned(name)
    assert names == [host] and _sha256(der) == pin, (names, host)
    assert _logs_in(host, pin)
    assert world.nb_json("connect", name, "--no-browser")["url"] == f"https://{host}:8888/lab"
