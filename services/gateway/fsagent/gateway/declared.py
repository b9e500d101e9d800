"""The error responses each route declares in the OpenAPI document, built in one place.

Every error body is the named schema `ErrorBody` (`{"error": {"code", "message"}}`). A route lists
the statuses it can produce beyond those every /api route shares (`COMMON`: a bad or missing API
key, a field FastAPI refuses, the agent or sandbox failing, down or too slow), and `responses()`
turns them into FastAPI's `responses=` with a description naming the codes. The schemathesis test
(tests/integration/test_openapi_conformance.py) holds the document to what the routes answer.
"""

from __future__ import annotations

from typing import Any

from fsagent.gateway.errors import CHAT_ERROR_RESPONSES, ErrorBody

# Every /api route: behind the API keys, validated by FastAPI, and calling the agent or sandbox.
COMMON = (401, 422, 502, 503, 504)

DESCRIPTIONS: dict[int, str] = {
    400: "`invalid_argument` (a malformed path: a NUL byte, a part over 255 bytes), "
         "`failed_precondition` (a directory where a file is meant), `bad_request` (a body that "
         "is not JSON).",
    401: "`unauthorized`: a missing or invalid API key (when FSAGENT_API_KEYS is set).",
    403: "`permission_denied`: the path leaves the data root, or the store is read-only.",
    404: "`not_found`: no such file or directory.",
    409: "`already_exists`: the document exists (use PUT, or `overwrite`).",
    413: "`payload_too_large`: the content or request body is over FSAGENT_MAX_FILE_SIZE.",
    415: "`unsupported_media_type`: a binary file (only text is served).",
    422: "`validation_error`: a field is missing or invalid.",
    502: "`upstream_error`: the agent or sandbox failed to handle the request.",
    503: "`unavailable`: the agent or the sandbox cannot be reached.",
    504: "`timeout`: the agent or the sandbox did not answer in time.",
}

RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "integer", "minimum": 0},
    }
}


def responses(*statuses: int, chat: bool = False, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route producing `statuses` besides `COMMON`.

    `chat=True` adds the agent's typed chat failures (errors.CHAT_ERROR_RESPONSES: 429 with
    `Retry-After`, 502, 503, 504). `descriptions` overrides a status's text, keyed `s400`, `s409`...
    """
    declared: dict[int | str, dict[str, Any]] = {}
    for status in sorted({*COMMON, *statuses}):
        text = descriptions.get(f"s{status}", DESCRIPTIONS[status])
        declared[status] = {"model": ErrorBody, "description": text}
    if chat:
        for status, entry in CHAT_ERROR_RESPONSES.items():
            declared[status] = {**entry, "model": ErrorBody}
    if 429 in declared:
        declared[429] = {**declared[429], "headers": RETRY_AFTER}
    return declared
