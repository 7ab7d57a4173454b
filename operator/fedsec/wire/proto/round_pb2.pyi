from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Header(_message.Message):
    __slots__ = ("job_uid", "round_id", "phase", "key_epoch", "sender", "nonce", "issued_at_ms", "recipient", "body_type", "body_sha256", "in_reply_to")
    JOB_UID_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    KEY_EPOCH_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    BODY_TYPE_FIELD_NUMBER: _ClassVar[int]
    BODY_SHA256_FIELD_NUMBER: _ClassVar[int]
    IN_REPLY_TO_FIELD_NUMBER: _ClassVar[int]
    job_uid: str
    round_id: int
    phase: str
    key_epoch: int
    sender: str
    nonce: bytes
    issued_at_ms: int
    recipient: str
    body_type: str
    body_sha256: bytes
    in_reply_to: bytes
    def __init__(self, job_uid: _Optional[str] = ..., round_id: _Optional[int] = ..., phase: _Optional[str] = ..., key_epoch: _Optional[int] = ..., sender: _Optional[str] = ..., nonce: _Optional[bytes] = ..., issued_at_ms: _Optional[int] = ..., recipient: _Optional[str] = ..., body_type: _Optional[str] = ..., body_sha256: _Optional[bytes] = ..., in_reply_to: _Optional[bytes] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("header", "body", "signature", "signer_cert")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SIGNER_CERT_FIELD_NUMBER: _ClassVar[int]
    header: bytes
    body: bytes
    signature: bytes
    signer_cert: bytes
    def __init__(self, header: _Optional[bytes] = ..., body: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., signer_cert: _Optional[bytes] = ...) -> None: ...

class Join(_message.Message):
    __slots__ = ("client_version", "num_samples")
    CLIENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    client_version: str
    num_samples: int
    def __init__(self, client_version: _Optional[str] = ..., num_samples: _Optional[int] = ...) -> None: ...

class Poll(_message.Message):
    __slots__ = ("last_round_id", "num_samples")
    LAST_ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    last_round_id: int
    num_samples: int
    def __init__(self, last_round_id: _Optional[int] = ..., num_samples: _Optional[int] = ...) -> None: ...

class Wait(_message.Message):
    __slots__ = ("reason", "retry_after_ms")
    REASON_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    reason: str
    retry_after_ms: int
    def __init__(self, reason: _Optional[str] = ..., retry_after_ms: _Optional[int] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("round_id", "round_number", "kind", "phase", "model", "request", "round_seed", "participants", "min_survivors", "model_version")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_NUMBER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    ROUND_SEED_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    MIN_SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    round_id: int
    round_number: int
    kind: str
    phase: str
    model: bytes
    request: bytes
    round_seed: bytes
    participants: _containers.RepeatedScalarFieldContainer[str]
    min_survivors: int
    model_version: int
    def __init__(self, round_id: _Optional[int] = ..., round_number: _Optional[int] = ..., kind: _Optional[str] = ..., phase: _Optional[str] = ..., model: _Optional[bytes] = ..., request: _Optional[bytes] = ..., round_seed: _Optional[bytes] = ..., participants: _Optional[_Iterable[str]] = ..., min_survivors: _Optional[int] = ..., model_version: _Optional[int] = ...) -> None: ...

class Done(_message.Message):
    __slots__ = ("status", "reason")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    status: str
    reason: str
    def __init__(self, status: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class Reply(_message.Message):
    __slots__ = ("wait", "task", "done")
    WAIT_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    wait: Wait
    task: Task
    done: Done
    def __init__(self, wait: _Optional[_Union[Wait, _Mapping]] = ..., task: _Optional[_Union[Task, _Mapping]] = ..., done: _Optional[_Union[Done, _Mapping]] = ...) -> None: ...

class Contribution(_message.Message):
    __slots__ = ("response", "metrics", "withdraw")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    WITHDRAW_FIELD_NUMBER: _ClassVar[int]
    response: bytes
    metrics: _containers.ScalarMap[str, float]
    withdraw: bool
    def __init__(self, response: _Optional[bytes] = ..., metrics: _Optional[_Mapping[str, float]] = ..., withdraw: _Optional[bool] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("accepted", "reason", "detail")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    reason: str
    detail: str
    def __init__(self, accepted: _Optional[bool] = ..., reason: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class PlainUpdate(_message.Message):
    __slots__ = ("delta", "weight")
    DELTA_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    delta: bytes
    weight: float
    def __init__(self, delta: _Optional[bytes] = ..., weight: _Optional[float] = ...) -> None: ...
