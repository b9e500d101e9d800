"""Session ids: one rule for the gateway, the agent and the cache (bounded, log- and label-safe)."""

from __future__ import annotations

import re

_SESSION_ID = r"[A-Za-z0-9._:-]{1,128}"
# Anchored form for validators that search (pydantic, FastAPI path parameters).
SESSION_ID_PATTERN = rf"^{_SESSION_ID}$"
_SESSION_ID_RE = re.compile(_SESSION_ID)


def is_session_id(value: str) -> bool:
    # fullmatch: `$` alone would also accept a trailing newline.
    return _SESSION_ID_RE.fullmatch(value) is not None
