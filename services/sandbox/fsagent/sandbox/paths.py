"""Confine a model- or user-supplied path to the data root.

Every path is relative to the root ("." is the root, a leading "/" also means the root). `..` and
symlinks are resolved with realpath and the result must stay beneath the root's realpath. The
relative path handed back is POSIX, has no leading "./", and is "." for the root; messages carry
only relative paths (or what the caller sent), never a host path, and every name in a message
is printed with `names.display` (never a raw control character).

A path argument written as `names.display` prints it (a JSON string literal, whole or per
component) means the name it decodes to, so a name a listing showed quoted can be passed back.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from typing import Literal

from fsagent.common import names

MAX_PATH_CHARS = 4096
MAX_COMPONENT_CHARS = 255

Expect = Literal["any", "file", "dir"]


class PathError(Exception):
    """A refused path. `code` is one of invalid_arguments, path_outside_root, not_found, file_type."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _echo(user_path: str, limit: int = 120) -> str:
    text = user_path if len(user_path) <= limit else user_path[: limit - 3] + "..."
    return repr(text)


def shown(rel: str) -> str:
    """A relative path as messages and outputs print it (names.display)."""
    return names.display(rel)


def root_realpath(root: str | os.PathLike[str]) -> str:
    return os.path.realpath(os.fspath(root))


def is_beneath(real: str, root_real: str) -> bool:
    if root_real == os.sep:
        return real.startswith(os.sep)
    return real == root_real or real.startswith(root_real + os.sep)


def relative(real: str, root_real: str) -> str:
    if real == root_real:
        return "."
    rel = os.path.relpath(real, root_real)
    return rel.replace(os.sep, "/")


def check_shape(user_path: str) -> str:
    """The user's path made relative ("" and "/" mean the root); raise on a malformed one."""
    if not isinstance(user_path, str):
        raise PathError("invalid_arguments", "path must be a string")
    user_path = names.parse(user_path)
    if "\x00" in user_path:
        raise PathError("invalid_arguments", "path must not contain NUL bytes")
    if len(user_path) > MAX_PATH_CHARS:
        raise PathError("invalid_arguments", f"path is longer than {MAX_PATH_CHARS} characters")
    try:  # \udc80-\udcff stand for a name's undecodable bytes; any other surrogate names nothing
        user_path.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise PathError("invalid_arguments", f"path {_echo(user_path)} is not valid text (a lone surrogate)") from None
    if any(len(part.encode("utf-8", "surrogateescape")) > MAX_COMPONENT_CHARS for part in user_path.split("/")):
        raise PathError("invalid_arguments", f"a path component is longer than {MAX_COMPONENT_CHARS} bytes")
    stripped = user_path.lstrip("/")
    return stripped or "."


@dataclass(frozen=True, slots=True)
class Resolved:
    abs: str  # host path: for opening only, never for messages
    rel: str  # POSIX, relative to the root, "." for the root
    st: os.stat_result | None  # lstat of abs (None when it does not exist and that was allowed)

    @property
    def is_dir(self) -> bool:
        return self.st is not None and stat.S_ISDIR(self.st.st_mode)

    @property
    def is_file(self) -> bool:
        return self.st is not None and stat.S_ISREG(self.st.st_mode)


def resolve_entry(
    root: str | os.PathLike[str], user_path: str, *, expect: Expect = "any", must_exist: bool = True
) -> Resolved:
    """Resolve and check one path beneath the root; raise PathError otherwise."""
    root_real = root_realpath(root)
    rel_in = check_shape(user_path)
    real = os.path.realpath(os.path.join(root_real, rel_in))
    if not is_beneath(real, root_real):
        raise PathError(
            "path_outside_root",
            f"path {_echo(user_path)} is outside the data root; paths are relative to the data root "
            f"and may not leave it (no '..' above the root, no symlinks pointing outside)",
        )
    rel = relative(real, root_real)
    try:
        st = os.lstat(real)
    except FileNotFoundError:
        if must_exist:
            raise PathError("not_found", f"no such file or directory: {shown(rel)}") from None
        return Resolved(real, rel, None)
    except NotADirectoryError:
        raise PathError("not_found", f"no such file or directory: {shown(rel)} (a parent is a file)") from None
    except PermissionError:
        raise PathError("not_found", f"permission denied: {shown(rel)}") from None
    except OSError as exc:  # ENAMETOOLONG, ELOOP...: a message, never a host path
        raise _os_error(exc, rel) from None
    mode = st.st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise PathError("file_type", f"{shown(rel)} is not a regular file or directory (devices, FIFOs and sockets are refused)")
    if expect == "file" and stat.S_ISDIR(mode):
        raise PathError("file_type", f"{shown(rel)} is a directory; use ls, tree or find for directories")
    if expect == "dir" and not stat.S_ISDIR(mode):
        raise PathError("file_type", f"{shown(rel)} is a file, not a directory; use cat, head or preview for files")
    return Resolved(real, rel, st)


def resolve(root: str | os.PathLike[str], user_path: str, *, expect: Expect = "any") -> tuple[str, str]:
    """(abs_path, rel_path) for an existing file or directory beneath the root."""
    r = resolve_entry(root, user_path, expect=expect)
    return r.abs, r.rel


def resolve_for_write(root: str | os.PathLike[str], user_path: str) -> Resolved:
    """Where a document write or delete lands: the parent is realpath'd, the last name is kept.

    The last component is not followed, so deleting or replacing a symlink acts on the link
    itself, never on whatever it points to. The parent may not exist yet (it is created beneath
    the root by the writer, which re-checks it).
    """
    root_real = root_realpath(root)
    rel_in = check_shape(user_path).rstrip("/")
    parts = [p for p in rel_in.split("/") if p not in ("", ".")]
    if not parts or parts[-1] == "..":
        raise PathError("invalid_arguments", f"path {_echo(user_path)} does not name a file")
    parent_real = os.path.realpath(os.path.join(root_real, *parts[:-1]))
    if not is_beneath(parent_real, root_real):
        raise PathError("path_outside_root", f"path {_echo(user_path)} is outside the data root")
    abs_path = os.path.join(parent_real, parts[-1])
    rel = relative(abs_path, root_real)
    try:
        st: os.stat_result | None = os.lstat(abs_path)
    except (FileNotFoundError, NotADirectoryError):
        st = None
    except OSError as exc:
        raise _os_error(exc, rel) from None
    return Resolved(abs_path, rel, st)


def _os_error(exc: OSError, rel: str) -> PathError:
    reason = os.strerror(exc.errno) if exc.errno else "cannot access"
    code = "invalid_arguments" if exc.errno == errno.ENAMETOOLONG else "not_found"
    return PathError(code, f"{_echo(rel)}: {reason}")


def fd_beneath_root(fd: int, root_real: str) -> bool:
    """After open(): is what we actually opened beneath the root? (closes a rename/symlink race)."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return True  # no /proc: the realpath check before open() stands alone
    return is_beneath(target, root_real)
