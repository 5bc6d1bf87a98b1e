"""Workbench: app."""

from __future__ import annotations

import pytest
import torch
from textual.widgets import Input

from blindspot.app import create_app
from engines.core.events import ChunkDone, Step, Throttle
from screens.attack import AttackScreen
from screens.bounds import BoundsScreen
from screens.gallery import GalleryScreen
from screens.image_view import ImageView
from screens.jobs import Job, JobEvent
from screens.models import ModelsScreen
from screens.transfer import TransferScreen
from tests.tui.conftest import SIZE, make_app, run_async, settle, text_of, wait_for  # noqa: F401


def test_events_are_throttled_and_ticks_merged_but_milestones_always_pass():
    posted = []

    class Owner:
        def post_message(self, message):
            posted.append(message)

    job = Job(Owner(), "demo", interval=10.0)
    for i in range(1000):
        job.emit(Step(task="demo", done=i, total=1000))
    x = torch.zeros(2, 1, 2, 2)
    chunk = ChunkDone(task="demo", done=2, total=1000, start=0, stop=2, index=[0, 1], x=x, label=x, results={})
    job.emit(chunk)
    job.emit(chunk)
    job.emit(Step(task="demo", done=1000, total=1000))
    kinds = [type(m.event).__name__ for m in posted]
    assert kinds == ["Step", "ChunkDone", "ChunkDone", "Step"]  # first tick, both milestones, the final tick
    first, milestone, final = posted[0], posted[1], posted[3]
    assert first.can_replace(final) and final.can_replace(first)  # queued ticks of one job merge
    assert not milestone.can_replace(first) and not final.can_replace(milestone)  # results are never dropped
    other = JobEvent(Job(Owner(), "other"), Step(task="other", done=1, total=2))
    assert not other.can_replace(first)


def test_one_throttle_counts_time_per_task():
    now = [0.0]
    seen = []
    gate = Throttle(seen.append, 1.0, clock=lambda: now[0])
    for t, task in ((0.0, "a"), (0.1, "b"), (0.5, "a"), (1.2, "a"), (1.2, "b")):
        now[0] = t
        gate(Step(task=task, done=t, total=10))
    assert [(e.task, e.done) for e in seen] == [("a", 0.0), ("b", 0.1), ("a", 1.2), ("b", 1.2)]


@run_async
async def test_keys_switch_screens_palette_and_quit(tmp_path, models_folder):
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        assert isinstance(app.screen, ModelsScreen)
        for key, cls in (("3", AttackScreen), ("5", BoundsScreen), ("4", TransferScreen), ("2", GalleryScreen)):
            await pilot.press(key)
            await settle(pilot, app)
            assert isinstance(app.screen, cls)
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Attack screen (3)" in titles and "Next (n)" in titles and "Cancel (x)" in titles
        await pilot.press("1")
        await pilot.resize_terminal(200, 50)
        await settle(pilot, app)
        assert isinstance(app.screen, ModelsScreen)
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0


@pytest.mark.parametrize("mode", ["sixel", "tgp", "unicode", "auto"])
@run_async
async def test_enlarged_image_in_every_graphics_mode(tmp_path, models_folder, mode, monkeypatch):
    import numpy as np
    import textual_image.widget as widgets

    from screens import graphics

    monkeypatch.delenv("TMUX", raising=False)  # tmux's own rules are tested below

    app = make_app(tmp_path)
    try:
        graphics.configure(mode)
        async with app.run_test(size=SIZE) as pilot:
            digit = (np.arange(28 * 28).reshape(28, 28) % 256).astype(np.uint8)
            app.push_screen(ImageView([digit, 255 - digit], "a test image", names=["one", "two"]))
            await pilot.pause()
            await pilot.press("right")
            await pilot.pause()
            big = app.screen.query_one("#big")
            expected = {  # auto without a terminal to ask: half-blocks
                "sixel": graphics.sixel_image_widget(),
                "tgp": widgets.TGPImage,
                "unicode": widgets.UnicodeImage,
                "auto": widgets.HalfcellImage,
            }[mode]
            assert isinstance(big, expected)
            assert app.screen.index == 1 and "two" in app.screen.query_one("#frame").border_title
    finally:
        graphics.configure("halfblock")


