"""Workbench: app."""

from __future__ import annotations

import pytest

from engines.core.events import Progress
from screens.attack import AttackScreen
from screens.bounds import BoundsScreen
from screens.gallery import GalleryScreen
from screens.image_view import ImageView
from screens.jobs import Job, JobProgress
from screens.models import ModelsScreen
from screens.transfer import TransferScreen
from tests.tui.conftest import SIZE, make_app, run_async, settle, text_of, wait_for  # noqa: F401


def test_progress_is_throttled_and_merged():
    posted = []

    class Owner:
        def post_message(self, message):
            posted.append(message)

    job = Job(Owner(), "demo", interval=10.0)
    for i in range(1000):
        job.progress(Progress("demo", i, 1000))
    job.progress(Progress("demo", 1000, 1000))
    assert len(posted) == 2  # the first, then the final one; everything between was dropped
    assert posted[0].can_replace(posted[1]) and posted[1].can_replace(posted[0])
    other = JobProgress(Job(Owner(), "other"), Progress("other", 1, 2))
    assert not other.can_replace(posted[0])


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
async def test_enlarged_image_in_every_graphics_mode(tmp_path, models_folder, mode):
    import numpy as np
    import textual_image.widget as widgets

    from screens import graphics

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
            assert isinstance(big, widgets.Image if mode == "auto" else graphics.large_image_widget())
            assert app.screen.index == 1 and "two" in app.screen.query_one("#frame").border_title
    finally:
        graphics.configure("halfblock")
