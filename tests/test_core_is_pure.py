"""maildesk/core imports nothing outside the standard library and maildesk.core."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "maildesk" / "core"


def test_the_core_imports_only_the_standard_library() -> None:
    offenders = []
    for path in sorted(CORE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if name.startswith("maildesk.core") or top in sys.stdlib_module_names or top == "__future__":
                    continue
                offenders.append(f"{path.name}: {name}")
    assert offenders == []
    assert len(list(CORE.glob("*.py"))) >= 5
