import pytest

from fedsec.crypto.secagg import aead, keys

B = keys.RoundBinding("job", 3)


def test_agreement_is_symmetric_and_purpose_bound():
    a, b = keys.KeyPair(), keys.KeyPair()
    info = keys.pair_info(b"pairwise-mask", B, 4, 9)
    assert info == keys.pair_info(b"pairwise-mask", B, 9, 4)
    assert a.agree(b.public, info) == b.agree(a.public, info)
    assert a.agree(b.public, info) != a.agree(b.public, keys.pair_info(b"share-key", B, 4, 9))
    assert a.agree(b.public, info) != a.agree(b.public, keys.pair_info(b"pairwise-mask", keys.RoundBinding("job", 4), 4, 9))


def test_private_key_round_trips_through_its_raw_bytes():
    a = keys.KeyPair()
    assert keys.public_of(a.private_bytes()) == a.public
    assert "private" in repr(a) and a.private_bytes().hex() not in repr(a)


@pytest.mark.parametrize("peer", [b"\x00" * 31, b"\x00" * 32])
def test_malformed_or_low_order_peer_keys_are_refused(peer: bytes) -> None:
    with pytest.raises(ValueError):
        keys.KeyPair().agree(peer, b"x")


def test_advert_encoding_is_unambiguous():
    c = keys.seed_commitment(B, 1, b"\x00" * 32)
    m1 = keys.advert_message(B, "ab", b"c" * 32, b"d" * 32, c)
    m2 = keys.advert_message(B, "a", b"bc" * 16, b"d" * 32, c)
    assert m1 != m2
    assert keys.advert_message(keys.RoundBinding("job", 4), "ab", b"c" * 32, b"d" * 32, c) != m1


def test_commitment_binds_seed_and_owner():
    seed = b"\x05" * 32
    c = keys.seed_commitment(B, 2, seed)
    assert keys.commitment_matches(c, B, 2, seed)
    assert not keys.commitment_matches(c, B, 3, seed)
    assert not keys.commitment_matches(c, B, 2, b"\x06" * 32)


def test_sealed_shares_open_only_for_their_round_sender_and_recipient():
    key = b"\x11" * 32
    ct = aead.seal(key, B, 1, 2, b"shares")
    assert aead.open_(key, B, 1, 2, ct) == b"shares"
    for binding, s, r in [(B, 2, 1), (B, 1, 3), (keys.RoundBinding("job", 4), 1, 2), (keys.RoundBinding("other", 3), 1, 2)]:
        with pytest.raises(aead.DecryptionError):
            aead.open_(key, binding, s, r, ct)
    tampered = ct[:-1] + bytes([ct[-1] ^ 1])
    with pytest.raises(aead.DecryptionError):
        aead.open_(key, B, 1, 2, tampered)
    with pytest.raises(aead.DecryptionError, match="shorter"):
        aead.open_(key, B, 1, 2, ct[:10])
