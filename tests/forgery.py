"""Checks shared by the sandbox and security suites: does any output carry a raw control character
from a file name, and is every `path:LINE:text` line of grep output true?

A line is read the documented way (fsagent.common.names): a quoted path is a JSON string literal up
to its closing quote, a plain path ends at the first colon; then LINE and ':' (match) or '-'
(context). The line is true when that file's line LINE is that text.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

TRUNCATION_MARKER = "[... output truncated:"
_AFTER = re.compile(r"(\d+)([:-])(.*)\Z", re.S)
_DECODER = json.JSONDecoder()
# What a name may hold on disk but an output may never carry raw (content lines may: they are checked
# against the file itself).
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def read_grep_line(line: str) -> tuple[str, int, bool, str] | None:
    """(name, line number, is a match, text), or None for a line that is no record."""
    if line.startswith('"'):
        try:
            path, end = _DECODER.raw_decode(line)
        except ValueError:
            return None
        if not isinstance(path, str) or line[end:end + 1] != ":":
            return None
        rest = line[end + 1:]
    else:
        path, colon, rest = line.partition(":")
        if not colon:
            return None
    match = _AFTER.match(rest)
    if match is None:
        return None
    return path, int(match.group(1)), match.group(2) == ":", match.group(3)


def file_line(root: Path, name: str, number: int) -> str | None:
    try:
        data = (root / name).read_bytes()  # undecodable bytes are \udcXX: surrogateescape
    except OSError:
        return None
    lines = data.split(b"\n")
    if number < 1 or number > len(lines):
        return None
    return lines[number - 1].decode("utf-8", "replace")


def false_grep_lines(root: Path, stdout: str) -> list[str]:
    """Lines of grep output that claim a file's line which is not what that file holds.

    Only "\\n" ends a line (a content line may hold "\\r" or U+2028, a name never does raw).
    Lines that are no record (notices, `--`, the truncation marker) are skipped; rg's long-line
    preview (`[... omitted end of long line]`) is compared by its prefix.
    """
    wrong = []
    lines = stdout.split("\n")
    cut = next((i for i, line in enumerate(lines) if line.startswith(TRUNCATION_MARKER)), None)
    for i, line in enumerate(lines[:cut]):
        record = read_grep_line(line)
        if record is None:
            continue
        name, number, _, text = record
        actual = file_line(root, name, number)
        if actual is None:
            wrong.append(f"{line!r}: {name!r} has no line {number}")
            continue
        if text.endswith(" [... omitted end of long line]"):
            text = text.removesuffix(" [... omitted end of long line]")
            ok = actual.startswith(text)
        elif cut is not None and i == cut - 1:
            ok = actual.startswith(text)  # the last line before the cut may end early
        else:
            ok = actual == text
        if not ok:
            wrong.append(f"{line!r}: line {number} of {name!r} is {actual[:80]!r}")
    return wrong


def raw_controls(text: str) -> list[str]:
    """Raw control characters (other than the newline that ends lines) in a text."""
    return sorted({f"U+{ord(ch):04X}" for ch in RAW_CONTROL.findall(text)})
