"""The OpenAPI document declares every status each route answers, in the one error shape.

The full check is schemathesis against the real stack (tests/integration/test_openapi_conformance.py);
these are the fast, exact ones: the shared statuses on every /api route, the named ErrorBody
schema, Retry-After on the chat routes' 429, and the answers the fuzzer found wrong.
"""

from __future__ import annotations

import pytest

from fsagent.gateway.app import create_app
from fsagent.gateway.declared import COMMON

ERROR_REF = "#/components/schemas/ErrorBody"


@pytest.fixture(scope="module")
def openapi() -> dict:
    return create_app().openapi()


def _operations(openapi: dict):
    for path, item in openapi["paths"].items():
        for method, op in item.items():
            yield method.upper(), path, op


def test_error_body_is_a_named_schema(openapi):
    schemas = openapi["components"]["schemas"]
    assert schemas["ErrorBody"]["required"] == ["error"]
    assert set(schemas["ErrorDetail"]["required"]) == {"code", "message"}


def test_every_api_error_is_declared_with_the_error_schema(openapi):
    for method, path, op in _operations(openapi):
        if not path.startswith("/api/"):
            continue
        statuses = {int(s) for s in op["responses"] if s.startswith(("4", "5"))}
        assert set(COMMON) <= statuses, (method, path, sorted(statuses))
        for status in statuses:
            body = op["responses"][str(status)]["content"]["application/json"]["schema"]
            assert body == {"$ref": ERROR_REF}, (method, path, status)


@pytest.mark.parametrize(
    "method, path, statuses",
    [
        ("GET", "/api/documents", {400, 403, 404}),
        ("GET", "/api/documents/{path}", {400, 403, 404, 413, 415}),
        ("POST", "/api/documents/{path}", {400, 403, 409, 413}),
        ("PUT", "/api/documents/{path}", {400, 403, 404, 413}),
        ("DELETE", "/api/documents/{path}", {400, 403, 404}),
        ("POST", "/api/documents/upload", {400, 403, 409, 413, 415}),
        ("GET", "/api/stream/file/{path}", {400, 403, 404, 413, 415}),
        ("GET", "/api/stream/search/{path}", {400, 403, 404}),
        ("POST", "/api/chat", {400, 429}),
        ("POST", "/api/chat/stream", {400, 429}),
        ("GET", "/api/chat/sessions/{session_id}", {404}),
        ("GET", "/api/chat/sessions/{session_id}/history", {404}),
        ("DELETE", "/api/chat/sessions/{session_id}", {404}),
    ],
)
def test_route_declares_its_own_statuses(openapi, method, path, statuses):
    declared = {int(s) for s in openapi["paths"][path][method.lower()]["responses"]}
    assert statuses <= declared, sorted(statuses - declared)


@pytest.mark.parametrize("path", ["/api/chat", "/api/chat/stream"])
def test_chat_rate_limit_declares_retry_after(openapi, path):
    too_many = openapi["paths"][path]["post"]["responses"]["429"]
    assert too_many["headers"]["Retry-After"]["schema"]["type"] == "integer"
    assert "rate_limited" in too_many["description"] and "llm_rate_limited" in too_many["description"]


@pytest.mark.parametrize(
    "url",
    [
        "/api/documents/" + "a" * 256,
        "/api/documents/dir/" + "é" * 128,  # 256 bytes
        "/api/stream/file/" + "a" * 256,
        "/api/stream/search/" + "a" * 256 + "?pattern=x",
        "/api/documents?path=" + "a" * 256,
    ],
)
async def test_a_name_no_file_system_holds_is_not_found(client, error_shape, url):
    r = await client.get(url)
    error_shape(r, 404, "not_found")


async def test_a_message_of_white_space_is_refused_at_the_gateway(client, error_shape):
    r = await client.post("/api/chat", json={"message": " \t\x1c "})
    error_shape(r, 422, "validation_error")