@run_async
async def test_engine_warnings_from_worker_threads_reach_the_screen(tmp_path, models_folder):
    import logging
    import threading

    app = make_app(tmp_path, models_folder=models_folder)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        log = logging.getLogger("engines.core.cache")
        worker = threading.Thread(target=log.warning, args=("warning: cache at %s is not writable; no cache", "/ro"))
        worker.start()
        worker.join()
        log.warning("warning: from the app's own thread")
        await wait_for(pilot, lambda: len(app.warnings) == 2, what="both warnings")
        assert sorted(app.warnings) == [
            "warning: cache at /ro is not writable; no cache",
            "warning: from the app's own thread",
        ]
    assert not any(type(h).__name__ == "_EngineWarnings" for h in logging.getLogger("engines").handlers)


@run_async
async def test_help_on_every_screen_and_a_palette_without_duplicates(tmp_path, models_folder):
    from screens.help import ABOUT, HelpScreen

    app = make_app(tmp_path, models_folder=models_folder)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        for key, mode in (("1", "models"), ("2", "gallery"), ("3", "attack"), ("4", "transfer"), ("5", "bounds")):
            await pilot.press(key)
            await wait_for(pilot, lambda m=mode: app.current_mode == m, what=f"the {mode} screen")
            screen = app.screen
            titles = [c.title for c in app.get_system_commands(screen)]
            assert len(titles) == len(set(titles)), titles
            assert sum("Attack" in t for t in titles) == 1 and "Help (?)" in titles and "Keys" not in titles
            for opener in ("question_mark", "f1"):
                await pilot.press(opener)
                await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), what="the help screen")
                help_screen = app.screen
                assert help_screen.mode == mode and ABOUT[mode][:30] in text_of(app, "#about")
                await pilot.press("escape")
                await wait_for(pilot, lambda s=screen: app.screen is s, what="help to close")
            if mode == "models":  # hidden keys are listed too
                assert {("t", "Train"), ("T", "Train over"), ("d", "Device")} <= set(help_screen.keys)


@run_async
async def test_choices_made_in_the_app_are_there_at_the_next_start(tmp_path, models_folder, monkeypatch):
    import json
    import os

    from blindspot.commands.tui import session_settings
    from screens.state import settings_file

    store = settings_file()
    assert str(store).startswith(os.environ["XDG_CONFIG_HOME"])  # the tests never touch the user's own file
    session = session_settings(None, None, None, None)
    assert (session.settings.model, session.settings.device, session.notes) == ("n100-100-10", "auto", ())
    app = create_app(make_app(tmp_path).state.settings, graphics_mode="halfblock", store=store)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        app.state.set_active_model("softmax1")
        app.state.set_device("cpu")
        await pilot.press("3")
        await wait_for(pilot, lambda: isinstance(app.screen, AttackScreen), what="the attack screen")
        app.screen.query_one("#n", Input).value = "3"
        await pilot.press("s")
        await wait_for(pilot, lambda: app.screen.result is not None, timeout=120, what="the attack")
    saved = json.loads(store.read_text())
    assert saved["model"] == "softmax1" and saved["device"] == "cpu" and saved["attack"]["n"] == 3
    again = session_settings(None, None, None, None)
    assert (again.settings.model, again.settings.device, again.settings.attack["n"]) == ("softmax1", "cpu", 3)
    # options hold for their session only
    assert session_settings("n100-100-10", None, None, None).settings.model == "n100-100-10"
    assert json.loads(store.read_text())["model"] == "softmax1"
    # a saved model that is gone, or a damaged file: a note and the defaults, never a refusal to start
    store.write_text(json.dumps({**saved, "model": str(tmp_path / "gone.safetensors")}))
    gone = session_settings(None, None, None, None)
    assert gone.settings.model == "n100-100-10" and "not usable here" in gone.notes[0]
    store.write_text("{not json")
    damaged = session_settings(None, None, None, None)
    assert damaged.settings.device == "auto" and "ignored the saved workbench settings" in damaged.notes[0]


@run_async
async def test_every_footer_fits_80_columns_even_while_a_job_runs(tmp_path, models_folder):
    """At 80×24 the footers used to be cut ('n Ne', 'f Setting', 'screensx')."""
    from textual.widgets import Footer

    # enough images that the attack still runs when the footer is read (64 take about a second now)
    app = make_app(tmp_path, models_folder=models_folder, attack={"n": 4000, "c_steps": 9, "max_iter": 100})
    async with app.run_test(size=SIZE) as pilot:
        for key in "12345":
            await pilot.press(key)
            await settle(pilot, app)
            if key == "3":
                await pilot.press("s")
                await wait_for(pilot, lambda: app.screen.busy(), what="the attack to run")
            footer = app.screen.query_one(Footer)
            items = list(footer.query("FooterKey"))
            assert items and all(item.region.right <= SIZE[0] for item in items), key
            shown = [str(item.render()) for item in items]
            assert shown[-1].startswith("^p") and any("Help" in s for s in shown), (key, shown)
            if key == "3":
                assert any("Cancel" in s for s in shown)  # shown while there is something to cancel
                await pilot.press("x")
                await wait_for(pilot, lambda: not app.screen.busy(), what="the cancel")


