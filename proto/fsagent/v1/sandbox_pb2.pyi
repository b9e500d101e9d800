from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WriteMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WRITE_MODE_UNSPECIFIED: _ClassVar[WriteMode]
    WRITE_MODE_CREATE: _ClassVar[WriteMode]
    WRITE_MODE_UPDATE: _ClassVar[WriteMode]
    WRITE_MODE_UPSERT: _ClassVar[WriteMode]
WRITE_MODE_UNSPECIFIED: WriteMode
WRITE_MODE_CREATE: WriteMode
WRITE_MODE_UPDATE: WriteMode
WRITE_MODE_UPSERT: WriteMode

class ExecuteRequest(_message.Message):
    __slots__ = ("tool", "arguments_json", "no_cache")
    TOOL_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    NO_CACHE_FIELD_NUMBER: _ClassVar[int]
    tool: str
    arguments_json: str
    no_cache: bool
    def __init__(self, tool: _Optional[str] = ..., arguments_json: _Optional[str] = ..., no_cache: _Optional[bool] = ...) -> None: ...

class ExecuteResponse(_message.Message):
    __slots__ = ("stdout", "stderr", "exit_code", "truncated", "cached", "duration_seconds", "error", "error_code", "command", "output_bytes")
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    stdout: str
    stderr: str
    exit_code: int
    truncated: bool
    cached: bool
    duration_seconds: float
    error: str
    error_code: str
    command: str
    output_bytes: int
    def __init__(self, stdout: _Optional[str] = ..., stderr: _Optional[str] = ..., exit_code: _Optional[int] = ..., truncated: _Optional[bool] = ..., cached: _Optional[bool] = ..., duration_seconds: _Optional[float] = ..., error: _Optional[str] = ..., error_code: _Optional[str] = ..., command: _Optional[str] = ..., output_bytes: _Optional[int] = ...) -> None: ...

class ListToolsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListToolsResponse(_message.Message):
    __slots__ = ("tools_json",)
    TOOLS_JSON_FIELD_NUMBER: _ClassVar[int]
    tools_json: str
    def __init__(self, tools_json: _Optional[str] = ...) -> None: ...

class DocumentInfo(_message.Message):
    __slots__ = ("path", "is_dir", "size", "modified")
    PATH_FIELD_NUMBER: _ClassVar[int]
    IS_DIR_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MODIFIED_FIELD_NUMBER: _ClassVar[int]
    path: str
    is_dir: bool
    size: int
    modified: float
    def __init__(self, path: _Optional[str] = ..., is_dir: _Optional[bool] = ..., size: _Optional[int] = ..., modified: _Optional[float] = ...) -> None: ...

class ListDocumentsRequest(_message.Message):
    __slots__ = ("path", "recursive", "limit", "after")
    PATH_FIELD_NUMBER: _ClassVar[int]
    RECURSIVE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    path: str
    recursive: bool
    limit: int
    after: str
    def __init__(self, path: _Optional[str] = ..., recursive: _Optional[bool] = ..., limit: _Optional[int] = ..., after: _Optional[str] = ...) -> None: ...

class ListDocumentsResponse(_message.Message):
    __slots__ = ("documents", "next_after")
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_AFTER_FIELD_NUMBER: _ClassVar[int]
    documents: _containers.RepeatedCompositeFieldContainer[DocumentInfo]
    next_after: str
    def __init__(self, documents: _Optional[_Iterable[_Union[DocumentInfo, _Mapping]]] = ..., next_after: _Optional[str] = ...) -> None: ...

class ReadDocumentRequest(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...

class ReadDocumentResponse(_message.Message):
    __slots__ = ("info", "content")
    INFO_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    info: DocumentInfo
    content: str
    def __init__(self, info: _Optional[_Union[DocumentInfo, _Mapping]] = ..., content: _Optional[str] = ...) -> None: ...

class WriteDocumentRequest(_message.Message):
    __slots__ = ("path", "content", "mode")
    PATH_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    path: str
    content: str
    mode: WriteMode
    def __init__(self, path: _Optional[str] = ..., content: _Optional[str] = ..., mode: _Optional[_Union[WriteMode, str]] = ...) -> None: ...

class DeleteDocumentRequest(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...

class DeleteDocumentResponse(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...

class UploadChunk(_message.Message):
    __slots__ = ("header", "data", "end")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    data: bytes
    end: UploadEnd
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., data: _Optional[bytes] = ..., end: _Optional[_Union[UploadEnd, _Mapping]] = ...) -> None: ...

class UploadEnd(_message.Message):
    __slots__ = ("total_bytes",)
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    total_bytes: int
    def __init__(self, total_bytes: _Optional[int] = ...) -> None: ...

class UploadHeader(_message.Message):
    __slots__ = ("path", "mode")
    PATH_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    path: str
    mode: WriteMode
    def __init__(self, path: _Optional[str] = ..., mode: _Optional[_Union[WriteMode, str]] = ...) -> None: ...

class StreamFileRequest(_message.Message):
    __slots__ = ("path", "chunk_lines")
    PATH_FIELD_NUMBER: _ClassVar[int]
    CHUNK_LINES_FIELD_NUMBER: _ClassVar[int]
    path: str
    chunk_lines: int
    def __init__(self, path: _Optional[str] = ..., chunk_lines: _Optional[int] = ...) -> None: ...

class FileChunk(_message.Message):
    __slots__ = ("start_line", "lines", "last", "total_lines")
    START_LINE_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    TOTAL_LINES_FIELD_NUMBER: _ClassVar[int]
    start_line: int
    lines: _containers.RepeatedScalarFieldContainer[str]
    last: bool
    total_lines: int
    def __init__(self, start_line: _Optional[int] = ..., lines: _Optional[_Iterable[str]] = ..., last: _Optional[bool] = ..., total_lines: _Optional[int] = ...) -> None: ...

class StreamSearchRequest(_message.Message):
    __slots__ = ("path", "pattern", "ignore_case", "fixed_strings", "max_results")
    PATH_FIELD_NUMBER: _ClassVar[int]
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    IGNORE_CASE_FIELD_NUMBER: _ClassVar[int]
    FIXED_STRINGS_FIELD_NUMBER: _ClassVar[int]
    MAX_RESULTS_FIELD_NUMBER: _ClassVar[int]
    path: str
    pattern: str
    ignore_case: bool
    fixed_strings: bool
    max_results: int
    def __init__(self, path: _Optional[str] = ..., pattern: _Optional[str] = ..., ignore_case: _Optional[bool] = ..., fixed_strings: _Optional[bool] = ..., max_results: _Optional[int] = ...) -> None: ...

class SearchMatch(_message.Message):
    __slots__ = ("path", "line_number", "line")
    PATH_FIELD_NUMBER: _ClassVar[int]
    LINE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    path: str
    line_number: int
    line: str
    def __init__(self, path: _Optional[str] = ..., line_number: _Optional[int] = ..., line: _Optional[str] = ...) -> None: ...
