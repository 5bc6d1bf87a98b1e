import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engines.core.zoo import ZOO
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
    modules = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (ROOT / "engines").rglob("*.py"))
    assert len(modules) > 30  # every subpackage's modules, not just the top level
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m.removesuffix('.__init__'))\n"
        f"print(sorted(k for k in sys.modules if k.split('.')[0] in {sorted(UI)!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_models_json_lists_the_shipped_paper_zoo_then_section42(cli):
    rc, out, _ = cli("models", "--json")
    assert rc == 0
    rows = json.loads(out)
    section42 = [k for k, e in ZOO.items() if e.group == "adversarial"]
    assert [r["id"] for r in rows] == PAPER_IDS + section42
    adv = rows[PAPER_IDS.index("m2") + 1 + section42.index("n100-100-10-adv")]
    assert adv["id"] == "n100-100-10-adv" and adv["test_error"] is not None
    assert adv["recipe"]["adversarial"]["layers_used"] == ["input", "act1", "act2"]
    m2 = rows[PAPER_IDS.index("m2")]
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
    from engines.core.events import ChunkDone, EpochDone, Step

    clock = iter([0.0, 1.0, 2.0, 11.0, 12.0, 12.5, 13.0])
    monkeypatch.setattr(console.time, "monotonic", lambda: next(clock))
    with console.progress_log(min_interval=10.0) as on_event:
        on_event(Step(task="attack", done=0, total=5))  # a task's first event is always shown
        on_event(Step(task="attack", done=1, total=5))
        on_event(Step(task="attack", done=2, total=5))
        on_event(EpochDone(task="attack", done=3, total=5, stage="Adam", loss=0.5))  # 11 s after the last line
        on_event(Step(task="attack", done=5, total=5))  # the final event is always shown
        on_event(Step(task="train", done=7))  # no total
        x = torch.zeros(1, 1, 2, 2)
        res = {"success": torch.ones(1, dtype=torch.uint8)}
        on_event(ChunkDone(task="train", done=8, start=0, stop=1, index=[0], x=x, label=x, results=res))  # a milestone
    lines = [line.split(" ", 1)[1] for line in capsys.readouterr().err.splitlines()]
    assert lines == [
        "attack: 0/5",
        "attack: 3/5 Adam loss 0.5",
        "attack: 5/5",
        "train: 7",
        "train: 8 images 0–1 saved (1 found)",
    ]


def test_tui_refuses_without_a_terminal(tmp_path):
    for env in ({}, {"TERM": "dumb"}):
        res = subprocess.run(
            [sys.executable, "-m", "blindspot", "tui"],
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **env},
        )
        assert res.returncode == 2
        assert res.stdout == ""  # no escape codes written into a file or pipe
        assert (
            res.stderr.strip() == "error: blindspot tui needs an interactive terminal; use the CLI commands in scripts"
        )


def test_tui_refuses_a_zero_sized_terminal(monkeypatch):
    import os as _os

    from blindspot.commands import tui
    from engines.core.errors import InputError

    monkeypatch.setattr(tui.sys.stdin, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(tui.sys.stdout, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(tui.sys.stdout, "fileno", lambda: 1, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setattr(tui.os, "get_terminal_size", lambda fd: _os.terminal_size((0, 0)))
    with pytest.raises(InputError, match="size of 0×0"):
        tui.check_terminal()


def test_ctrl_c_while_starting_is_one_line_and_130(monkeypatch, capsys):
    import builtins

    from blindspot import entry

    real_import = builtins.__import__

    def interrupted(name, *args, **kwargs):
        if name == "blindspot.cli":
            raise KeyboardInterrupt
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", interrupted)
    with pytest.raises(SystemExit) as exc:
        entry.run()
    assert exc.value.code == 130
    assert capsys.readouterr().err == "interrupted while starting\n"


def test_a_pickled_module_is_refused_in_one_line_without_torch_warnings(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(torch.nn.Linear(784, 10), path)
    res = subprocess.run(
        [sys.executable, "-m", "blindspot", "attack", "--model", str(path), "--n", "2", "--device", "cpu"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "would execute code" in res.stderr
    assert not (tmp_path / "runs").exists()  # a refused command leaves no run folder behind


def test_import_contracts_hold():
    """The layer rules of the design card, as import-linter contracts (also run by .ci/run)."""
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    res = subprocess.run([str(exe)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:]
    assert "3 kept, 0 broken" in res.stdout


def test_tui_options_set_the_session_and_bad_ones_are_one_line(cli, tmp_path, monkeypatch, tiny_mnist):
    import blindspot.app
    import blindspot.commands.tui as tui_command

    started = []
    monkeypatch.setattr(tui_command, "check_terminal", lambda: None)
    monkeypatch.setattr(blindspot.app, "run_app", lambda graphics, settings, **_: started.append((graphics, settings)))
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "d").symlink_to(tiny_mnist)
    rc, _, err = cli("tui", "--model", "softmax1", "--data", "~/d", "--device", "cpu", "--runs", "~/r")
    assert rc == 0, err
    ((graphics, settings),) = started
    assert (graphics, settings.model, settings.device) == ("auto", "softmax1", "cpu")
    assert settings.data_dir == str(tmp_path / "d") and settings.runs_dir == tmp_path / "r"
    for args, message in (
        (("--model", "nope"), "nope"),
        (("--data", str(tmp_path / "missing")), "missing"),
        (("--device", "tpu"), "unknown device"),
    ):
        rc, _, err = cli("tui", *args)
        assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert len(started) == 1
