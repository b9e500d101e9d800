"""The documents API on the data volume: list, read, write, delete, upload, stream a file, search.

Every path is confined to the data root with the same rules as the tools. Writes are atomic: the
content goes to a temp file in the destination directory, is fsync'ed, then
- CREATE: `os.link(tmp, dest)` (fails when dest exists, so two racing creates give one winner
  and one ALREADY_EXISTS, never a half-written file), then the temp name is unlinked;
- UPDATE / UPSERT: `os.replace(tmp, dest)`.
No partial file and no temp file is left behind on any error. Errors are DocError(grpc code,
short message with relative paths only).

Names (fsagent.common.names): a write (create, update, upsert, upload) refuses a path any of whose
components holds a control character, a line/paragraph separator or an undecodable byte
(INVALID_ARGUMENT, "invalid path ..."); reads, streams and deletes still reach a file so named on
disk (deleting it is how it is cleaned up). Every path this API answers with (DocumentInfo.path,
SearchMatch.path, DeleteDocumentResponse.path, messages) is printed with `names.display`: as is, or
a JSON string literal in double quotes, which any path parameter accepts back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import tempfile
from dataclasses import dataclass
from typing import AsyncIterator

import grpc

from fsagent.common import names
from fsagent.common.settings import Settings
from fsagent.sandbox import grep_output, paths, runner, tools
from fsagent.sandbox.paths import shown
from fsagent.sandbox.cache_client import CacheClient
from fsagent.v1 import sandbox_pb2

log = logging.getLogger(__name__)

TEMP_PREFIX = ".fsagent-"
TEMP_SUFFIX = ".tmp"
BINARY_SNIFF_BYTES = 8192
MAX_CHUNK_LINES = 10_000
DEFAULT_CHUNK_LINES = 100
DEFAULT_MAX_RESULTS = 200
MAX_RESULTS = 10_000
MAX_PATTERN_CHARS = 1000
MAX_MATCH_LINE_CHARS = 2000
NEW_FILE_MODE = 0o644


def search_failure(stderr: str) -> "DocError":
    """A failed search (exit code 2) in words for a caller, not the search tool's raw output: an
    invalid pattern is 400 `invalid regular expression: ...`, a file gone meanwhile is 404."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if lines and lines[0].startswith("regex parse error"):  # ripgrep: the reason is on `error:`
        reason = next((line[len("error:"):].strip() for line in lines if line.startswith("error:")), "")
        return DocError(grpc.StatusCode.INVALID_ARGUMENT, names.escape_text(f"invalid regular expression: {reason or 'parse error'}")[:500])
    first = lines[0].removeprefix("grep: ") if lines else ""
    if "No such file or directory" in first:
        return DocError(grpc.StatusCode.NOT_FOUND, "no such file or directory")
    if first.startswith(("Unmatched", "Invalid", "Trailing backslash", "Premature end")):  # GNU grep
        return DocError(grpc.StatusCode.INVALID_ARGUMENT, names.escape_text(f"invalid regular expression: {first}")[:500])
    return DocError(grpc.StatusCode.INVALID_ARGUMENT, names.escape_text(" ".join(lines) or "search failed")[:500])


class DocError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


_PATH_CODES = {
    "invalid_arguments": grpc.StatusCode.INVALID_ARGUMENT,
    "path_outside_root": grpc.StatusCode.PERMISSION_DENIED,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "file_type": grpc.StatusCode.FAILED_PRECONDITION,
}


def _from_path_error(exc: paths.PathError) -> DocError:
    return DocError(_PATH_CODES.get(exc.code, grpc.StatusCode.INVALID_ARGUMENT), exc.message)


def _info(rel: str, st: os.stat_result) -> sandbox_pb2.DocumentInfo:
    is_dir = stat.S_ISDIR(st.st_mode)
    return sandbox_pb2.DocumentInfo(path=shown(rel), is_dir=is_dir, size=0 if is_dir else st.st_size, modified=st.st_mtime)


def _is_temp(name: str) -> bool:
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)


@dataclass(frozen=True)
class _Target:
    abs: str
    rel: str
    parent: str


