"""One deadline per chat turn, shared by every hop the turn makes.

The gateway calls Chat with a gRPC deadline of FSAGENT_CHAT_TIMEOUT: that is the outer bound. The
agent takes what is left of it (never more than its own FSAGENT_CHAT_TIMEOUT), keeps a margin so
that its own typed error (`llm_timeout`, `tool_timeout`) reaches the gateway before the gateway's
generic deadline does, and gives each hop (the session store, each LLM attempt, each sandbox call)
at most what is left. LLM retries stop when what is left cannot cover another attempt.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

MARGIN_FRACTION = 0.05
MIN_MARGIN = 0.25  # seconds: a typed error crossing one gRPC hop, with room to spare
MAX_MARGIN = 2.0

# Phases of a turn, to name what was running when the hard stop came.
HISTORY, LLM, TOOLS, SAVE = "history", "llm", "tools", "save"


def margin_for(total: float) -> float:
    """The part of a `total`-second budget kept back for the error to travel (at most half)."""
    return min(max(MIN_MARGIN, total * MARGIN_FRACTION), MAX_MARGIN, total / 2)


@dataclass(slots=True)
class Budget:
    total: float  # seconds the caller gave the turn
    margin: float
    deadline: float  # time.monotonic() by which the turn answers: total less the margin
    phase: str = HISTORY

    @classmethod
    def start(cls, chat_timeout: float, time_remaining: float | None = None) -> "Budget":
        """The budget of a turn starting now: the caller's deadline, capped by `chat_timeout`."""
        total = chat_timeout if time_remaining is None else max(0.0, min(chat_timeout, time_remaining))
        margin = margin_for(total)
        return cls(total=total, margin=margin, deadline=time.monotonic() + total - margin)

    def remaining(self) -> float:
        """Seconds until the turn must answer (never negative)."""
        return max(0.0, self.deadline - time.monotonic())

    @property
    def hard_deadline(self) -> float:
        """When the server stops waiting for the turn at all (half the margin after `deadline`),
        so a hop that overruns its share still ends in a typed error before the caller gives up."""
        return self.deadline + self.margin / 2

    def cap(self, seconds: float, floor: float = 0.05) -> float:
        """`seconds`, or what is left of the budget when that is less (at least `floor`)."""
        return max(floor, min(seconds, self.remaining()))
