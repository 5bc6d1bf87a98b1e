"""The model options (--model, --weights, --model-factory, --num-classes, --normalize) are defined once, in
`blindspot.options.ModelOptions`, and every command that takes one model has all of them, with the same
refusals of bad input (exit code 2, one line, no traceback)."""

from __future__ import annotations

import inspect
import re
from dataclasses import fields

import pytest

from blindspot.options import ModelOptions, with_model_options

# the commands that take one model through the shared options, with what else they need to start
MODEL_COMMANDS = {
    "attack": [],
    "units": ["--layer", "fc1"],
    "layers": [],
    "bounds": [],
}
SHARED = ["-m", "--model", "--weights", "--model-factory", "--num-classes", "--normalize"]


def _one_line_error(rc: int, err: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err


@pytest.mark.parametrize("command", MODEL_COMMANDS)
def test_every_model_command_lists_each_shared_option_once_in_order(cli, command):
    rc, out, _ = cli(command, "--help")
    assert rc == 0
    # the flags each option line of the help starts with, in the help's order
    flags = [f for line in out.splitlines() for f in re.findall(r"^\s+(-[\w-]+(?:, -[\w-]+)*)", line)]
    declared = [flag for group in flags for flag in group.split(", ")]
    for flag in SHARED:
        assert declared.count(flag) == 1, (command, flag)
    # together, in the order ModelOptions gives them
    at = [declared.index(flag) for flag in SHARED]
    assert at == list(range(at[0], at[0] + len(SHARED)))
    assert "[x>=2]" in out  # --num-classes keeps its range


@pytest.mark.parametrize("command", MODEL_COMMANDS)
@pytest.mark.parametrize(
    ("bad", "says"),
    [
        (["--model-factory", "nocolon"], "--model-factory must look like package.module:function"),
        (["--num-classes", "1"], "--num-classes"),
        (["--num-classes", "many"], "--num-classes"),
        (["--model", "softmax1", "--model-factory", "pkg.mod:fn"], "name two models"),
        (["--model", "softmax1", "--normalize", "0.5:"], "--normalize"),
        (["--weights", "w.pt"], "say which model"),
    ],
)
def test_every_model_command_refuses_bad_model_options_in_one_line(cli, command, bad, says):
    rc, out, err = cli(command, *MODEL_COMMANDS[command], *bad, "--device", "cpu")
    _one_line_error(rc, err)
    assert says in err and out == ""


def test_attack_resume_names_the_ignored_model_options_without_refusing_them(cli, tmp_path):
    rc, _, err = cli("attack", "--resume", tmp_path / "none", "--model-factory", "nocolon", "--num-classes", "3")
    assert rc == 2
    assert "--model-factory, --num-classes ignored" in " ".join(err.split())
    assert "holds no run" in err and "package.module:function" not in err


def test_the_decorator_puts_the_options_where_the_command_asks_and_passes_one_value():
    seen = {}

    @with_model_options
    def command(first: int, model: ModelOptions = ModelOptions(), last: str = "x") -> None:
        seen["model"], seen["last"] = model, last

    names = list(inspect.signature(command).parameters)
    assert names == ["first", *(f.name for f in fields(ModelOptions)), "last"]
    command(first=1, model="softmax1", weights=None, model_factory=None, num_classes=3, normalize=None, last="y")
    assert seen == {"model": ModelOptions(model="softmax1", num_classes=3), "last": "y"}
    ref = seen["model"].ref()
    assert ref.name == "softmax1" and ref.num_classes == 3
    assert seen["model"].given() == ["--model", "--num-classes"]


def test_the_decorator_refuses_a_command_without_the_placeholder_or_with_its_own_model_option():
    def no_placeholder(model: str = "") -> None: ...

    def own_weights(model: ModelOptions = ModelOptions(), weights: str = "") -> None: ...

    with pytest.raises(TypeError, match="model: ModelOptions"):
        with_model_options(no_placeholder)
    with pytest.raises(TypeError, match="weights"):
        with_model_options(own_weights)
