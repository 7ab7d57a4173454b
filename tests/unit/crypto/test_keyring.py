"""Identity keys by epoch in a directory that changes under the process."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsec.crypto import keyring, pki
from fedsec.crypto.signing import IdentityError

CA = pki.new_ca("ring")


def write(d: Path, name: str, epoch: int, as_epoch: int | None = None) -> None:
    files = keyring.identity_files(CA, name, epoch)
    d.mkdir(parents=True, exist_ok=True)
    target = epoch if as_epoch is None else as_epoch
    (d / keyring.key_file(target)).write_bytes(files[keyring.key_file(epoch)])
    (d / keyring.cert_file(target)).write_bytes(files[keyring.cert_file(epoch)])


def test_epochs_need_both_files_and_ignore_other_names() -> None:
    names = ["id-0.crt", "id-0.key", "id-1.crt", "..data", "tls.key", "id-x.crt", "id-2.key", "id-02.crt", "id-3.crt.tmp"]
    assert keyring.epochs_in(names) == {0}


def test_the_ring_sees_keys_added_and_removed_while_it_lives(tmp_path: Path) -> None:
    ring = keyring.KeyRing(tmp_path / "keys", "site-0")
    assert ring.epochs() == set() and ring.signer(0) is None
    write(tmp_path / "keys", "site-0", 0)
    s0 = ring.require(0)
    assert (s0.name, s0.epoch) == ("site-0", 0)
    write(tmp_path / "keys", "site-0", 1)
    assert ring.epochs() == {0, 1} and ring.require(1).epoch == 1
    assert ring.signer(0) is s0  # loaded once
    (tmp_path / "keys" / "id-0.crt").unlink()
    assert ring.epochs() == {1}
    ring.forget_below(1)
    (tmp_path / "keys" / "id-0.key").unlink()
    assert ring.signer(0) is None


def test_the_ring_refuses_a_key_under_the_wrong_name_or_epoch(tmp_path: Path) -> None:
    write(tmp_path, "site-1", 0)
    with pytest.raises(IdentityError, match="identity of 'site-1', not 'site-0'"):
        keyring.KeyRing(tmp_path, "site-0").signer(0)
    write(tmp_path, "site-0", 2, as_epoch=3)
    with pytest.raises(IdentityError, match="certifies key epoch 2, not 3"):
        keyring.KeyRing(tmp_path, "site-0").signer(3)


def test_require_says_what_is_held_and_what_to_check(tmp_path: Path) -> None:
    write(tmp_path, "aggregator", 4)
    with pytest.raises(IdentityError, match=r"no identity key for key epoch 5 .* holds \[4\].*operator is running"):
        keyring.KeyRing(tmp_path, "aggregator").require(5)


def test_sync_directory_issues_missing_epochs_and_retires_only_older_ones(tmp_path: Path) -> None:
    d = tmp_path / "site"
    assert keyring.sync_directory(d, CA, "site-0", frozenset({0, 1})) == {0, 1}
    assert keyring.sync_directory(d, CA, "site-0", frozenset({0, 1})) == set()  # nothing to do
    first = (d / "id-1.crt").read_bytes()
    assert keyring.sync_directory(d, CA, "site-0", frozenset({1, 2})) == {2}
    assert keyring.KeyRing(d, "site-0").epochs() == {1, 2}
    assert (d / "id-1.crt").read_bytes() == first  # a held epoch is never re-issued
    write(d, "site-0", 9)
    keyring.sync_directory(d, CA, "site-0", frozenset({2, 3}))
    assert keyring.KeyRing(d).epochs() == {2, 3, 9}  # a newer key is never taken away
    assert oct((d / "id-3.key").stat().st_mode & 0o777) == "0o600"


def test_stale_epochs() -> None:
    assert keyring.stale_epochs(frozenset({0, 1, 2, 5}), frozenset({2, 3})) == {0, 1}
    assert keyring.stale_epochs(frozenset({0}), frozenset()) == set()
