"""Fixtures shared by the metric catalogue checks (static and live)."""

from __future__ import annotations

from typing import Any

import pytest

from monitoring.render_metrics_doc import load


@pytest.fixture(scope="module")
def catalogue() -> dict[str, Any]:
    return load()


@pytest.fixture(scope="module")
def by_name(catalogue: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in catalogue["metrics"]}
