"""rg's and GNU grep's `--null` output, read back into records and printed so that no file name
can forge another line's `path:LINE:` prefix.

What the binaries print (rg with `--null --no-context-separator`, GNU grep with `--null
--no-group-separator --binary-files=without-match`):

  record   PATH \\0 LINE (':' match | '-' context) TEXT \\n
  notice   PATH ": WARNING: stopped searching binary file after match (found "\\0" byte around
           offset N)" \\n          rg, recursive search, after that file's records
           PATH ": binary file matches (...)" \\n      rg, a single binary file named as operand
  -l       PATH \\0                 (files_with_matches)

PATH is every byte up to the NUL: a name can hold anything but NUL and '/', newlines included, so
lines are never split on '\\n' first (the bug this module closes: `notes\\nother.md:3:text\\nx.md`
printed a line attributed to other.md). TEXT is every byte up to the next newline (content lines
hold anything but a newline). A notice is the only thing without a NUL; it is recognised only
right after a record of the same PATH and only in rg's exact wording, and if the same bytes could
also begin a (newline-holding) path that exists, the output is refused as ambiguous rather than
guessed. Anything else that names no file is left out (and counted), never shown as a line.

Printed: `names.display(path):LINE:TEXT` (match) and `names.display(path):LINE-TEXT` (context):
a plain path has no colon, a quoted one ends at its closing quote, so the path always ends at the
first colon outside quotes; `--` between non-adjacent groups and between files when context is
shown.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from fsagent.common import names

_WARNING = b": WARNING: "
_WARNING_RE = re.compile(
    rb': WARNING: stopped searching binary file after match \(found "\\0" byte around offset (\d+)\)\n'
)
_DIGITS = b"0123456789"


class AmbiguousOutput(Exception):
    """The output cannot be attributed to files with certainty (see the module doc)."""

    MESSAGE = (
        "the search output cannot be attributed to files unambiguously: a name beneath this path "
        "holds a newline and rg's binary-file warning text; search a narrower path"
    )


@dataclass(frozen=True, slots=True)
class Record:
    path: bytes  # as the binary printed it ("./rel/name")
    line: int
    match: bool  # False: a context line
    text: bytes


def display_path(raw: bytes) -> str:
    """A path as rg/grep/find printed it, relative to the root, as names.display prints it."""
    if raw.startswith(b"./"):
        raw = raw[2:]
    return names.display(os.fsdecode(raw) if raw else ".")


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


class Parser:
    """Incremental: `feed` bytes as they come, `finish` at the end; records in output order.

    `root`: the directory the binary ran in (to test the rare ambiguous notice). `single`: the
    operand as passed (`./rel`) when it is one file, so its "binary file matches" notice is kept.
    """

    def __init__(self, root: str, single: str | None = None, max_pending: int = 1 << 20) -> None:
        self.root = os.fsencode(root)
        self.single = os.fsencode(single) if single else None
        self.max_pending = max_pending
        self.notices: list[str] = []
        self.dropped = 0  # bytes that named no file, left out
        self._buf = bytearray()
        self._last: bytes | None = None

    def feed(self, data: bytes) -> list[Record]:
        self._buf += data
        out = self._parse(final=False)
        if len(self._buf) > self.max_pending:  # no record in sight: never held without bound
            self.dropped += len(self._buf)
            self._buf.clear()
        return out

    def finish(self, truncated: bool = False) -> list[Record]:
        """The rest. `truncated`: the output was cut, so a last incomplete piece is a fragment."""
        out = self._parse(final=True)
        rest = bytes(self._buf)
        self._buf.clear()
        if not rest:
            return out
        nul = rest.find(b"\0")
        if truncated and nul >= 0:
            record = self._record(rest, 0, nul, len(rest))
            if record is not None:
                out.append(record)  # cut inside its text: the line's start is still its own
                return out
        if not truncated and self.single is not None and rest.startswith(self.single + b": ") and nul < 0:
            notice = rest[len(self.single) + 2:].rstrip(b"\n")
            self.notices.append(f"{display_path(self.single)}: {names.escape_text(_decode(notice))}")
            return out
        self.dropped += len(rest)
        return out

    # -- internals ------------------------------------------------------------------------------

    def _parse(self, final: bool) -> list[Record]:
        buf = bytes(self._buf)
        out: list[Record] = []
        pos = 0
        while pos < len(buf):
            step = self._notice(buf, pos, final)
            if step is not None:
                pos = step
                continue
            nul = buf.find(b"\0", pos)
            if nul < 0:
                break
            newline = buf.find(b"\n", nul)
            if newline < 0:
                break
            record = self._record(buf, pos, nul, newline)
            if record is None:
                self.dropped += newline + 1 - pos
            else:
                out.append(record)
                self._last = record.path
            pos = newline + 1
        del self._buf[:pos]
        return out

    def _record(self, buf: bytes, pos: int, nul: int, end: int) -> Record | None:
        rest = buf[nul + 1:end]
        digits = len(rest) - len(rest.lstrip(_DIGITS))
        sep = rest[digits:digits + 1]
        if not digits or sep not in (b":", b"-"):
            return None
        return Record(buf[pos:nul], int(rest[:digits]), sep == b":", rest[digits + 1:])

    def _notice(self, buf: bytes, pos: int, final: bool) -> int | None:
        """The end of rg's binary warning starting at pos (after a record of the same path)."""
        last = self._last
        if last is None or not buf.startswith(last + _WARNING, pos):
            return None
        newline = buf.find(b"\n", pos)
        if newline < 0:
            return None
        match = _WARNING_RE.fullmatch(buf, pos + len(last), newline + 1)
        if match is None:
            return None
        # Could these bytes instead begin a path that holds a newline ("<last>: WARNING ...)\n...")?
        nul = buf.find(b"\0", newline + 1)
        if nul < 0 and not final:
            return None  # wait for the next record before deciding
        if nul >= 0 and self._exists(buf[pos:nul]):
            raise AmbiguousOutput(AmbiguousOutput.MESSAGE)
        self.notices.append(
            f"{display_path(last)}: WARNING: stopped searching binary file after match "
            f'(found "\\0" byte around offset {int(match.group(1))})'
        )
        return newline + 1

    def _exists(self, raw: bytes) -> bool:
        rel = raw[2:] if raw.startswith(b"./") else raw
        return os.path.lexists(os.path.join(self.root, rel))