@pytest.mark.parametrize(
    ("asked", "passthrough", "features", "drawn"),
    [
        ("sixel", "off", "RGB,title", "halfblock"),
        ("sixel", "off", "RGB,sixel", "sixel"),
        ("sixel", "on", "", "sixel"),
        ("tgp", "off", "RGB,sixel", "halfblock"),
        ("tgp", "all", "", "tgp"),
        ("unicode", "off", "", "unicode"),
    ],
)
def test_inside_tmux_images_fall_back_to_half_blocks_with_one_notice(monkeypatch, asked, passthrough, features, drawn):
    """`--graphics sixel` in a tmux without sixel drew a blank image with stray characters, without a word."""
    from screens import graphics

    answers = {"show": passthrough, "display": features}
    monkeypatch.setenv("TMUX", "/tmp/tmux-0/default,1,0")
    monkeypatch.setattr(graphics, "_tmux", lambda *args: answers[args[0]])
    try:
        assert graphics.configure(asked) == drawn == graphics.mode()
        assert (graphics.notice() == graphics.TMUX_HINT) == (drawn != asked)
        monkeypatch.delenv("TMUX")
        assert graphics.configure(asked) == asked and graphics.notice() == ""  # outside tmux: as asked
    finally:
        graphics.configure("halfblock")


@run_async
async def test_the_jobs_panel_lists_and_cancels_a_job_of_another_screen(tmp_path, models_folder):
    """Training and an attack could run at once with no screen showing the other, and x cancelled only its own."""
    from screens.jobs_panel import JobsPanel
    from screens.widgets import NavBar

    app = make_app(tmp_path, models_folder=models_folder, attack={"n": 4000, "c_steps": 9, "max_iter": 100})
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        await pilot.press("3")
        await wait_for(pilot, lambda: isinstance(app.screen, AttackScreen), what="the attack screen")
        attack = app.screen
        await pilot.press("s")
        await wait_for(pilot, lambda: attack.chunks_done >= 1, timeout=120, what="a finished chunk")
        await pilot.press("1")
        await wait_for(pilot, lambda: isinstance(app.screen, ModelsScreen), what="the models screen")
        assert "⚙1 j" in str(app.screen.query_one(NavBar).render())
        await pilot.press("j")
        await wait_for(pilot, lambda: isinstance(app.screen, JobsPanel), what="the jobs panel")
        table = app.screen.query_one("#jobs")
        assert table.row_count == 1 and [str(c) for c in table.get_row_at(0)[:2]] == ["Attack", "attack"]
        await pilot.press("x")
        await wait_for(pilot, lambda: not attack.busy("attack"), what="the attack to stop")
        await wait_for(pilot, lambda: "no job is running" in text_of(app, "#note"), what="the empty panel")
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, ModelsScreen), what="the models screen again")
        assert "⚙" not in str(app.screen.query_one(NavBar).render())
        assert list((tmp_path / "runs").glob("attack-*/chunks/*"))  # the cancelled run kept its finished chunks


@run_async
async def test_the_way_out_of_a_text_field_is_in_the_footer_while_in_one(tmp_path, models_folder):
    """With a field focused the footer shrank to '^p palette' and nothing said how to get the keys back."""
    from textual.widgets import Footer

    def footer_text() -> str:
        return " ".join(str(k.render()) for k in app.screen.query_one(Footer).query("FooterKey"))

    app = make_app(tmp_path, models_folder=models_folder)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        await wait_for(pilot, lambda: isinstance(app.screen, AttackScreen), what="the attack screen")
        assert "Leave field" not in footer_text()
        await pilot.press("f")  # into the form
        await wait_for(pilot, lambda: isinstance(app.screen.focused, Input), what="a focused field")
        await pilot.pause()
        assert "esc" in footer_text() and "Leave field" in footer_text()
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen.focused, Input), what="the field to be left")
        await pilot.pause()
        assert "Leave field" not in footer_text()
