from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SecAggParams(_message.Message):
    __slots__ = ("participants", "degree", "threshold", "local_threshold", "ring_bits", "frac_bits", "clip_range", "weight_bound", "dimension")
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    DEGREE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    LOCAL_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    RING_BITS_FIELD_NUMBER: _ClassVar[int]
    FRAC_BITS_FIELD_NUMBER: _ClassVar[int]
    CLIP_RANGE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_BOUND_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    participants: int
    degree: int
    threshold: int
    local_threshold: int
    ring_bits: int
    frac_bits: int
    clip_range: float
    weight_bound: float
    dimension: int
    def __init__(self, participants: _Optional[int] = ..., degree: _Optional[int] = ..., threshold: _Optional[int] = ..., local_threshold: _Optional[int] = ..., ring_bits: _Optional[int] = ..., frac_bits: _Optional[int] = ..., clip_range: _Optional[float] = ..., weight_bound: _Optional[float] = ..., dimension: _Optional[int] = ...) -> None: ...

class SecAggAdvertiseRequest(_message.Message):
    __slots__ = ("params",)
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    params: SecAggParams
    def __init__(self, params: _Optional[_Union[SecAggParams, _Mapping]] = ...) -> None: ...

class SecAggKeyAdvert(_message.Message):
    __slots__ = ("cipher_public_key", "mask_public_key", "seed_commitment", "signature", "cert")
    CIPHER_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    MASK_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SEED_COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    CERT_FIELD_NUMBER: _ClassVar[int]
    cipher_public_key: bytes
    mask_public_key: bytes
    seed_commitment: bytes
    signature: bytes
    cert: bytes
    def __init__(self, cipher_public_key: _Optional[bytes] = ..., mask_public_key: _Optional[bytes] = ..., seed_commitment: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., cert: _Optional[bytes] = ...) -> None: ...

class SecAggPeerAdvert(_message.Message):
    __slots__ = ("index", "advert")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ADVERT_FIELD_NUMBER: _ClassVar[int]
    index: int
    advert: SecAggKeyAdvert
    def __init__(self, index: _Optional[int] = ..., advert: _Optional[_Union[SecAggKeyAdvert, _Mapping]] = ...) -> None: ...

class SecAggShareRequest(_message.Message):
    __slots__ = ("peers",)
    PEERS_FIELD_NUMBER: _ClassVar[int]
    peers: _containers.RepeatedCompositeFieldContainer[SecAggPeerAdvert]
    def __init__(self, peers: _Optional[_Iterable[_Union[SecAggPeerAdvert, _Mapping]]] = ...) -> None: ...

class SecAggSealedShares(_message.Message):
    __slots__ = ("peer", "ciphertext")
    PEER_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    peer: int
    ciphertext: bytes
    def __init__(self, peer: _Optional[int] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class SecAggBlame(_message.Message):
    __slots__ = ("peer", "reason")
    PEER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    peer: int
    reason: str
    def __init__(self, peer: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class SecAggShareResponse(_message.Message):
    __slots__ = ("shares", "blamed")
    SHARES_FIELD_NUMBER: _ClassVar[int]
    BLAMED_FIELD_NUMBER: _ClassVar[int]
    shares: _containers.RepeatedCompositeFieldContainer[SecAggSealedShares]
    blamed: _containers.RepeatedCompositeFieldContainer[SecAggBlame]
    def __init__(self, shares: _Optional[_Iterable[_Union[SecAggSealedShares, _Mapping]]] = ..., blamed: _Optional[_Iterable[_Union[SecAggBlame, _Mapping]]] = ...) -> None: ...

class SecAggMaskedInputRequest(_message.Message):
    __slots__ = ("shares",)
    SHARES_FIELD_NUMBER: _ClassVar[int]
    shares: _containers.RepeatedCompositeFieldContainer[SecAggSealedShares]
    def __init__(self, shares: _Optional[_Iterable[_Union[SecAggSealedShares, _Mapping]]] = ...) -> None: ...

class SecAggMaskedInputResponse(_message.Message):
    __slots__ = ("masked", "blamed")
    MASKED_FIELD_NUMBER: _ClassVar[int]
    BLAMED_FIELD_NUMBER: _ClassVar[int]
    masked: bytes
    blamed: _containers.RepeatedCompositeFieldContainer[SecAggBlame]
    def __init__(self, masked: _Optional[bytes] = ..., blamed: _Optional[_Iterable[_Union[SecAggBlame, _Mapping]]] = ...) -> None: ...

class SecAggConsistencyRequest(_message.Message):
    __slots__ = ("survivors",)
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    survivors: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, survivors: _Optional[_Iterable[int]] = ...) -> None: ...

class SecAggConfirmation(_message.Message):
    __slots__ = ("peer", "mac")
    PEER_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    peer: int
    mac: bytes
    def __init__(self, peer: _Optional[int] = ..., mac: _Optional[bytes] = ...) -> None: ...

class SecAggConsistencyResponse(_message.Message):
    __slots__ = ("confirmations",)
    CONFIRMATIONS_FIELD_NUMBER: _ClassVar[int]
    confirmations: _containers.RepeatedCompositeFieldContainer[SecAggConfirmation]
    def __init__(self, confirmations: _Optional[_Iterable[_Union[SecAggConfirmation, _Mapping]]] = ...) -> None: ...

class SecAggUnmaskRequest(_message.Message):
    __slots__ = ("survivors", "dropped", "confirmations")
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    CONFIRMATIONS_FIELD_NUMBER: _ClassVar[int]
    survivors: _containers.RepeatedScalarFieldContainer[int]
    dropped: _containers.RepeatedScalarFieldContainer[int]
    confirmations: _containers.RepeatedCompositeFieldContainer[SecAggConfirmation]
    def __init__(self, survivors: _Optional[_Iterable[int]] = ..., dropped: _Optional[_Iterable[int]] = ..., confirmations: _Optional[_Iterable[_Union[SecAggConfirmation, _Mapping]]] = ...) -> None: ...

class SecAggRevealedShare(_message.Message):
    __slots__ = ("owner", "share")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    owner: int
    share: bytes
    def __init__(self, owner: _Optional[int] = ..., share: _Optional[bytes] = ...) -> None: ...

class SecAggUnmaskResponse(_message.Message):
    __slots__ = ("seed_shares", "mask_key_shares")
    SEED_SHARES_FIELD_NUMBER: _ClassVar[int]
    MASK_KEY_SHARES_FIELD_NUMBER: _ClassVar[int]
    seed_shares: _containers.RepeatedCompositeFieldContainer[SecAggRevealedShare]
    mask_key_shares: _containers.RepeatedCompositeFieldContainer[SecAggRevealedShare]
    def __init__(self, seed_shares: _Optional[_Iterable[_Union[SecAggRevealedShare, _Mapping]]] = ..., mask_key_shares: _Optional[_Iterable[_Union[SecAggRevealedShare, _Mapping]]] = ...) -> None: ...
