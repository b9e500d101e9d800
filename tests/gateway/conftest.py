"""Gateway tests: a real uvicorn serving the real app, in front of real grpc.aio servers.

The servers are scripted test doubles of fsagent.v1.Agent and fsagent.v1.Sandbox (the real
services are tested on their own); they speak the real protocol through the shared interceptors,
so trace propagation, deadlines, status codes and cancellation behave exactly as in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

import grpc
import httpx
import pytest
import uvicorn

from fsagent.agent.server import error_metadata, status_for
from fsagent.common import grpcutil, propagation
from fsagent.common.settings import Settings
from fsagent.gateway.app import create_app
from fsagent.v1 import agent_pb2, agent_pb2_grpc, sandbox_pb2, sandbox_pb2_grpc

MAX_FILE_SIZE = 256 * 1024
MAX_MESSAGE_CHARS = 200


# --- scripted Agent --------------------------------------------------------------------------

async def scripted_failure(message: str, context: grpc.aio.ServicerContext) -> None:
    """`fail:<CODE>:<details>` aborts with that status; `typed:<code>:<retry after>:<details>` aborts
    as the real agent does (its status for the code, the code and the wait in the trailing
    metadata); `crash` raises (the interceptor hides it)."""
    if message.startswith("fail:"):
        _, code, details = (message.split(":", 2) + [""])[:3]
        await context.abort(grpc.StatusCode[code], details)
    if message.startswith("typed:"):
        _, code, wait, details = (message.split(":", 3) + ["", ""])[:4]
        await context.abort(status_for(code), details, error_metadata(code, float(wait or 0)))
    if message == "crash":
        raise RuntimeError("exploded in /srv/secret/agent.py")


@dataclass
class FakeAgent(agent_pb2_grpc.AgentServicer):
    requests: list[agent_pb2.ChatRequest] = field(default_factory=list)
    traceparents: list[str | None] = field(default_factory=list)
    trace_ids: list[str | None] = field(default_factory=list)
    sessions: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    stream_cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    dependencies: dict[str, str] = field(default_factory=dict)

    def reset(self) -> None:
        self.dependencies = {"cache": "serving", "sandbox": "serving"}
        self.requests.clear()
        self.traceparents.clear()
        self.trace_ids.clear()
        self.sessions = {"known": [("user", "hi"), ("assistant", "hello")]}
        self.stream_cancelled = asyncio.Event()
        self.chat_cancelled = asyncio.Event()

    def _seen(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        self.requests.append(request)
        self.traceparents.append(dict(context.invocation_metadata()).get("traceparent"))
        self.trace_ids.append(propagation.current_trace_id())

    @staticmethod
    def reply(session_id: str) -> agent_pb2.ChatResponse:
        return agent_pb2.ChatResponse(
            response="The handbook says hello.",
            session_id=session_id,
            tool_calls=[
                agent_pb2.ToolCall(id="c1", name="grep", arguments_json='{"pattern": "hello", "path": "."}'),
                agent_pb2.ToolCall(id="c2", name="cat", arguments_json="not json"),
            ],
            tool_results=[agent_pb2.ToolResult(
                tool_call_id="c1", tool_name="grep",
                result=agent_pb2.ToolOutcome(
                    success=True, stdout="a.md:1:hello", stderr="", return_code=0,
                    command="rg -- hello .", error="", error_code="", cached=True,
                    truncated=False, duration_seconds=0.25,
                ),
            )],
            iterations=2,
            usage=agent_pb2.Usage(input_tokens=120, output_tokens=30),
            trace_id=propagation.current_trace_id() or "",
            model="offline",
            status="completed",
        )

    @staticmethod
    def warned(reply: agent_pb2.ChatResponse) -> agent_pb2.ChatResponse:
        reply.warnings.append(agent_pb2.Problem(
            code="history_not_saved", component="cache",
            message="the answer was not saved to the session (the session store is unavailable)",
        ))
        return reply

    async def Chat(self, request, context):
        self._seen(request, context)
        await scripted_failure(request.message, context)
        if request.message == "unsaved":
            return self.warned(self.reply(request.session_id or "s-new"))
        if request.message == "slow":
            await asyncio.sleep(5)
        if request.message == "hang":
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.chat_cancelled.set()
                raise
        return self.reply(request.session_id or "s-new")

    async def ChatStream(self, request, context):
        self._seen(request, context)
        await scripted_failure(request.message, context)
        sid = request.session_id or "s-new"
        if request.message.startswith("error-first:"):  # refused before any work (history unreadable)
            code = request.message.split(":", 1)[1]
            yield agent_pb2.ChatEvent(session_id=sid, error=agent_pb2.ErrorEvent(code=code, message=f"{code} now"))
            return
        yield agent_pb2.ChatEvent(session_id=sid, status=agent_pb2.StatusEvent(message="thinking", iteration=1))
        if request.message == "hang":
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.stream_cancelled.set()
                raise
        if request.message == "linger":  # the graceful-shutdown test stops the server meanwhile
            await asyncio.sleep(1.0)
        if request.message == "break":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "connect to 10.1.2.3:50052 failed")
        if request.message.startswith("error-late:"):  # the turn fails after it started
            _, code, wait = (request.message.split(":", 2) + ["0"])[:3]
            yield agent_pb2.ChatEvent(session_id=sid, error=agent_pb2.ErrorEvent(
                code=code, message=f"{code} late", retry_after_seconds=float(wait)))
            return
        reply = self.reply(sid)
        if request.message == "unsaved":
            self.warned(reply)
        yield agent_pb2.ChatEvent(session_id=sid, tool_call=reply.tool_calls[0])
        yield agent_pb2.ChatEvent(session_id=sid, tool_result=reply.tool_results[0])
        yield agent_pb2.ChatEvent(session_id=sid, token=agent_pb2.TokenEvent(text="The handbook "))
        yield agent_pb2.ChatEvent(session_id="", token=agent_pb2.TokenEvent(text="says hello."))
        yield agent_pb2.ChatEvent(session_id=sid, done=reply)

    async def GetSession(self, request, context):
        messages = self.sessions.get(request.session_id)
        if messages is None:
            return agent_pb2.AgentSession(session_id=request.session_id, exists=False)
        return agent_pb2.AgentSession(
            session_id=request.session_id, exists=True, created=1.0, updated=2.0,
            messages=[
                agent_pb2.SessionMessage(role=role, content=text, json=json.dumps({"role": role, "content": text}))
                for role, text in messages
            ],
        )

    async def ClearSession(self, request, context):
        return agent_pb2.ClearSessionResponse(deleted=self.sessions.pop(request.session_id, None) is not None)

    async def CheckDependencies(self, request, context):
        return agent_pb2.CheckDependenciesResponse(dependencies=[
            agent_pb2.DependencyState(name=name, state=state) for name, state in self.dependencies.items()
        ])


# --- scripted Sandbox ------------------------------------------------------------------------

INITIAL_DOCS = {
    "a.md": "".join(f"line {i} hello\n" for i in range(1, 251)),
    "dir/b.md": "Alpha\nbeta\nHELLO there\n",
}


@dataclass
class FakeSandbox(sandbox_pb2_grpc.SandboxServicer):
    docs: dict[str, str] = field(default_factory=dict)
    uploads: list[dict[str, Any]] = field(default_factory=list)
    requests: list[Any] = field(default_factory=list)
    stream_cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    upload_cancelled: asyncio.Event = field(default_factory=asyncio.Event)

    def reset(self) -> None:
        self.docs = dict(INITIAL_DOCS)
        self.uploads.clear()
        self.requests.clear()
        self.stream_cancelled = asyncio.Event()
        self.upload_cancelled = asyncio.Event()

    def info(self, path: str) -> sandbox_pb2.DocumentInfo:
        return sandbox_pb2.DocumentInfo(path=path, size=len(self.docs[path].encode()), modified=1700000000.5)

    async def _check(self, path: str, context: grpc.aio.ServicerContext, must_exist: bool = True) -> None:
        if path.startswith("secret/"):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{path}: access denied")
        if ".." in path.split("/"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{path}: path escapes the data root")
        if path.endswith(".png"):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{path}: binary file, not text")
        if must_exist and path not in self.docs:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"{path}: no such document")

    async def ListDocuments(self, request, context):
        self.requests.append(request)
        prefix = request.path.strip("/")
        if prefix and not any(p.startswith(prefix + "/") for p in self.docs):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"{prefix}: no such directory")
        found = [p for p in sorted(self.docs) if not prefix or p.startswith(prefix + "/")]
        if not request.recursive:
            found = [p for p in found if "/" not in p[len(prefix) + 1 if prefix else 0:]]
        return sandbox_pb2.ListDocumentsResponse(documents=[self.info(p) for p in found])

    async def ReadDocument(self, request, context):
        await self._check(request.path, context)
        return sandbox_pb2.ReadDocumentResponse(info=self.info(request.path), content=self.docs[request.path])

    async def WriteDocument(self, request, context):
        await self._check(request.path, context, must_exist=False)
        if len(request.content) > 100_000:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "content over the size limit")
        exists = request.path in self.docs
        if request.mode in (sandbox_pb2.WRITE_MODE_CREATE, sandbox_pb2.WRITE_MODE_UNSPECIFIED) and exists:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, f"{request.path}: already exists")
        if request.mode == sandbox_pb2.WRITE_MODE_UPDATE and not exists:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"{request.path}: no such document")
        self.docs[request.path] = request.content
        return self.info(request.path)

    async def DeleteDocument(self, request, context):
        await self._check(request.path, context)
        del self.docs[request.path]
        return sandbox_pb2.DeleteDocumentResponse(path=request.path)

    async def UploadDocument(self, request_iterator, context):
        upload: dict[str, Any] = {"header": None, "chunks": [], "first": None}
        self.uploads.append(upload)
        try:
            async for chunk in request_iterator:
                kind = chunk.WhichOneof("part")
                upload["first"] = upload["first"] or kind
                if kind == "header":
                    upload["header"] = chunk.header
                    path, mode = chunk.header.path, chunk.header.mode
                    await self._check(path, context, must_exist=False)
                    if mode == sandbox_pb2.WRITE_MODE_CREATE and path in self.docs:
                        await context.abort(grpc.StatusCode.ALREADY_EXISTS, f"{path}: already exists")
                elif kind == "end":
                    upload["end"] = chunk.end.total_bytes
                else:
                    upload["chunks"].append(chunk.data)
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            self.upload_cancelled.set()
            raise
        if upload["header"] is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first chunk must be the header")
        # Like the real sandbox: nothing is committed without the end marker and its byte count.
        if upload.get("end") != sum(map(len, upload["chunks"])):
            await context.abort(grpc.StatusCode.ABORTED, "upload ended without its end marker")
        path = upload["header"].path
        self.docs[path] = b"".join(upload["chunks"]).decode()
        return self.info(path)

    async def StreamFile(self, request, context):
        self.requests.append(request)
        await self._check(request.path, context)
        lines = self.docs[request.path].splitlines()
        size = request.chunk_lines or 100
        for start in range(0, len(lines), size):
            last = start + size >= len(lines)
            yield sandbox_pb2.FileChunk(
                start_line=start + 1, lines=lines[start:start + size], last=last,
                total_lines=len(lines) if last else 0,
            )
            if request.path == "a.md" and size == 7:  # the disconnect test: stall after one chunk
                try:
                    await asyncio.sleep(30)
                except asyncio.CancelledError:
                    self.stream_cancelled.set()
                    raise

    async def StreamSearch(self, request, context):
        self.requests.append(request)
        is_dir = any(p.startswith(request.path.rstrip("/") + "/") for p in self.docs)
        if request.path != "." and not is_dir:
            await self._check(request.path, context)
        needle = request.pattern.lower() if request.ignore_case else request.pattern
        sent = 0
        for path in sorted(self.docs):
            if request.path not in (".", path) and not path.startswith(request.path.rstrip("/") + "/"):
                continue
            for number, line in enumerate(self.docs[path].splitlines(), 1):
                if needle in (line.lower() if request.ignore_case else line):
                    yield sandbox_pb2.SearchMatch(path=path, line_number=number, line=line)
                    sent += 1
                    if sent >= (request.max_results or 200):
                        return


# --- fixtures --------------------------------------------------------------------------------

@dataclass
class Upstreams:
    agent: FakeAgent
    sandbox: FakeSandbox
    agent_addr: str
    sandbox_addr: str
    agent_health: Any
    sandbox_health: Any

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = dict(
            agent_addr=self.agent_addr, sandbox_addr=self.sandbox_addr, api_keys="",
            max_file_size=MAX_FILE_SIZE, max_message_chars=MAX_MESSAGE_CHARS, cors_origins="",
        )
        values.update(overrides)
        return Settings(_env_file=None, **values)


async def _serve(add: Callable[[grpc.aio.Server], None], name: str) -> tuple[grpc.aio.Server, str, Any]:
    server = grpcutil.server()
    add(server)
    health = grpcutil.add_health(server, [name])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await grpcutil.set_serving(health, [name], True)
    return server, f"127.0.0.1:{port}", health


@pytest.fixture(scope="session")
async def upstreams() -> AsyncIterator[Upstreams]:
    agent, sandbox = FakeAgent(), FakeSandbox()
    agent_server, agent_addr, agent_health = await _serve(
        lambda s: agent_pb2_grpc.add_AgentServicer_to_server(agent, s), "fsagent.v1.Agent"
    )
    sandbox_server, sandbox_addr, sandbox_health = await _serve(
        lambda s: sandbox_pb2_grpc.add_SandboxServicer_to_server(sandbox, s), "fsagent.v1.Sandbox"
    )
    yield Upstreams(agent, sandbox, agent_addr, sandbox_addr, agent_health, sandbox_health)
    await agent_server.stop(None)
    await sandbox_server.stop(None)


@pytest.fixture(autouse=True)
def _fresh_upstreams(request: pytest.FixtureRequest) -> None:
    if "upstreams" in request.fixturenames:
        ups: Upstreams = request.getfixturevalue("upstreams")
        ups.agent.reset()
        ups.sandbox.reset()


class _TestServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[override]
        yield  # leave the test runner's signal handlers alone


@contextlib.asynccontextmanager
async def running_gateway(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app under a real uvicorn on 127.0.0.1:<free port>, and a client for it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(settings), log_config=None, access_log=False, lifespan="on")
    server = _TestServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield client
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


@pytest.fixture(scope="session")
async def client(upstreams: Upstreams) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway with default test settings (auth off)."""
    async with running_gateway(upstreams.settings()) as c:
        yield c


@pytest.fixture
def gateway(upstreams: Upstreams) -> Callable[..., Any]:
    """Start another gateway with settings overrides: `async with gateway(api_keys="k") as c:`."""
    return lambda **overrides: running_gateway(upstreams.settings(**overrides))


@pytest.fixture
def dead_addr() -> str:
    """An address where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def parse_sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        if data:
            events.append((name, json.loads("\n".join(data))))
    return events


@pytest.fixture
def sse() -> Callable[[str], list[tuple[str, dict[str, Any]]]]:
    return parse_sse


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, str]:
    """The response is `status` in the one error shape, with nothing internal in it."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    for leak in ("Traceback", "File \"", "/srv/", "127.0.0.1", "10.1.2.3", "ipv4:", "debug_error_string"):
        assert leak not in response.text, response.text
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


@pytest.fixture
def error_shape() -> Callable[..., dict[str, str]]:
    return assert_error
