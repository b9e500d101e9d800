"""Every tool's happy path and exact output format, through a real gRPC sandbox."""

from __future__ import annotations

import asyncio
import json
import re

from fsagent.v1 import sandbox_pb2
from tests.sandbox.conftest import Sandbox
from tests.sandbox.helpers import OUTSIDE_CANARY

PASSWORD_MD = (
    "# Password policy\n"
    "\n"
    "Passwords must be at least 14 characters long.\n"
    "Rotate passwords every 90 days.\n"
    "Never share a password.\n"
)


def ok(resp: sandbox_pb2.ExecuteResponse) -> str:
    assert resp.error == "" and resp.error_code == "" and resp.exit_code == 0, (resp.error_code, resp.error)
    assert not resp.cached
    assert resp.output_bytes == len(resp.stdout.encode())
    return resp.stdout


async def test_grep_format(sandbox: Sandbox) -> None:
    resp = await sandbox.execute("grep", pattern="password", path="policies", ignore_case=True)
    out = ok(resp)
    assert out.splitlines() == [
        "policies/password.md:1:# Password policy",
        "policies/password.md:3:Passwords must be at least 14 characters long.",
        "policies/password.md:4:Rotate passwords every 90 days.",
        "policies/password.md:5:Never share a password.",
    ]
    assert resp.command.startswith("rg --no-config") and resp.command.endswith("-- ./policies")
    assert "/" + str(sandbox.root).strip("/") not in resp.command


async def test_grep_whole_root_paths_have_no_dot_slash(sandbox: Sandbox) -> None:
    out = ok(await sandbox.execute("grep", pattern="password"))
    lines = out.splitlines()
    assert lines and all(re.match(r"^[^./][^:]*:\d+:", line) for line in lines), lines
    # Hidden files are skipped; a file whose name starts with '-' is searched as a file.
    assert not any(".hidden" in line for line in lines)
    assert "-rf.md:1:dash file with password" in lines
    # bin.dat is binary: rg skips it in a recursive search.
    assert not any(line.startswith("bin.dat") for line in lines)


async def test_grep_context_and_flags(sandbox: Sandbox) -> None:
    out = ok(await sandbox.execute("grep", pattern="Rotate", path="policies/password.md", context=1))
    assert out == (
        "policies/password.md:3-Passwords must be at least 14 characters long.\n"
        "policies/password.md:4:Rotate passwords every 90 days.\n"
        "policies/password.md:5-Never share a password.\n"
    )
    out = ok(await sandbox.execute("grep", pattern="password", files_with_matches=True))
    assert out.splitlines() == ["-rf.md", "README.md", "policies/password.md"]
    out = ok(await sandbox.execute("grep", pattern="pass", word=True, path="policies"))
    assert out == ""
    out = ok(await sandbox.execute("grep", pattern="a.b", fixed_strings=True))
    assert out == ""
    out = ok(await sandbox.execute("grep", pattern="password", glob="*.md", path="policies", max_count=1))
    assert out == "policies/password.md:4:Rotate passwords every 90 days.\n"
    out = ok(await sandbox.execute("grep", pattern="^line 1[0-9]$", path="numbers.txt", max_count=3))
    assert out.splitlines() == ["numbers.txt:10:line 10", "numbers.txt:11:line 11", "numbers.txt:12:line 12"]


async def test_grep_no_match_is_success(sandbox: Sandbox) -> None:
    resp = await sandbox.execute("grep", pattern="zzz-not-there")
    assert ok(resp) == "" and resp.stderr == ""


async def test_grep_bad_regex(sandbox: Sandbox) -> None:
    resp = await sandbox.execute("grep", pattern="(unclosed")
    assert resp.error_code == "invalid_arguments" and resp.exit_code != 0
    assert "regex" in resp.error


async def test_grep_pattern_is_never_a_flag(sandbox: Sandbox) -> None:
    for pattern in ("--pre=sh", "-f/etc/passwd", "--files", "-L"):
        resp = await sandbox.execute("grep", pattern=pattern)
        assert resp.error_code == "" and resp.stdout == "", pattern


async def test_find(sandbox: Sandbox) -> None:
    out = ok(await sandbox.execute("find", path="policies"))
    assert out.splitlines() == ["policies", "policies/expense.md", "policies/link-in.md", "policies/password.md"]
    out = ok(await sandbox.execute("find", name="*.md", type="f"))
    assert out.splitlines() == ["-rf.md", "README.md", "notes/.hidden.md", "policies/expense.md", "policies/password.md"]
    out = ok(await sandbox.execute("find", type="d", max_depth=1))
    assert out.splitlines() == [".", "empty", "notes", "policies"]
    out = ok(await sandbox.execute("find", iname="readme.MD"))
    assert out == "README.md\n"
    resp = await sandbox.execute("find", path="policies", name="*.md")
    assert resp.command == "find -P ./policies -name '*.md' -print0"


