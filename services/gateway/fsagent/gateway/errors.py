"""One error shape for every failure: `{"error": {"code": "...", "message": "..."}}`.

Messages never carry a traceback, a host path or a peer address: gRPC `UNAVAILABLE` details name
the address they failed to reach, so those become "agent unavailable" / "sandbox unavailable".
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from fsagent.common import names

log = logging.getLogger(__name__)

_MESSAGE_LIMIT = 300  # characters of an upstream message passed on
_MAX_FIELD_ERRORS = 3

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    500: "internal_error",
    502: "bad_gateway",
    503: "unavailable",
    504: "timeout",
}

# gRPC status -> (HTTP status, error code). Their details are written for callers and pass through.
_RPC_CLIENT_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_argument"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_denied"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "already_exists"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (413, "payload_too_large"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "failed_precondition"),
}


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """The shape of every error response."""

    error: ErrorDetail


# Declared on the routes that create or replace a document's name (create, update, upload).
INVALID_PATH_RESPONSE: dict[int | str, dict[str, Any]] = {
    400: {
        "model": ErrorBody,
        "description": (
            "`invalid_path`: a name holds a control character (U+0000-U+001F, U+007F-U+009F), a "
            "line/paragraph separator (U+2028, U+2029) or bytes that are not UTF-8. Other 400s: "
            "`invalid_argument`, `failed_precondition`, `bad_request`."
        ),
    },
}


# Documented on every /api route (FastAPI's own 422 schema would describe a shape we never send).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing or invalid API key (when keys are configured)."},
    422: {"model": ErrorBody, "description": "A field is missing or invalid."},
    503: {"model": ErrorBody, "description": "The agent or the sandbox is unavailable."},
}


class ApiError(HTTPException):
    """An HTTPException that names its error code."""

    def __init__(
        self, status_code: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(status_code, message, dict(headers) if headers else None)
        self.code = code


def response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def _clip(text: str, limit: int = _MESSAGE_LIMIT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def rpc_error(exc: grpc.aio.AioRpcError, upstream: str | None) -> tuple[int, str, str]:
    """(HTTP status, code, message) for a failed gRPC call to `upstream` ("agent"/"sandbox")."""
    status = exc.code()
    peer = upstream or "upstream"
    if status in _RPC_CLIENT_ERRORS:
        http, code = _RPC_CLIENT_ERRORS[status]
        message = _clip(exc.details() or "") or code.replace("_", " ")
        # The sandbox refuses binary files with FAILED_PRECONDITION; that is a media-type problem.
        if status == grpc.StatusCode.FAILED_PRECONDITION and "binary" in message.lower():
            http, code = 415, "unsupported_media_type"
        # A name it will not create (the shared rule, fsagent.common.names): the same code the
        # gateway answers with when it refuses the name itself.
        if status == grpc.StatusCode.INVALID_ARGUMENT and message.startswith(names.INVALID_PATH_PREFIX):
            code = names.INVALID_PATH_CODE
        return http, code, message
    if status == grpc.StatusCode.UNAVAILABLE:
        return 503, "unavailable", f"{peer} unavailable"
    if status == grpc.StatusCode.DEADLINE_EXCEEDED:
        return 504, "timeout", f"{peer} did not answer in time"
    log.warning("%s call failed", peer, extra={"grpc_code": status.name if status else "UNKNOWN"})
    return 502, "upstream_error", f"{peer} failed to handle the request"


def validation_message(errors: Sequence[Any]) -> str:
    """Which fields are wrong and why, without echoing the input."""
    parts = []
    for error in errors[:_MAX_FIELD_ERRORS]:
        loc = [str(item) for item in error.get("loc", ())]
        where = loc[0] if loc and loc[0] in ("body", "query", "path", "header", "cookie") else ""
        field = ".".join(loc[1:] if where else loc)
        label = f"{where} field '{field}'" if field else (where or "request")
        parts.append(f"{label}: {_clip(str(error.get('msg', 'invalid')), 160)}")
    if len(errors) > _MAX_FIELD_ERRORS:
        parts.append(f"and {len(errors) - _MAX_FIELD_ERRORS} more")
    return "; ".join(parts) or "invalid request"


async def http_exception_handler(request: Request, exc: HTTPException) -> JSONResponse:
    code = getattr(exc, "code", None) or _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return response(exc.status_code, code, _clip(message), exc.headers)


async def validation_exception_handler(
    request: Request, exc: RequestValidationError
) -> JSONResponse:
    return response(422, "validation_error", validation_message(exc.errors()))


async def rpc_exception_handler(request: Request, exc: grpc.aio.AioRpcError) -> JSONResponse:
    status, code, message = rpc_error(exc, getattr(request.state, "upstream", None))
    return response(status, code, message)


async def unhandled_exception_handler(request: Request, exc: Exception) -> JSONResponse:
    log.error(
        "unhandled error", exc_info=exc,
        extra={"method": request.method, "path": request.url.path},
    )
    return response(500, "internal_error", "internal server error")


def install(app: FastAPI) -> None:
    handlers: list[tuple[type[Exception], Any]] = [
        (HTTPException, http_exception_handler),
        (RequestValidationError, validation_exception_handler),
        (grpc.aio.AioRpcError, rpc_exception_handler),
    ]
    for exc_class, handler in handlers:
        app.add_exception_handler(exc_class, handler)
    # Last resort, for errors raised outside RequestMiddleware (which handles the rest itself).
    app.add_exception_handler(Exception, unhandled_exception_handler)
