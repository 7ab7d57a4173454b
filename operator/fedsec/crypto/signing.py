"""Envelope signatures: Ed25519 identity keys certified by the job CA.

A verifier trusts exactly one thing, the job CA certificate. A signer's certificate travels with
each envelope; it is accepted when the CA signed it, it is an Ed25519 identity certificate within
its validity period, and its common name is the sender the envelope claims. Verified certificates
are cached by their DER bytes so a busy aggregator checks each one once.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from fedsec.crypto.pki import cert_common_name, cert_epoch


class IdentityError(ValueError):
    """A certificate or signature does not establish who sent a message."""


@dataclass(frozen=True)
class Identity:
    """Who a verified certificate names."""

    name: str
    epoch: int
    public_key: ed25519.Ed25519PublicKey
    not_before: dt.datetime
    not_after: dt.datetime


def _check_window(not_before: dt.datetime, not_after: dt.datetime) -> None:
    if not not_before <= dt.datetime.now(dt.timezone.utc) <= not_after:
        raise IdentityError("signer certificate is outside its validity period")


class Signer:
    """Holds this participant's identity key. The key never leaves this object."""

    def __init__(self, key_pem: bytes, cert_pem: bytes) -> None:
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise IdentityError("identity key must be Ed25519")
        self._key = key
        cert = x509.load_pem_x509_certificate(cert_pem)
        self.cert_der = cert.public_bytes(serialization.Encoding.DER)
        self.name = cert_common_name(cert)
        epoch = cert_epoch(cert)
        if epoch is None:
            raise IdentityError(f"identity certificate of {self.name!r} names no key epoch")
        self.epoch = epoch

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def __repr__(self) -> str:  # never show key material
        return f"Signer(name={self.name!r}, epoch={self.epoch})"


class Verifier:
    """Checks identity certificates against the job CA and signatures against them."""

    def __init__(self, ca_cert_pem: bytes) -> None:
        self._ca = x509.load_pem_x509_certificate(ca_cert_pem)
        ca_key = self._ca.public_key()
        if not isinstance(ca_key, ec.EllipticCurvePublicKey):
            raise IdentityError("job CA key must be ECDSA")
        self._cache: dict[bytes, Identity] = {}
        self._lock = threading.Lock()

    def identity(self, cert_der: bytes) -> Identity:
        with self._lock:
            hit = self._cache.get(cert_der)
        if hit is not None:
            _check_window(hit.not_before, hit.not_after)
            return hit
        try:
            cert = x509.load_der_x509_certificate(cert_der)
        except ValueError:
            raise IdentityError("signer certificate is not valid DER") from None
        try:
            cert.verify_directly_issued_by(self._ca)
        except (ValueError, TypeError, InvalidSignature):
            raise IdentityError("signer certificate was not issued by the job CA") from None
        _check_window(cert.not_valid_before_utc, cert.not_valid_after_utc)
        key = cert.public_key()
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise IdentityError("signer certificate does not hold an Ed25519 identity key")
        epoch = cert_epoch(cert)
        if epoch is None:
            raise IdentityError("signer certificate names no key epoch")
        ident = Identity(
            cert_common_name(cert), epoch, key, cert.not_valid_before_utc, cert.not_valid_after_utc
        )
        with self._lock:
            if len(self._cache) > 10_000:  # bounded: certificates are few, garbage is not
                self._cache.clear()
            self._cache[cert_der] = ident
        return ident

    def verify(self, cert_der: bytes, data: bytes, signature: bytes) -> Identity:
        ident = self.identity(cert_der)
        try:
            ident.public_key.verify(signature, data)
        except InvalidSignature:
            raise IdentityError(f"signature does not verify for {ident.name!r}") from None
        return ident

    def verify_peer(self, peer_id: str, cert_der: bytes, data: bytes, signature: bytes) -> bool:
        """Boolean form for protocol code (``PeerIdentity.verify``): never raises on bad input."""
        try:
            return self.verify(cert_der, data, signature).name == peer_id
        except IdentityError:
            return False