async def test_cat(sandbox: Sandbox) -> None:
    resp = await sandbox.execute("cat", path="policies/password.md")
    assert ok(resp) == PASSWORD_MD
    assert resp.command == "cat policies/password.md"
    resp = await sandbox.execute("cat", path="/policies/password.md", start_line=3, end_line=4)
    assert ok(resp) == "Passwords must be at least 14 characters long.\nRotate passwords every 90 days.\n"
    assert resp.command == "cat policies/password.md (lines 3-4)"
    assert ok(await sandbox.execute("cat", path="policies/password.md", start_line=5)) == "Never share a password.\n"
    assert ok(await sandbox.execute("cat", path="policies/password.md", end_line=1)) == "# Password policy\n"
    assert ok(await sandbox.execute("cat", path="notes/todo.txt", start_line=3)) == "three"
    resp = await sandbox.execute("cat", path="policies/password.md", start_line=50)
    assert ok(resp) == "" and "past the end" in resp.stderr and "5 lines" in resp.stderr
    # A symlink inside the root is followed to its (inside) target.
    assert ok(await sandbox.execute("cat", path="policies/link-in.md")) == PASSWORD_MD


async def test_head_tail(sandbox: Sandbox) -> None:
    resp = await sandbox.execute("head", path="numbers.txt", lines=3)
    assert ok(resp) == "line 1\nline 2\nline 3\n" and resp.command == "head -n 3 numbers.txt"
    assert ok(await sandbox.execute("head", path="numbers.txt")).count("\n") == 10
    resp = await sandbox.execute("tail", path="numbers.txt", lines=2)
    assert ok(resp) == "line 99\nline 100\n" and resp.command == "tail -n 2 numbers.txt"
    assert ok(await sandbox.execute("tail", path="notes/todo.txt", lines=2)) == "two\nthree"
    assert ok(await sandbox.execute("tail", path="notes/todo.txt", lines=50)) == "one\ntwo\nthree"
    assert ok(await sandbox.execute("head", path="notes/todo.txt", lines=50)) == "one\ntwo\nthree"


async def test_wc(sandbox: Sandbox) -> None:
    resp = await sandbox.execute("wc", paths=["policies/password.md"])
    assert ok(resp) == "  5  20 122 policies/password.md\n"  # width of the widest number, like GNU wc
    resp = await sandbox.execute("wc", paths=["README.md", "notes/todo.txt"])
    assert ok(resp).splitlines() == [
        " 3  8 50 README.md",
        " 2  3 13 notes/todo.txt",
        " 5 11 63 total",
    ]
    resp = await sandbox.execute("wc", paths=["README.md", "missing.md", "policies"])
    assert resp.exit_code == 1 and resp.error_code == ""
    assert resp.stdout == " 3  8 50 README.md\n"
    assert "missing.md" in resp.stderr and "policies: is a directory" in resp.stderr
    resp = await sandbox.execute("wc", paths=["missing.md"])
    assert resp.error_code == "not_found"


async def test_preview(sandbox: Sandbox) -> None:
    resp = await sandbox.execute("preview", path="numbers.txt", lines=2)
    size = (sandbox.root / "numbers.txt").stat().st_size
    assert ok(resp) == f"==> numbers.txt <== ({size} bytes, 100 lines; showing lines 1-2)\nline 1\nline 2\n"
    resp = await sandbox.execute("preview", path="notes/todo.txt")
    assert ok(resp) == "==> notes/todo.txt <== (13 bytes, 3 lines; showing lines 1-3)\none\ntwo\nthree"


async def test_ls(sandbox: Sandbox) -> None:
    out = ok(await sandbox.execute("ls"))
    assert out.splitlines() == [
        "-delete", "-rf.md", "README.md", "bin.dat", "empty/", "environ-link@", "fifo",
        "link-out-dir@", "link-out-file@", "notes/", "numbers.txt", "policies/",
    ]
    out = ok(await sandbox.execute("ls", path="notes", all=True))
    assert out.splitlines() == [".hidden.md", "relative-out@", "todo.txt"]
    resp = await sandbox.execute("ls", path="policies", long=True)
    lines = ok(resp).splitlines()
    assert resp.command == "ls -l policies"
    assert re.fullmatch(r"f {7}\s*\d+  \d{4}-\d\d-\d\d \d\d:\d\d  expense\.md", lines[0]), lines[0]
    assert re.fullmatch(r"l +-  \d{4}-\d\d-\d\d \d\d:\d\d  link-in\.md@", lines[1]), lines[1]
    assert lines[2].split()[0] == "f" and lines[2].endswith("password.md")
    assert ok(await sandbox.execute("ls", path="README.md")) == "README.md\n"
    assert ok(await sandbox.execute("ls", path="empty")) == ""


