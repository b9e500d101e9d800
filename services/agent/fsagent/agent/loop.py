"""The agentic loop: one async generator of `ChatEvent`s, used by Chat (which keeps the last event)
and ChatStream (which forwards every event).

    load the session -> [status -> LLM call -> (tokens) -> tool_call... -> tool batch -> tool_result...]
    ... at most FSAGENT_MAX_ITERATIONS model calls -> save the session -> done

The turn, each iteration, each LLM call and each tool call are Langfuse observations (tracing.py;
no-ops without keys). A turn whose answer cannot be trusted ends with an `error` event and saves
nothing: an LLM failure (code `llm_<reason>`, an empty answer is `llm_upstream`), a session whose
history cannot be read (`history_unavailable`), a sandbox that ran none of the tool calls
(`sandbox_unavailable`), the turn's deadline running out while tools run (`tool_timeout`). A turn
that answers despite a problem says so in `done.warnings`: `history_not_saved`,
`tools_partially_unavailable`, `tool_calls_capped`. Every hop gets what is left of the turn's deadline
(budget.py).

Tool calls are capped: at most FSAGENT_MAX_TOOL_CALLS_PER_TURN of one model turn run, and at most
FSAGENT_MAX_TOOL_CALLS_PER_CHAT in the whole chat request. A call past a cap is not run (nor shown
as a tool_call event): the model gets a tool result saying which limit it met and how to go on;
once the per-chat cap is reached the model is told to answer with what it has and is offered no
more tools.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Sequence

from fsagent.agent import metrics
from fsagent.agent.budget import HISTORY, LLM, SAVE, TOOLS, Budget
from fsagent.agent.llm.base import (
    TOOL_ERROR_PREFIX, AssistantTurn, LLMError, LLMProvider, Message, StreamDelta, Tool, ToolCallRequest, Usage,
)
from fsagent.agent.orchestrator import SANDBOX_UNAVAILABLE, TOOL_TIMEOUT, ToolOrchestrator, ToolRun
from fsagent.agent.prompt import SYSTEM_PROMPT
from fsagent.agent.sessions import SESSION_TIMEOUT, SessionStore, SessionStoreUnavailable, new_session_id
from fsagent.agent.tracing import AgentTracer
from fsagent.common import propagation
from fsagent.common.metrics import exemplar
from fsagent.common.settings import Settings
from fsagent.v1 import agent_pb2, cache_pb2_grpc, sandbox_pb2_grpc

log = logging.getLogger(__name__)


def default_tools() -> list[Tool]:
    from fsagent.common.toolspec import openai_tools

    return openai_tools()


class TurnError(Exception):
    """A turn that must end with an error event: `code` and `message` are for the caller."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(slots=True)
class _TurnState:
    usage: Usage = field(default_factory=Usage)
    iterations: int = 0
    tool_calls: list[agent_pb2.ToolCall] = field(default_factory=list)
    tool_results: list[agent_pb2.ToolResult] = field(default_factory=list)
    model: str = ""
    reached: int = 0  # tool calls the sandbox answered (successfully or not)
    unreachable: int = 0  # tool calls that never reached it
    ran: int = 0  # tool calls run (sent to the sandbox) in this chat
    capped: dict[str, int] = field(default_factory=dict)  # calls not run, by limit ("turn", "chat")

# error_code of the tool result of a call the agent did not run because of a cap.
TOOL_CALL_LIMIT = "tool_call_limit"
CHAT_CAP_REACHED = (
    "The tool-call limit for this question ({limit}, FSAGENT_MAX_TOOL_CALLS_PER_CHAT) has been reached: no "
    "more tools can run. Answer now with what the tool results above show, and say what could not be checked."
)


