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
from typing import NamedTuple

from fsagent.common import names

_WARNING = b": WARNING: "
_WARNING_RE = re.compile(
    rb': WARNING: stopped searching binary file after match \(found "\\0" byte around offset (\d+)\)\n'
)
_DIGITS = b"0123456789"
_LINE_RE = re.compile(rb"(\d+)([:-])")
_NOT_PLAIN_ASCII = re.compile(rb'[\x00-\x1f\x7f-\xff:]|^"')  # printed as is by names.display


class AmbiguousOutput(Exception):
    """The output cannot be attributed to files with certainty (see the module doc)."""

    MESSAGE = (
        "the search output cannot be attributed to files unambiguously: a name beneath this path "
        "holds a newline and rg's binary-file warning text; search a narrower path"
    )


class Record(NamedTuple):
    path: bytes  # as the binary printed it ("./rel/name")
    line: int
    match: bool  # False: a context line
    text: bytes


def display_path(raw: bytes) -> str:
    """A path as rg/grep/find printed it, relative to the root, as names.display prints it."""
    return _display_bytes(raw).decode()


def _display_bytes(raw: bytes) -> bytes:
    if raw.startswith(b"./"):
        raw = raw[2:]
    if raw and _NOT_PLAIN_ASCII.search(raw) is None:
        return raw  # the common case: names.display would print it as it is
    return names.display(os.fsdecode(raw) if raw else ".").encode()  # nothing left that UTF-8 cannot encode


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


def read_all(
    data: bytes, root: str, *, single: str | None = None, truncated: bool = False
) -> tuple[list[Record], list[str], int]:
    """A whole output at once: (records, notices, bytes left out).

    The common case takes one split on newlines: when every line holds a NUL, no path holds a
    newline (the piece of a path before its newline holds none) and there is no notice, so each
    line is one record. Anything else goes through the Parser.
    """
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the output ends with a newline
    records: list[Record] = []
    match_line = _LINE_RE.match
    for line in lines:
        path, nul, rest = line.partition(b"\0")
        found = match_line(rest) if nul else None
        if found is None:
            return _read_carefully(data, root, single, truncated)
        records.append((path, int(found[1]), found[2] == b":", rest[found.end():]))  # a Record's fields
    dropped = 0
    if tail:
        if not truncated:
            return _read_carefully(data, root, single, truncated)
        path, nul, rest = tail.partition(b"\0")
        found = match_line(rest) if nul else None
        if found is None:
            dropped = len(tail)  # a path cut in the middle
        else:
            records.append(Record(path, int(found[1]), found[2] == b":", rest[found.end():]))
    return records, [], dropped


def _read_carefully(data: bytes, root: str, single: str | None, truncated: bool) -> tuple[list[Record], list[str], int]:
    parser = Parser(root, single=single, max_pending=len(data) + 1)
    records = parser.feed(data)
    records += parser.finish(truncated=truncated)
    return records, parser.notices, parser.dropped


def _path_key(path: bytes) -> list[bytes]:
    return path.split(b"/")  # directory by directory, like a sorted walk ("a/b" before "a-c")


def render(records: list[Record], notices: list[str], *, context: bool) -> str:
    """Records in path order (a file's lines keep their order), notices first, one per line."""
    files: dict[bytes, list[Record]] = {}
    for record in records:  # Records, or plain tuples of their fields (read_all)
        group = files.get(record[0])
        if group is None:
            files[record[0]] = [record]
        else:
            group.append(record)
    out = [notice.encode() for notice in notices]
    for i, path in enumerate(sorted(files, key=_path_key)):
        prefix = _display_bytes(path) + b":"
        if i and context:
            out.append(b"--")
        previous = -1
        for _, line, match, text in files[path]:
            if context and previous >= 0 and line > previous + 1:
                out.append(b"--")
            previous = line
            out.append(b"%s%d%s%s" % (prefix, line, b":" if match else b"-", text))
    out.append(b"")
    return _decode(b"\n".join(out)) if len(out) > 1 else ""


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
    return _decode(b"".join(_display_bytes(p) + b"\n" for p in ordered))
