import ast
import json
import subprocess
import sys
from pathlib import Path

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
    assert [r["id"] for r in rows] == [
        "softmax1",
        "softmax2",
        "softmax3",
        "n100-100-10",
        "n200-200-10",
        "ae400-10",
        "conv",
        "m1",
        "m1-prime",
        "m2",
    ]
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
