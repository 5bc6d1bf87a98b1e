"""The code's layout rules that no linter checks: small engine modules, one idea each."""

from __future__ import annotations

from pathlib import Path

ENGINES = Path(__file__).resolve().parents[1] / "engines"
MAX_LINES = 400  # the developers' rule: a module that would grow past this is split by idea


def test_no_engine_module_is_over_400_lines():
    sizes = {
        p.relative_to(ENGINES.parent).as_posix(): len(p.read_text(encoding="utf-8").splitlines())
        for p in ENGINES.rglob("*.py")
    }
    assert len(sizes) > 50  # the engines were found
    over = {path: n for path, n in sorted(sizes.items()) if n > MAX_LINES}
    assert not over, f"engine modules over {MAX_LINES} lines (split them by idea): {over}"
