"""Chat with the agent, as one JSON reply or as Server-Sent Events, and manage sessions.

A reply is never a plain success when something went wrong: an answer that cannot be trusted is an
error (the agent's typed code, errors.AGENT_ERRORS), and an answer given despite a problem carries
`warnings` (`history_not_saved`, `tools_partially_unavailable`, `tool_calls_capped`), listed again in the header
`X-Fsagent-Warnings`; in a stream, in the `done` event.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any, Iterable

from fastapi import APIRouter, Depends, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette import EventSourceResponse

from fsagent.common import propagation
from fsagent.common.identifiers import SESSION_ID_PATTERN
from fsagent.gateway import sse
from fsagent.gateway.clients import UNARY_TIMEOUT, AgentDep, SettingsDep
from fsagent.gateway import errors
from fsagent.gateway.declared import responses
from fsagent.gateway.errors import ApiError
from fsagent.gateway.metrics import InstrumentedRoute
from fsagent.gateway.ratelimit import chat_rate_limit
from fsagent.v1 import agent_pb2


router = APIRouter(prefix="/api/chat", tags=["chat"], route_class=InstrumentedRoute)


# --- models (they document the API; replies are built straight from the protobuf messages) ----

class ChatRequest(BaseModel):
    message: str = Field(
        min_length=1, pattern=r"\S",
        description="The question, not only white space (at most FSAGENT_MAX_MESSAGE_CHARS characters).",
    )
    session_id: str | None = Field(
        None, pattern=SESSION_ID_PATTERN, description="Continue this session; omit to start one."
    )


class ToolCall(BaseModel):
    id: str
    name: str
    arguments: dict[str, Any] | str = Field(
        description="The parsed JSON object, or the raw string when it is not one."
    )


class ToolOutcome(BaseModel):
    success: bool
    stdout: str
    stderr: str
    return_code: int
    command: str
    error: str
    cached: bool
    truncated: bool
    duration: float = Field(description="Seconds.")


class ToolResult(BaseModel):
    tool_call_id: str
    tool_name: str
    result: ToolOutcome


class Usage(BaseModel):
    input_tokens: int
    output_tokens: int


class Warning_(BaseModel):
    code: str = Field(description="`history_not_saved`, `tools_partially_unavailable`, `tool_calls_capped`.")
    message: str
    component: str = Field(description="The dependency at fault: `cache`, `sandbox`, `llm`.")


WARNINGS_HEADER = "X-Fsagent-Warnings"


class ChatReply(BaseModel):
    response: str
    session_id: str
    tool_calls: list[ToolCall]
    tool_results: list[ToolResult]
    iterations: int
    usage: Usage
    trace_id: str = Field(description="W3C trace id; also the Langfuse trace id.")
    model: str
    warnings: list[Warning_] = Field(
        description="What went wrong although the question was answered; empty when nothing did. "
        "The codes are also in the X-Fsagent-Warnings header."
    )


class SessionMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | None = None


class SessionInfo(BaseModel):
    session_id: str
    created: float = Field(description="Unix seconds.")
    updated: float = Field(description="Unix seconds.")
    message_count: int
    messages: list[SessionMessage]


class SessionDeleted(BaseModel):
    session_id: str
    deleted: bool


# --- protobuf -> JSON ------------------------------------------------------------------------

def _arguments(raw: str) -> dict[str, Any] | str:
    try:
        parsed = json.loads(raw)
        # A lone surrogate escaped in the model's JSON ("\ud800") decodes to text no response
        # can encode as UTF-8 (a 500 for the whole reply): such arguments stay as sent.
        json.dumps(parsed, ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeEncodeError):
        return raw
    return parsed if isinstance(parsed, dict) else raw


def tool_call_json(call: agent_pb2.ToolCall) -> dict[str, Any]:
    return {"id": call.id, "name": call.name, "arguments": _arguments(call.arguments_json)}


def tool_result_json(result: agent_pb2.ToolResult) -> dict[str, Any]:
    r = result.result
    return {
        "tool_call_id": result.tool_call_id,
        "tool_name": result.tool_name,
        "result": {
            "success": r.success, "stdout": r.stdout, "stderr": r.stderr,
            "return_code": r.return_code, "command": r.command, "error": r.error,
            "cached": r.cached, "truncated": r.truncated, "duration": r.duration_seconds,
        },
    }


def chat_json(reply: agent_pb2.ChatResponse) -> dict[str, Any]:
    return {
        "response": reply.response,
        "session_id": reply.session_id,
        "tool_calls": [tool_call_json(c) for c in reply.tool_calls],
        "tool_results": [tool_result_json(r) for r in reply.tool_results],
        "iterations": reply.iterations,
        "usage": {
            "input_tokens": reply.usage.input_tokens, "output_tokens": reply.usage.output_tokens
        },
        "trace_id": reply.trace_id or propagation.current_trace_id() or "",
        "model": reply.model,
        "warnings": [
            {"code": w.code, "message": w.message, "component": w.component} for w in reply.warnings
        ],
    }


def warning_headers(reply: agent_pb2.ChatResponse) -> dict[str, str]:
    codes = list(dict.fromkeys(w.code for w in reply.warnings))
    return {WARNINGS_HEADER: ", ".join(codes)} if codes else {}


def _message_json(message: agent_pb2.SessionMessage) -> dict[str, Any]:
    try:
        full = json.loads(message.json) if message.json else None
    except ValueError:
        full = None
    out = full if isinstance(full, dict) else {}
    out["role"] = message.role
    out.setdefault("content", message.content)
    return out


# --- dependencies ----------------------------------------------------------------------------

def chat_request(
    body: ChatRequest, request: Request, settings: SettingsDep
) -> agent_pb2.ChatRequest:
    """The validated request as the agent's message (the length limit comes from the settings)."""
    limit = settings.max_message_chars
    if not body.message.strip():  # the agent's own rule (Python's white space, wider than the pattern's)
        raise RequestValidationError([{
            "loc": ("body", "message"), "type": "string_pattern_mismatch",
            "msg": "String should not be only white space",
        }])
    if len(body.message) > limit:
        raise RequestValidationError([{
            "loc": ("body", "message"), "type": "string_too_long",
            "msg": f"String should have at most {limit} characters",
        }])
    return agent_pb2.ChatRequest(
        message=body.message,
        session_id=body.session_id or "",
        user_id=getattr(request.state, "user_id", ""),
    )


