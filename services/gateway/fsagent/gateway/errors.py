"""One error shape for every failure: `{"error": {"code": "...", "message": "..."}}`.

Messages never carry a traceback, a host path or a peer address: gRPC `UNAVAILABLE` details name
the address they failed to reach, so those become "agent unavailable" / "sandbox unavailable".

The agent names what went wrong with a chat in the trailing metadata `fsagent-error-code`
(`llm_rate_limited`, `llm_timeout`, `sandbox_unavailable`, ...): those codes pass through unchanged
with the status of `AGENT_ERRORS` and the agent's message (written for callers), and a rate limit
gets `Retry-After`. A deadline the gateway itself ran out of stays the generic 504 `timeout`.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Sequence

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from fsagent.common import names
from fsagent.common.errorcodes import ERROR_CODE_KEY, RETRY_AFTER_KEY

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

# The agent's typed chat errors (trailing metadata `fsagent-error-code`, SSE `error` events) ->
# HTTP status. README.md's error table documents each one.
AGENT_ERRORS = {
    "llm_rate_limited": 429,
    "llm_connection": 503,
    "llm_upstream": 502,
    "llm_auth": 502,
    "llm_bad_request": 502,
    "llm_timeout": 504,
    "tool_timeout": 504,
    "timeout": 504,
    "sandbox_unavailable": 503,
    "history_unavailable": 503,
    "session_store_unavailable": 503,
}
# Retry-After when the LLM endpoint rate limits without saying for how long.
DEFAULT_RETRY_AFTER = {"llm_rate_limited": 10}


def agent_error(code: str, message: str, retry_after: float = 0.0) -> tuple[int, str, str, dict[str, str]]:
    """(HTTP status, code, message, headers) for a typed agent error; unknown codes are a 502."""
    status = AGENT_ERRORS.get(code)
    if status is None:
        return 502, "upstream_error", "agent failed to handle the request", {}
    headers: dict[str, str] = {}
    wait = math.ceil(retry_after) if retry_after > 0 else DEFAULT_RETRY_AFTER.get(code, 0)
    if wait and status in (429, 503):
        headers["Retry-After"] = str(wait)
    return status, code, _clip(message) or code.replace("_", " "), headers


def _trailing(exc: grpc.aio.AioRpcError) -> dict[str, str]:
    try:
        pairs = exc.trailing_metadata() or ()
        return {str(k): v if isinstance(v, str) else v.decode(errors="replace") for k, v in pairs}
    except Exception:  # noqa: BLE001 - metadata is a bonus, never a reason to fail
        return {}


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
    429: {"model": ErrorBody, "description": (
        "`rate_limited`: too many wrong API keys from this address (FSAGENT_AUTH_FAILURE_LIMIT); see `Retry-After`."
    )},
    422: {"model": ErrorBody, "description": "A field is missing or invalid."},
    503: {"model": ErrorBody, "description": "The agent or the sandbox is unavailable."},
}

# The chat routes' own failures (the agent's typed codes).
CHAT_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    429: {"model": ErrorBody, "description": (
        "`rate_limited`: this API key (or address) is over FSAGENT_CHAT_RATE_LIMIT; `llm_rate_limited`: "
        "the LLM endpoint rate limits. Either way, wait `Retry-After` seconds."
    )},
    502: {"model": ErrorBody, "description": (
        "`llm_upstream` (the LLM failed or sent a malformed or empty reply), `llm_auth` (the LLM "
        "rejected the configured key), `llm_bad_request`, `upstream_error`."
    )},
    503: {"model": ErrorBody, "description": (
        "`sandbox_unavailable` (no tool call could run), `history_unavailable` (the session's history "
        "cannot be read), `llm_connection`, `unavailable` (the agent)."
    )},
    504: {"model": ErrorBody, "description": "`llm_timeout`, `tool_timeout`, `timeout` (FSAGENT_CHAT_TIMEOUT)."},
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
    return rpc_failure(exc, upstream)[:3]


def rpc_failure(exc: grpc.aio.AioRpcError, upstream: str | None) -> tuple[int, str, str, dict[str, str]]:
    """(HTTP status, code, message, headers) for a failed gRPC call to `upstream`."""
    status = exc.code()
    peer = upstream or "upstream"
    trailing = _trailing(exc)
    typed = trailing.get(ERROR_CODE_KEY, "")
    if typed in AGENT_ERRORS:
        try:
            retry_after = float(trailing.get(RETRY_AFTER_KEY, "0"))
        except ValueError:
            retry_after = 0.0
        return agent_error(typed, exc.details() or "", retry_after)
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
        return http, code, message, {}
    if status == grpc.StatusCode.UNAVAILABLE:
        return 503, "unavailable", f"{peer} unavailable", {}
    if status == grpc.StatusCode.DEADLINE_EXCEEDED:
        return 504, "timeout", f"{peer} did not answer in time", {}
    log.warning("%s call failed", peer, extra={"grpc_code": status.name if status else "UNKNOWN"})
    return 502, "upstream_error", f"{peer} failed to handle the request", {}


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
    status, code, message, headers = rpc_failure(exc, getattr(request.state, "upstream", None))
    return response(status, code, message, headers or None)


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
