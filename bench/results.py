"""Scenario results kept in bench/out/results.json, so a later scenario (f) can compare with (a)
and `--scenario report` can print the whole table without running anything again."""

from __future__ import annotations

import json
import time
from typing import Any

from common import OUT, load_average, machine

RESULTS = OUT / "results.json"


def load() -> dict[str, Any]:
    try:
        return dict(json.loads(RESULTS.read_text()))
    except (OSError, ValueError):
        return {}


def save(scenario: str, result: dict[str, Any]) -> None:
    """Store one scenario's figures with when, where and how busy the machine was."""
    results = load()
    results[scenario] = {**result, "at": time.strftime("%Y-%m-%d %H:%M:%S"), "load_end": load_average(),
                         "machine": machine()}
    OUT.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2, ensure_ascii=False))


def rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Every stored scenario as (scenario, measured, target, met) rows, in scenario order."""
    table: list[tuple[str, str, str, str]] = []
    for key in sorted(results):
        table.extend(tuple(row) for row in results[key].get("rows", []))  # type: ignore[misc]
    return table
