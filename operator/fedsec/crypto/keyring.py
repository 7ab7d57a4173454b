"""A participant's identity keys by key epoch: ``id-<epoch>.crt`` and ``id-<epoch>.key`` in one directory.

The directory is a Secret volume under the operator and a run-directory folder under ``fedsec run``;
both add the next epoch's files and remove old ones while the process runs (a Secret volume is
swapped atomically by kubelet; the launcher writes each file atomically, the key before the
certificate). So the ring reads the directory each time it is asked, and an epoch counts as held
only when both of its files are there. A loaded key is kept: an epoch's key never changes.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Iterable

from fedsec.crypto import pki
from fedsec.crypto.signing import IdentityError, Signer

_CERT = re.compile(r"id-(0|[1-9]\d{0,8})\.crt")  # canonical numbers only: id-02 is not id-2
_KEY = re.compile(r"id-(0|[1-9]\d{0,8})\.key")


def cert_file(epoch: int) -> str:
    return f"id-{epoch}.crt"


def key_file(epoch: int) -> str:
    return f"id-{epoch}.key"


def identity_files(ca: pki.CA, name: str, epoch: int) -> dict[str, bytes]:
    """A fresh identity key for ``name`` at ``epoch``, as the files (or Secret keys) that hold it."""
    m = pki.issue_signing(ca, name, epoch=epoch)
    return {key_file(epoch): m.key_pem, cert_file(epoch): m.cert_pem}


def epochs_in(names: Iterable[str]) -> frozenset[int]:
    """The epochs with both a certificate and a key among ``names`` (file names or Secret keys)."""
    names = list(names)
    certs = {int(m.group(1)) for n in names if (m := _CERT.fullmatch(n))}
    keys = {int(m.group(1)) for n in names if (m := _KEY.fullmatch(n))}
    return frozenset(certs & keys)


class KeyRing:
    """The identity keys of one participant, ``name``, as its key directory holds them now."""

    def __init__(self, directory: Path, name: str | None = None) -> None:
        self.directory = directory
        self.name = name
        self._signers: dict[int, Signer] = {}
        self._lock = threading.Lock()

    def epochs(self) -> frozenset[int]:
        try:
            return epochs_in(p.name for p in self.directory.iterdir())
        except FileNotFoundError:
            return frozenset()

    def signer(self, epoch: int) -> Signer | None:
        """The key of ``epoch``, or None when the directory does not hold it (yet, or any more)."""
        with self._lock:
            hit = self._signers.get(epoch)
            if hit is not None:
                return hit
            try:
                key = (self.directory / key_file(epoch)).read_bytes()
                cert = (self.directory / cert_file(epoch)).read_bytes()
            except FileNotFoundError:
                return None
            s = Signer(key, cert)
            if s.epoch != epoch:
                raise IdentityError(f"{self.directory / cert_file(epoch)} certifies key epoch {s.epoch}, not {epoch}")
            if self.name is not None and s.name != self.name:
                raise IdentityError(f"{self.directory / cert_file(epoch)} is the identity of {s.name!r}, not {self.name!r}")
            self._signers[epoch] = s
            return s

    def require(self, epoch: int) -> Signer:
        s = self.signer(epoch)
        if s is None:
            held = sorted(self.epochs())
            raise IdentityError(
                f"no identity key for key epoch {epoch} in {self.directory} (it holds {held or 'none'}); "
                "under the operator its Secret is rewritten at each rotation: check the operator is running"
            )
        return s

    def forget_below(self, epoch: int) -> None:
        """Drop loaded keys older than ``epoch``: they will never sign again."""
        with self._lock:
            for e in [e for e in self._signers if e < epoch]:
                del self._signers[e]


def stale_epochs(held: frozenset[int], wanted: frozenset[int]) -> frozenset[int]:
    """Held epochs to remove: only those older than every wanted one (a newer key is never taken away)."""
    return frozenset(e for e in held if e < min(wanted)) if wanted else frozenset()


def sync_directory(directory: Path, ca: pki.CA, name: str, wanted: frozenset[int]) -> frozenset[int]:
    """Make ``directory`` hold the identity keys of ``wanted`` epochs (what the operator does to a
    Secret, for ``fedsec run``); returns the epochs issued. Each file is replaced atomically and the
    key is written before its certificate, so a reader never sees half an epoch."""
    held = epochs_in(p.name for p in directory.iterdir()) if directory.exists() else frozenset()
    issued = frozenset(wanted - held)
    for epoch in sorted(issued):
        files = identity_files(ca, name, epoch)
        pki.write_private(directory / key_file(epoch), files[key_file(epoch)])
        pki.write_public(directory / cert_file(epoch), files[cert_file(epoch)])
    for epoch in stale_epochs(held, wanted):
        (directory / cert_file(epoch)).unlink(missing_ok=True)
        (directory / key_file(epoch)).unlink(missing_ok=True)
    return issued
