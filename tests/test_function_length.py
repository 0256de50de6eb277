"""Functions are at most 80 lines (``end_lineno - lineno + 1``, decorators not counted).

Ruff's C901 bounds their complexity; this bounds their length, which ruff has no rule for, in the
package, the tests and the benchmarks. As a script it lists every longer function under the given
folders::

    python tests/test_function_length.py src
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 80
CHECKED = ["src/histofuse", "tests", "benchmarks"]


def long_functions(path: Path, max_lines: int = MAX_LINES) -> list[str]:
    """``file:line: name (n lines)`` for each function longer than ``max_lines`` under ``path``."""
    files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
    found = []
    for file in files:
        for node in ast.walk(ast.parse(file.read_text(), filename=str(file))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > max_lines:
                    found.append(f"{file}:{node.lineno}: {node.name} ({lines} lines)")
    return found


@pytest.mark.parametrize("path", CHECKED)
def test_functions_are_at_most_80_lines(path):
    assert not long_functions(ROOT / path)


if __name__ == "__main__":
    print("\n".join(line for arg in sys.argv[1:] for line in long_functions(Path(arg))))
