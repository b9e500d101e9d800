"""Path confinement, unit level."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fsagent.sandbox.paths import PathError, resolve, resolve_for_write

from tests.sandbox.helpers import build_tree


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return build_tree(tmp_path)


def codes(root: Path, user_path: str, **kw: object) -> str:
    with pytest.raises(PathError) as info:
        resolve(root, user_path, **kw)  # type: ignore[arg-type]
    assert str(root) not in info.value.message and str(root.parent) not in info.value.message
    return info.value.code


def test_relative_forms(root: Path) -> None:
    real = os.path.realpath(root)
    assert resolve(root, ".") == (real, ".")
    assert resolve(root, "") == (real, ".")
    assert resolve(root, "/") == (real, ".")
    assert resolve(root, "./policies/")[1] == "policies"
    assert resolve(root, "/policies/password.md")[1] == "policies/password.md"
    assert resolve(root, "policies/../README.md")[1] == "README.md"
    assert resolve(root, "-delete")[1] == "-delete"
    # A symlink inside the root resolves to its target's relative path.
    assert resolve(root, "policies/link-in.md")[1] == "policies/password.md"


@pytest.mark.parametrize(
    "user_path",
    ["..", "../outside/secret.txt", "policies/../../outside", "link-out-file", "link-out-dir",
     "link-out-dir/inner.txt", "notes/relative-out", "environ-link"],
)
def test_outside(root: Path, user_path: str) -> None:
    assert codes(root, user_path) == "path_outside_root"


def test_absolute_means_root(root: Path) -> None:
    assert codes(root, "/etc/passwd") == "not_found"
    assert codes(root, str(root.parent / "outside" / "secret.txt")) == "not_found"


def test_shapes(root: Path) -> None:
    assert codes(root, "a\x00b") == "invalid_arguments"
    assert codes(root, "a" * 4097) == "invalid_arguments"
    assert codes(root, "x" * 256) == "invalid_arguments"
    assert codes(root, "nope") == "not_found"
    assert codes(root, "README.md/x") == "not_found"


def test_file_types(root: Path) -> None:
    assert codes(root, "fifo") == "file_type"
    assert codes(root, "policies", expect="file") == "file_type"
    assert codes(root, "README.md", expect="dir") == "file_type"


def test_resolve_for_write(root: Path) -> None:
    r = resolve_for_write(root, "new/dir/doc.md")
    assert r.rel == "new/dir/doc.md" and r.st is None
    # The last component is not followed: a symlink is acted on as a link.
    link = resolve_for_write(root, "link-out-file")
    assert link.rel == "link-out-file" and link.st is not None
    for bad in ("../x.md", "link-out-dir/x.md", ".", "/", "a/.."):
        with pytest.raises(PathError):
            resolve_for_write(root, bad)