class Agent:
    """Holds the long-lived pieces (model, stubs, tool schema) and runs chat turns."""

    def __init__(
        self,
        settings: Settings,
        llm: LLMProvider,
        sandbox: sandbox_pb2_grpc.SandboxStub,
        cache: cache_pb2_grpc.CacheStub,
        tools: list[Tool] | None = None,
        tracer: AgentTracer | None = None,
    ) -> None:
        self.settings = settings
        self.tracer = tracer or AgentTracer(settings)
        self.llm = llm
        self.sessions = SessionStore(cache, settings)
        self.tools = default_tools() if tools is None else tools
        names = [tool["function"]["name"] for tool in self.tools]
        self.orchestrator = ToolOrchestrator(sandbox, settings, names, self.tracer)
        metrics.initialise(llm.provider, llm.model, names)

    # --- one chat turn -----------------------------------------------------------------------

    async def run(
        self, message: str, session_id: str = "", user_id: str = "", *, stream: bool = False,
        budget: Budget | None = None, new_session: bool | None = None,
    ) -> AsyncIterator[agent_pb2.ChatEvent]:
        """Every event of one turn; the last one is `done` or `error`. `user_id` is for tracing.

        A `new_session` (default: no `session_id` given) has no history to load; `budget` is the
        turn's deadline (default: FSAGENT_CHAT_TIMEOUT from now)."""
        if new_session is None:
            new_session = not session_id
        session_id = session_id or new_session_id()
        budget = budget or Budget.start(self.settings.chat_timeout)
        state = _TurnState(model=self.llm.model)
        status: str | None = None
        started = time.perf_counter()
        metrics.AGENT_CHATS_IN_PROGRESS.inc()
        trace = propagation.current()

        def event(**kwargs: Any) -> agent_pb2.ChatEvent:
            return agent_pb2.ChatEvent(session_id=session_id, **kwargs)

        with self.tracer.turn(
            trace_id=trace.trace_id if trace else None,
            parent_span_id=trace.span_id if trace else None,
            session_id=session_id, user_id=user_id, message=message, model=self.llm.model,
        ) as root:
            try:
                budget.phase = HISTORY
                history: list[Message] = []
                if not new_session:
                    try:
                        history = await self.sessions.history(session_id, timeout=budget.cap(SESSION_TIMEOUT))
                    except SessionStoreUnavailable:
                        raise TurnError(
                            "history_unavailable",
                            "the conversation history of this session cannot be read (the session store is "
                            "unavailable): ask again later, or start a new conversation without session_id",
                        ) from None
                messages: list[Message] = [
                    {"role": "system", "content": SYSTEM_PROMPT},
                    *history,
                    {"role": "user", "content": message},
                ]
                answer, outcome = "", metrics.MAX_ITERATIONS
                tools = self.tools
                for iteration in range(1, self.settings.max_iterations + 1):
                    state.iterations = iteration
                    yield event(status=agent_pb2.StatusEvent(message="thinking", iteration=iteration))
                    budget.phase = LLM
                    with self.tracer.iteration(iteration):
                        turn: AssistantTurn | None = None
                        async for item in self._call_llm(
                            messages, stream=stream, iteration=iteration, deadline=budget.deadline, tools=tools
                        ):
                            if isinstance(item, StreamDelta):
                                yield event(token=agent_pb2.TokenEvent(text=item.text))
                            else:
                                turn = item
                        assert turn is not None  # providers always end with the turn
                        state.usage.add(turn.usage)
                        state.model = turn.model or state.model
                        if not turn.tool_calls:
                            if not turn.content.strip():
                                reason = f" (finish_reason {turn.finish_reason})" if turn.finish_reason not in ("", "stop") else ""
                                raise LLMError("upstream", f"the model returned an empty answer{reason}", retryable=False)
                            answer = turn.content
                            outcome = metrics.COMPLETED
                            break
                        if iteration == self.settings.max_iterations:
                            break  # no model call left to read the results: do not run the tools
                        messages.append(turn.to_message())
                        allowed, refused = self._cap(turn.tool_calls, state)
                        for call in allowed:
                            proto_call = agent_pb2.ToolCall(id=call.id, name=call.name, arguments_json=call.arguments_json)
                            state.tool_calls.append(proto_call)
                            yield event(tool_call=proto_call)
                        budget.phase = TOOLS
                        runs = await self._run_tools(allowed, iteration=iteration, deadline=budget.deadline) if allowed else []
                        state.ran += len(allowed)
                        for run in runs:
                            result = run.to_result()
                            state.tool_results.append(result)
                            messages.append(run.to_message())
                            yield event(tool_result=result)
                        messages.extend(refused)
                        if runs:
                            self._check_tools(runs, state)
                        if tools and state.ran >= self.settings.max_tool_calls_per_chat:
                            tools = []
                            messages.append({"role": "system", "content": CHAT_CAP_REACHED.format(
                                limit=self.settings.max_tool_calls_per_chat)})
                if outcome == metrics.MAX_ITERATIONS:
                    answer = (
                        f"I stopped after {self.settings.max_iterations} model calls (the limit per question) "
                        "before reaching a final answer. Try a narrower question, or ask again to continue."
                    )
                budget.phase = SAVE
                saved = await self.sessions.save_turn(session_id, message, answer, {
                    "status": outcome, "model": state.model, "iterations": state.iterations,
                    "tool_calls": [{"name": c.name, "arguments": c.arguments_json} for c in state.tool_calls],
                }, timeout=budget.cap(SESSION_TIMEOUT, floor=0.2))
                warnings = self._warnings(state, saved)
                status = outcome
                root.update(
                    output=answer,
                    metadata={"status": outcome, "iterations": state.iterations, "model": state.model,
                              "tool_calls": len(state.tool_calls), "input_tokens": state.usage.input_tokens,
                              "output_tokens": state.usage.output_tokens,
                              "warnings": [w.code for w in warnings]},
                    **({"level": "WARNING", "status_message": "max_iterations"} if outcome == metrics.MAX_ITERATIONS
                       else {"level": "WARNING", "status_message": ", ".join(w.code for w in warnings)} if warnings
                       else {}),
                )
                yield event(done=self._response(session_id, answer, state, outcome, warnings))
            except LLMError as exc:
                status = metrics.ERROR
                log.warning("llm call failed", extra={"code": exc.code, "reason": exc.message})
                root.update(level="ERROR", status_message=f"llm_{exc.code}: {exc.message}")
                yield event(error=agent_pb2.ErrorEvent(
                    code=f"llm_{exc.code}", message=exc.message, retry_after_seconds=exc.retry_after or 0.0,
                ))
            except TurnError as exc:
                status = metrics.ERROR
                log.warning("chat turn failed", extra={"code": exc.code, "reason": exc.message})
                root.update(level="ERROR", status_message=f"{exc.code}: {exc.message}")
                yield event(error=agent_pb2.ErrorEvent(code=exc.code, message=exc.message))
            except (asyncio.CancelledError, GeneratorExit):
                status = status or metrics.CANCELLED
                raise
            except Exception:
                status = metrics.ERROR
                log.exception("chat turn failed")
                root.update(level="ERROR", status_message="internal error")
                yield event(error=agent_pb2.ErrorEvent(code="internal", message="internal error"))
            finally:
                final = status or metrics.CANCELLED
                metrics.AGENT_CHATS_IN_PROGRESS.dec()
                metrics.AGENT_COMPLETIONS.labels(final).inc()
                metrics.AGENT_EXECUTION_DURATION.labels(final).observe(
                    time.perf_counter() - started, exemplar=exemplar()
                )
                if state.iterations:
                    metrics.AGENT_ITERATIONS.observe(state.iterations)

    def _cap(self, calls: Sequence[ToolCallRequest], state: _TurnState) -> tuple[list[ToolCallRequest], list[Message]]:
        """The calls of one model turn that may run, and a tool message for each one that may not."""
        per_turn, per_chat = self.settings.max_tool_calls_per_turn, self.settings.max_tool_calls_per_chat
        room = max(0, min(per_turn, per_chat - state.ran))
        limit = "turn" if per_turn <= per_chat - state.ran else "chat"
        refused = list(calls[room:])
        if not refused:
            return list(calls), []
        state.capped[limit] = state.capped.get(limit, 0) + len(refused)
        metrics.TOOL_CALLS_CAPPED.labels(limit).inc(len(refused))
        log.warning("tool calls capped", extra={"limit": limit, "refused": len(refused), "requested": len(calls)})
        if limit == "turn":
            why = (f"not run: at most {per_turn} tool calls run per model turn (FSAGENT_MAX_TOOL_CALLS_PER_TURN) and "
                   f"this turn asked for {len(calls)}. Use the results you have; if you still need this call, ask for "
                   "it again in your next turn, fewer at a time, or use a narrower search (grep with a path) instead.")
        else:
            why = (f"not run: the limit of {per_chat} tool calls per question (FSAGENT_MAX_TOOL_CALLS_PER_CHAT) is "
                   "reached. Answer with the results you have, and say what could not be checked.")
        content = f"{TOOL_ERROR_PREFIX} [{TOOL_CALL_LIMIT}]: {why}"
        return list(calls[:room]), [{"role": "tool", "tool_call_id": c.id, "content": content} for c in refused]

    @staticmethod
    def _check_tools(runs: Sequence[ToolRun], state: _TurnState) -> None:
        """Count what reached the sandbox; end the turn when an answer could only be made up."""
        codes = [run.outcome.error_code for run in runs]
        if TOOL_TIMEOUT in codes:
            raise TurnError(
                "tool_timeout",
                "the tools did not finish within the chat's time limit (FSAGENT_CHAT_TIMEOUT): ask a narrower question",
            )
        unreachable = codes.count(SANDBOX_UNAVAILABLE)
        state.unreachable += unreachable
        state.reached += len(codes) - unreachable
        if unreachable and state.reached == 0:
            # Not one tool call ran this turn: whatever the model said next would not come from the documents.
            raise TurnError(
                "sandbox_unavailable",
                "the sandbox is unavailable: none of the tool calls could run, so there is no answer from the documents",
            )

    @staticmethod
    def _warnings(state: _TurnState, saved: bool) -> list[agent_pb2.Problem]:
        warnings = []
        if state.capped:
            capped = sum(state.capped.values())
            limits = " and ".join(
                f"{n} past the {'per-turn limit (FSAGENT_MAX_TOOL_CALLS_PER_TURN)' if k == 'turn' else 'per-chat limit (FSAGENT_MAX_TOOL_CALLS_PER_CHAT)'}"
                for k, n in sorted(state.capped.items(), reverse=True))
            warnings.append(agent_pb2.Problem(
                code="tool_calls_capped", component="agent",
                message=f"{capped} tool calls the model asked for were not run ({limits}): "
                        "the answer may be incomplete; a narrower question needs fewer",
            ))
        if state.unreachable:
            total = state.unreachable + state.reached
            warnings.append(agent_pb2.Problem(
                code="tools_partially_unavailable", component="sandbox",
                message=f"{state.unreachable} of {total} tool calls could not run (the sandbox was unavailable): "
                        "the answer may be incomplete",
            ))
        if not saved:
            warnings.append(agent_pb2.Problem(
                code="history_not_saved", component="cache",
                message="the answer was not saved to the session (the session store is unavailable): "
                        "a follow-up question in this session will not see this turn",
            ))
        return warnings

    def _response(
        self, session_id: str, answer: str, state: _TurnState, status: str,
        warnings: Sequence[agent_pb2.Problem] = (),
    ) -> agent_pb2.ChatResponse:
        return agent_pb2.ChatResponse(
            response=answer,
            session_id=session_id,
            tool_calls=state.tool_calls,
            tool_results=state.tool_results,
            iterations=state.iterations,
            usage=agent_pb2.Usage(input_tokens=state.usage.input_tokens, output_tokens=state.usage.output_tokens),
            trace_id=propagation.current_trace_id() or "",
            model=state.model,
            status=status,
            warnings=warnings,
        )

    # --- the two steps a tracer wraps --------------------------------------------------------

    async def _call_llm(
        self, messages: list[Message], *, stream: bool, iteration: int, deadline: float | None = None,
        tools: list[Tool] | None = None,
    ) -> AsyncIterator[StreamDelta | AssistantTurn]:
        """One model call: text deltas (when streaming), then the AssistantTurn. `tools`: what the
        model is offered (default all; none once the per-chat tool-call cap is reached)."""
        tools = self.tools if tools is None else tools
        provider, model = self.llm.provider, self.llm.model
        started = time.perf_counter()
        outcome = "cancelled"
        generation = self.tracer.generation(model=model, provider=provider, messages=messages)
        observation = generation.__enter__()
        try:
            if stream:
                async for item in self.llm.stream(messages, tools, deadline=deadline):
                    if isinstance(item, AssistantTurn):
                        turn = item
                    yield item
            else:
                turn = await self.llm.complete(messages, tools, deadline=deadline)
                yield turn
            outcome = "success"
        except LLMError as exc:
            outcome = exc.code
            raise
        except Exception:
            outcome = "error"
            raise
        except BaseException as exc:
            if outcome == "cancelled":
                observation.update(level="WARNING", status_message="cancelled")
            else:
                observation.update(level="ERROR", status_message=str(getattr(exc, "message", "")) or outcome)
            generation.__exit__(None, None, None)
            raise
        finally:
            metrics.LLM_CALLS.labels(provider, model, outcome).inc()
            metrics.LLM_CALL_DURATION.labels(provider, model).observe(
                time.perf_counter() - started, exemplar=exemplar()
            )
        cost = self._cost(turn.usage)
        observation.update(
            output=turn.to_message(),
            model=turn.model or model,
            usage_details={"input": turn.usage.input_tokens, "output": turn.usage.output_tokens},
            **({"cost_details": cost} if cost else {}),
            metadata={"iteration": iteration, "finish_reason": turn.finish_reason, "tool_calls": len(turn.tool_calls)},
        )
        generation.__exit__(None, None, None)
        for kind, tokens in (("input", turn.usage.input_tokens), ("output", turn.usage.output_tokens)):
            metrics.LLM_TOKENS.labels(provider, model, kind).inc(tokens)
            metrics.LLM_TOKENS_PER_REQUEST.labels(kind).observe(tokens)
        if cost:
            metrics.LLM_COST.labels(provider, model).inc(cost["total"])

    def _cost(self, usage: Usage) -> dict[str, float] | None:
        """Cost in USD from the configured prices, or None when no price is set."""
        input_price, output_price = self.settings.llm_input_cost_per_mtok, self.settings.llm_output_cost_per_mtok
        if not (input_price or output_price):
            return None
        cost_in = usage.input_tokens * input_price / 1e6
        cost_out = usage.output_tokens * output_price / 1e6
        return {"input": cost_in, "output": cost_out, "total": cost_in + cost_out}

    async def _run_tools(
        self, calls: Sequence[ToolCallRequest], *, iteration: int, deadline: float | None = None
    ) -> list[ToolRun]:
        """One batch of tool calls from one model turn (concurrent, results in request order)."""
        return await self.orchestrator.run_batch(calls, deadline)
