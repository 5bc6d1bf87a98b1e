import ast
import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import PAPER_IDS

ROOT = Path(__file__).resolve().parent.parent
UI = {"textual", "typer", "rich", "textual_image"}


def test_engines_import_no_ui_library_statically():
    offenders = []
    for path in (ROOT / "engines").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in UI]
    assert offenders == []


def test_importing_every_engine_loads_no_ui_library():
    modules = sorted(p.stem for p in (ROOT / "engines").glob("*.py") if p.stem != "__init__")
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module('engines.' + m)\n"
        f"print(sorted(k for k in sys.modules if k.split('.')[0] in {sorted(UI)!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_models_json_lists_the_ten_shipped_models(cli):
    rc, out, _ = cli("models", "--json")
    assert rc == 0
    rows = json.loads(out)
    assert [r["id"] for r in rows] == PAPER_IDS
    m2 = rows[-1]
    assert m2["train_split"] == "p2" and m2["p1_error"] is not None and m2["train_error"] == m2["p2_error"]


def test_unknown_model_and_bad_option_exit_2(cli):
    rc, _, err = cli("train", "--model", "nope")
    assert rc == 2 and "unknown zoo model" in err
    rc, _, _ = cli("attack", "--no-such-option")
    assert rc == 2


def test_data_check_on_a_folder_without_data(cli, tmp_path):
    rc, _, err = cli("data", "check", "--data", str(tmp_path))
    assert rc == 2 and "not found" in err and "Traceback" not in err


def test_console_script_exit_code_in_a_subprocess(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "blindspot", "data", "check", "--data", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_progress_in_a_log_is_plain_throttled_lines(capsys, monkeypatch):
    import blindspot.console as console
    from engines.core.events import Progress

    clock = iter([0.0, 1.0, 2.0, 11.0, 12.0, 12.5])
    monkeypatch.setattr(console.time, "monotonic", lambda: next(clock))
    with console.progress_log(min_interval=10.0) as on_progress:
        on_progress(Progress("attack", 0, 5))  # a task's first event is always shown
        on_progress(Progress("attack", 1, 5))
        on_progress(Progress("attack", 2, 5))
        on_progress(Progress("attack", 3, 5, {"loss": 0.5}))  # 11 s after the last line
        on_progress(Progress("attack", 5, 5))  # the final event is always shown
        on_progress(Progress("train", 7))  # no total
    lines = [line.split(" ", 1)[1] for line in capsys.readouterr().err.splitlines()]
    assert lines == ["attack: 0/5", "attack: 3/5 loss=0.5", "attack: 5/5", "train: 7"]
