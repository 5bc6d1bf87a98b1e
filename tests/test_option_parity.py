"""Options are declared once, on the requests (`engines.core.options`): the commands' options and the workbench's
forms are built from the declarations, so the CLI, the workbench and the declaration agree on every default; an
engine error names a field by its flag on the command line and by its label in the workbench."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Annotated, Any

import pytest
import typer

from blindspot.cli import app as cli_app
from blindspot.options import cli_option, declaration_of
from engines.attack.request import AttackRequest
from engines.attack.search import AttackConfig
from engines.bounds.operation import BoundsRequest
from engines.core.errors import InputError
from engines.core.options import declared_options, option_spec
from engines.reproduce.operation import ReproduceRequest
from engines.robustness.operation import RobustnessRequest
from engines.train.operation import TrainRequest
from engines.transfer.request import TransferRequest
from engines.units.operation import UnitsRequest
from screens.state import Settings

# every request that declares options the CLI and the workbench share
DECLARING = (
    AttackRequest,
    AttackConfig,
    TrainRequest,
    UnitsRequest,
    BoundsRequest,
    RobustnessRequest,
    ReproduceRequest,
    TransferRequest,
)


def _commands(group: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every leaf command of a click group (sub-groups walked), by its full name."""
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, f"{prefix}{name} ")
        else:
            yield prefix + name, command


def declared_parameters(command: Any) -> dict[str, tuple[inspect.Parameter, type, str]]:
    """The parameters of a click command's Python callback that `cli_option` made, with the (class, field) each
    declares: found from the signature, so a new option cannot be left out of the check."""
    found = {}
    for parameter in inspect.signature(command.callback, eval_str=True).parameters.values():
        for meta in getattr(parameter.annotation, "__metadata__", ()):
            declared = declaration_of(meta)
            if declared is not None:
                found[parameter.name] = (parameter, *declared)
    return found


def declaration_drift(app: typer.Typer) -> list[str]:
    """Every way a command's declared option differs from its declaration (default, help, flags)."""
    drift = []
    for command_name, command in _commands(typer.main.get_command(app)):
        params = {p.name: p for p in command.params}
        for name, (parameter, request, field) in declared_parameters(command).items():
            spec, param, where = option_spec(request, field), params[name], f"{command_name} {name}"
            if parameter.default != spec.default:
                drift.append(f"{where}: default {parameter.default!r} != declared {spec.default!r}")
            if param.default != spec.default:
                drift.append(f"{where}: click default {param.default!r} != declared {spec.default!r}")
            if param.help != spec.help:
                drift.append(f"{where}: help differs")
            if [*param.opts, *param.secondary_opts] != [f for group in spec.flags for f in group.split("/")]:
                drift.append(f"{where}: flags {[*param.opts, *param.secondary_opts]} != declared {spec.flags}")
    return drift


def cli_fields(command: str) -> dict[str, tuple[type, str]]:
    """{command parameter: (class, field)} of one command's declared options."""
    group = typer.main.get_command(cli_app)
    return {
        name: (request, field) for name, (_, request, field) in declared_parameters(group.commands[command]).items()
    }  # type: ignore[attr-defined]


# the Attack screen's form: field → request class
ATTACK_FORM = {
    "split": AttackRequest,
    "n": AttackRequest,
    "target": AttackRequest,
    "c_steps": AttackConfig,
    "max_iter": AttackConfig,
}


def _click_params(command: str) -> dict[str, Any]:
    group = typer.main.get_command(cli_app)
    return {p.name: p for p in group.commands[command].params}  # type: ignore[attr-defined]


def test_each_command_option_is_its_declaration() -> None:
    """Every parameter `cli_option` made, in every command: its Python default, click default, help and flags are
    the declaration's."""
    assert declaration_drift(cli_app) == []


def test_the_walk_finds_every_declared_option() -> None:
    """The walk sees options that a hand-kept list once missed (train's protocol flags, bounds' --input-shape,
    reproduce's ImageNet options) and names them by their declared field."""
    assert cli_fields("train")["weight_decay_mode"] == (TrainRequest, "weight_decay_mode")
    assert {"validation", "weight_decay", "lr_floor"} <= set(cli_fields("train"))
    assert cli_fields("bounds")["input_shape"] == (BoundsRequest, "input_shape")
    assert cli_fields("reproduce")["weights"] == (ReproduceRequest, "alexnet_weights")
    assert cli_fields("units")["shown_units"] == (UnitsRequest, "show_units")


def test_a_drifted_default_is_caught() -> None:
    """A command whose default strays from the declaration is reported; one that keeps it is not."""
    drifted = typer.Typer()

    @drifted.command()
    def first(
        n: Annotated[int, cli_option(AttackRequest, "n")] = AttackRequest.n + 1,
        split: Annotated[str, cli_option(AttackRequest, "split")] = AttackRequest.split,
    ) -> None:
        pass

    @drifted.command()
    def second(offset: Annotated[int, cli_option(AttackRequest, "offset")] = 3) -> None:
        pass

    drift = declaration_drift(drifted)
    assert "first n: default 101 != declared 100" in drift, drift
    assert "second offset: default 3 != declared 0" in drift, drift
    assert not any(line.startswith("first split") for line in drift), drift