def _path_key(path: bytes) -> list[bytes]:
    return path.split(b"/")  # directory by directory, like a sorted walk ("a/b" before "a-c")


def render(records: list[Record], notices: list[str], *, context: bool) -> str:
    """Records in path order (a file's lines keep their order), notices first, one per line."""
    files: dict[bytes, list[Record]] = {}
    for record in records:
        files.setdefault(record.path, []).append(record)
    out = list(notices)
    for i, path in enumerate(sorted(files, key=_path_key)):
        shown = display_path(path)
        if i and context:
            out.append("--")
        previous: int | None = None
        for record in files[path]:
            if context and previous is not None and record.line > previous + 1:
                out.append("--")
            previous = record.line
            out.append(f"{shown}:{record.line}{':' if record.match else '-'}{_decode(record.text)}")
    return "".join(line + "\n" for line in out)


def split_paths(data: bytes, truncated: bool) -> list[bytes]:
    """NUL-terminated paths (rg/grep `-l --null`, find `-print0`); a cut last one is left out."""
    parts = data.split(b"\0")
    last = parts.pop()  # after the final NUL: b"", or a fragment when the output was cut
    if last and not truncated:
        parts.append(last)
    return [p for p in parts if p]


def render_paths(paths: list[bytes], *, by_directory: bool = True) -> str:
    """Paths sorted (directory by directory, or bytewise), one per line, as names.display prints
    them."""
    ordered = sorted(paths, key=_path_key) if by_directory else sorted(paths)
    return "".join(display_path(p) + "\n" for p in ordered)
