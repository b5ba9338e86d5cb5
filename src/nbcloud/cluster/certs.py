"""A certificate authority per cluster and the certificates its members present (pure: no I/O).

Made on the user's machine with ``cryptography``. The CA's key never leaves it; the scheduler's, the workers' and
the notebook client's certificates and keys travel only over the pinned SSH session. Dask checks the peer's
certificate against the CA (not the host name: members' addresses change), so one worker certificate serves every
worker of the cluster.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

__all__ = ["ClusterCerts", "Identity", "make_cluster_certs", "sign_identity"]

VALID_DAYS = 365


@dataclass(frozen=True)
class Identity:
    cert_pem: str
    key_pem: str


@dataclass(frozen=True)
class ClusterCerts:
    ca_cert_pem: str
    ca_key_pem: str  # stays on the user's machine
    scheduler: Identity
    worker: Identity
    client: Identity


def _key():  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> str:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _name(text: str):  # type: ignore[no-untyped-def]
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _ca(cluster: str, now: dt.datetime) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    key = _key()
    name = _name(f"nbcloud cluster {cluster} CA")
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .sign(key, hashes.SHA256()))
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM).decode(), _pem_key(key)


def sign_identity(ca_cert_pem: str, ca_key_pem: str, common_name: str,
                  now: dt.datetime | None = None) -> Identity:
    """A leaf certificate for a cluster member, usable as TLS server and client (Dask peers are both)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    now = now or dt.datetime.now(dt.UTC)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem.encode())
    ca_key = serialization.load_pem_private_key(ca_key_pem.encode(), password=None)
    key = _key()
    cert = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    return Identity(cert.public_bytes(serialization.Encoding.PEM).decode(), _pem_key(key))


def make_cluster_certs(cluster: str, now: dt.datetime | None = None) -> ClusterCerts:
    now = now or dt.datetime.now(dt.UTC)
    ca_cert, ca_key = _ca(cluster, now)
    return ClusterCerts(
        ca_cert, ca_key,
        scheduler=sign_identity(ca_cert, ca_key, f"{cluster} scheduler", now),
        worker=sign_identity(ca_cert, ca_key, f"{cluster} worker", now),
        client=sign_identity(ca_cert, ca_key, f"{cluster} client", now),
    )
