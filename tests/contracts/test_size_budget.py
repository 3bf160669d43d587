"""The size budget (STYLE, issue #15): in bot/ and storage/ (migrations aside) no module
is over 500 lines, no class over 300, no function over 80. A file past it is a file
that does several things; the failure lists every offender, so it reads as a to-do."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("bot", "storage")
SKIP = {"migrations"}  # Alembic revisions are history, not design
MODULE_LINES, CLASS_LINES, FUNCTION_LINES = 500, 300, 80


def over_budget(source: str, name: str) -> list[str]:
    """Every part of one module past the budget, as "what name: N lines (limit L)"."""
    found = []
    lines = source.count("\n")
    if lines > MODULE_LINES:
        found.append(f"module {name}: {lines} lines (limit {MODULE_LINES})")
    for node in ast.walk(ast.parse(source, filename=name)):
        if isinstance(node, ast.ClassDef):
            kind, limit = "class", CLASS_LINES
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            kind, limit = "function", FUNCTION_LINES
        else:
            continue
        size = node.end_lineno - node.lineno + 1  # from `def`/`class` to the last line
        if size > limit:
            found.append(f"{kind} {name}:{node.lineno} {node.name}: {size} lines (limit {limit})")
    return found


def budget_report(root: Path = ROOT) -> list[str]:
    found = []
    for folder in FOLDERS:
        for path in sorted((root / folder).rglob("*.py")):
            relative = path.relative_to(root)
            if SKIP & set(relative.parts):
                continue
            found += over_budget(path.read_text(encoding="utf-8"), relative.as_posix())
    return found


def synthetic(module_lines: int, class_lines: int, function_lines: int) -> str:
    """A module of about ``module_lines`` lines holding a class of ``class_lines`` and,
    inside it, a method of ``function_lines``."""
    body = "\n".join(f"        x{i} = {i}" for i in range(function_lines - 2))
    method = f"    def method(self):\n{body}\n        return 0\n"
    filler = "".join(f"    a{i} = {i}\n" for i in range(class_lines - 1 - function_lines))
    cls = f"class Big:\n{method}{filler}"
    top = "".join(f"v{i} = {i}\n" for i in range(module_lines - class_lines))
    return top + cls


def test_the_detector_flags_each_kind_of_excess_and_nothing_within_budget():
    at_limit = synthetic(MODULE_LINES, CLASS_LINES, FUNCTION_LINES)
    assert at_limit.count("\n") == MODULE_LINES
    assert over_budget(at_limit, "ok.py") == []

    over = over_budget(synthetic(MODULE_LINES + 1, CLASS_LINES + 1, FUNCTION_LINES + 1), "big.py")
    assert over == [
        f"module big.py: {MODULE_LINES + 1} lines (limit {MODULE_LINES})",
        f"class big.py:{MODULE_LINES - CLASS_LINES + 1} Big: {CLASS_LINES + 1} lines "
        f"(limit {CLASS_LINES})",
        f"function big.py:{MODULE_LINES - CLASS_LINES + 2} method: {FUNCTION_LINES + 1} lines "
        f"(limit {FUNCTION_LINES})",
    ]


def test_the_detector_sees_nested_and_async_functions_and_methods():
    body = "\n".join(f"        y{i} = {i}" for i in range(FUNCTION_LINES - 1))
    inner = FUNCTION_LINES + 1  # `def` line, body, `return`
    source = (
        "def outer():\n"
        f"    async def inner():\n{body}\n        return 1\n"
        "class C:\n"
        f"    def method(self):\n{body}\n        return 1\n"
    )
    assert over_budget(source, "nested.py") == [
        f"function nested.py:1 outer: {inner + 1} lines (limit {FUNCTION_LINES})",
        f"function nested.py:2 inner: {inner} lines (limit {FUNCTION_LINES})",
        f"function nested.py:{inner + 3} method: {inner} lines (limit {FUNCTION_LINES})",
    ]


def test_the_walk_skips_migrations_and_reads_every_other_module(tmp_path):
    big = synthetic(MODULE_LINES + 1, 10, 5)
    (tmp_path / "storage" / "migrations" / "versions").mkdir(parents=True)
    (tmp_path / "storage" / "migrations" / "versions" / "0001_x.py").write_text(big)
    (tmp_path / "bot" / "services").mkdir(parents=True)
    (tmp_path / "bot" / "services" / "huge.py").write_text(big)
    (tmp_path / "bot" / "small.py").write_text("x = 1\n")
    assert budget_report(tmp_path) == [
        f"module bot/services/huge.py: {MODULE_LINES + 1} lines (limit {MODULE_LINES})"
    ]


def test_no_module_class_or_function_in_bot_or_storage_is_over_budget():
    found = budget_report()
    assert found == [], "over the size budget:\n  " + "\n  ".join(found)
