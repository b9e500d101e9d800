from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CacheGetRequest(_message.Message):
    __slots__ = ("namespace", "key", "fingerprint")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    key: str
    fingerprint: bytes
    def __init__(self, namespace: _Optional[str] = ..., key: _Optional[str] = ..., fingerprint: _Optional[bytes] = ...) -> None: ...

class CacheGetResponse(_message.Message):
    __slots__ = ("result", "value")
    class Result(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        RESULT_UNSPECIFIED: _ClassVar[CacheGetResponse.Result]
        HIT: _ClassVar[CacheGetResponse.Result]
        MISS: _ClassVar[CacheGetResponse.Result]
        STALE: _ClassVar[CacheGetResponse.Result]
    RESULT_UNSPECIFIED: CacheGetResponse.Result
    HIT: CacheGetResponse.Result
    MISS: CacheGetResponse.Result
    STALE: CacheGetResponse.Result
    RESULT_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    result: CacheGetResponse.Result
    value: bytes
    def __init__(self, result: _Optional[_Union[CacheGetResponse.Result, str]] = ..., value: _Optional[bytes] = ...) -> None: ...

class CachePutRequest(_message.Message):
    __slots__ = ("namespace", "key", "value", "fingerprint", "scopes", "ttl_seconds")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    key: str
    value: bytes
    fingerprint: bytes
    scopes: _containers.RepeatedScalarFieldContainer[str]
    ttl_seconds: float
    def __init__(self, namespace: _Optional[str] = ..., key: _Optional[str] = ..., value: _Optional[bytes] = ..., fingerprint: _Optional[bytes] = ..., scopes: _Optional[_Iterable[str]] = ..., ttl_seconds: _Optional[float] = ...) -> None: ...

class CachePutResponse(_message.Message):
    __slots__ = ("stored",)
    STORED_FIELD_NUMBER: _ClassVar[int]
    stored: bool
    def __init__(self, stored: _Optional[bool] = ...) -> None: ...

class InvalidateRequest(_message.Message):
    __slots__ = ("path_prefix", "reason")
    PATH_PREFIX_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    path_prefix: str
    reason: str
    def __init__(self, path_prefix: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class InvalidateResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: int
    def __init__(self, removed: _Optional[int] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NamespaceStats(_message.Message):
    __slots__ = ("namespace", "entries", "bytes", "hits", "misses")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    entries: int
    bytes: int
    hits: int
    misses: int
    def __init__(self, namespace: _Optional[str] = ..., entries: _Optional[int] = ..., bytes: _Optional[int] = ..., hits: _Optional[int] = ..., misses: _Optional[int] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("namespaces", "size_limit_bytes", "volume_bytes", "hit_ratio", "directory")
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    SIZE_LIMIT_BYTES_FIELD_NUMBER: _ClassVar[int]
    VOLUME_BYTES_FIELD_NUMBER: _ClassVar[int]
    HIT_RATIO_FIELD_NUMBER: _ClassVar[int]
    DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    namespaces: _containers.RepeatedCompositeFieldContainer[NamespaceStats]
    size_limit_bytes: int
    volume_bytes: int
    hit_ratio: float
    directory: str
    def __init__(self, namespaces: _Optional[_Iterable[_Union[NamespaceStats, _Mapping]]] = ..., size_limit_bytes: _Optional[int] = ..., volume_bytes: _Optional[int] = ..., hit_ratio: _Optional[float] = ..., directory: _Optional[str] = ...) -> None: ...

class ClearRequest(_message.Message):
    __slots__ = ("namespace",)
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    def __init__(self, namespace: _Optional[str] = ...) -> None: ...

class ClearResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: int
    def __init__(self, removed: _Optional[int] = ...) -> None: ...

class GetSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class SessionRecord(_message.Message):
    __slots__ = ("session_id", "exists", "messages_json", "created", "updated")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    EXISTS_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_JSON_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    exists: bool
    messages_json: _containers.RepeatedScalarFieldContainer[str]
    created: float
    updated: float
    def __init__(self, session_id: _Optional[str] = ..., exists: _Optional[bool] = ..., messages_json: _Optional[_Iterable[str]] = ..., created: _Optional[float] = ..., updated: _Optional[float] = ...) -> None: ...

class AppendSessionRequest(_message.Message):
    __slots__ = ("session_id", "messages_json", "max_messages", "ttl_seconds")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_JSON_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    messages_json: _containers.RepeatedScalarFieldContainer[str]
    max_messages: int
    ttl_seconds: float
    def __init__(self, session_id: _Optional[str] = ..., messages_json: _Optional[_Iterable[str]] = ..., max_messages: _Optional[int] = ..., ttl_seconds: _Optional[float] = ...) -> None: ...

class DeleteSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class DeleteSessionResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...
