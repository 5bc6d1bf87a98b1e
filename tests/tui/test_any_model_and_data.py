"""Workbench: models and data from anywhere, through the CLI's own loaders (a factory with local weights, an
image folder), then an attack on them; exports written where the user says."""

from __future__ import annotations

import csv
import io
import json
import sys
import textwrap

import pytest
from safetensors.torch import save_file
from textual.widgets import DataTable, Input

from engines.core.io import read_json
from engines.core.models import ModelRef, load_model, parse_model_text
from screens.attack import AttackScreen
from screens.export_dialog import ExportDialog
from tests.shapes import make_shapes_folder
from tests.tui.conftest import SIZE, make_app, run_async, settle, text_of, wait_for

NET = textwrap.dedent(
    """
    from torch import nn

    def tiny(num_classes=3):
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                             nn.Linear(16, num_classes))
    """
)


@pytest.fixture
def user_world(tmp_path):
    """The user's package (a factory), weights saved from it, and a folder of their own images."""
    pkg = tmp_path / "tuipkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(NET)
    sys.path.insert(0, str(tmp_path))
    model = load_model(ModelRef(factory="tuipkg.nets:tiny")).model
    weights = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    data = make_shapes_folder(tmp_path / "my images", classes=3, per_class=6, size=16, seed=1)
    yield {"weights": weights, "data": data}
    sys.path.remove(str(tmp_path))
    for name in [m for m in sys.modules if m.startswith("tuipkg")]:
        del sys.modules[name]


def test_one_field_names_every_kind_of_model(tmp_path):
    assert parse_model_text("n100-100-10") == ModelRef("n100-100-10")
    assert parse_model_text("resnet18", " ~/w.pth ").weights == str(__import__("pathlib").Path("~/w.pth").expanduser())
    assert parse_model_text("pkg.mod:build") == ModelRef(factory="pkg.mod:build")
    odd = tmp_path / "a:b"  # an existing file whose name looks like a factory stays a file
    odd.write_text("")
    assert parse_model_text(str(odd)).factory is None
    assert parse_model_text("~/x.safetensors").name.startswith(str(__import__("pathlib").Path.home()))


@run_async
async def test_a_factory_with_local_weights_and_an_image_folder_are_attacked_and_exported(
    tmp_path, models_folder, user_world
):
    app = make_app(tmp_path, attack={"n": 4, "c_steps": 1, "max_iter": 5})
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        screen = app.screen
        await pilot.press("i")  # the data field: a folder that is no data is refused, the setting is unchanged
        screen.query_one("#data", Input).value = str(tmp_path / "nothing")
        await pilot.press("enter")
        await settle(pilot, app)
        assert "cannot use this data" in text_of(app, "#status") and app.state.settings.data_dir is None
        await pilot.press("i")
        screen.query_one("#data", Input).value = str(user_world["data"])
        await pilot.press("enter")
        await settle(pilot, app)
        assert app.state.settings.data_dir == str(user_world["data"])
        assert "imagefolder" in text_of(app, "#status") and "3 classes" in text_of(app, "#status")
        await pilot.press("l")
        screen.query_one("#path", Input).value = "tuipkg.nets:tiny"
        screen.query_one("#weights", Input).value = str(user_world["weights"])
        await pilot.press("enter")
        await settle(pilot, app)
        assert "it is now active" in text_of(app, "#status"), text_of(app, "#status")
        assert app.state.active_ref == ModelRef(factory="tuipkg.nets:tiny", weights=str(user_world["weights"]))
        table = screen.query_one("#models", DataTable)
        assert table.row_count == 3 and "factory" in str(table.get_row_at(2)) and "●" in str(table.get_row_at(2))
        await pilot.press("escape", "3")
        await wait_for(pilot, lambda: isinstance(app.screen, AttackScreen), what="the attack screen")
        attack = app.screen
        await pilot.press("s")
        await wait_for(pilot, lambda: attack.result is not None, timeout=60, what="the attack to finish")
        record = read_json(attack.run_dir / "run.json")
        assert record["request"]["model"] == {
            "name": "",
            "factory": "tuipkg.nets:tiny",
            "weights": str(user_world["weights"]),
        }
        assert record["request"]["data_dir"] == str(user_world["data"]) and record["data"]["kind"] == "imagefolder"
        await pilot.press("e")
        await wait_for(pilot, lambda: isinstance(app.screen, ExportDialog), what="the export window")
        assert app.screen.query_one("#where", Input).value == str(attack.run_dir / "examples.csv")
        await pilot.press("enter")
        await wait_for(pilot, lambda: "wrote" in text_of(app, "#status"), what="the export")
    rows = list(csv.DictReader(io.StringIO((attack.run_dir / "examples.csv").read_text())))
    summary = json.loads((attack.run_dir / "summary.json").read_text())
    assert len(rows) == 4 == summary["n"]
    assert sum(int(r["success"]) for r in rows) == summary["n_success"]
    assert sum(int(r["trivial"]) for r in rows) == summary["n_trivial"]
    assert [r["distortion"] != "" for r in rows] == [r["success"] == "1" for r in rows]


@run_async
async def test_a_torchvision_or_factory_model_and_its_data_come_back_at_the_next_start(
    tmp_path, models_folder, user_world
):
    from blindspot.app import create_app
    from blindspot.commands.tui import session_settings
    from engines.core.errors import InputError
    from screens.state import settings_file

    ref = ModelRef(factory="tuipkg.nets:tiny", weights=str(user_world["weights"]))
    app = create_app(make_app(tmp_path).state.settings, graphics_mode="halfblock", store=settings_file())
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        app.state.set_active_model(ref)
        app.state.set_data(str(user_world["data"]))
    again = session_settings(None, None, None, None)
    assert again.settings.model == ref.to_json() and again.settings.data_dir == str(user_world["data"])
    app = create_app(again.settings, graphics_mode="halfblock", store=settings_file())
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        screen = app.screen
        assert app.state.active_ref == ref and screen.query_one("#data", Input).value == str(user_world["data"])
        active = screen.highlighted()  # a row for the restored model, highlighted, though nothing listed it
        assert active["ref"] == ref.to_json() and "weights tiny.safetensors" in active["architecture"]
    # --model/--weights/--data of `blindspot tui` take what the CLI takes, checked before the terminal is taken
    one = session_settings("resnet18", user_world["data"], None, None, weights=user_world["weights"])
    assert one.settings.model == {"name": "resnet18", "weights": str(user_world["weights"])}
    with pytest.raises(InputError, match="weights file not found"):
        session_settings("resnet18", None, None, None, weights=tmp_path / "missing.pth")
    with pytest.raises(InputError, match="--weights needs --model"):
        session_settings(None, None, None, None, weights=user_world["weights"])
    # a saved weights file that is gone: a note and the default model, never a refusal to start
    user_world["weights"].unlink()
    gone = session_settings(None, None, None, None)
    assert gone.settings.model == "n100-100-10" and "not usable here" in gone.notes[0]