def test_the_attack_budget_default_is_written_once() -> None:
    """9 c-steps × 100 iterations: every command that attacks takes the one declaration's values."""
    for command in ("attack", "robustness", "reproduce", "certify", "transfer"):  # certify: its own literal 9, 100
        params = _click_params(command)
        assert (
            (params["c_steps"].default, params["max_iter"].default)
            == (9, 100)
            == (
                AttackConfig.c_steps,
                AttackConfig.max_iter,
            )
        ), command


def _attack_form_values(tmp_path) -> dict[str, Any]:
    """What the Attack screen's form holds when the workbench starts with its default settings."""
    from blindspot.app import create_app
    from screens.forms import read_field

    async def body() -> dict[str, Any]:
        app = create_app(Settings(device="cpu", runs_dir=tmp_path / "runs"), graphics_mode="halfblock")
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("3")
            await pilot.pause()
            return {name: read_field(app.screen, request, name) for name, request in ATTACK_FORM.items()}

    return asyncio.run(body())


def test_cli_workbench_and_declaration_start_from_the_same_attack(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    form = _attack_form_values(tmp_path)
    params = _click_params("attack")
    for name, request in ATTACK_FORM.items():
        declared = option_spec(request, name).default
        assert form[name] == params[name].default == declared, name
    assert params["device"].default == Settings().device  # the run context's device, not a request field
    # and the fields the form leaves out take the same declared defaults in the request both build
    assert AttackRequest(model="softmax1").config == AttackConfig()


def test_cli_and_transfer_screen_make_the_same_default_matrix(tmp_path, monkeypatch) -> None:
    """The Transfer screen's request with its form untouched: the CLI's defaults (split test, N 100, 9 × 100)."""
    from blindspot.app import create_app

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))

    async def body() -> TransferRequest:
        app = create_app(Settings(device="cpu", runs_dir=tmp_path / "runs"), graphics_mode="halfblock")
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("4")
            await pilot.pause()
            return app.screen.request()  # type: ignore[attr-defined]

    request = asyncio.run(body())
    params = _click_params("transfer")
    for parameter, (declared_in, field) in cli_fields("transfer").items():
        held = getattr(request.config if declared_in is AttackConfig else request, field)
        assert held == params[parameter].default == option_spec(declared_in, field).default, field


def test_workbench_requests_take_the_declared_defaults_of_what_they_do_not_ask() -> None:
    """Gallery (units) and Models (train) build their requests from the workbench's settings: with the default
    settings every declared field equals the CLI's default."""
    from screens.gallery import GalleryScreen
    from screens.models import ModelsScreen

    fake = SimpleNamespace(state=SimpleNamespace(settings=Settings()), model_ref="softmax1", split="test")
    units = GalleryScreen.request_for(fake, "fc1")  # type: ignore[arg-type]
    train = ModelsScreen.train_request(fake, "softmax1")  # type: ignore[arg-type]
    params = _click_params("units")
    for parameter, (_, field) in cli_fields("units").items():
        assert getattr(units, field) == params[parameter].default == option_spec(UnitsRequest, field).default, field
    params = _click_params("train")
    for parameter, (_, field) in cli_fields("train").items():
        assert getattr(train, field) == params[parameter].default == option_spec(TrainRequest, field).default, field


def test_every_declared_option_has_its_words() -> None:
    for request in DECLARING:
        for name, spec in declared_options(request).items():
            assert spec.help and spec.label and spec.flag.startswith("--"), (request.__name__, name)
            if spec.choices is not None:
                assert spec.default in spec.choices, (request.__name__, name)


def test_an_engine_error_names_the_flag_in_the_cli_and_the_label_in_the_workbench(cli) -> None:
    from screens.forms import in_words

    with pytest.raises(InputError) as caught:
        AttackRequest(model="softmax1", n=0)
    assert str(caught.value) == "--n must be at least 1"
    assert in_words(caught.value) == "N images must be at least 1"
    rc, _, err = cli("attack", "--model", "softmax1", "--n", "0", "--device", "cpu")
    assert rc == 2 and " ".join(err.split()) == "error: --n must be at least 1"
    with pytest.raises(InputError) as caught:
        UnitsRequest(model="softmax1", layer="fc1", k=0)
    assert in_words(caught.value) == "top-k must be at least 1, got 0"
    rc, _, err = cli("units", "--model", "softmax1", "--layer", "fc1", "--k", "0", "--device", "cpu")
    assert rc == 2 and " ".join(err.split()) == "error: --k must be at least 1, got 0"


