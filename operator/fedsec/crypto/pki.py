"""The job's public-key infrastructure: one CA, TLS certificates and message-signing certificates.

Each participant holds two keys with two purposes, never mixed:
- a TLS key (ECDSA P-256) whose certificate authenticates the mTLS channel;
- an identity key (Ed25519) whose certificate binds the participant's name to the signatures on
  every envelope it sends. Its name is the certificate's common name; its key epoch is the
  certificate's ``fedsec-epoch`` organizational unit, so a rotated key names its own epoch.

Everything here uses ``cryptography``; nothing is hand-rolled. Private keys are written with
mode 0600 and never logged.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedsec.storage.atomic import write_bytes_atomic

AGGREGATOR = "aggregator"
OPERATOR = "fedsec-operator"  # the operator's admin-API client certificate; never a site name
_EPOCH_PREFIX = "fedsec-epoch-"
_VALIDITY = dt.timedelta(days=30)


@dataclass(frozen=True)
class Material:
    """PEM-encoded key and certificate of one participant for one purpose."""

    key_pem: bytes
    cert_pem: bytes


@dataclass(frozen=True)
class CA:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def _name(cn: str, epoch: int | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedsec"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if epoch is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"{_EPOCH_PREFIX}{epoch}"))
    return x509.Name(attrs)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)  # tolerate small clock skew


def new_ca(job_name: str) -> CA:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(f"fedsec job CA {job_name}")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now())
        .not_valid_after(_now() + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    return CA(key, cert)


def load_ca(key_pem: bytes, cert_pem: bytes) -> CA:
    """The job CA from its PEM files (the operator keeps them in the job's CA Secret)."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the job CA key is not an ECDSA key")
    cert = x509.load_pem_x509_certificate(cert_pem)
    if cert.public_key().public_numbers() != key.public_key().public_numbers():
        raise ValueError("the job CA certificate does not belong to the CA key")
    return CA(key, cert)


def ca_key_pem(ca: CA) -> bytes:
    return _pem_key(ca.key)


def _pem_key(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def issue_tls(ca: CA, name: str, hosts: list[str]) -> Material:
    """A TLS certificate for ``name`` valid for both server and client auth, with SANs ``hosts``."""
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(name)]
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now())
        .not_valid_after(_now() + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    return Material(_pem_key(key), cert.public_bytes(serialization.Encoding.PEM))


def issue_signing(ca: CA, name: str, epoch: int) -> Material:
    """An Ed25519 identity key for envelope signatures, certified for ``name`` at key ``epoch``."""
    key = ed25519.Ed25519PrivateKey.generate()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name, epoch))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now())
        .not_valid_after(_now() + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
        .sign(ca.key, hashes.SHA256())
    )
    return Material(_pem_key(key), cert.public_bytes(serialization.Encoding.PEM))


def cert_common_name(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def cert_epoch(cert: x509.Certificate) -> int | None:
    for attr in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME):
        value = str(attr.value)
        if value.startswith(_EPOCH_PREFIX) and value[len(_EPOCH_PREFIX):].isdigit():
            return int(value[len(_EPOCH_PREFIX):])
    return None


def write_private(path: Path, data: bytes) -> None:
    """Write key material readable by its owner only, atomically."""
    write_bytes_atomic(path, data, mode=0o600)


def write_public(path: Path, data: bytes) -> None:
    write_bytes_atomic(path, data, mode=0o644)