ChatRequestDep = Annotated[agent_pb2.ChatRequest, Depends(chat_request)]
SessionId = Annotated[str, Path(pattern=SESSION_ID_PATTERN)]


# --- routes ----------------------------------------------------------------------------------

_CHAT_400 = (
    "`bad_request`: the body is not JSON; `invalid_argument`, `failed_precondition`: the agent "
    "refused the request (a session that is busy)."
)


@router.post(
    "", response_model=ChatReply, summary="Ask a question and wait for the answer",
    responses=responses(400, chat=True, s400=_CHAT_400), dependencies=[Depends(chat_rate_limit)],
)
async def chat(req: ChatRequestDep, request: Request, agent: AgentDep, settings: SettingsDep) -> JSONResponse:
    call = agent.Chat(req, timeout=settings.chat_timeout)
    # A client that gives up cancels the turn downstream (LLM calls cost money), as the stream does.
    watcher = asyncio.create_task(_cancel_on_disconnect(request, call))
    try:
        reply = await call
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled():  # we cancelled it: nobody is listening
            return JSONResponse(
                {"error": {"code": "client_closed", "message": "the client closed the connection"}},
                status_code=499,
            )
        raise
    finally:
        watcher.cancel()
    return JSONResponse(chat_json(reply), headers=warning_headers(reply))


async def _cancel_on_disconnect(request: Request, call: Any) -> None:
    # The body has been read, so the next ASGI message is the disconnect (if the client leaves).
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            call.cancel()
            return


