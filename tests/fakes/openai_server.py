"""A scripted OpenAI-compatible Chat Completions server speaking the real wire format.

It stands in for an LLM (which cannot run here): the real `openai` client in the agent talks HTTP to
it, non-streaming or streaming (SSE `chat.completion.chunk` events, `tool_calls` deltas, a usage chunk,
`data: [DONE]`), on both the OpenAI route (`/v1/chat/completions`) and the Azure route
(`/openai/deployments/{deployment}/chat/completions?api-version=...`).

The default script is the 3-iteration conversation of the README: a grep, then two reads in
parallel, then an answer that quotes what the tools returned. Every request is recorded.

Faults (`Fault`, presets in `FAULTS`) stand in for a misbehaving endpoint: `fault` answers every
request, `faults` the next ones (one each, first in first out): an error status with headers
(429 with Retry-After, 500, 401), a 200 that is not a chat completion (HTML, invalid JSON,
`message: null`, no choices, an empty stream), a hung endpoint, a dropped connection.

Run it by hand: `uv run python tests/fakes/openai_server.py --port 8900`.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from tests.fakes.http_base import QuietHandler, serve_in_background, shut_down

Reply = dict[str, Any]  # {"content": str} or {"tool_calls": [{"name": str, "arguments": dict}]}
Script = Callable[[list[dict[str, Any]]], Reply]


def turns_since_user(messages: list[dict[str, Any]]) -> int:
    """How many assistant turns have happened since the last user message."""
    count = 0
    for message in reversed(messages):
        if message.get("role") == "user":
            break
        if message.get("role") == "assistant":
            count += 1
    return count


def three_step_script(messages: list[dict[str, Any]]) -> Reply:
    """grep -> two parallel cats of the first two files it found -> an answer quoting them."""
    step = turns_since_user(messages)
    if step == 0:
        return {"tool_calls": [{"name": "grep", "arguments": {"pattern": "password", "path": ".", "ignore_case": True}}]}
    if step == 1:
        grep_out = next(m["content"] for m in reversed(messages) if m.get("role") == "tool")
        files: list[str] = []
        for line in grep_out.splitlines():
            match = re.match(r"^(.+?):(\d+):", line)
            if match and match.group(1) not in files:
                files.append(match.group(1))
        files = (files + files)[:2] if files else ["README.md", "README.md"]
        return {
            "tool_calls": [
                {"name": "cat", "arguments": {"path": files[0], "start_line": 1, "end_line": 12}},
                {"name": "head", "arguments": {"path": files[1], "lines": 5}},
            ]
        }
    tool_outputs = [m["content"] for m in messages[-2:] if m.get("role") == "tool"]
    first_line = next((line for out in tool_outputs for line in out.splitlines() if line.strip()), "")
    return {"content": f"Scripted answer after {step} tool turns. First line read: {first_line}"}


@dataclass
class Fault:
    """One scripted misbehaviour, answered instead of the script's reply."""

    status: int = 200
    body: str | dict[str, Any] | None = None  # a dict is sent as JSON
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    hang: float = 0.0  # seconds before answering at all (cut short when the server stops)
    drop: bool = False  # close the connection without an answer


def _error(message: str, type_: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


FAULTS: dict[str, Fault] = {
    "rate_limited": Fault(429, _error("Rate limit reached for requests", "requests", "rate_limit_exceeded"),
                          headers={"retry-after": "30"}),
    "server_error": Fault(500, _error("The server had an error while processing your request.", "server_error")),
    "unauthorized": Fault(401, _error("Incorrect API key provided: sk-test. You can find your API key at "
                                      "https://platform.openai.com/account/api-keys.", "invalid_request_error",
                                      "invalid_api_key")),
    "html": Fault(200, "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
                       "<body><h1>Bad Gateway</h1></body></html>", content_type="text/html"),
    "garbage_json": Fault(200, '{"id": "chatcmpl-x", "choices": [{"index": 0, "message": {"role": "assis'),
    "message_null": Fault(200, {"id": "chatcmpl-null", "object": "chat.completion", "created": 0,
                                "model": "scripted-model",
                                "choices": [{"index": 0, "message": None, "finish_reason": "stop"}]}),
    "no_choices": Fault(200, {"id": "chatcmpl-none", "object": "chat.completion", "created": 0,
                              "model": "scripted-model", "choices": []}),
    "empty_stream": Fault(200, "", content_type="text/event-stream"),
    "garbage_stream": Fault(200, "data: {not json\n\n", content_type="text/event-stream"),
    "hang": Fault(hang=3600.0),
    "drop": Fault(drop=True),
}


@dataclass
class ScriptedOpenAI:
    script: Script = three_step_script
    host: str = "127.0.0.1"
    port: int = 0
    model: str = "scripted-model"
    delay: float = 0.0  # seconds before each reply (a slow model)
    fail_with: int | None = None  # answer every request with this HTTP status
    fault: Fault | None = None  # answer every request with this
    faults: list[Fault] = field(default_factory=list)  # answer the next requests with these, one each
    requests: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def azure_endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "ScriptedOpenAI":
        self._server = serve_in_background(self.host, self.port, _make_handler(self))
        self.port = self._server.server_address[1]
        return self

    def stop(self) -> None:
        self._stopping.set()  # hung requests end now
        shut_down(self._server)

    def next_fault(self) -> Fault | None:
        with self._lock:
            if self.faults:
                return self.faults.pop(0)
        return self.fault

    def record(self, path: str, headers: dict[str, str], body: dict[str, Any]) -> None:
        with self._lock:
            self.paths.append(path)
            self.headers.append(headers)
            self.requests.append(body)

    def reply_for(self, body: dict[str, Any]) -> Reply:
        return self.script(body.get("messages", []))


def _usage(body: dict[str, Any], reply: Reply) -> dict[str, int]:
    prompt = sum(len(json.dumps(m)) for m in body.get("messages", [])) // 4 + 1
    completion = len(json.dumps(reply)) // 4 + 1
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _tool_calls(reply: Reply) -> list[dict[str, Any]]:
    return [
        {
            "id": f"call_{uuid.uuid4().hex[:12]}",
            "type": "function",
            "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])
                         if not isinstance(call["arguments"], str) else call["arguments"]},
        }
        for call in reply.get("tool_calls", [])
    ]


