"""Issue 17's pure parts: certificates, Dask configs and units, the worker's user-data, scale and cost decisions,
and the sandbox's security-group filter (no network, no cloud)."""

from __future__ import annotations

import gzip
import json
import os

import pytest

from nbcloud.cluster.certs import make_cluster_certs
from nbcloud.cluster.dask import DaskEngine, render_dask_config
from nbcloud.cluster.engine import Layout
from nbcloud.cluster.engines import get_engine
from nbcloud.cluster.plan import cluster_hourly, freeze_difference, scale_plan
from nbcloud.cluster.remote import render_worker_boot, render_worker_user_data
from nbcloud.errors import UsageError
from nbcloud.sandbox.firewall import IngressRule, render_ingress

LAYOUT = Layout(name="a", scheduler_ip="10.0.0.5", worker_threads=2, idle_minutes=7)


def test_certs_chain_to_the_cluster_ca_and_serve_both_ways() -> None:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.x509.oid import ExtendedKeyUsageOID

    certs = make_cluster_certs("a")
    ca = x509.load_pem_x509_certificate(certs.ca_cert_pem.encode())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for identity in (certs.scheduler, certs.worker, certs.client):
        leaf = x509.load_pem_x509_certificate(identity.cert_pem.encode())
        leaf.verify_directly_issued_by(ca)
        usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.SERVER_AUTH in usage and ExtendedKeyUsageOID.CLIENT_AUTH in usage
        assert "PRIVATE KEY" in identity.key_pem
    other = x509.load_pem_x509_certificate(make_cluster_certs("b").worker.cert_pem.encode())
    with pytest.raises((ValueError, TypeError, InvalidSignature)):  # a certificate of another cluster's CA is not ours
        other.verify_directly_issued_by(ca)


def test_dask_config_requires_tls_and_names_the_scheduler_for_client() -> None:
    config = json.loads(render_dask_config(LAYOUT, "scheduler", "tls://10.0.0.5:8786"))
    assert config["scheduler-address"] == "tls://10.0.0.5:8786"
    comm = config["distributed"]["comm"]
    assert comm["require-encryption"] is True
    assert comm["tls"]["client"]["key"] == "/home/ubuntu/.config/nbcloud/cluster/client.key"
    worker = json.loads(render_dask_config(LAYOUT, "worker", None))
    assert "scheduler-address" not in worker and "client" not in worker["distributed"]["comm"]["tls"]


def test_scheduler_unit_listens_tls_with_the_dashboard_on_loopback_only() -> None:
    engine = get_engine("dask")
    name, unit = engine.scheduler_unit(LAYOUT)
    assert name == "nbcloud-cluster-scheduler.service"
    assert "--protocol tls" in unit and "--dashboard-address 127.0.0.1:8787" in unit and "User=ubuntu" in unit
    files = {f.path: f for f in engine.scheduler_files(LAYOUT, make_cluster_certs("a"))}
    assert files["/home/ubuntu/.config/nbcloud/cluster/scheduler.key"].mode == 0o600
    assert files["/etc/systemd/system/nbcloud-cluster-scheduler.service"].owner is None
    with pytest.raises(UsageError):
        get_engine("ray")


def test_worker_user_data_carries_the_freeze_and_units_but_no_tls_key() -> None:
    engine = DaskEngine()
    certs = make_cluster_certs("a")
    boot = render_worker_boot(LAYOUT, "a-w-1", "dask==2026.8.0\njupyterlab==4.6.6\n", {"NBCLOUD_NO_INDEX": "1"},
                              {"/opt/nbcloud/bin/cluster-worker.py": engine.worker_launcher(LAYOUT, "a-w-1")},
                              engine.worker_units(LAYOUT), "cluster-dask")
    assert "dask==2026.8.0" in boot and "nbcloud-cluster-watchdog.service" in boot and "@@" not in boot
    assert '"threads": 2' in boot and '"worker_port": 8788' in boot
    data = render_worker_user_data(boot, "HOSTKEY-PRIVATE", "ssh-ed25519 AAAA")
    text = gzip.decompress(data).decode()
    assert certs.worker.key_pem.splitlines()[1] not in text  # keys arrive over SSH, never in user-data
    with pytest.raises(UsageError):
        render_worker_user_data(os.urandom(30_000).hex(), "k", "p")  # a freeze too big for EC2's 16 KB


def test_scale_plan_replaces_lost_workers_and_ends_extra_newest_first() -> None:
    workers = [("i-1", "running"), ("i-2", "shutting-down"), ("i-3", "running"), ("i-4", "pending")]
    plan = scale_plan(workers, 3)
    assert plan.launch == 0 and plan.terminate == ("i-2",) and plan.replaced == ("i-2",)
    plan = scale_plan(workers, 1)
    assert plan.launch == 0 and plan.terminate == ("i-2", "i-4", "i-3")
    assert scale_plan([("i-1", "stopped")], 2).launch == 2
    noticed = scale_plan([("i-1", "running"), ("i-2", "notice")], 2)  # a spot notice: replaced before the reclaim
    assert noticed.launch == 1 and noticed.terminate == ("i-2",) and noticed.replaced == ("i-2",)
    with pytest.raises(ValueError):
        scale_plan([], -1)


def test_cluster_price_and_freeze_comparison() -> None:
    assert cluster_hourly(0.05, [0.04, 0.04, None]) == pytest.approx(0.13)
    assert cluster_hourly(None, [None]) is None
    assert freeze_difference("A==1\nb_c==2\n", "b-c==2\nA==1") is None
    assert freeze_difference("a==1\nb==2", "a==1\nb==3\nc==1") == "b 2≠3, extra c"


def test_firewall_admits_group_members_and_cidrs_only() -> None:
    rules = [IngressRule("tcp", 8786, 8786, groups=("sg-c",)), IngressRule("tcp", 22, 22, cidrs=("10.1.0.1/32",)),
             IngressRule("tcp", 8788, 8789, groups=("sg-c",)), IngressRule("-1", groups=("sg-x",))]
    text = render_ingress(rules, {"sg-c": ["10.1.0.3", "10.1.0.2"]}, "10.1.0.1")
    assert "policy drop" in text and "iif lo accept" in text
    assert "ip saddr 10.1.0.2 meta l4proto tcp tcp dport 8786 accept" in text
    assert "ip saddr 10.1.0.3 meta l4proto tcp tcp dport 8788-8789 accept" in text
    assert "sg-x" not in text and text.count("accept") == 8  # lo, established, console, 5 rules (no member of sg-x)
    assert "ip saddr 10.1.0.1 tcp dport 22 accept" in text