def _chat_events(event: agent_pb2.ChatEvent, session: list[str]) -> Iterable[sse.Event]:
    if event.session_id:
        session[0] = event.session_id
    sid = {"session_id": session[0]}
    kind = event.WhichOneof("event")
    if kind == "status":
        status = event.status
        yield "status", {**sid, "message": status.message, "iteration": status.iteration}
    elif kind == "token":
        yield "token", {**sid, "text": event.token.text}
    elif kind == "tool_call":
        yield "tool_call", {**sid, **tool_call_json(event.tool_call)}
    elif kind == "tool_result":
        yield "tool_result", {**sid, **tool_result_json(event.tool_result)}
    elif kind == "done":
        done = chat_json(event.done)
        done["session_id"] = done["session_id"] or session[0]
        yield "done", done
    elif kind == "error":
        # The agent's typed code and message, as the JSON route answers them (errors.AGENT_ERRORS).
        _, _, _, headers = errors.agent_error(event.error.code, event.error.message, event.error.retry_after_seconds)
        wait = {"retry_after": int(headers["Retry-After"])} if "Retry-After" in headers else {}
        yield "error", {**sid, "code": event.error.code, "message": event.error.message, **wait}


def _refuse_at_once(event: agent_pb2.ChatEvent) -> ApiError | None:
    """A stream whose first event is already an error (the session's history cannot be read) is
    answered with that error's HTTP status, like any failure before the first byte."""
    if event.WhichOneof("event") != "error":
        return None
    status, code, message, headers = errors.agent_error(
        event.error.code, event.error.message, event.error.retry_after_seconds
    )
    return ApiError(status, code, message, headers)


@router.post(
    "/stream",
    summary="Ask a question and follow the work as Server-Sent Events",
    response_class=EventSourceResponse,
    responses={200: {
        "content": {"text/event-stream": {}},
        "description": "Events `status`, `token`, `tool_call`, `tool_result`, then `done` (the full "
        "chat reply, with `warnings`) or `error` (`code`, `message`, `retry_after` for a rate limit: "
        "the codes of the JSON route); every event's data is a JSON object with `session_id`.",
    }, **responses(400, chat=True, s400=_CHAT_400)}, dependencies=[Depends(chat_rate_limit)],
)
async def chat_stream(
    req: ChatRequestDep, agent: AgentDep, settings: SettingsDep
) -> EventSourceResponse:
    session = [req.session_id]
    call = agent.ChatStream(req, timeout=settings.chat_timeout)
    return await sse.stream_response(
        call,
        upstream="agent",
        shutdown_grace=settings.shutdown_grace,
        render=lambda event: _chat_events(event, session),
        error_extra=lambda: {"session_id": session[0]},
        reject=_refuse_at_once,
    )


async def _existing_session(session_id: str, agent: AgentDep) -> agent_pb2.AgentSession:
    request = agent_pb2.AgentSessionRequest(session_id=session_id)
    session = await agent.GetSession(request, timeout=UNARY_TIMEOUT)
    if not session.exists:
        raise ApiError(404, "not_found", f"session {session_id} not found")
    return session


_SESSION_ERRORS = responses(
    404, s404="`not_found`: no such session.",
    s503="`session_store_unavailable` (the cache is down), `unavailable` (the agent).",
)


@router.get(
    "/sessions/{session_id}", response_model=SessionInfo, summary="A session and its messages",
    responses=_SESSION_ERRORS,
)
async def get_session(session_id: SessionId, agent: AgentDep) -> dict[str, Any]:
    session = await _existing_session(session_id, agent)
    return {
        "session_id": session.session_id or session_id,
        "created": session.created,
        "updated": session.updated,
        "message_count": len(session.messages),
        "messages": [_message_json(msg) for msg in session.messages],
    }


@router.get(
    "/sessions/{session_id}/history", response_model=list[SessionMessage],
    summary="A session's messages, oldest first", responses=_SESSION_ERRORS,
)
async def get_history(session_id: SessionId, agent: AgentDep) -> list[dict[str, Any]]:
    session = await _existing_session(session_id, agent)
    return [_message_json(msg) for msg in session.messages]


@router.delete(
    "/sessions/{session_id}", response_model=SessionDeleted, summary="Forget a session",
    responses=_SESSION_ERRORS,
)
async def delete_session(session_id: SessionId, agent: AgentDep) -> dict[str, Any]:
    request = agent_pb2.AgentSessionRequest(session_id=session_id)
    reply = await agent.ClearSession(request, timeout=UNARY_TIMEOUT)
    if not reply.deleted:
        raise ApiError(404, "not_found", f"session {session_id} not found")
    return {"session_id": session_id, "deleted": True}