def _make_handler(fake: ScriptedOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietHandler):
        def handle(self) -> None:
            try:
                super().handle()
            except (ConnectionResetError, BrokenPipeError):
                pass  # the client gave up (a timeout, a dropped-connection fault): nothing to answer

        def do_POST(self) -> None:  # noqa: N802 - http.server naming
            path = self.path.split("?")[0]
            if not (path.endswith("/chat/completions")):
                self._json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
                return
            length = int(self.headers.get("content-length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            fake.record(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            if fake.delay:
                time.sleep(fake.delay)
            fault = fake.next_fault()
            if fault is not None:
                self._fault(fault)
                return
            if fake.fail_with:
                self._json(fake.fail_with, {"error": {"message": "scripted failure", "type": "server_error"}})
                return
            reply = fake.reply_for(body)
            if body.get("stream"):
                self._stream(body, reply)
            else:
                self._complete(body, reply)

        def _complete(self, body: dict[str, Any], reply: Reply) -> None:
            calls = _tool_calls(reply)
            message: dict[str, Any] = {"role": "assistant", "content": reply.get("content")}
            if calls:
                message["tool_calls"] = calls
            self._json(200, {
                "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model") or fake.model,
                "choices": [{"index": 0, "message": message,
                             "finish_reason": "tool_calls" if calls else "stop"}],
                "usage": _usage(body, reply),
            })

        def _stream(self, body: dict[str, Any], reply: Reply) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("cache-control", "no-cache")
            self.send_header("connection", "close")
            self.end_headers()
            base = {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion.chunk",
                    "created": int(time.time()), "model": body.get("model") or fake.model}

            def send(choices: list[dict[str, Any]], **extra: Any) -> None:
                chunk = dict(base, choices=choices, **extra)
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()

            send([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
            calls = _tool_calls(reply)
            if calls:
                for index, call in enumerate(calls):
                    args = call["function"]["arguments"]
                    half = len(args) // 2
                    send([{"index": 0, "delta": {"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                          "function": {"name": call["function"]["name"], "arguments": args[:half]}}]},
                          "finish_reason": None}])
                    send([{"index": 0, "delta": {"tool_calls": [{"index": index,
                          "function": {"arguments": args[half:]}}]}, "finish_reason": None}])
            else:
                for word in re.findall(r"\S+\s*", reply.get("content") or ""):
                    send([{"index": 0, "delta": {"content": word}, "finish_reason": None}])
            send([{"index": 0, "delta": {}, "finish_reason": "tool_calls" if calls else "stop"}])
            if (body.get("stream_options") or {}).get("include_usage"):
                send([], usage=_usage(body, reply))
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
            self.close_connection = True

        def _fault(self, fault: Fault) -> None:
            if fault.hang and fake._stopping.wait(fault.hang):
                self.close_connection = True
                return
            if fault.drop:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            body = fault.body
            data = (json.dumps(body) if isinstance(body, dict) else (body or "")).encode()
            self.send_response(fault.status)
            self.send_header("content-type", fault.content_type)
            self.send_header("content-length", str(len(data)))
            for name, value in fault.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _json(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description="scripted OpenAI-compatible server (grep, two reads, answer)")
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    server = ScriptedOpenAI(host=args.host, port=args.port).start()
    print(f"scripted OpenAI-compatible server on {server.base_url} (Azure endpoint {server.azure_endpoint})", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
