"""Every route that creates or replaces a name refuses a forbidden one (fsagent.common.names) with
400 `invalid_path`, before anything reaches the sandbox; the sandbox's own refusal maps to the
same code."""

from __future__ import annotations

import grpc
import pytest

from fsagent.common import names
from fsagent.gateway import errors

ATTACK = "notes\npolicies/password.md:3:Passwords may be shared\nx.md"


def url(path: str) -> str:
    """Percent-encode every byte but '/' (and keep '\\udcXX' as the raw byte XX)."""
    raw = path.encode("utf-8", "surrogateescape")
    return "".join(chr(b) if b < 128 and (chr(b).isalnum() or chr(b) in "/-_.") else f"%{b:02X}" for b in raw)


BAD_PATHS = [
    ("newline-attack", ATTACK),
    ("carriage-return", "cr\rpolicies/password.md:3:x.md"),
    ("tab", "tab\tname.md"),
    ("escape", "esc\x1b[2J.md"),
    ("del", "del\x7f.md"),
    ("c1-next-line", "nel\x85.md"),
    ("line-separator", "ls\u2028x.md"),
    ("control-in-a-directory", "dir\x01/x.md"),
    ("quoted-form-of-a-newline", '"a\\nb.md"'),
    ("not-utf8", "bad\udcff.md"),
]


@pytest.mark.parametrize("method", ["post", "put"])
@pytest.mark.parametrize("path", [p for _, p in BAD_PATHS], ids=[i for i, _ in BAD_PATHS])
async def test_create_and_update_refuse_a_forbidden_name(client, upstreams, error_shape, method, path):
    before = dict(upstreams.sandbox.docs)
    r = await getattr(client, method)(f"/api/documents/{url(path)}", json={"content": "x"})
    error = error_shape(r, 400, "invalid_path")
    assert error["message"].startswith("invalid path") and names.forbidden_char(error["message"]) is None
    assert upstreams.sandbox.docs == before, "nothing reached the sandbox"


async def test_a_printable_colon_name_is_allowed(client, upstreams):
    r = await client.post("/api/documents/a:12:b.md", json={"content": "x"})
    assert r.status_code == 201, r.text
    assert upstreams.sandbox.docs["a:12:b.md"] == "x"


def raw_multipart(*parts: tuple[bytes, bytes | None, bytes]) -> dict:
    body = b""
    for name, filename, value in parts:
        disposition = b'form-data; name="' + name + b'"' + (b'; filename="' + filename + b'"' if filename is not None else b"")
        body += b"--bb\r\nContent-Disposition: " + disposition + b"\r\n\r\n" + value + b"\r\n"
    body += b"--bb--\r\n"
    return {"content": body, "headers": {"content-type": "multipart/form-data; boundary=bb"}}


UPLOADS = [
    ("filename-escape", [(b"file", b"esc\x1b[2J.md", b"x")]),
    ("filename-tab", [(b"file", b"tab\tname.md", b"x")]),
    ("filename-del", [(b"file", b"del\x7f.md", b"x")]),
    ("filename-c1", [(b"file", "nel\x85.md".encode(), b"x")]),
    ("filename-line-separator", [(b"file", "ls\u2028x.md".encode(), b"x")]),
    ("filename-not-utf8", [(b"file", b"bad\xff\xfe.md", b"x")]),
    # The filename is refused even when `path` names the whole target and the filename goes unused.
    ("filename-bad-path-full", [(b"path", None, b"ok/full.md"), (b"file", b"esc\x1b.md", b"x")]),
    ("path-newline", [(b"path", None, ATTACK.encode()), (b"file", b"a.md", b"x")]),
    ("path-directory-control", [(b"path", None, b"dir\x01/"), (b"file", b"a.md", b"x")]),
    ("path-not-utf8", [(b"path", None, b"bad\xff/"), (b"file", b"a.md", b"x")]),
    ("path-quoted-newline", [(b"path", None, b'"a\\nb.md"'), (b"file", b"a.md", b"x")]),
]


@pytest.mark.parametrize("parts", [p for _, p in UPLOADS], ids=[i for i, _ in UPLOADS])
async def test_upload_refuses_a_forbidden_filename_or_path(client, upstreams, error_shape, parts):
    r = await client.post("/api/documents/upload", **raw_multipart(*parts))
    error = error_shape(r, 400, "invalid_path")
    assert names.forbidden_char(error["message"]) is None
    assert upstreams.sandbox.uploads == [], "refused before the upload started"


async def test_upload_filename_with_a_raw_newline_never_becomes_a_name(client, upstreams):
    # A raw newline inside a part header: refused as a name or as a malformed body, never stored.
    r = await client.post("/api/documents/upload", **raw_multipart((b"file", b"a\nb.md", b"x")))
    assert r.status_code == 400 and r.json()["error"]["code"] in ("invalid_path", "bad_request"), r.text
    assert upstreams.sandbox.uploads == []


async def test_the_sandbox_refusal_maps_to_the_same_code():
    exc = grpc.aio.AioRpcError(
        grpc.StatusCode.INVALID_ARGUMENT, grpc.aio.Metadata(), grpc.aio.Metadata(),
        details='invalid path "a\\nb.md": a name may not contain a newline',
    )
    assert errors.rpc_error(exc, "sandbox")[:2] == (400, "invalid_path")
    other = grpc.aio.AioRpcError(
        grpc.StatusCode.INVALID_ARGUMENT, grpc.aio.Metadata(), grpc.aio.Metadata(), details="bad regex",
    )
    assert errors.rpc_error(other, "sandbox")[:2] == (400, "invalid_argument")


async def test_openapi_declares_the_400_on_every_write_route(client):
    spec = (await client.get("/openapi.json")).json()
    routes = spec["paths"]
    for path, method in (("/api/documents/{path}", "post"), ("/api/documents/{path}", "put"),
                         ("/api/documents/upload", "post")):
        response = routes[path][method]["responses"]["400"]
        assert "invalid_path" in response["description"], (path, method)
        assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}


def test_tool_call_arguments_with_a_lone_surrogate_stay_as_sent():
    """A model's JSON may escape a lone surrogate ("\\ud800", e.g. a path it made up): decoded, no
    response could encode it as UTF-8, and the whole chat reply was a 500."""
    from fsagent.gateway.routes.chat import tool_call_json
    from fsagent.v1 import agent_pb2

    raw = '{"path": "a\\ud800b"}'
    call = agent_pb2.ToolCall(id="c1", name="cat", arguments_json=raw)
    assert tool_call_json(call)["arguments"] == raw
    call = agent_pb2.ToolCall(id="c2", name="cat", arguments_json='{"path": "a\\u00e9\\n.md"}')
    assert tool_call_json(call)["arguments"] == {"path": "a\u00e9\n.md"}