class Documents:
    def __init__(self, settings: Settings, cache: CacheClient | None = None, launcher: runner.Launcher | None = None) -> None:
        self.settings = settings
        self.root_real = paths.root_realpath(settings.data_root)
        self.cache = cache
        self.launcher = launcher or runner.DIRECT
        self.rg = runner.which("rg")
        self.grep = runner.which("grep")

    # ---------------------------------------------------------------------------------------
    # helpers

    def _resolve(self, user_path: str, expect: paths.Expect = "any") -> paths.Resolved:
        try:
            return paths.resolve_entry(self.root_real, user_path or ".", expect=expect)
        except paths.PathError as exc:
            raise _from_path_error(exc) from None

    def _check_writable(self) -> None:
        if self.settings.read_only:
            raise DocError(grpc.StatusCode.PERMISSION_DENIED, "the document store is read-only")

    def _write_target(self, user_path: str) -> _Target:
        try:
            names.validate_new_path(user_path)  # resolve_for_write parses the same path again
        except names.InvalidName as exc:
            raise DocError(grpc.StatusCode.INVALID_ARGUMENT, exc.message) from None
        try:
            r = paths.resolve_for_write(self.root_real, user_path)
        except paths.PathError as exc:
            raise _from_path_error(exc) from None
        name = os.path.basename(r.abs)
        if _is_temp(name):
            raise DocError(grpc.StatusCode.INVALID_ARGUMENT, f"{shown(r.rel)}: names like {TEMP_PREFIX}*{TEMP_SUFFIX} are reserved")
        if r.st is not None and stat.S_ISDIR(r.st.st_mode):
            raise DocError(grpc.StatusCode.FAILED_PRECONDITION, f"{shown(r.rel)} is a directory")
        return _Target(r.abs, r.rel, os.path.dirname(r.abs))

    def _make_parent(self, target: _Target) -> None:
        """Create missing parent directories beneath the root, then re-check confinement."""
        try:
            os.makedirs(target.parent, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise DocError(grpc.StatusCode.FAILED_PRECONDITION, f"a parent of {shown(target.rel)} is a file") from None
        if not paths.is_beneath(os.path.realpath(target.parent), self.root_real):
            raise DocError(grpc.StatusCode.PERMISSION_DENIED, f"{shown(target.rel)} is outside the data root")

    def _check_mode_before(self, target: _Target, mode: int) -> os.stat_result | None:
        try:
            st = os.lstat(target.abs)
        except (FileNotFoundError, NotADirectoryError):
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise DocError(grpc.StatusCode.FAILED_PRECONDITION, f"{shown(target.rel)} is a directory")
        if mode == sandbox_pb2.WRITE_MODE_UPDATE and st is None:
            raise DocError(grpc.StatusCode.NOT_FOUND, f"no such document: {shown(target.rel)}")
        if mode in (sandbox_pb2.WRITE_MODE_CREATE, sandbox_pb2.WRITE_MODE_UNSPECIFIED) and st is not None:
            raise DocError(grpc.StatusCode.ALREADY_EXISTS, f"{shown(target.rel)} already exists")
        if st is not None and not stat.S_ISREG(st.st_mode) and not stat.S_ISLNK(st.st_mode):
            raise DocError(grpc.StatusCode.FAILED_PRECONDITION, f"{shown(target.rel)} is not a regular file")
        return st

    def _new_temp(self, target: _Target) -> tuple[int, str]:
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=target.parent)
        return fd, tmp

    def _commit(self, target: _Target, fd: int, tmp: str, mode: int) -> os.stat_result:
        """fsync the temp file and move it into place per mode; the temp name never survives."""
        try:
            existing = self._check_mode_before(target, mode)
            file_mode = stat.S_IMODE(existing.st_mode) if existing is not None and stat.S_ISREG(existing.st_mode) else NEW_FILE_MODE
            os.fchmod(fd, file_mode)
            os.fsync(fd)
            if mode in (sandbox_pb2.WRITE_MODE_CREATE, sandbox_pb2.WRITE_MODE_UNSPECIFIED):
                try:
                    os.link(tmp, target.abs)
                except FileExistsError:
                    raise DocError(grpc.StatusCode.ALREADY_EXISTS, f"{shown(target.rel)} already exists") from None
                os.unlink(tmp)
            else:
                if mode == sandbox_pb2.WRITE_MODE_UPDATE and not os.path.lexists(target.abs):
                    raise DocError(grpc.StatusCode.NOT_FOUND, f"no such document: {shown(target.rel)}")
                os.replace(tmp, target.abs)
            self._fsync_dir(target.parent)
            return os.lstat(target.abs)
        finally:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    @staticmethod
    def _fsync_dir(path: str) -> None:
        with contextlib.suppress(OSError):
            dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    async def _invalidate(self, rel: str, reason: str) -> None:
        if self.cache is not None:
            await self.cache.invalidate(rel, reason)

    @staticmethod
    def _check_mode(mode: int) -> int:
        if mode not in (
            sandbox_pb2.WRITE_MODE_UNSPECIFIED, sandbox_pb2.WRITE_MODE_CREATE,
            sandbox_pb2.WRITE_MODE_UPDATE, sandbox_pb2.WRITE_MODE_UPSERT,
        ):
            raise DocError(grpc.StatusCode.INVALID_ARGUMENT, f"unknown write mode {mode}")
        return mode

    # ---------------------------------------------------------------------------------------
    # list / read

    def _list_sync(
        self, user_path: str, recursive: bool, limit: int = 0, after: str = ""
    ) -> tuple[list[sandbox_pb2.DocumentInfo], str]:
        """One page of the listing in path order: at most `limit` entries (0: all) whose path sorts
        after `after`, and the `after` of the next page ("" at the end).

        A page never holds more than `limit + 1` entries at a time: candidates are trimmed as they
        come, only entries in the page's range are stat'ed, and a subtree wholly before `after` (or
        after the page's last candidate) is not walked. A subtree's paths all lie between
        `dir + "/"` and `dir + "0"` ("/" and "0" are adjacent), whatever the names beneath it."""
        r = self._resolve(user_path)
        assert r.st is not None
        if not r.is_dir:
            return ([_info(r.rel, r.st)] if not after or r.rel > after else []), ""
        out: list[tuple[str, os.stat_result]] = []
        bound: str | None = None  # with a limit: the largest path a page can still hold

        def trim() -> None:
            nonlocal bound
            out.sort(key=lambda item: item[0])
            del out[limit + 1:]
            bound = out[-1][0]

        stack = [(r.abs, r.rel)]
        while stack:
            path, rel = stack.pop()
            try:
                it = os.scandir(path)
            except OSError:
                continue
            with it:
                for entry in it:
                    if entry.name.startswith("."):
                        continue  # hidden files and our own temp files
                    child_rel = entry.name if rel == "." else f"{rel}/{entry.name}"
                    if after or bound is not None:
                        try:
                            descend = recursive and entry.is_dir(follow_symlinks=False)
                        except OSError:
                            continue
                        if descend and (child_rel + "0" <= after or (bound is not None and child_rel + "/" > bound)):
                            descend = False  # nothing beneath it belongs on this page
                        if not (child_rel > after and (bound is None or child_rel < bound)):
                            if descend:
                                stack.append((entry.path, child_rel))
                            continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                        if stat.S_ISLNK(st.st_mode):
                            target = os.path.realpath(entry.path)
                            if not paths.is_beneath(target, self.root_real):
                                continue  # a symlink pointing outside is not a document
                            st = os.stat(target)
                            if stat.S_ISDIR(st.st_mode):
                                out.append((child_rel, st))
                                continue  # listed, not descended (no loops)
                    except OSError:
                        continue
                    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                        continue
                    out.append((child_rel, st))
                    if limit and len(out) > 2 * (limit + 1):
                        trim()
                    if recursive and stat.S_ISDIR(st.st_mode) and not entry.is_symlink():
                        if bound is None or child_rel + "/" < bound:
                            stack.append((entry.path, child_rel))
        out.sort(key=lambda item: item[0])
        next_after = ""
        if limit and len(out) > limit:
            del out[limit:]
            next_after = out[-1][0]
        return [_info(rel, st) for rel, st in out], next_after

    async def list(
        self, user_path: str, recursive: bool, limit: int = 0, after: str = ""
    ) -> tuple[list[sandbox_pb2.DocumentInfo], str]:
        return await asyncio.to_thread(self._list_sync, user_path, recursive, limit, after)

    def _read_sync(self, user_path: str) -> sandbox_pb2.ReadDocumentResponse:
        r = self._resolve(user_path)
        if r.is_dir:
            raise DocError(grpc.StatusCode.FAILED_PRECONDITION, f"{shown(r.rel)} is a directory")
        fd = self._open_regular(r)
        try:
            st = os.fstat(fd)
            if st.st_size > self.settings.max_file_size:
                raise DocError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{shown(r.rel)} is {st.st_size} bytes, over the {self.settings.max_file_size}-byte limit; use StreamFile",
                )
            data = b""
            while len(data) <= self.settings.max_file_size:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                data += chunk
            if len(data) > self.settings.max_file_size:
                raise DocError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{shown(r.rel)} is over the size limit")
        finally:
            os.close(fd)
        if b"\x00" in data[:BINARY_SNIFF_BYTES]:
            raise DocError(grpc.StatusCode.FAILED_PRECONDITION, f"{shown(r.rel)} is a binary file")
        return sandbox_pb2.ReadDocumentResponse(info=_info(r.rel, st), content=data.decode("utf-8", errors="replace"))

    async def read(self, user_path: str) -> sandbox_pb2.ReadDocumentResponse:
        return await asyncio.to_thread(self._read_sync, user_path)

    def _open_regular(self, r: paths.Resolved) -> int:
        try:
            fd = os.open(r.abs, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        except FileNotFoundError:
            raise DocError(grpc.StatusCode.NOT_FOUND, f"no such document: {shown(r.rel)}") from None
        except OSError:
            raise DocError(grpc.StatusCode.FAILED_PRECONDITION, f"cannot open {shown(r.rel)}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise DocError(grpc.StatusCode.FAILED_PRECONDITION, f"{shown(r.rel)} is not a regular file")
            if not paths.fd_beneath_root(fd, self.root_real):
                raise DocError(grpc.StatusCode.PERMISSION_DENIED, f"{shown(r.rel)} is outside the data root")
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    # ---------------------------------------------------------------------------------------
    # write / delete / upload

    def _write_sync(self, user_path: str, content: bytes, mode: int) -> tuple[str, sandbox_pb2.DocumentInfo]:
        target = self._write_target(user_path)
        self._check_mode_before(target, mode)
        self._make_parent(target)
        fd, tmp = self._new_temp(target)
        try:
            view = memoryview(content)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        st = self._commit(target, fd, tmp, mode)
        return target.rel, _info(target.rel, st)

    async def write(self, user_path: str, content: str, mode: int) -> sandbox_pb2.DocumentInfo:
        self._check_writable()
        self._check_mode(mode)
        data = content.encode("utf-8", errors="surrogatepass")
        if len(data) > self.settings.max_file_size:
            raise DocError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"content is {len(data)} bytes, over the {self.settings.max_file_size}-byte limit",
            )
        rel, info = await asyncio.to_thread(self._write_sync, user_path, data, mode)
        await self._invalidate(rel, "document_write")
        return info

    def _delete_sync(self, user_path: str) -> str:
        try:
            r = paths.resolve_for_write(self.root_real, user_path)
        except paths.PathError as exc:
            raise _from_path_error(exc) from None
        if r.st is None:
            raise DocError(grpc.StatusCode.NOT_FOUND, f"no such document: {shown(r.rel)}")
        if stat.S_ISDIR(r.st.st_mode):
            raise DocError(grpc.StatusCode.FAILED_PRECONDITION, f"{shown(r.rel)} is a directory; only files can be deleted")
        if not (stat.S_ISREG(r.st.st_mode) or stat.S_ISLNK(r.st.st_mode)):
            raise DocError(grpc.StatusCode.FAILED_PRECONDITION, f"{shown(r.rel)} is not a regular file")
        try:
            os.unlink(r.abs)
        except FileNotFoundError:
            raise DocError(grpc.StatusCode.NOT_FOUND, f"no such document: {shown(r.rel)}") from None
        except IsADirectoryError:
            raise DocError(grpc.StatusCode.FAILED_PRECONDITION, f"{shown(r.rel)} is a directory") from None
        self._fsync_dir(os.path.dirname(r.abs))
        return r.rel

    async def delete(self, user_path: str) -> str:
        """Delete a file (a name refused for writes can still be deleted); its displayed path."""
        self._check_writable()
        rel = await asyncio.to_thread(self._delete_sync, user_path)
        await self._invalidate(rel, "document_delete")
        return shown(rel)

    async def upload(self, chunks: AsyncIterator[sandbox_pb2.UploadChunk]) -> sandbox_pb2.DocumentInfo:
        """Header chunk first, then data chunks into a temp file; over the size limit: abort, no trace."""
        self._check_writable()
        first = None
        async for chunk in chunks:
            first = chunk
            break
        if first is None or first.WhichOneof("part") != "header":
            raise DocError(grpc.StatusCode.INVALID_ARGUMENT, "the first upload chunk must be the header (path, mode)")
        mode = self._check_mode(first.header.mode)
        target = self._write_target(first.header.path)
        await asyncio.to_thread(self._check_mode_before, target, mode)  # fail fast, before any data
        await asyncio.to_thread(self._make_parent, target)
        fd, tmp = await asyncio.to_thread(self._new_temp, target)
        limit = self.settings.max_file_size
        total = 0
        committed = False
        ended = False
        try:
            async for chunk in chunks:
                part = chunk.WhichOneof("part")
                if ended:
                    raise DocError(grpc.StatusCode.INVALID_ARGUMENT, "no upload chunk may follow the end marker")
                if part == "header":
                    raise DocError(grpc.StatusCode.INVALID_ARGUMENT, "only the first upload chunk may be a header")
                if part == "end":
                    if chunk.end.total_bytes != total:
                        raise DocError(
                            grpc.StatusCode.INVALID_ARGUMENT,
                            f"upload of {shown(target.rel)} sent {chunk.end.total_bytes} bytes but {total} arrived; nothing was written",
                        )
                    ended = True
                    continue
                if part != "data":
                    continue
                total += len(chunk.data)
                if total > limit:
                    raise DocError(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"upload of {shown(target.rel)} is over the {limit}-byte limit; nothing was written",
                    )
                view = memoryview(chunk.data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
            if not ended:
                raise DocError(
                    grpc.StatusCode.ABORTED, f"upload of {shown(target.rel)} ended without its end marker; nothing was written"
                )
            committed = True
            st = await asyncio.to_thread(self._commit, target, fd, tmp, mode)
        finally:
            if not committed:
                os.close(fd)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        info = _info(target.rel, st)
        await self._invalidate(target.rel, "document_write")
        return info

    # ---------------------------------------------------------------------------------------
    # streaming

    async def stream_file(self, user_path: str, chunk_lines: int) -> AsyncIterator[sandbox_pb2.FileChunk]:
        if chunk_lines < 0:
            raise DocError(grpc.StatusCode.INVALID_ARGUMENT, "chunk_lines must be positive")
        per_chunk = min(chunk_lines or DEFAULT_CHUNK_LINES, MAX_CHUNK_LINES)
        r = self._resolve(user_path)
        if r.is_dir:
            raise DocError(grpc.StatusCode.FAILED_PRECONDITION, f"{shown(r.rel)} is a directory")
        fd = await asyncio.to_thread(self._open_regular, r)
        fh = os.fdopen(fd, "rb", buffering=1 << 16)
        try:
            head = await asyncio.to_thread(os.pread, fd, BINARY_SNIFF_BYTES, 0)
            if b"\x00" in head:
                raise DocError(grpc.StatusCode.FAILED_PRECONDITION, f"{shown(r.rel)} is a binary file")

            def read_lines() -> list[str]:
                lines: list[str] = []
                for _ in range(per_chunk):
                    raw = fh.readline()
                    if not raw:
                        break
                    lines.append(raw.rstrip(b"\n").rstrip(b"\r").decode("utf-8", errors="replace"))
                return lines

            start = 1
            batch = await asyncio.to_thread(read_lines)
            while True:
                following = await asyncio.to_thread(read_lines) if len(batch) == per_chunk else []
                last = not following
                yield sandbox_pb2.FileChunk(
                    start_line=start, lines=batch, last=last,
                    total_lines=(start - 1 + len(batch)) if last else 0,
                )
                if last:
                    return
                start += len(batch)
                batch = following
        finally:
            fh.close()

    def search_argv(self, pattern: str, ignore_case: bool, fixed_strings: bool, rel: str) -> list[str]:
        target = "." if rel == "." else "./" + rel
        if self.rg:
            argv = [
                self.rg, "--no-config", "--no-heading", "--with-filename", "--line-number", "--null",
                "--color", "never", "--no-follow", "--no-ignore", "--sort", "path",
                "--max-columns", str(MAX_MATCH_LINE_CHARS), "--max-columns-preview",
                "--ignore-case" if ignore_case else "--case-sensitive",
            ]
            if fixed_strings:
                argv.append("--fixed-strings")
            return argv + ["-e", pattern, "--", target]
        if self.grep:
            if not fixed_strings and tools.has_backreference(pattern):
                raise DocError(grpc.StatusCode.INVALID_ARGUMENT, tools.BACKREFERENCE_MESSAGE)
            argv = [self.grep, "-rnHZI", "--devices=skip", "--color=never", "-F" if fixed_strings else "-E"]
            if ignore_case:
                argv.append("-i")
            return argv + ["-e", pattern, "--", target]
        raise DocError(grpc.StatusCode.UNAVAILABLE, "no search binary is installed in the sandbox")

    async def stream_search(
        self, user_path: str, pattern: str, ignore_case: bool, fixed_strings: bool, max_results: int
    ) -> AsyncIterator[sandbox_pb2.SearchMatch]:
        if not pattern:
            raise DocError(grpc.StatusCode.INVALID_ARGUMENT, "pattern is required")
        if len(pattern) > MAX_PATTERN_CHARS or "\x00" in pattern:
            raise DocError(grpc.StatusCode.INVALID_ARGUMENT, f"pattern must be at most {MAX_PATTERN_CHARS} characters, no NUL")
        if max_results < 0:
            raise DocError(grpc.StatusCode.INVALID_ARGUMENT, "max_results must be positive")
        limit = min(max_results or DEFAULT_MAX_RESULTS, MAX_RESULTS)
        r = self._resolve(user_path)
        argv = self.search_argv(pattern, ignore_case, fixed_strings, r.rel)
        status: dict[str, object] = {}
        sent = 0
        lines = runner.stream_lines(
            argv, cwd=self.root_real, timeout=self.settings.tool_timeout,
            max_line_bytes=4 * MAX_MATCH_LINE_CHARS + 4096, status=status, launcher=self.launcher,
        )
        # Lines are split on "\n", but a name may hold one: the parser reads records (PATH\0...)
        # across them, so a match's path is always the file it came from (grep_output).
        parser = grep_output.Parser(self.root_real, max_pending=64 * 1024)

        def matches(records: list[grep_output.Record]) -> list[sandbox_pb2.SearchMatch]:
            return [
                sandbox_pb2.SearchMatch(
                    path=grep_output.display_path(record.path),
                    line_number=record.line,
                    line=record.text.decode("utf-8", errors="replace")[:MAX_MATCH_LINE_CHARS],
                )
                for record in records if record.match
            ]

        try:
            try:
                async for raw in lines:
                    for match in matches(parser.feed(raw + b"\n")):
                        yield match
                        sent += 1
                        if sent >= limit:
                            return
                for match in matches(parser.finish(truncated=bool(status.get("timed_out")))):
                    yield match
                    sent += 1
                    if sent >= limit:
                        return
            except grep_output.AmbiguousOutput as exc:
                raise DocError(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from None
        finally:
            await lines.aclose()
        if sent == 0 and status.get("exit_code") == 2:
            message = bytes(status.get("stderr") or b"").decode("utf-8", errors="replace").strip()
            message = message.replace(self.root_real + os.sep, "").replace(self.root_real, ".")
            raise search_failure(message)
        if sent == 0 and status.get("timed_out"):
            raise DocError(grpc.StatusCode.DEADLINE_EXCEEDED, "the search timed out; narrow the path or the pattern")
