"""The doctor's report: checks with a status, what was seen and the one-line fix; text and JSON
output; the exit code (0 all passed, 1 warnings, 2 failures)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
ORDER = {PASS: 0, WARN: 1, FAIL: 2}


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""

    def __post_init__(self) -> None:
        if self.status not in ORDER:
            raise ValueError(f"unknown status {self.status!r}")
        if self.status == PASS:
            self.fix = ""


def passed(name: str, detail: str) -> Check:
    return Check(name, PASS, detail)


def warned(name: str, detail: str, fix: str) -> Check:
    return Check(name, WARN, detail, fix)


def failed(name: str, detail: str, fix: str) -> Check:
    return Check(name, FAIL, detail, fix)


@dataclass
class Report:
    namespace: str
    release: str
    server: str = ""
    identity: str = ""
    checks: list[Check] = field(default_factory=list)

    def add(self, *checks: Check) -> None:
        self.checks.extend(checks)

    def counts(self) -> dict[str, int]:
        out = {PASS: 0, WARN: 0, FAIL: 0}
        for c in self.checks:
            out[c.status] += 1
        return out

    def exit_code(self, warnings_ok: bool = False) -> int:
        worst = max((ORDER[c.status] for c in self.checks), default=0)
        if worst == 1 and warnings_ok:
            return 0
        return worst

    def by_name(self) -> dict[str, Check]:
        return {c.name: c for c in self.checks}

    def to_json(self, warnings_ok: bool = False) -> dict[str, Any]:
        counts = self.counts()
        return {
            "checks": [asdict(c) for c in self.checks],
            "namespace": self.namespace,
            "release": self.release,
            "server": self.server,
            "identity": self.identity,
            "summary": {"pass": counts[PASS], "warn": counts[WARN], "fail": counts[FAIL]},
            "exit_code": self.exit_code(warnings_ok),
        }

    def print_json(self, out: TextIO, warnings_ok: bool = False) -> None:
        json.dump(self.to_json(warnings_ok), out, indent=2)
        out.write("\n")

    def print_text(self, out: TextIO) -> None:
        head = f"fsagent doctor: release {self.release} in namespace {self.namespace}"
        extras = [x for x in (self.server, self.identity and f"as {self.identity}") if x]
        if extras:
            head += f" ({', '.join(extras)})"
        out.write(head + "\n\n")
        width = min(max((len(c.name) for c in self.checks), default=0), 40)
        for c in self.checks:
            out.write(f"{c.status}  {c.name.ljust(width)}  {c.detail}\n")
            if c.fix:
                out.write(f"{'':6}{'':{width}}  fix: {c.fix}\n")
        counts = self.counts()
        out.write(f"\n{counts[PASS]} passed, {counts[WARN]} warnings, {counts[FAIL]} failed\n")