def test_the_forms_parse_with_the_declared_bounds_and_name_the_label() -> None:
    from screens.forms import in_words, parse_value

    assert parse_value(AttackRequest, "n", " 12 ") == 12
    assert parse_value(AttackConfig, "temperature", "0.5") == 0.5
    assert parse_value(UnitsRequest, "n", "") is None  # an optional field left empty: its default
    assert parse_value(AttackConfig, "warm_start", "no") is False
    for request, name, text, words in (
        (AttackRequest, "n", "0", "N images must be a whole number ≥ 1, got '0'"),
        (AttackRequest, "n", "1.5", "N images must be a whole number ≥ 1, got '1.5'"),
        (AttackConfig, "temperature", "0.001", "temperature must be a number ≥ 0.01, got '0.001'"),
        (AttackConfig, "temperature", "nan", "temperature must be a number ≥ 0.01, got 'nan'"),
        (AttackRequest, "split", "$n", "split must be one of test, train, p1, p2, got '$n'"),
    ):
        with pytest.raises(InputError) as caught:
            parse_value(request, name, text)
        assert in_words(caught.value) == words
        assert str(caught.value) == words.replace(option_spec(request, name).label, option_spec(request, name).flag, 1)


def test_a_form_built_from_any_declaration_reads_back_its_defaults() -> None:
    """Every declared field of every request, as a workbench widget (Input, Select or Switch), parses back to its
    declared default."""
    from textual.app import App, ComposeResult

    from screens.forms import form_fields, read_field

    async def read_back(request: type, names: list[str]) -> dict[str, Any]:
        class Form(App):
            def compose(self) -> ComposeResult:
                yield from form_fields(request, names)

        app = Form()
        async with app.run_test() as pilot:
            await pilot.pause()
            return {name: read_field(app.screen, request, name) for name in names}

    for request in DECLARING:
        names = [name for name in declared_options(request) if _offerable(request, name)]
        values = asyncio.run(read_back(request, names))
        assert values == {name: option_spec(request, name).default for name in names}, request.__name__


def _offerable(request: type, name: str) -> bool:
    from screens.forms import value_type

    try:
        value_type(request, name)
    except TypeError:
        return False
    return True


def test_a_form_refuses_a_field_it_cannot_parse_when_it_is_built() -> None:
    """A shape or a model reference would come back from an Input as raw text: form_fields refuses it at once
    (a programming error), while the fields it can parse build."""
    from screens.forms import form_fields

    for request, name in ((BoundsRequest, "input_shape"), (RobustnessRequest, "reference")):
        with pytest.raises(TypeError, match=f"{request.__name__}.{name}"):
            form_fields(request, ["power_iters" if request is BoundsRequest else "n", name])
    form_fields(BoundsRequest, ["power_iters", "precision"])  # no error


def test_the_forms_refuse_malformed_numbers_with_the_field_named() -> None:
    """Text int() or float() refuses, or a number that is not finite, reads as the field's InputError (the screens
    catch only InputError); what Python reads as a whole number is taken."""
    from screens.forms import in_words, parse_value

    assert parse_value(AttackRequest, "n", "+5") == 5
    assert parse_value(AttackRequest, "n", "1_000") == 1000
    for text in ("--5", "²", "5-", "1e3", "9" * 5000):
        with pytest.raises(InputError) as caught:
            parse_value(AttackRequest, "n", text)
        assert in_words(caught.value).startswith("N images must be a whole number ≥ 1, got "), text
    for text in ("inf", "-inf", "1e400", "nan", "1..2"):
        with pytest.raises(InputError) as caught:
            parse_value(AttackConfig, "temperature", text)
        assert in_words(caught.value).startswith("temperature must be a number ≥ 0.01, got "), text


def test_a_remembered_value_of_the_wrong_type_gives_way_to_the_default() -> None:
    """Settings files are the user's: a remembered "no" for a yes/no field is not True (bool("no")), a True is not
    a number, a string is not an int, an infinite float is not a temperature; each falls back to the default."""
    from screens.forms import initial_value

    assert AttackConfig.warm_start is True
    assert initial_value(AttackConfig, "warm_start", {"warm_start": False}) is False
    for wrong in ("no", 0, 1, None):
        assert initial_value(AttackConfig, "warm_start", {"warm_start": wrong}) is True, wrong
    assert initial_value(AttackRequest, "n", {"n": 7}) == 7
    for wrong in (True, "7", 7.0, 0):
        assert initial_value(AttackRequest, "n", {"n": wrong}) == AttackRequest.n, wrong
    assert initial_value(AttackConfig, "temperature", {"temperature": 1}) == 1
    for wrong in (float("inf"), float("nan"), "0.5", False):
        assert initial_value(AttackConfig, "temperature", {"temperature": wrong}) == AttackConfig.temperature, wrong
    assert initial_value(AttackRequest, "split", {"split": 3}) == AttackRequest.split
