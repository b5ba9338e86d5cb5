"""Pure parts of the sandbox: user-data parsing, unit files, address allocation, IMDS lookups."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from nbcloud.sandbox.hosts import AddressPool, prefix_for_subnet
from nbcloud.sandbox.imds import MetadataSource
from nbcloud.sandbox.units import boot_order, parse_env_file, parse_timespan, parse_unit
from nbcloud.sandbox.userdata import parse_user_data

KEYS = {"ed25519_private": "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n-----END OPENSSH PRIVATE KEY-----\n",
        "ed25519_public": "ssh-ed25519 AAAA host"}


def _mime(*parts: tuple[str, str]) -> str:
    body = 'Content-Type: multipart/mixed; boundary="XX"\nMIME-Version: 1.0\n\n'
    for ctype, payload in parts:
        body += f'--XX\nContent-Type: {ctype}; charset="us-ascii"\n\n{payload}\n'
    return body + "--XX--\n"


def test_plain_script_and_empty() -> None:
    assert parse_user_data(None).scripts == []
    assert parse_user_data(b"   ").scripts == []
    ud = parse_user_data("#!/bin/bash\necho hi\n")
    assert [c for _, c in ud.scripts] == [b"#!/bin/bash\necho hi\n"]


@pytest.mark.parametrize("as_json", [True, False])
def test_multipart_cloud_config_yaml_or_json_and_script(as_json: bool) -> None:
    if as_json:
        config = "#cloud-config\n" + json.dumps({"ssh_keys": KEYS, "ssh_deletekeys": True})
    else:
        config = "#cloud-config\nssh_deletekeys: false\nssh_keys:\n  ed25519_private: |\n    -----BEGIN x\n" \
                 "  ed25519_public: ssh-ed25519 AAAA host\n"
    ud = parse_user_data(_mime(("text/cloud-config", config), ("text/x-shellscript", "#!/bin/sh\ntrue")))
    assert list(ud.host_keys) == ["ed25519"]
    assert ud.host_keys["ed25519"][1] == "ssh-ed25519 AAAA host"
    assert ud.delete_keys is as_json
    assert len(ud.scripts) == 1 and ud.scripts[0][1].startswith(b"#!/bin/sh")


def test_gzip_user_data() -> None:
    raw = gzip.compress(_mime(("text/x-shellscript", "#!/bin/sh\necho a")).encode())
    assert parse_user_data(raw).scripts[0][1].rstrip() == b"#!/bin/sh\necho a"


def test_bad_cloud_config_is_an_error() -> None:
    with pytest.raises(ValueError):
        parse_user_data("#cloud-config\n- just\n- a list\n")


def test_unit_file_parsing() -> None:
    unit = parse_unit("jupyter.service", """
[Unit]
After=network-online.target nbcloud-setup.service
Wants=network-online.target
[Service]
Type=simple
User=ubuntu
Group=ubuntu
WorkingDirectory=/home/ubuntu
Environment="A=one two" B=2
Environment=C='three'
EnvironmentFile=-/etc/nbcloud/env
ExecStartPre=/bin/mkdir -p /run/x
ExecStart=/opt/venv/bin/jupyter lab \\
    --no-browser