async def test_tree(sandbox: Sandbox) -> None:
    resp = await sandbox.execute("tree", path="policies")
    assert ok(resp) == (
        "policies/\n"
        "├── expense.md\n"
        "├── link-in.md@\n"
        "└── password.md\n"
        "\n"
        "0 directories, 3 files\n"
    )
    out = ok(await sandbox.execute("tree", max_depth=1))
    assert out.startswith(".\n├── -delete\n")
    assert "├── notes/\n" in out and "todo.txt" not in out
    assert out.endswith("\n3 directories, 9 files\n")
    out = ok(await sandbox.execute("tree"))
    assert "│   └── todo.txt\n" in out and ".hidden" not in out


async def test_list_tools(sandbox: Sandbox) -> None:
    reply = await sandbox.stub.ListTools(sandbox_pb2.ListToolsRequest())
    tools = json.loads(reply.tools_json)
    assert [t["function"]["name"] for t in tools] == ["grep", "find", "cat", "head", "tail", "ls", "tree", "wc", "preview"]


async def test_refusal_codes(sandbox: Sandbox) -> None:
    cases = [
        (("nope", {}), "invalid_arguments"),
        (("cat", {"path": "missing.md"}), "not_found"),
        (("cat", {"path": "policies"}), "file_type"),
        (("tree", {"path": "README.md"}), "file_type"),
        (("cat", {"path": "bin.dat"}), "file_type"),
        (("head", {"path": "bin.dat"}), "file_type"),
        (("tail", {"path": "bin.dat"}), "file_type"),
        (("preview", {"path": "bin.dat"}), "file_type"),
        (("cat", {"path": "../outside/secret.txt"}), "path_outside_root"),
    ]
    for (tool, args), code in cases:
        resp = await sandbox.execute(tool, **args)
        assert resp.error_code == code, (tool, args, resp.error)
        assert resp.exit_code != 0 and resp.error and resp.stdout == ""
    resp = await sandbox.execute("cat", path="bin.dat")
    assert "binary" in resp.error
    # wc counts a binary file.
    assert ok(await sandbox.execute("wc", paths=["bin.dat"])).endswith(" bin.dat\n")


async def test_grep_fallback_without_ripgrep(sandbox: Sandbox) -> None:
    """When rg is missing, GNU grep answers in the same `path:LINE:text` format."""
    import dataclasses

    from fsagent.common.settings import Settings
    from fsagent.sandbox.executor import Executor

    ex = Executor(Settings(data_root=sandbox.root, cache_addr=""), None)
    ex.ctx = dataclasses.replace(ex.ctx, rg=None)
    assert ex.ctx.grep_backend == "grep"
    resp = await ex.execute("grep", '{"pattern": "rotate", "ignore_case": true, "path": "policies"}')
    assert resp.error_code == "" and resp.stdout == "policies/password.md:4:Rotate passwords every 90 days.\n"
    assert resp.command.startswith("grep -rnH") and resp.command.endswith("-- ./policies")
    resp = await ex.execute("grep", '{"pattern": "Rotate", "context": 1, "path": "policies/password.md"}')
    assert resp.stdout == (
        "policies/password.md:3-Passwords must be at least 14 characters long.\n"
        "policies/password.md:4:Rotate passwords every 90 days.\n"
        "policies/password.md:5-Never share a password.\n"
    )
    resp = await asyncio.wait_for(ex.execute("grep", '{"pattern": "password", "files_with_matches": true}'), 10)
    assert sorted(resp.stdout.splitlines()) == ["-rf.md", "README.md", "notes/.hidden.md", "policies/password.md"]
    assert OUTSIDE_CANARY not in resp.stdout
    resp = await ex.execute("grep", '{"pattern": "zzz-none"}')
    assert resp.error_code == "" and resp.stdout == "" and resp.exit_code == 0
    resp = await ex.execute("grep", '{"pattern": "(unclosed"}')
    assert resp.error_code == "invalid_arguments"
