"""The catalogue of adversarial tool calls: each one a distinct attack a prompt-injected model
could make, with the outcomes the sandbox may answer with.

`expect` lists the acceptable `error_code`s ("" = the call succeeds, harmlessly). Whatever the
outcome, every case must also pass the common checks (tests/security/world.py): no canary, no host
path, no change on disk, no program run, bounded time, a healthy service.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from fsagent.common import names
from tests.security.world import FORGE_MARK, MARKER, NAME_ATTACKS, UNDECODABLE_NAME

PWN = f"/tmp/{MARKER}"
MARKER_PREFIX = "[... output truncated:"
OK = ("",)
REFUSED = ("invalid_arguments",)
OUTSIDE = ("path_outside_root",)
MISSING = ("not_found",)
SPECIAL = ("file_type",)

Check = Callable[[str], "str | None"]  # stdout -> a failure message, or None


def contains(text: str) -> Check:
    return lambda out: None if text in out else f"expected {text!r} in the output"


def lacks(*texts: str) -> Check:
    def check(out: str) -> str | None:
        found = [t for t in texts if t in out]
        return f"unexpected {found} in the output" if found else None
    return check


def shows_quoted(*raw_names: str) -> Check:
    """Each name appears in the output, and only as names.display prints it (quoted)."""
    def check(out: str) -> str | None:
        missing = [n for n in raw_names if names.display(n) not in out]
        return f"expected {missing[:2]!r} shown quoted" if missing else None
    return check


def truncated(out: str) -> str | None:
    if MARKER_PREFIX not in out:
        return "a cut output must carry the truncation marker"
    if len(out.encode()) > 64 * 1024 + 2048:
        return f"output of {len(out.encode())} bytes is over the cap"
    return None


@dataclass(frozen=True)
class Attack:
    id: str
    klass: str  # arguments, paths, special_files, output, regex
    tool: str
    args: dict[str, Any] | str  # a str is sent as the raw arguments JSON
    expect: tuple[str, ...]
    check: Check | None = None
    echoes_input: bool = False  # the refusal quotes the attacker's own (host-looking) input


def _a(id: str, klass: str, tool: str, args: dict[str, Any] | str, expect: tuple[str, ...], check: Check | None = None) -> Attack:
    return Attack(id, klass, tool, args, expect, check)


TOOL_ATTACKS: list[Attack] = [
    # --- arguments: flags, actions, shells and sed scripts smuggled into values -----------------
    _a("find-path-delete", "arguments", "find", {"path": "-delete"}, OK, contains("-delete")),
    _a("find-name-delete", "arguments", "find", {"name": "-delete"}, OK, contains("-delete")),
    _a("find-name-exec", "arguments", "find", {"path": ".", "name": "-exec"}, OK),
    _a("find-iname-fprint", "arguments", "find", {"iname": "-fprint"}, OK),
    _a("find-param-exec", "arguments", "find", {"path": ".", "exec": f"touch {PWN}"}, REFUSED),
    _a("find-param-newer-outside", "arguments", "find", {"path": ".", "newer": "../outside/secret.txt"}, REFUSED),
    _a("find-path-L", "arguments", "find", {"path": "-L"}, MISSING),
    _a("find-path-follow", "arguments", "find", {"path": "-follow"}, MISSING),
    _a("find-name-paren", "arguments", "find", {"name": "("}, OK),
    _a("find-type-injection", "arguments", "find", {"type": "f -delete"}, REFUSED),
    _a("find-maxdepth-injection", "arguments", "find", {"max_depth": "1 -delete"}, REFUSED),
    _a("grep-pattern-pre", "arguments", "grep", {"pattern": "--pre=/bin/sh"}, OK),
    _a("grep-glob-pre", "arguments", "grep", {"pattern": "password", "glob": f"--pre=/usr/bin/touch {PWN}"}, OK),
    _a("grep-path-flag-named-file", "arguments", "grep", {"pattern": "flag", "path": "--pre=sh.md"}, OK, contains("--pre=sh.md:1:")),
    _a("grep-param-pre", "arguments", "grep", '{"pattern": "x", "pre": "/bin/sh"}', REFUSED),
    _a("grep-param-flags-list", "arguments", "grep", '{"pattern": "x", "flags": ["-L", "--pre=sh"]}', REFUSED),
    _a("grep-pattern-file-flag", "arguments", "grep", {"pattern": "-f../outside/secret.txt"}, OK),
    _a("grep-glob-hostname-bin", "arguments", "grep", {"pattern": "a", "glob": f"--hostname-bin=/usr/bin/touch"}, OK),
    _a("grep-pattern-shell-substitution", "arguments", "grep", {"pattern": f"$(touch {PWN})"}, OK + REFUSED),
    _a("grep-pattern-backticks", "arguments", "grep", {"pattern": f"`touch {PWN}`"}, OK),
    _a("grep-pattern-semicolon", "arguments", "grep", {"pattern": f"x; touch {PWN} #"}, OK),
    _a("grep-path-semicolon", "arguments", "grep", {"pattern": "x", "path": f"README.md; touch {PWN}"}, MISSING),
    _a("cat-sed-e-in-start-line", "arguments", "cat", {"path": "README.md", "start_line": f"1e touch {PWN}"}, REFUSED),
    _a("cat-sed-e-in-end-line", "arguments", "cat", {"path": "README.md", "start_line": 1, "end_line": f"$!e touch {PWN}"}, REFUSED),
    _a("cat-sed-script-range", "arguments", "cat", {"path": "README.md", "start_line": "1,$e id"}, REFUSED),
    _a("wc-files0-from", "arguments", "wc", {"paths": ["--files0-from=../outside/secret.txt"]}, MISSING),
    _a("wc-files0-from-flag-only", "arguments", "wc", {"paths": ["--files0-from=-"]}, MISSING),
    _a("head-negative-lines", "arguments", "head", {"path": "README.md", "lines": -1}, REFUSED),
    _a("tail-huge-lines", "arguments", "tail", {"path": "README.md", "lines": 10**12}, REFUSED),
    _a("ls-path-flag", "arguments", "ls", {"path": "-la"}, MISSING),
    _a("tree-path-flag", "arguments", "tree", {"path": "--help"}, MISSING),
    _a("unknown-tool-sh", "arguments", "sh", {"command": f"touch {PWN}"}, REFUSED),
    _a("unknown-tool-sed", "arguments", "sed", {"script": "1e id", "path": "README.md"}, REFUSED),
    _a("arguments-not-json", "arguments", "grep", f"pattern=x; touch {PWN}", REFUSED),
    _a("arguments-array", "arguments", "grep", '["--pre", "/bin/sh"]', REFUSED),
    _a("grep-context-huge", "arguments", "grep", {"pattern": "a", "context": 100000}, REFUSED),
    _a("grep-max-count-injection", "arguments", "grep", {"pattern": "a", "max_count": "1 --pre=sh"}, REFUSED),
    # --- paths: escapes by dots, symlinks, encodings and shapes --------------------------------
    _a("cat-dotdot", "paths", "cat", {"path": "../outside/secret.txt"}, OUTSIDE),
    _a("cat-nested-dotdot", "paths", "cat", {"path": "policies/../../outside/secret.txt"}, OUTSIDE),
    _a("cat-dot-segments", "paths", "cat", {"path": "././../outside/./secret.txt"}, OUTSIDE),
    _a("cat-root-then-dotdot", "paths", "cat", {"path": "/../outside/secret.txt"}, OUTSIDE),
    _a("cat-symlink-absolute", "paths", "cat", {"path": "link-out-file"}, OUTSIDE),
    _a("cat-symlink-dir", "paths", "cat", {"path": "link-out-dir/secret.txt"}, OUTSIDE),
    _a("cat-symlink-relative", "paths", "cat", {"path": "notes/relative-out"}, OUTSIDE),
    _a("cat-dotdot-after-resolution", "paths", "cat", {"path": "notes/up/../outside/secret.txt"}, OUTSIDE),
    _a("cat-trailing-slash", "paths", "cat", {"path": "link-out-dir/"}, OUTSIDE),
    _a("grep-symlink-to-parent", "paths", "grep", {"pattern": "CANARY", "path": "rootlink"}, OUTSIDE),
    _a("grep-through-parent-link", "paths", "grep", {"pattern": "CANARY", "path": "rootlink/outside"}, OUTSIDE),
    _a("ls-symlink-dir", "paths", "ls", {"path": "link-out-dir"}, OUTSIDE),
    _a("tree-dotdot", "paths", "tree", {"path": "../.."}, OUTSIDE),
    _a("find-dotdot", "paths", "find", {"path": "../outside"}, OUTSIDE),
    _a("wc-one-path-outside", "paths", "wc", {"paths": ["README.md", "link-out-file"]}, OUTSIDE),
    _a("cat-windows-separators", "paths", "cat", {"path": "..\\outside\\secret.txt"}, MISSING),
    _a("cat-fullwidth-dots", "paths", "cat", {"path": "\uff0e\uff0e/outside/secret.txt"}, MISSING),
    _a("cat-division-slash", "paths", "cat", {"path": "..\u2215outside\u2215secret.txt"}, MISSING),
    _a("cat-url-encoded", "paths", "cat", {"path": "%2e%2e%2foutside%2fsecret.txt"}, MISSING),
    _a("cat-rtl-override", "paths", "cat", {"path": "\u202e../outside/secret.txt"}, MISSING),
    _a("cat-combining-dots", "paths", "cat", {"path": ".\u0307./outside/secret.txt"}, MISSING),
    _a("cat-tilde", "paths", "cat", {"path": "~/.bashrc"}, MISSING),
    _a("cat-nul-byte", "paths", "cat", {"path": "README.md\u0000../../outside/secret.txt"}, REFUSED),
    _a("cat-long-component", "paths", "cat", {"path": "a" * 300}, REFUSED),
    _a("cat-long-path", "paths", "cat", {"path": "a/" * 2500}, REFUSED),
    _a("cat-path-max-after-root", "paths", "cat", {"path": ("b" * 200 + "/") * 20}, REFUSED + MISSING),
    _a("grep-glob-escape", "paths", "grep", {"pattern": "CANARY", "glob": "../outside/*"}, OK),
    _a("grep-glob-doublestar", "paths", "grep", {"pattern": "CANARY", "glob": "**/*secret*"}, OK),
    _a("grep-glob-nul", "paths", "grep", {"pattern": "a", "glob": "*\u0000"}, REFUSED),
    _a("grep-pattern-nul", "paths", "grep", {"pattern": "a\u0000b"}, REFUSED),
    _a("find-name-outside-file", "paths", "find", {"name": "*secret*"}, OK, lacks("inner-secret")),
    _a("grep-recursive-canary", "paths", "grep", {"pattern": "CANARY"}, OK),
    _a("grep-recursive-list", "paths", "grep", {"pattern": "canary", "ignore_case": True, "files_with_matches": True}, OK, lacks("secret.txt")),
    _a("find-everything", "paths", "find", {}, OK, lacks("inner-secret")),
    _a("tree-everything", "paths", "tree", {"max_depth": 20}, OK, lacks("inner-secret")),
    _a("ls-all-long", "paths", "ls", {"all": True, "long": True}, OK, contains("link-out-dir@")),
    _a("cat-symlink-loop", "paths", "cat", {"path": "loop-a"}, SPECIAL + MISSING),
    _a("grep-self-loop", "paths", "grep", {"pattern": "zz-nothing-zz", "path": "selfloop"}, OK),
    _a("find-self-loop", "paths", "find", {"path": "selfloop", "name": "bottom.txt"}, OK),
    _a("tree-deep-chain", "paths", "tree", {"path": "deep", "max_depth": 20}, OK),
    _a("find-deep-chain", "paths", "find", {"path": "deep", "name": "bottom.txt"}, OK, contains("bottom.txt")),
    # --- special files: /proc, /dev, FIFOs, sockets, devices ------------------------------------
    _a("cat-proc-environ", "special_files", "cat", {"path": "/proc/self/environ"}, MISSING),
    _a("cat-environ-link", "special_files", "cat", {"path": "environ-link"}, OUTSIDE),
    _a("grep-environ-link", "special_files", "grep", {"pattern": "CANARY", "path": "environ-link"}, OUTSIDE),
    _a("cat-dev-zero-link", "special_files", "cat", {"path": "zero-link"}, OUTSIDE),
    _a("head-dev-zero", "special_files", "head", {"path": "/dev/zero"}, MISSING),
    _a("cat-fifo", "special_files", "cat", {"path": "fifo"}, SPECIAL),
    _a("tail-fifo", "special_files", "tail", {"path": "fifo"}, SPECIAL),
    _a("preview-fifo", "special_files", "preview", {"path": "fifo"}, SPECIAL),
    _a("wc-fifo", "special_files", "wc", {"paths": ["fifo"]}, SPECIAL),
    _a("grep-fifo", "special_files", "grep", {"pattern": "x", "path": "fifo"}, SPECIAL),
    _a("cat-socket", "special_files", "cat", {"path": "socket"}, SPECIAL),
    _a("cat-char-device", "special_files", "cat", {"path": "chardev"}, SPECIAL + OK),
    _a("grep-recursion-passes-specials", "special_files", "grep", {"pattern": "password"}, OK, lacks("fifo:", "socket:", "chardev:")),
    _a("cat-binary", "special_files", "cat", {"path": "bin.dat"}, SPECIAL),
    # --- output: huge outputs are cut, with a marker ----------------------------------------------
    _a("cat-huge-file", "output", "cat", {"path": "big.txt"}, OK, truncated),
    _a("grep-huge-output", "output", "grep", {"pattern": "fox", "path": "big.txt"}, OK, truncated),
    _a("tail-one-huge-line", "output", "tail", {"path": "longline.txt"}, OK, truncated),
    _a("preview-huge-line", "output", "preview", {"path": "longline.txt", "lines": 200}, OK, truncated),
    _a("find-wide-directory", "output", "find", {"path": "wide"}, OK, truncated),
    _a("ls-wide-directory", "output", "ls", {"path": "wide", "long": True}, OK, truncated),
    _a("grep-wide-list", "output", "grep", {"pattern": "wide", "path": "wide", "files_with_matches": True}, OK, truncated),
    _a("wc-fifty-files", "output", "wc", {"paths": [f"wide/file-{i:05d}-with-a-longish-name.txt" for i in range(50)]}, OK, contains("total")),
    # --- regular expressions: bounded whatever the pattern -----------------------------------------
    _a("grep-regex-size-bomb", "regex", "grep", {"pattern": "(\\w{1,1000}){1,1000}"}, REFUSED),
    _a("grep-regex-nested-repeats", "regex", "grep", {"pattern": "((a{1,100}){1,100}){1,100}", "path": "longline.txt"}, OK + REFUSED + ("timeout",)),
    _a("grep-regex-backreference", "regex", "grep", {"pattern": "(a)\\1"}, REFUSED),
    _a("grep-regex-lookahead", "regex", "grep", {"pattern": "(?=password)"}, REFUSED),
    _a("grep-regex-named-backreference", "regex", "grep", {"pattern": "(?P<x>a)(?P=x)"}, REFUSED),
    _a("grep-regex-classic-redos", "regex", "grep", {"pattern": "(x+x+)+y", "path": "longline.txt"}, OK),
    _a("grep-regex-dotstar-repeat", "regex", "grep", {"pattern": "(.*){1,32000}[bc]", "path": "big.txt"}, OK + REFUSED + ("timeout",)),
]

# --- names: files named (on disk, behind the API's back) to forge `path:LINE:` citations ---------
ATTACK_NAME, CR_NAME, ESC_NAME, C1_NAME, PRINTABLE_NAME, DASH_NAME = NAME_ATTACKS
UNDECODABLE = UNDECODABLE_NAME.decode("utf-8", "surrogateescape")
ATTACK_DIR = ATTACK_NAME.split("/")[0]
SHOWN_FILES = shows_quoted(ATTACK_NAME, CR_NAME, C1_NAME, PRINTABLE_NAME, UNDECODABLE)
FILE_CONTENT = contains("password rules, attack 1")

TOOL_ATTACKS += [
    _a("names-grep-forged-citation", "names", "grep", {"pattern": "password rules", "ignore_case": True}, OK, SHOWN_FILES),
    _a("names-grep-files-with-matches", "names", "grep", {"pattern": "password rules", "files_with_matches": True}, OK, SHOWN_FILES),
    _a("names-grep-context-separator-name", "names", "grep", {"pattern": "second line", "context": 2}, OK, shows_quoted(DASH_NAME)),
    _a("names-grep-in-hostile-dir", "names", "grep", {"pattern": "password", "path": names.display(ATTACK_DIR)}, OK, shows_quoted(ATTACK_NAME)),
    _a("names-grep-hostile-file-raw", "names", "grep", {"pattern": "password", "path": ATTACK_NAME}, OK, shows_quoted(ATTACK_NAME)),
    _a("names-grep-path-lone-surrogate", "names", "grep", '{"pattern": "x", "path": "a\\ud800b"}', REFUSED),
    _a("names-find-everything", "names", "find", {"type": "f", "name": "*password*"}, OK, SHOWN_FILES),
    _a("names-ls-root", "names", "ls", {}, OK, shows_quoted(C1_NAME, UNDECODABLE, ATTACK_DIR)),
    _a("names-ls-long-hostile-dir", "names", "ls", {"path": names.display(ATTACK_DIR), "long": True}, OK, contains(FORGE_MARK)),
    _a("names-tree", "names", "tree", {"max_depth": 3}, OK, shows_quoted(C1_NAME, UNDECODABLE, ATTACK_DIR)),
    _a("names-wc", "names", "wc", {"paths": [ATTACK_NAME, names.display(UNDECODABLE), names.display(PRINTABLE_NAME)]}, OK, shows_quoted(ATTACK_NAME, UNDECODABLE, PRINTABLE_NAME)),
    _a("names-cat-by-raw-name", "names", "cat", {"path": ATTACK_NAME}, OK, FILE_CONTENT),
    _a("names-cat-as-shown", "names", "cat", {"path": names.display(ESC_NAME)}, OK, contains("password rules, attack 3")),
    _a("names-head-undecodable-as-shown", "names", "head", {"path": names.display(UNDECODABLE)}, OK, contains("undecodable name")),
    _a("names-tail-per-component", "names", "tail", {"path": f"{names.display(ATTACK_DIR)}/{names.display(ATTACK_NAME.split('/', 1)[1])}"}, OK, FILE_CONTENT),
    _a("names-preview-header", "names", "preview", {"path": CR_NAME}, OK, shows_quoted(CR_NAME)),
    _a("names-cat-missing-echoes-escaped", "names", "cat", {"path": f"nothing\npolicies/password-policy.md:9:{FORGE_MARK}"}, MISSING),
    _a("names-cat-dir-echoes-escaped", "names", "cat", {"path": ATTACK_DIR}, SPECIAL),
]

BY_ID = {attack.id: attack for attack in TOOL_ATTACKS}
assert len(BY_ID) == len(TOOL_ATTACKS), "attack ids must be unique"
