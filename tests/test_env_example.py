"""`.env.example` documents exactly the variables the code reads, and loads as-is."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import AliasChoices

from fsagent.common.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def _code_names() -> set[str]:
    names = set()
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        assert isinstance(alias, AliasChoices), field
        names.add(str(alias.choices[0]))  # the first choice is the documented name
    return names


def _example_names() -> set[str]:
    text = (ROOT / ".env.example").read_text()
    return set(re.findall(r"^([A-Z][A-Z0-9_]+)=", text, flags=re.M))


def test_env_example_matches_settings() -> None:
    code, example = _code_names(), _example_names()
    assert code - example == set(), "read by the code but missing from .env.example"
    assert example - code == set(), "in .env.example but not read by the code"


def test_env_example_loads_with_defaults(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    for name in _example_names():
        monkeypatch.delenv(name, raising=False)
    settings = Settings(_env_file=ROOT / ".env.example")  # type: ignore[call-arg]
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.resolved_provider == "offline"
    assert settings.model_dump() == defaults.model_dump()