Restart=on-failure
RestartSec=2
StandardOutput=append:/var/log/j.log
StandardError=inherit
""")
    assert unit.environment == {"A": "one two", "B": "2", "C": "three"}
    assert unit.environment_files == ["-/etc/nbcloud/env"]
    assert unit.exec_start == [["/opt/venv/bin/jupyter", "lab", "--no-browser"]]
    assert unit.exec_start_pre == [["/bin/mkdir", "-p", "/run/x"]]
    assert (unit.restart, unit.restart_sec, unit.user, unit.group) == ("on-failure", 2.0, "ubuntu", "ubuntu")
    assert unit.stdout == "append:/var/log/j.log" and unit.stderr == "inherit"
    assert "nbcloud-setup.service" in unit.after
    assert parse_unit("x.service", "[Service]\nExecStart=/bin/true\n").restart_sec == 0.1
    with pytest.raises(ValueError):
        parse_unit("x.service", "[Service]\nType=simple\n")


def test_timespans_env_files_and_boot_order() -> None:
    assert parse_timespan("500ms") == 0.5 and parse_timespan("1min 30s") == 90 and parse_timespan("2") == 2
    assert parse_env_file("# c\nexport A=1\nB='x y'\n\nC=\"z\"\n") == {"A": "1", "B": "x y", "C": "z"}
    units = {n: parse_unit(n, f"[Unit]\nAfter={a}\n[Service]\nExecStart=/bin/true\n")
             for n, a in (("a.service", "b.service"), ("b.service", "c.service"), ("c.service", ""))}
    assert boot_order(units) == ["c.service", "b.service", "a.service"]


def test_address_pool_skips_reserved_and_gives_new_addresses() -> None:
    pool = AddressPool("10.201.0.0/16")
    assert pool.caller_ip == "10.201.0.1"
    first, second = pool.allocate(), pool.allocate()
    assert (first, second) == ("10.201.0.2", "10.201.0.3")
    pool.release(first)
    assert pool.allocate() == "10.201.0.4"  # a started instance gets a new address
    small = AddressPool("10.9.9.0/28")
    got = {small.allocate() for _ in range(13)}
    assert "10.9.9.0" not in got and "10.9.9.1" not in got and "10.9.9.15" not in got
    with pytest.raises(RuntimeError):
        small.allocate()
    assert prefix_for_subnet("10.201.0.0/16") != prefix_for_subnet("10.200.0.0/16")
    with pytest.raises(ValueError):
        AddressPool("10.0.0.0/30")


def test_private_and_public_addresses_come_from_the_two_halves_of_the_subnet() -> None:
    private, public = AddressPool("10.9.9.0/28", "private"), AddressPool("10.9.9.0/28", "public")
    privates = {private.allocate() for _ in range(6)}
    publics = {public.allocate() for _ in range(6)}
    assert privates == {f"10.9.9.{n}" for n in range(2, 8)}  # never the network (0) nor the caller (1)
    assert publics == {f"10.9.9.{n}" for n in range(9, 15)}  # never the broadcast (15)
    with pytest.raises(RuntimeError):
        private.allocate()
    public.release("10.9.9.9")
    assert public.allocate() == "10.9.9.9"


def test_imds_lookup(tmp_path: Path) -> None:
    boot = {"instance_id": "i-1", "instance_type": "t3.micro", "ami_id": "ami-1", "address": "10.201.0.2",
            "hostname": "ip-10-201-0-2", "availability_zone": "us-east-1a", "region": "us-east-1",
            "lifecycle": "spot"}
    (tmp_path / "boot.json").write_text(json.dumps(boot))
    src = MetadataSource(tmp_path)
    assert src.lookup("/latest/meta-data/instance-id") == (200, "i-1")
    assert src.lookup("/latest/meta-data/placement/region") == (200, "us-east-1")
    assert src.lookup("/latest/meta-data/local-ipv4") == (200, "10.201.0.2")
    assert src.lookup("/latest/meta-data/public-ipv4") == (200, "10.201.0.2")  # a boot.json of one address
    (tmp_path / "boot.json").write_text(json.dumps({**boot, "public_address": "10.201.128.7"}))
    assert src.lookup("/latest/meta-data/public-ipv4") == (200, "10.201.128.7")
    assert src.lookup("/latest/meta-data/local-ipv4") == (200, "10.201.0.2")
    (tmp_path / "boot.json").write_text(json.dumps({**boot, "public_address": None}))
    assert src.lookup("/latest/meta-data/public-ipv4")[0] == 404  # no public address: not listed, as on EC2
    assert src.lookup("/latest/meta-data/instance-life-cycle") == (200, "spot")
    assert src.lookup("/latest/meta-data/spot/instance-action")[0] == 404
    (tmp_path / "spot-action.json").write_text('{"action": "terminate"}')
    assert src.lookup("/latest/meta-data/spot/instance-action")[0] == 200
    assert src.lookup("/latest/user-data")[0] == 404


def test_without_root_the_sandbox_falls_back_to_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    from nbcloud.sandbox import client

    monkeypatch.delenv("NBCLOUD_SANDBOX_MODE", raising=False)
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert client.select_mode() == ("loopback", "not root")
    monkeypatch.setenv("NBCLOUD_SANDBOX_MODE", "loopback")
    monkeypatch.setattr("os.geteuid", lambda: 0)
    assert client.select_mode() == ("loopback", "NBCLOUD_SANDBOX_MODE=loopback")


def test_forcing_netns_without_root_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from nbcloud.errors import SandboxError
    from nbcloud.sandbox import client

    monkeypatch.setenv("NBCLOUD_SANDBOX_MODE", "netns")
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(SandboxError, match="needs root") as raised:
        client.start(tmp_path / "sbx")
    assert raised.value.exit_code == 2
    assert not (tmp_path / "sbx").exists()


def test_loopback_subnets_mirror_the_netns_ones() -> None:
    from nbcloud.sandbox.loopback import loopback_subnet

    assert loopback_subnet("10.240.0.0/16") == "127.240.0.0/16"
    assert loopback_subnet("127.71.0.0/16") == "127.71.0.0/16"
    assert loopback_subnet("192.168.5.0/24") == "127.168.5.0/24"


def test_unix_sockets_at_paths_longer_than_af_unix_allows(tmp_path: Path) -> None:
    """pytest's xdist directories make a sandbox's socket paths exceed 107 bytes; bind and connect still work."""
    import socket

    from nbcloud.sandbox.unixsock import unix_address

    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = deep / "init.sock"
    assert len(str(path)) > 108
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        with unix_address(path) as address:
            server.bind(address)
        server.listen(1)
        assert path.exists()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client, unix_address(path) as address:
            client.connect(address)
            peer, _ = server.accept()
            client.sendall(b"ok")
            assert peer.recv(2) == b"ok"
            peer.close()


def test_imds_serves_user_data_bytes_unchanged_in_every_api_version(tmp_path: Path) -> None:
    import gzip

    boot = {"instance_id": "i-1", "instance_type": "t3.micro", "ami_id": "ami-1", "address": "10.201.0.2",
            "hostname": "ip-10-201-0-2", "availability_zone": "us-east-1a", "region": "us-east-1"}
    (tmp_path / "boot.json").write_text(json.dumps(boot))
    raw = gzip.compress(b"Content-Type: multipart/mixed\n\n\x8b\xff binary", mtime=0)
    (tmp_path / "user-data").write_bytes(raw)
    (tmp_path / "public-key").write_text("ssh-ed25519 AAAA key\n")
    src = MetadataSource(tmp_path)
    for version in ("latest", "2021-03-23", "2009-04-04"):
        assert src.lookup(f"/{version}/user-data") == (200, raw)
    assert src.lookup("/2021-03-23/meta-data/instance-id") == (200, "i-1")
    assert "public-keys/" in str(src.lookup("/latest/meta-data/")[1]).split("\n")
    assert src.lookup("/latest/meta-data/public-keys/0/openssh-key") == (200, "ssh-ed25519 AAAA key")
    document = json.loads(src.lookup("/2021-03-23/dynamic/instance-identity/document")[1])
    assert document["instanceId"] == "i-1" and document["region"] == "us-east-1"
    assert "spot/" not in str(src.lookup("/latest/meta-data/")[1])  # listed only while a notice exists


def test_os_image_mirror_is_the_one_apt_uses(tmp_path: Path) -> None:
    from nbcloud.sandbox.osimage import find_mirror

    deb822 = tmp_path / "debian.sources"
    deb822.write_text("Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
                      "Components: main\n\nTypes: deb\nURIs: http://sec.example/debian-security\n"
                      "Suites: bookworm-security\n")
    assert find_mirror([tmp_path / "missing.list", deb822]) == "http://mirror.example/debian"
    one_line = tmp_path / "sources.list"
    one_line.write_text("# comment\ndeb [arch=amd64] http://other.example/debian bookworm main\n")
    assert find_mirror([one_line]) == "http://other.example/debian"


def test_dhcp_offers_then_acks_the_instance_address_as_a_host_route() -> None:
    from nbcloud.sandbox.dhcp import MAGIC, reply

    def request(kind: int) -> bytes:
        head = bytearray(236)
        head[0], head[1], head[2] = 1, 1, 6
        head[4:8] = b"\x12\x34\x56\x78"  # xid
        head[28:34] = b"\x02\x00\x00\x00\x00\x01"  # chaddr
        return bytes(head) + MAGIC + bytes([53, 1, kind, 255])

    offer = reply(request(1), "10.201.0.2", "10.201.0.1")
    ack = reply(request(3), "10.201.0.2", "10.201.0.1")
    assert offer is not None and ack is not None
    assert offer[0] == 2 and offer[4:8] == b"\x12\x34\x56\x78" and offer[28:34] == b"\x02\x00\x00\x00\x00\x01"
    assert offer[16:20] == bytes([10, 201, 0, 2])
    assert bytes([53, 1, 2]) in offer[240:] and bytes([53, 1, 5]) in ack[240:]
    assert bytes([1, 4, 255, 255, 255, 255]) in ack[240:] and bytes([3, 4, 10, 201, 0, 1]) in ack[240:]
    assert reply(request(7), "10.201.0.2", "10.201.0.1") is None  # a RELEASE gets no answer
    assert reply(b"junk", "10.201.0.2", "10.201.0.1") is None
