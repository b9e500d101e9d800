"""The tools themselves, on already validated arguments.

grep and find run binaries with an argv built here from typed values only (no flag can come from
the model, every operand is `./rel` after `--`). cat, head, tail, wc, preview, ls and tree run
in-process: files are opened with O_NOFOLLOW|O_NONBLOCK, must be regular files, and the opened fd
is checked to lie beneath the root. Every output path is relative to the data root, without "./",
and every name is printed with `names.display` (as is, or a JSON string literal in double quotes
when it holds a control character, an undecodable byte, a colon or a leading quote), so no name can
start a line or forge a `path:LINE:` prefix. Tool stderr and command lines carry no raw control
character either (`names.escape_text`).

Output formats (the agent's offline planner parses some of them):
  grep      `path:LINE:text`; context lines `path:LINE-text`; `--` between non-adjacent groups
            and files; files_with_matches: one path per line; no match: empty stdout, exit 0
            (grep_output.py reads the binaries' NUL-separated output back)
  find      one path per line, sorted; the root itself is "."
  cat       the file's bytes as text (no line numbers); with a range, exactly those lines
  head/tail the first/last N lines
  wc        `LINES WORDS BYTES path` right-aligned like wc, a `total` line for several files
  preview   `==> path <== (N bytes, L lines; showing lines 1-K)` then the lines
  ls        one entry per line, directories end with "/", symlinks with "@"; long:
            `TYPE SIZE YYYY-MM-DD HH:MM NAME` (TYPE f/d/l/o, SIZE "-" for non-files, UTC)
  tree      like `tree -F` (hidden entries skipped), then `N directories, M files`
A cut output ends with `[... output truncated: N more bytes not shown; ... ...]`.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import stat
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from pydantic import BaseModel

from fsagent.common import names
from fsagent.common import toolspec as ts
from fsagent.sandbox import grep_output, paths, runner
from fsagent.sandbox.paths import shown

BINARY_SNIFF_BYTES = 8192
GENERIC_HINT = "narrow the call: use a more specific pattern, a smaller path, or cat with start_line/end_line"
MARKER_PREFIX = "[... output truncated:"

# Exit codes of refusals (the error_code says why).
EXIT_REFUSED = 2
EXIT_TIMEOUT = 124
EXIT_INTERNAL = 1


class ToolError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class ToolOutput:
    stdout: str = ""
    stderr: str = ""
    exit_code: int = 0
    truncated: bool = False
    timed_out: bool = False
    error: str = ""
    error_code: str = ""
    command: str = ""


@dataclass(frozen=True)
class Context:
    root_real: str
    max_output_bytes: int
    timeout: float
    rg: str | None = None
    grep: str | None = None
    find: str | None = None
    # Who starts rg/grep/find: the confined spawner in the service (see isolation.py).
    launcher: runner.Launcher = field(default=runner.DIRECT, compare=False)

    @classmethod
    def create(
        cls, data_root: str | os.PathLike[str], max_output_bytes: int, timeout: float,
        launcher: runner.Launcher | None = None,
    ) -> "Context":
        return cls(
            root_real=paths.root_realpath(data_root),
            max_output_bytes=max_output_bytes,
            timeout=timeout,
            rg=runner.which("rg"),
            grep=runner.which("grep"),
            find=runner.which("find"),
            launcher=launcher or runner.DIRECT,
        )

    @property
    def grep_backend(self) -> str:
        return "rg" if self.rg else ("grep" if self.grep else "none")


@dataclass(frozen=True)
class FpTarget:
    """What a call reads, for the cache fingerprint."""

    rel: str
    abs: str
    kind: str  # "file", "scope" (a directory walked to max_depth) or "missing"
    max_depth: int | None = None


@dataclass
class Prepared:
    tool: str
    args: BaseModel
    targets: list[paths.Resolved] = field(default_factory=list)
    # wc only: every path in the caller's order, resolved or refused (not found, special file)
    items: list[paths.Resolved | tuple[str, paths.PathError]] = field(default_factory=list)
    key_args: dict[str, Any] = field(default_factory=dict)
    fp_targets: list[FpTarget] = field(default_factory=list)

    @property
    def scopes(self) -> list[str]:
        # Sent to the cache as protobuf strings, which hold no lone surrogate: an undecodable
        # byte of a name becomes U+FFFD. Prefixes stay prefixes, so invalidation still reaches
        # the entry (two such names sharing a scope only invalidate each other, never too little).
        return sorted({t.rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for t in self.fp_targets})


# --------------------------------------------------------------------------------------------
# preparation: resolve paths, the normalised cache key arguments, what to fingerprint


def _operand(rel: str) -> str:
    return "." if rel == "." else "./" + rel


def prepare(ctx: Context, tool: str, args: BaseModel) -> Prepared:
    """Resolve every path argument; raise paths.PathError for a refused one."""
    p = Prepared(tool=tool, args=args, key_args=args.model_dump(mode="json"))
    root = ctx.root_real
    if tool == "wc":
        assert isinstance(args, ts.WcArgs)
        rels: list[str] = []
        for user_path in args.paths:
            try:
                r = paths.resolve_entry(root, user_path)
            except paths.PathError as exc:
                if exc.code in ("path_outside_root", "invalid_arguments"):
                    raise
                rel = paths.check_shape(user_path)
                p.items.append((user_path, exc))
                rels.append("!" + os.path.normpath(rel))
                p.fp_targets.append(FpTarget(os.path.normpath(rel), os.path.join(root, os.path.normpath(rel)), "missing"))
                continue
            p.targets.append(r)
            p.items.append(r)
            rels.append(r.rel)
            p.fp_targets.append(FpTarget(r.rel, r.abs, "file" if r.is_file else "scope", 0))
        p.key_args["paths"] = rels
        return p

    user_path: str = args.path  # type: ignore[attr-defined]
    if tool in ("cat", "head", "tail", "preview"):
        r = paths.resolve_entry(root, user_path, expect="file")
        p.fp_targets.append(FpTarget(r.rel, r.abs, "file"))
    elif tool in ("ls",):
        r = paths.resolve_entry(root, user_path)
        p.fp_targets.append(FpTarget(r.rel, r.abs, "scope" if r.is_dir else "file", 1))
    elif tool == "tree":
        assert isinstance(args, ts.TreeArgs)
        r = paths.resolve_entry(root, user_path, expect="dir")
        p.fp_targets.append(FpTarget(r.rel, r.abs, "scope", args.max_depth))
    elif tool == "find":
        assert isinstance(args, ts.FindArgs)
        r = paths.resolve_entry(root, user_path)
        p.fp_targets.append(FpTarget(r.rel, r.abs, "scope" if r.is_dir else "file", args.max_depth))
    elif tool == "grep":
        assert isinstance(args, ts.GrepArgs)
        if "\x00" in args.pattern:
            # Never reaches an argv (exec would refuse it anyway, as an internal error).
            raise paths.PathError("invalid_arguments", "pattern must not contain NUL bytes")
        r = paths.resolve_entry(root, user_path)
        p.fp_targets.append(FpTarget(r.rel, r.abs, "scope" if r.is_dir else "file", None))
    else:  # pragma: no cover - toolspec and this module list the same tools
        raise ToolError("invalid_arguments", f"unknown tool {tool}")
    p.targets.append(r)
    p.key_args["path"] = r.rel
    return p


# --------------------------------------------------------------------------------------------
# truncation


def marker(omitted: int, exact: bool = True, hint: str = GENERIC_HINT) -> str:
    amount = f"{omitted}" if exact else f"at least {omitted}"
    return f"{MARKER_PREFIX} {amount} more bytes not shown; {hint} ...]"


def _cut_at_line(data: bytes, end: bytes = b"\n") -> tuple[bytes, int]:
    """Cut a capped buffer back to its last complete line (or `end`-terminated record); (kept,
    bytes dropped)."""
    newline = data.rfind(end)
    if newline < 0 or newline + 1 < len(data) // 2:
        return data, 0
    return data[: newline + 1], len(data) - newline - 1


def _with_marker(text: str, mark: str) -> str:
    if text and not text.endswith("\n"):
        text += "\n"
    return text + mark + "\n"


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _command(argv: list[str]) -> str:
    return names.escape_text(shlex.join([os.path.basename(argv[0]), *argv[1:]]))


def _quoted(rel: str) -> str:
    """A path in a display-only command line: shell-quoted, no raw control character."""
    return names.escape_text(shlex.quote(rel))


def _sanitize(text: str, ctx: Context) -> str:
    """Never let a host path reach the caller (binaries' error messages, exceptions)."""
    if ctx.root_real and ctx.root_real != os.sep:
        text = text.replace(ctx.root_real + os.sep, "").replace(ctx.root_real, ".")
    return text


def _binary_stderr(data: bytes, ctx: Context) -> str:
    """A binary's stderr names files raw, and a name may hold a newline that no reader could tell
    from the end of a message: so it is one line, every control character escaped (`\\n` between
    messages)."""
    return names.escape_text(_sanitize(_decode(data), ctx).strip())


# --------------------------------------------------------------------------------------------
# grep and find: binaries


BACKREFERENCE_MESSAGE = (
    "backreferences (\\1 ... \\9) are not supported: they make matching exponential; "
    "search for the literal text instead"
)


def has_backreference(pattern: str) -> bool:
    """Does an extended regex use a backreference? (Refused for GNU grep, like rg refuses them:
    with backreferences GNU grep leaves its linear DFA for an exponential backtracking matcher.)"""
    i = 0
    while i < len(pattern) - 1:
        if pattern[i] == "\\":
            if pattern[i + 1] in "123456789":
                return True
            i += 2
            continue
        i += 1
    return False


def grep_argv(ctx: Context, a: ts.GrepArgs, rel: str, *, single_thread: bool = False) -> list[str]:
    """The search argv. Paths are NUL-terminated in the output (`--null`): the output is put in
    path order here (grep_output.render), so rg may search in parallel (`--sort` would force one
    thread); `single_thread` for a file or a small tree, where starting threads costs more."""
    target = _operand(rel)
    if ctx.rg:
        argv = [
            ctx.rg, "--no-config", "--no-heading", "--with-filename", "--line-number", "--null",
            "--color", "never", "--no-follow", "--no-ignore",
            "--max-columns", "1000", "--max-columns-preview",
            "--ignore-case" if a.ignore_case else "--case-sensitive",
        ]
        if single_thread:
            argv.append("--threads=1")
        if a.fixed_strings:
            argv.append("--fixed-strings")
        if a.word:
            argv.append("--word-regexp")
        if a.context:
            # Groups are separated by the sandbox (grep_output): a "--" line of rg's could not be
            # told from a name that starts with "--\n".
            argv += [f"--context={a.context}", "--no-context-separator"]
        if a.glob is not None:
            argv.append(f"--glob={a.glob}")
        if a.files_with_matches:
            argv.append("--files-with-matches")
        if a.max_count is not None:
            argv.append(f"--max-count={a.max_count}")
        argv += ["-e", a.pattern, "--", target]
        return argv
    if ctx.grep:
        # Fallback when rg is missing: same output format; binary files and devices skipped
        # like rg does (unlike rg it also searches hidden files).
        if not a.fixed_strings and has_backreference(a.pattern):
            raise ToolError("invalid_arguments", BACKREFERENCE_MESSAGE)
        argv = [ctx.grep, "-rnH", "--null", "--color=never", "--binary-files=without-match", "--devices=skip",
                "-F" if a.fixed_strings else "-E"]
        if a.ignore_case:
            argv.append("-i")
        if a.word:
            argv.append("-w")
        if a.context:
            argv += [f"--context={a.context}", "--no-group-separator"]
        if a.glob is not None:
            argv.append(f"--include={a.glob}")
        if a.files_with_matches:
            argv.append("-l")
        if a.max_count is not None:
            argv.append(f"--max-count={a.max_count}")
        argv += ["-e", a.pattern, "--", target]
        return argv
    raise ToolError("internal", "no search binary (rg or grep) is installed in the sandbox")


SMALL_TREE_ENTRIES = 300


def small_tree(path: str, limit: int = SMALL_TREE_ENTRIES) -> bool:
    """At most `limit` entries beneath a directory? (Bounded: stops reading at limit + 1.)"""
    count = 0
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    count += 1
                    if count > limit:
                        return False
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
        except OSError:
            continue
    return True


def find_argv(ctx: Context, a: ts.FindArgs, rel: str) -> list[str]:
    if not ctx.find:
        raise ToolError("internal", "find is not installed in the sandbox")
    argv = [ctx.find, "-P", _operand(rel)]
    if a.max_depth is not None:
        argv += ["-maxdepth", str(a.max_depth)]
    if a.type is not None:
        argv += ["-type", a.type]
    if a.name is not None:
        argv += ["-name", a.name]
    if a.iname is not None:
        argv += ["-iname", a.iname]
    argv.append("-print0")  # NUL-terminated: a name may hold a newline
    return argv


async def _run_binary(
    ctx: Context, argv: list[str], postprocess: Callable[[bytes, bool], str], record_end: bytes = b"\n"
) -> tuple[runner.RunResult, ToolOutput]:
    """Run a binary; `postprocess(stdout, cut)` turns its raw output into the tool's text."""
    res = await runner.run(
        argv, cwd=ctx.root_real, timeout=ctx.timeout, max_output_bytes=ctx.max_output_bytes, launcher=ctx.launcher
    )
    out = ToolOutput(command=_command(argv), stderr=_binary_stderr(res.stderr, ctx))
    data = res.stdout
    omitted, exact = res.omitted_bytes, res.omitted_exact
    cut = res.truncated or res.timed_out
    if cut:
        data, dropped = _cut_at_line(data, record_end)
        omitted += dropped
    text = postprocess(data, cut)
    if res.timed_out:
        out.timed_out = True
        out.exit_code = EXIT_TIMEOUT
        out.error_code = "timeout"
        out.error = (
            f"{os.path.basename(argv[0])} timed out after {ctx.timeout:g}s and was stopped; "
            "narrow the call: a smaller path, a glob, or a simpler pattern"
        )
        out.stdout = _with_marker(text, marker(omitted, False, "the call timed out; " + GENERIC_HINT)) if text else ""
        out.truncated = bool(text)
        return res, out
    if res.truncated:
        out.truncated = True
        out.stdout = _with_marker(text, marker(omitted, exact))
        return res, out
    out.stdout = text
    return res, out


# How rg and GNU grep word a bad regex or glob (anything else failing is "internal").
_BAD_PATTERN_WORDS = (
    "regex", "glob", "pattern", "unmatched", "unclosed", "invalid", "trailing backslash",
    "regular expression", "repetition", "escape",
)


async def grep(ctx: Context, p: Prepared) -> ToolOutput:
    a = p.args
    assert isinstance(a, ts.GrepArgs)
    target = p.targets[0]
    # A bounded look (at most SMALL_TREE_ENTRIES entries read) decides whether threads pay off.
    single = not target.is_dir or small_tree(target.abs)
    argv = grep_argv(ctx, a, target.rel, single_thread=single)
    dropped = [0]

    def post(data: bytes, cut: bool) -> str:
        if a.files_with_matches:
            return grep_output.render_paths(grep_output.split_paths(data, cut))
        single = None if target.is_dir else _operand(target.rel)
        records, notices, dropped[0] = grep_output.read_all(data, ctx.root_real, single=single, truncated=cut)
        return grep_output.render(records, notices, context=bool(a.context))

    try:
        res, out = await _run_binary(ctx, argv, post, b"\0" if a.files_with_matches else b"\n")
    except grep_output.AmbiguousOutput as exc:
        raise ToolError("internal", str(exc)) from None
    if dropped[0]:
        note = f"{dropped[0]} bytes of output named no file and were left out"
        out.stderr = f"{out.stderr}\n{note}" if out.stderr else note
    if out.timed_out or out.truncated:
        return out
    if res.exit_code == 0:
        return out
    if res.exit_code == 1 and not res.stdout:
        out.stdout, out.exit_code = "", 0  # no match is an answer, not an error
        return out
    if out.stdout:  # partial errors (an unreadable file): keep the matches, report in stderr
        out.exit_code = 0
        return out
    message = out.stderr or f"grep failed with exit code {res.exit_code}"
    lowered = message.lower()
    code = "invalid_arguments" if any(word in lowered for word in _BAD_PATTERN_WORDS) else "internal"
    out.exit_code = EXIT_REFUSED if code == "invalid_arguments" else (res.exit_code or EXIT_INTERNAL)
    out.error_code = code
    out.error = message[:500]
    return out


async def find(ctx: Context, p: Prepared) -> ToolOutput:
    a = p.args
    assert isinstance(a, ts.FindArgs)
    argv = find_argv(ctx, a, p.targets[0].rel)

    def post(data: bytes, cut: bool) -> str:
        return grep_output.render_paths(grep_output.split_paths(data, cut), by_directory=False)

    res, out = await _run_binary(ctx, argv, post, b"\0")
    if out.timed_out or out.truncated:
        return out
    if res.exit_code not in (0, None) and not out.stdout:
        out.exit_code = res.exit_code or EXIT_INTERNAL
        out.error_code = "internal"
        out.error = (out.stderr or "find failed")[:500]
    elif res.exit_code:
        out.exit_code = 0  # some entries unreadable: the listing stands, stderr says which
    return out


# --------------------------------------------------------------------------------------------
# in-process file tools


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds
        self.seconds = seconds

    def check(self) -> None:
        if time.monotonic() > self.at:
            raise TimeoutError


def _open_file(ctx: Context, r: paths.Resolved) -> tuple[int, os.stat_result]:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(r.abs, flags)
    except FileNotFoundError:
        raise ToolError("not_found", f"no such file: {shown(r.rel)}") from None
    except IsADirectoryError:
        raise ToolError("file_type", f"{shown(r.rel)} is a directory") from None
    except OSError as exc:  # ELOOP: it became a symlink after it was checked
        raise ToolError("file_type", f"cannot open {shown(r.rel)}: {os.strerror(exc.errno or 0)}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ToolError("file_type", f"{shown(r.rel)} is not a regular file")
        if not paths.fd_beneath_root(fd, ctx.root_real):
            raise ToolError("path_outside_root", f"{shown(r.rel)} is outside the data root")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _binary_error(rel: str, tool: str) -> ToolError:
    return ToolError(
        "file_type",
        f"{shown(rel)} is a binary file (NUL byte in its first 8 KB); {tool} shows text files only "
        "(wc still counts it)",
    )


def _pieces(fh: Any, limit: int) -> Iterator[tuple[bytes, bool]]:
    """Lines of a binary file object in pieces of at most `limit` bytes; (piece, ends_a_line)."""
    while True:
        piece = fh.readline(limit)
        if not piece:
            return
        yield piece, piece.endswith(b"\n")


def _count_lines_from(fh: Any, deadline: _Deadline, last_byte: bytes) -> tuple[int, bytes]:
    """Newlines in the rest of the file, and its last byte (to count a last unterminated line)."""
    count = 0
    while True:
        deadline.check()
        chunk = fh.read(1 << 20)
        if not chunk:
            return count, last_byte
        count += chunk.count(b"\n")
        last_byte = chunk[-1:]


@dataclass
class _Selection:
    data: bytes
    first: int  # first line number asked for
    last_complete: int  # last line shown in full (first-1 when none)
    partial: bool  # the line after last_complete is shown only in part
    omitted: int  # bytes of the selected lines not shown
    truncated: bool
    total_lines: int | None  # lines in the file (a last line without newline counts), when counted


def _select(fd: int, start: int, end: int | None, cap: int, need_total: bool, deadline: _Deadline) -> _Selection:
    """Lines start..end (1-based, inclusive) of an open file, at most `cap` bytes of them."""
    with os.fdopen(fd, "rb", buffering=1 << 16, closefd=False) as fh:
        out = bytearray()
        lineno = 1
        last_complete = start - 1
        truncated = False
        omitted = 0
        last_byte = b""
        for piece, complete in _pieces(fh, cap + 1):
            last_byte = piece[-1:]
            if lineno >= start:
                if truncated:
                    omitted += len(piece)
                else:
                    room = cap - len(out)
                    if len(piece) <= room:
                        out += piece
                        if complete:
                            last_complete = lineno
                    else:
                        out += piece[:room]
                        truncated = True
                        omitted += len(piece) - room
            if complete:
                lineno += 1
                if lineno % 4096 == 0:
                    deadline.check()
                if end is not None and lineno > end:
                    break
        total: int | None = None
        if need_total or truncated or end is None or lineno <= end:
            more, last_byte = _count_lines_from(fh, deadline, last_byte)
            # lineno - 1 complete lines were read; an unterminated last line is a line too.
            total = (lineno - 1) + more + (1 if last_byte and last_byte != b"\n" else 0)
    partial = False
    if truncated and not out.endswith(b"\n"):
        kept, dropped = _cut_at_line(bytes(out))
        if dropped:
            out = bytearray(kept)
            omitted += dropped
        partial = not bytes(out).endswith(b"\n")
    return _Selection(bytes(out), start, last_complete, partial, omitted, truncated, total)


def _sniff_binary(fd: int) -> bool:
    head = os.pread(fd, BINARY_SNIFF_BYTES, 0)
    return b"\x00" in head


def _content_marker(sel: _Selection, rel: str) -> str:
    of = f" of {sel.total_lines}" if sel.total_lines is not None else ""
    nxt = sel.last_complete + 1
    if sel.last_complete >= sel.first:
        shown = f"shown lines {sel.first}-{sel.last_complete}{of}"
        if sel.partial:
            shown += f" and the start of line {nxt}"
    else:
        shown = f"line {sel.first}{of} alone is longer than the output limit, only its start is shown"
        return marker(sel.omitted, True, f"{shown}; use grep to find what you need in it")
    return marker(sel.omitted, True, f"{shown}; continue with cat start_line={nxt}, or grep for what you need")


def _cat_sync(ctx: Context, p: Prepared) -> ToolOutput:
    a = p.args
    assert isinstance(a, ts.CatArgs)
    r = p.targets[0]
    cmd = f"cat {_quoted(r.rel)}"
    if a.start_line is not None or a.end_line is not None:
        cmd += f" (lines {a.start_line or 1}-{a.end_line if a.end_line is not None else 'end'})"
    deadline = _Deadline(ctx.timeout)
    fd, st = _open_file(ctx, r)
    try:
        if _sniff_binary(fd):
            raise _binary_error(r.rel, "cat")
        start = a.start_line or 1
        sel = _select(fd, start, a.end_line, ctx.max_output_bytes, False, deadline)
    finally:
        os.close(fd)
    out = ToolOutput(command=cmd, stdout=_decode(sel.data))
    if sel.truncated:
        out.truncated = True
        out.stdout = _with_marker(out.stdout, _content_marker(sel, r.rel))
    elif not sel.data and a.start_line is not None and sel.total_lines is not None and start > sel.total_lines:
        out.stderr = f"start_line {start} is past the end of {shown(r.rel)} ({sel.total_lines} lines)"
    return out


def _head_sync(ctx: Context, p: Prepared) -> ToolOutput:
    a = p.args
    assert isinstance(a, (ts.HeadArgs, ts.PreviewArgs))
    r = p.targets[0]
    preview = isinstance(a, ts.PreviewArgs)
    deadline = _Deadline(ctx.timeout)
    fd, st = _open_file(ctx, r)
    try:
        if _sniff_binary(fd):
            raise _binary_error(r.rel, "preview" if preview else "head")
        sel = _select(fd, 1, a.lines, ctx.max_output_bytes, preview, deadline)
    finally:
        os.close(fd)
    text = _decode(sel.data)
    if preview:
        total = sel.total_lines or 0
        count = min(a.lines, total)
        header = f"==> {shown(r.rel)} <== ({st.st_size} bytes, {total} lines; showing lines {1 if count else 0}-{count})\n"
        text = header + text
        cmd = f"preview {_quoted(r.rel)} ({a.lines} lines)"
    else:
        cmd = f"head -n {a.lines} {_quoted(r.rel)}"
    out = ToolOutput(command=cmd, stdout=text)
    if sel.truncated:
        out.truncated = True
        out.stdout = _with_marker(out.stdout, _content_marker(sel, r.rel))
    return out


def _tail_sync(ctx: Context, p: Prepared) -> ToolOutput:
    a = p.args
    assert isinstance(a, ts.TailArgs)
    r = p.targets[0]
    n = a.lines
    cmd = f"tail -n {n} {_quoted(r.rel)}"
    cap = ctx.max_output_bytes
    read_limit = 4 * cap + (1 << 16)
    fd, st = _open_file(ctx, r)
    try:
        if _sniff_binary(fd):
            raise _binary_error(r.rel, "tail")
        pos = st.st_size
        buf = b""
        # Read backwards until the buffer holds n line breaks before its final line, the start
        # of the file, or the read limit (then the selection is incomplete).
        while pos > 0:
            step = min(1 << 16, pos)
            pos -= step
            buf = os.pread(fd, step, pos) + buf
            body = buf[:-1] if buf.endswith(b"\n") else buf
            if body.count(b"\n") >= n or len(buf) > read_limit:
                break
    finally:
        os.close(fd)
    body, trailer = (buf[:-1], b"\n") if buf.endswith(b"\n") else (buf, b"")
    lines = body.split(b"\n")
    complete = pos == 0 or len(lines) > n
    selected = lines[-n:] if complete else lines[1:]
    data = b"\n".join(selected) + trailer if buf else b""
    out = ToolOutput(command=cmd)
    if len(data) <= cap and complete:
        out.stdout = _decode(data)
        return out
    kept = data[-cap:]
    newline = kept.find(b"\n")
    if 0 <= newline < len(kept) // 2:
        kept = kept[newline + 1:]
    omitted = len(data) - len(kept)
    out.truncated = True
    mark = marker(omitted, complete, f"earlier bytes of the last {n} lines are cut; use cat with start_line/end_line")
    out.stdout = mark + "\n" + _decode(kept)
    return out


_WS = b" \t\n\r\x0b\x0c"


def _wc_counts(ctx: Context, r: paths.Resolved, deadline: _Deadline) -> tuple[int, int, int]:
    fd, _ = _open_file(ctx, r)
    lines = words = size = 0
    prev_in_word = False
    try:
        while True:
            deadline.check()
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            size += len(chunk)
            lines += chunk.count(b"\n")
            words += len(chunk.split())
            if prev_in_word and chunk[0] not in _WS:
                words -= 1  # a word split across two chunks
            prev_in_word = chunk[-1] not in _WS
    finally:
        os.close(fd)
    return lines, words, size


def _wc_sync(ctx: Context, p: Prepared) -> ToolOutput:
    a = p.args
    assert isinstance(a, ts.WcArgs)
    deadline = _Deadline(ctx.timeout)
    rows: list[tuple[int, int, int, str]] = []
    errors: list[str] = []
    codes: list[str] = []
    order = p.items
    for item in order:
        if isinstance(item, tuple):
            user_path, exc = item
            errors.append(f"wc: {exc.message}")
            codes.append(exc.code)
            continue
        if item.is_dir:
            errors.append(f"wc: {shown(item.rel)}: is a directory")
            codes.append("file_type")
            continue
        try:
            lines, words, size = _wc_counts(ctx, item, deadline)
        except ToolError as exc:
            errors.append(f"wc: {exc.message}")
            codes.append(exc.code)
            continue
        rows.append((lines, words, size, shown(item.rel)))
    cmd = "wc " + " ".join(_quoted(str(x)) for x in a.paths)
    if not rows:
        return ToolOutput(command=cmd, exit_code=EXIT_REFUSED, error="; ".join(errors)[:1000], error_code=codes[0])
    if len(rows) > 1:
        rows.append((sum(r[0] for r in rows), sum(r[1] for r in rows), sum(r[2] for r in rows), "total"))
    width = max(len(str(n)) for row in rows for n in row[:3])
    text = "".join(f"{n_l:>{width}} {n_w:>{width}} {n_b:>{width}} {name}\n" for n_l, n_w, n_b, name in rows)
    return ToolOutput(command=cmd, stdout=text, stderr="\n".join(errors), exit_code=1 if errors else 0)


# --------------------------------------------------------------------------------------------
# ls and tree


def _open_dir(ctx: Context, r: paths.Resolved) -> int:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(r.abs, flags)
    except FileNotFoundError:
        raise ToolError("not_found", f"no such directory: {shown(r.rel)}") from None
    except OSError as exc:
        raise ToolError("file_type", f"cannot open directory {shown(r.rel)}: {os.strerror(exc.errno or 0)}") from None
    if not paths.fd_beneath_root(fd, ctx.root_real):
        os.close(fd)
        raise ToolError("path_outside_root", f"{shown(r.rel)} is outside the data root")
    return fd


def _suffix(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "/"
    if stat.S_ISLNK(mode):
        return "@"
    return ""


def _type_letter(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "f"
    if stat.S_ISDIR(mode):
        return "d"
    if stat.S_ISLNK(mode):
        return "l"
    return "o"


def _long_line(name: str, st: os.stat_result) -> str:
    size = str(st.st_size) if stat.S_ISREG(st.st_mode) else "-"
    mtime = time.strftime("%Y-%m-%d %H:%M", time.gmtime(st.st_mtime))
    return f"{_type_letter(st.st_mode)} {size:>10}  {mtime}  {name}{_suffix(st.st_mode)}"


class _CappedText:
    """Collect lines up to a byte cap, then only count what would have followed (bounded)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.parts: list[str] = []
        self.size = 0
        self.truncated = False
        self.omitted = 0
        self.exact = True

    def add(self, line: str) -> bool:
        n = len(line.encode("utf-8", "surrogateescape")) + 1
        if not self.truncated and self.size + n <= self.cap:
            self.parts.append(line)
            self.size += n
            return True
        self.truncated = True
        self.omitted += n
        if self.omitted > 8 * self.cap:
            self.exact = False
            return False  # stop counting: "at least"
        return True

    def text(self) -> str:
        return "".join(part + "\n" for part in self.parts)


def _ls_sync(ctx: Context, p: Prepared) -> ToolOutput:
    a = p.args
    assert isinstance(a, ts.LsArgs)
    r = p.targets[0]
    flags = ("-a " if a.all else "") + ("-l " if a.long else "")
    cmd = f"ls {flags}{_quoted(r.rel)}".replace("  ", " ")
    if not r.is_dir:
        st = r.st
        assert st is not None
        line = _long_line(shown(r.rel), st) if a.long else shown(r.rel)
        return ToolOutput(command=cmd, stdout=line + "\n")
    fd = _open_dir(ctx, r)
    try:
        entries = []
        with os.scandir(fd) as it:
            for entry in it:
                if not a.all and entry.name.startswith("."):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                entries.append((entry.name, st))
    finally:
        os.close(fd)
    entries.sort(key=lambda e: e[0])
    buf = _CappedText(ctx.max_output_bytes)
    for name, st in entries:
        name = shown(name)
        if not buf.add(_long_line(name, st) if a.long else name + _suffix(st.st_mode)):
            break
    out = ToolOutput(command=cmd, stdout=buf.text())
    if buf.truncated:
        out.truncated = True
        out.stdout = _with_marker(out.stdout, marker(buf.omitted, buf.exact, "list a subdirectory, or use find with name/type"))
    return out


def _tree_sync(ctx: Context, p: Prepared) -> ToolOutput:
    a = p.args
    assert isinstance(a, ts.TreeArgs)
    r = p.targets[0]
    cmd = f"tree -F -L {a.max_depth} {_quoted(r.rel)}"
    deadline = _Deadline(ctx.timeout)
    buf = _CappedText(ctx.max_output_bytes)
    counts = {"dirs": 0, "files": 0}
    stop = False
    buf.add(r.rel if r.rel == "." else shown(r.rel) + "/")

    def walk(dir_fd: int, prefix: str, depth: int) -> None:
        nonlocal stop
        deadline.check()
        entries = []
        with os.scandir(dir_fd) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                entries.append((entry.name, st))
        entries.sort(key=lambda e: e[0])
        for i, (name, st) in enumerate(entries):
            if stop:
                return
            last = i == len(entries) - 1
            is_dir = stat.S_ISDIR(st.st_mode)
            counts["dirs" if is_dir else "files"] += 1
            if not buf.add(f"{prefix}{'└── ' if last else '├── '}{shown(name)}{_suffix(st.st_mode)}"):
                stop = True
                return
            if is_dir and depth < a.max_depth:
                try:
                    child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
                except OSError:
                    continue
                try:
                    walk(child, prefix + ("    " if last else "│   "), depth + 1)
                finally:
                    os.close(child)

    fd = _open_dir(ctx, r)
    try:
        walk(fd, "", 1)
    finally:
        os.close(fd)
    d, f = counts["dirs"], counts["files"]
    summary = f"{d} director{'y' if d == 1 else 'ies'}, {f} file{'' if f == 1 else 's'}"
    if buf.truncated:
        out = ToolOutput(command=cmd, truncated=True)
        out.stdout = _with_marker(buf.text(), marker(buf.omitted, buf.exact and not stop, "use a smaller max_depth or a deeper path"))
        out.stdout += f"\nat least {summary}\n" if stop else f"\n{summary}\n"
        return out
    return ToolOutput(command=cmd, stdout=buf.text() + f"\n{summary}\n")


_SYNC = {
    "cat": _cat_sync,
    "head": _head_sync,
    "preview": _head_sync,
    "tail": _tail_sync,
    "wc": _wc_sync,
    "ls": _ls_sync,
    "tree": _tree_sync,
}


async def run(ctx: Context, p: Prepared) -> ToolOutput:
    """Run a prepared call; refusals come back as a ToolOutput with error and error_code set."""
    try:
        if p.tool == "grep":
            return await grep(ctx, p)
        if p.tool == "find":
            return await find(ctx, p)
        fn = _SYNC[p.tool]
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn, ctx, p), ctx.timeout + 1.0)
        except (TimeoutError, asyncio.TimeoutError):
            return ToolOutput(
                exit_code=EXIT_TIMEOUT, timed_out=True, error_code="timeout",
                error=f"{p.tool} timed out after {ctx.timeout:g}s; use a smaller path or line range",
            )
    except ToolError as exc:
        return ToolOutput(exit_code=EXIT_REFUSED, error=_sanitize(exc.message, ctx), error_code=exc.code)
