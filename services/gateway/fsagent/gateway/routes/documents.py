"""The documents under the data root: list, read, create, update, delete and upload.

Paths are relative to the data root; the sandbox resolves and confines them. A name to create
(create, update, upload's `path` and filename) is checked here with the sandbox's own rule
(fsagent.common.names) before any gRPC hop: 400 `invalid_path`. Paths in answers are printed with
`names.display` (quoted when a name holds a colon or a control character); any path parameter takes
them back as printed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from typing import Annotated, Any, AsyncIterator, Iterator
from urllib.parse import quote, unquote_to_bytes

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from fsagent.common import names
from fsagent.common.settings import Settings
from fsagent.gateway.clients import STREAM_TIMEOUT, UNARY_TIMEOUT, SandboxDep, SettingsDep
from fsagent.gateway.declared import responses
from fsagent.gateway.errors import INVALID_PATH_RESPONSE, ApiError
from fsagent.gateway.metrics import InstrumentedRoute
from fsagent.v1 import sandbox_pb2, sandbox_pb2_grpc

router = APIRouter(prefix="/api/documents", tags=["documents"], route_class=InstrumentedRoute)

UPLOAD_CHUNK_BYTES = 64 * 1024
MULTIPART_OVERHEAD_BYTES = 64 * 1024  # boundaries, part headers and the small fields
MAX_FIELD_BYTES = 4096

DocumentPath = Annotated[
    str, Path(min_length=1, max_length=1024, description="Relative to the data root.")
]


class DocumentInfo(BaseModel):
    path: str
    is_dir: bool
    size: int = Field(description="Bytes.")
    modified: float = Field(description="Unix seconds.")


class DocumentList(BaseModel):
    path: str
    recursive: bool
    count: int = Field(description="Entries on this page.")
    documents: list[DocumentInfo]
    next_cursor: str | None = Field(
        None, description="Pass as `cursor` for the next page; null on the last page."
    )


# Pages of GET /api/documents: what a listing returns when no `limit` is given, and the most it may ask.
LIST_LIMIT_DEFAULT = 1000
LIST_LIMIT_MAX = 10_000


def encode_cursor(path: str, recursive: bool, after: str) -> str:
    raw = json.dumps({"p": path, "r": recursive, "a": after}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, path: str, recursive: bool) -> str:
    """The `after` of a cursor from the same listing (path and recursive), else 400 invalid_cursor."""
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if data["p"] == path and data["r"] is recursive and isinstance(data["a"], str) and data["a"]:
            return data["a"]
    except (ValueError, TypeError, KeyError, binascii.Error):
        pass
    raise ApiError(400, "invalid_cursor", "cursor is not a next_cursor of this listing (same path and recursive)")


class DocumentContent(BaseModel):
    path: str
    content: str
    size: int
    modified: float


class DocumentBody(BaseModel):
    content: str


class DocumentDeleted(BaseModel):
    path: str
    deleted: bool


def info_json(info: sandbox_pb2.DocumentInfo) -> dict[str, Any]:
    return {"path": info.path, "is_dir": info.is_dir, "size": info.size, "modified": info.modified}


def invalid_path(exc: names.InvalidName) -> ApiError:
    return ApiError(400, names.INVALID_PATH_CODE, exc.message)


_NAME_MAX = 255  # bytes in one part of a path: no file system here holds a longer name


def check_nameable(path: str) -> None:
    """A path with a part longer than any file system allows names nothing: 404, as for any
    missing file (for reads, lists, streams and deletes; a write refuses the name with 400)."""
    if any(len(part.encode("utf-8", "surrogateescape")) > _NAME_MAX for part in path.split("/")):
        raise ApiError(404, "not_found", f"no such file or directory (a part of the path is over {_NAME_MAX} bytes)")


_WRITE_400 = INVALID_PATH_RESPONSE[400]["description"]


def check_new_path(request: Request, path: str) -> None:
    """Refuse a name to create: invalid UTF-8 in the URL (which the server would otherwise turn
    into U+FFFD), or a forbidden character in the decoded path."""
    try:
        raw = request.scope.get("raw_path")
        if raw:
            names.check_new_name_bytes(unquote_to_bytes(raw.split(b"?", 1)[0]))
        names.validate_new_path(path)
    except names.InvalidName as exc:
        raise invalid_path(exc) from None


def _created(info: sandbox_pb2.DocumentInfo) -> JSONResponse:
    location = f"{router.prefix}/{quote(info.path)}"
    return JSONResponse(info_json(info), status_code=201, headers={"Location": location})


async def _write(
    sandbox: sandbox_pb2_grpc.SandboxStub, settings: Settings, path: str, content: str, mode: int
) -> sandbox_pb2.DocumentInfo:
    if len(content.encode()) > settings.max_file_size:  # refused here, not after a gRPC hop
        raise ApiError(413, "payload_too_large", f"content over {settings.max_file_size} bytes")
    request = sandbox_pb2.WriteDocumentRequest(path=path, content=content, mode=mode)
    return await sandbox.WriteDocument(request, timeout=UNARY_TIMEOUT)


@router.get(
    "", response_model=DocumentList, summary="List documents", responses=responses(
        400, 403, 404, s400="`invalid_cursor`: `cursor` is not a `next_cursor` of this listing (same "
        "`path` and `recursive`); `invalid_argument`: a malformed path (a NUL byte).",
    ),
)
async def list_documents(
    sandbox: SandboxDep,
    path: Annotated[
        str, Query(max_length=1024, description="Directory to list; empty for the root.")
    ] = "",
    recursive: bool = False,
    limit: Annotated[int, Query(
        ge=1, le=LIST_LIMIT_MAX, description=f"Entries per page (at most {LIST_LIMIT_MAX}).",
    )] = LIST_LIMIT_DEFAULT,
    cursor: Annotated[str, Query(
        max_length=8192, pattern=r"^[A-Za-z0-9_-]*$",  # base64url: a URL no server refuses as too long
        description="`next_cursor` of the previous page; empty for the first page.",
    )] = "",
) -> dict[str, Any]:
    check_nameable(path)
    after = decode_cursor(cursor, path, recursive) if cursor else ""
    request = sandbox_pb2.ListDocumentsRequest(path=path, recursive=recursive, limit=limit, after=after)
    reply = await sandbox.ListDocuments(request, timeout=UNARY_TIMEOUT)
    documents = [info_json(doc) for doc in reply.documents]
    next_cursor = encode_cursor(path, recursive, reply.next_after) if reply.next_after else None
    return {"path": path, "recursive": recursive, "count": len(documents), "documents": documents,
            "next_cursor": next_cursor}


# --- upload (declared before /{path:path} so that route does not shadow it) -----------------

_UPLOAD_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object",
            "required": ["file"],
            "properties": {
                "path": {"type": "string", "description": (
                    "Target directory or full path (default: the root). A path ending in `/`, or "
                    "whose last part has no extension, is a directory and the file keeps its name."
                )},
                "overwrite": {"type": "boolean", "default": False},
                "file": {"type": "string", "format": "binary"},
            },
        }}},
    }
}


class UploadForm:
    """An incremental multipart/form-data reader: small `path`/`overwrite` fields, then one `file`
    part whose bytes are handed on as they arrive (never held whole), at most `max_file_bytes`."""

    def __init__(self, boundary: bytes, max_file_bytes: int) -> None:
        self.max_file_bytes = max_file_bytes
        self.fields: dict[str, str] = {}
        self.filename = ""
        self.file_started = False
        self.complete = False  # the closing boundary was seen
        self.file_bytes = 0
        self.pending = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._part: str | None = None  # "file", "field" or None (ignored)
        self._name = ""
        self._value = bytearray()
        self._parser = MultipartParser(boundary, {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._header_field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._header_value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        })

    def write(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise ApiError(400, "bad_request", "malformed multipart body") from exc

    def finalize(self) -> None:
        """The body has ended: it must have ended the multipart message too (else: truncated)."""
        self._parser.finalize()
        if not self.complete:
            raise ApiError(400, "bad_request", "malformed multipart body")

    def take(self, final: bool = False) -> Iterator[bytes]:
        """Pending file bytes in whole chunks (and the remainder when `final`)."""
        while len(self.pending) >= UPLOAD_CHUNK_BYTES or (final and self.pending):
            piece = bytes(self.pending[:UPLOAD_CHUNK_BYTES])
            del self.pending[:UPLOAD_CHUNK_BYTES]
            yield piece

    def header(self) -> sandbox_pb2.UploadHeader:
        overwrite = self.fields.get("overwrite", "").strip().lower()
        if overwrite not in ("", "true", "false", "1", "0", "yes", "no", "on", "off"):
            raise ApiError(
                422, "validation_error", "body field 'overwrite': Input should be a valid boolean"
            )
        mode = (
            sandbox_pb2.WRITE_MODE_UPSERT if overwrite in ("true", "1", "yes", "on")
            else sandbox_pb2.WRITE_MODE_CREATE
        )
        target = upload_target(self.fields.get("path", ""), self.filename)
        try:
            names.validate_new_path(target)
        except names.InvalidName as exc:
            raise invalid_path(exc) from None
        return sandbox_pb2.UploadHeader(path=target, mode=mode)

    # parser callbacks
    def _part_begin(self) -> None:
        self._headers = {}
        self._part = None

    def _header_end(self) -> None:
        self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = params.get(b"name", b"").decode("utf-8", "replace")
        if self._name == "file":
            if self.file_started:
                raise ApiError(400, "bad_request", "only one file per upload")
            if b"filename" not in params:
                raise ApiError(422, "validation_error", "body field 'file': Expected a file")
            try:  # refused even when `path` names the whole target and the filename goes unused
                self.filename = names.check_new_name_bytes(params[b"filename"])
            except names.InvalidName as exc:
                raise invalid_path(exc) from None
            self.file_started = True
            self._part = "file"
        elif self._name in ("path", "overwrite"):
            if self.file_started:
                raise ApiError(
                    400, "bad_request", "send the 'path' and 'overwrite' fields before 'file'"
                )
            self._part = "field"
            self._value = bytearray()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._part == "file":
            self.file_bytes += end - start
            if self.file_bytes > self.max_file_bytes:
                raise ApiError(413, "payload_too_large", f"file over {self.max_file_bytes} bytes")
            self.pending.extend(data[start:end])
        elif self._part == "field":
            self._value.extend(data[start:end])
            if len(self._value) > MAX_FIELD_BYTES:
                raise ApiError(422, "validation_error", f"body field '{self._name}': too long")

    def _end(self) -> None:
        self.complete = True

    def _part_end(self) -> None:
        if self._part == "field" and self._name == "path":
            try:
                self.fields["path"] = names.check_new_name_bytes(bytes(self._value))
            except names.InvalidName as exc:
                raise invalid_path(exc) from None
        elif self._part == "field":
            try:
                self.fields[self._name] = self._value.decode("utf-8")
            except UnicodeDecodeError as exc:
                message = f"body field '{self._name}': not UTF-8"
                raise ApiError(422, "validation_error", message) from exc


def upload_target(path: str, filename: str) -> str:
    """Where an upload goes: `path` as the full target, or as a directory for `filename`."""
    path = path.strip()
    last = path.rstrip("/").rsplit("/", 1)[-1]
    if path and not path.endswith("/") and "." in last.strip("."):
        return path
    name = filename.replace("\\", "/").rsplit("/", 1)[-1].strip()
    if name in ("", ".", "..") or "\x00" in name:
        raise ApiError(422, "validation_error", "body field 'file': the file has no usable name")
    directory = path.rstrip("/")
    return f"{directory}/{name}" if directory else name


@router.post(
    "/upload", status_code=201, response_model=DocumentInfo, openapi_extra=_UPLOAD_OPENAPI,
    summary="Upload a file (multipart/form-data), streamed to the sandbox",
    responses=responses(
        400, 403, 409, 413, 415, s400=_WRITE_400 + " The `path` and `overwrite` fields must come before `file`.",
        s415="`unsupported_media_type`: the body is not multipart/form-data.",
    ),
)
async def upload_document(
    request: Request, sandbox: SandboxDep, settings: SettingsDep
) -> JSONResponse:
    limit = settings.max_file_size
    media, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if media != b"multipart/form-data" or not boundary:
        raise ApiError(415, "unsupported_media_type", "expected multipart/form-data")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + MULTIPART_OVERHEAD_BYTES:
        raise ApiError(413, "payload_too_large", f"file over {limit} bytes")

    form = UploadForm(boundary, limit)
    body = request.stream()
    async for chunk in body:  # the small fields, up to where the file part starts
        form.write(chunk)
        if form.file_started:
            break
    else:
        form.finalize()
        raise ApiError(422, "validation_error", "body field 'file': Field required")
    header = sandbox_pb2.UploadChunk(header=form.header())
    failure: list[Exception] = []

    async def messages() -> AsyncIterator[sandbox_pb2.UploadChunk]:
        # gRPC pulls this as it can send, so a slow sandbox slows the reading of the body.
        sent = 0
        try:
            yield header
            for piece in form.take():
                sent += len(piece)
                yield sandbox_pb2.UploadChunk(data=piece)
            async for chunk in body:
                form.write(chunk)
                for piece in form.take():
                    sent += len(piece)
                    yield sandbox_pb2.UploadChunk(data=piece)
            form.finalize()
            for piece in form.take(final=True):
                sent += len(piece)
                yield sandbox_pb2.UploadChunk(data=piece)
            # Only a complete body is committed: the sandbox writes nothing without this marker.
            yield sandbox_pb2.UploadChunk(end=sandbox_pb2.UploadEnd(total_bytes=sent))
        except Exception as exc:  # too large, malformed, client gone: gRPC cancels the call
            failure.append(exc)
            raise

    # A request iterator, not call.write(): with client interceptors, a call the server ends
    # early would leave grpc.aio's internal write-proxy task pending forever.
    call = sandbox.UploadDocument(messages(), timeout=STREAM_TIMEOUT)
    try:
        info = await call
    except asyncio.CancelledError:
        if failure:  # the call was cancelled because reading the upload failed
            raise failure[0] from None
        raise
    finally:
        if not call.done():
            call.cancel()  # the sandbox drops its temporary file
    return _created(info)


# --- one document ----------------------------------------------------------------------------

@router.get(
    "/{path:path}", response_model=DocumentContent, summary="Read a document",
    responses=responses(400, 403, 404, 413, 415),
)
async def read_document(path: DocumentPath, sandbox: SandboxDep) -> dict[str, Any]:
    check_nameable(path)
    request = sandbox_pb2.ReadDocumentRequest(path=path)
    reply = await sandbox.ReadDocument(request, timeout=UNARY_TIMEOUT)
    return {
        "path": reply.info.path or path, "content": reply.content,
        "size": reply.info.size, "modified": reply.info.modified,
    }


@router.post(
    "/{path:path}", status_code=201, response_model=DocumentInfo,
    summary="Create a document (409 if it exists)",
    responses=responses(400, 403, 409, 413, s400=_WRITE_400),
)
async def create_document(
    request: Request, path: DocumentPath, body: DocumentBody, sandbox: SandboxDep, settings: SettingsDep
) -> JSONResponse:
    check_new_path(request, path)
    mode = sandbox_pb2.WRITE_MODE_CREATE
    return _created(await _write(sandbox, settings, path, body.content, mode))


@router.put(
    "/{path:path}", response_model=DocumentInfo, summary="Replace a document (404 if missing)",
    responses=responses(400, 403, 404, 413, s400=_WRITE_400),
)
async def update_document(
    request: Request, path: DocumentPath, body: DocumentBody, sandbox: SandboxDep, settings: SettingsDep
) -> dict[str, Any]:
    check_new_path(request, path)
    mode = sandbox_pb2.WRITE_MODE_UPDATE
    return info_json(await _write(sandbox, settings, path, body.content, mode))


@router.delete(
    "/{path:path}", response_model=DocumentDeleted, summary="Delete a document",
    responses=responses(400, 403, 404),
)
async def delete_document(path: DocumentPath, sandbox: SandboxDep) -> dict[str, Any]:
    check_nameable(path)
    request = sandbox_pb2.DeleteDocumentRequest(path=path)
    reply = await sandbox.DeleteDocument(request, timeout=UNARY_TIMEOUT)
    return {"path": reply.path or path, "deleted": True}
