"""Document names: the one rule for creating them and the one way to print them.

Shared by the gateway (which refuses a bad name before any gRPC hop) and the sandbox (which
refuses it again on every write, and prints every name it shows through `display`).

Why: tool output is line-oriented (`path:LINE:text`), and a model, the offline planner or a person
reads a line's file and line number from its start. A name that carries a newline (or any other
line break) can print a line attributed to another file at a line of the attacker's choosing; a
name with `:12:` in it can shift where the path seems to end. So:

- **Creating** a name (create, update, upload, its `path` field and filename): no component may
  hold a control character: C0 (U+0000-U+001F: newline, carriage return, tab, escape...), DEL
  (U+007F), C1 (U+0080-U+009F, among them NEL U+0085), the line and paragraph separators
  U+2028/U+2029 (Python's `splitlines` and many renderers break lines there), or a lone surrogate
  (an undecodable byte of a name on disk, or invalid UTF-8 sent by a client). `check_new_path`.
- **Printing** a name: as is when it is plain; as a JSON string literal in double quotes when it
  holds any of those characters, a colon, or starts with a double quote (`display`). A plain name
  never holds a colon, so in `path:LINE:text` the path ends at the first colon; a quoted one ends
  at its closing quote. Escapes: `\\"`, `\\\\`, `\\n`, `\\r`, `\\t`, `\\b`, `\\f`, `\\uXXXX` (other
  controls, U+2028/U+2029, and `\\udcXX` for an undecodable byte XX); `json.loads` gives the name
  back exactly.
- **Reading** a name: a path argument that is such a literal (the whole path, or one component
  between slashes) means the name it decodes to (`parse`), so whatever a listing showed can be
  passed back as it was shown.
"""

from __future__ import annotations

import json
import re

# Characters a new name may not hold; `display` quotes a name holding one of them.
_FORBIDDEN = "\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff"
_FORBIDDEN_RE = re.compile(f"[{_FORBIDDEN}]")
_NEEDS_QUOTES_RE = re.compile(f'[{_FORBIDDEN}:]|^"')
_ESCAPE_IN_QUOTES_RE = re.compile(f'[{_FORBIDDEN}"\\\\]')
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f", '"': '\\"', "\\": "\\\\"}
_NAMES = {"\n": "a newline", "\r": "a carriage return", "\t": "a tab", "\x1b": "an escape character",
          "\x7f": "a DEL character", "\u2028": "a line separator", "\u2029": "a paragraph separator"}

# Every refusal's message starts with this (the gateway maps it to HTTP 400 `invalid_path`).
INVALID_PATH_PREFIX = "invalid path"
INVALID_PATH_CODE = "invalid_path"


class InvalidName(ValueError):
    """A name that may not be created; `message` says which character and why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    return _SHORT.get(ch) or f"\\u{ord(ch):04x}"


def needs_quoting(name: str) -> bool:
    return _NEEDS_QUOTES_RE.search(name) is not None


def display(name: str) -> str:
    """`name` as printed to the model and to clients: as is, or quoted (see the module doc)."""
    if _NEEDS_QUOTES_RE.search(name) is None:
        return name
    return '"' + _ESCAPE_IN_QUOTES_RE.sub(_escape, name) + '"'


def escape_text(text: str) -> str:
    """Free text (a tool's stderr, a command line) with every forbidden character escaped, so it
    is one line that holds no control character. Not reversible; for messages only."""
    return _FORBIDDEN_RE.sub(_escape, text)


def describe(ch: str) -> str:
    code = ord(ch)
    if ch in _NAMES:
        return _NAMES[ch]
    if 0xDC80 <= code <= 0xDCFF:
        return f"an undecodable byte 0x{code - 0xDC00:02X} (not UTF-8)"
    if 0xD800 <= code <= 0xDFFF:
        return f"a lone surrogate U+{code:04X} (not UTF-8)"
    return f"the control character U+{code:04X}"


def forbidden_char(name: str) -> str | None:
    """The first character a new name may not hold, or None."""
    match = _FORBIDDEN_RE.search(name)
    return match.group() if match else None


def check_new_path(path: str) -> None:
    """Raise InvalidName unless every component of `path` (already `parse`d) may be created."""
    ch = forbidden_char(path)
    if ch is not None:
        raise InvalidName(
            f"{INVALID_PATH_PREFIX} {display(path)}: a name may not contain {describe(ch)}; control "
            "characters (U+0000-U+001F, U+007F-U+009F), line/paragraph separators (U+2028, U+2029) "
            "and bytes that are not UTF-8 are refused"
        )


def check_new_name_bytes(raw: bytes) -> str:
    """A client-sent name (an upload filename, a URL path) as text; InvalidName if it is not UTF-8
    or holds a forbidden character."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        shown = display(raw.decode("utf-8", "surrogateescape"))
        raise InvalidName(f"{INVALID_PATH_PREFIX} {shown}: not UTF-8") from None
    check_new_path(text)
    return text


def _literal(text: str) -> str | None:
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, str) else None


def parse(user_path: str) -> str:
    """The name a path argument means: a quoted path or component (as `display` prints it) is
    decoded; anything else is taken as it is."""
    if '"' not in user_path:
        return user_path
    whole = _literal(user_path)
    if whole is not None:
        return whole
    parts = user_path.split("/")
    decoded = [_literal(part) for part in parts]
    if all(d is None for d in decoded):
        return user_path
    # A decoded component holding '/' would name something else: keep that one as it was sent.
    return "/".join(d if d is not None and "/" not in d else p for d, p in zip(decoded, parts))


def validate_new_path(user_path: str) -> str:
    """`parse` then `check_new_path`: the name a write may create (InvalidName otherwise)."""
    name = parse(user_path)
    check_new_path(name)
    return name
