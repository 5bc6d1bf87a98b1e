"""Workbench: `c` on the Attack screen certifies the shown finished attack run (the certify operation, as a
job, with the request the CLI builds for `--attack-run`), and each example's label gains its [lower, upper]."""

from __future__ import annotations

import threading

import engines.certify.operation
from engines.certify.events import CertifiedChunk
from engines.certify.results import read_certify
from screens.attack import AttackScreen
from screens.bracket import CERTIFY_DIR, bracket_label
from screens.widgets import ImageGrid
from tests.tui.conftest import SIZE, finished_attack, make_app, run_async, wait_for


@run_async
async def test_c_certifies_the_finished_run_and_the_brackets_appear(tmp_path, models_folder, monkeypatch):
    folder = finished_attack(tmp_path / "runs")
    calls = []
    real = engines.certify.operation.run_certify

    def spy(request, ctx):
        calls.append((threading.current_thread(), request, ctx))
        return real(request, ctx)

    monkeypatch.setattr(engines.certify.operation, "run_certify", spy)
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, AttackScreen)
        screen.show_run(folder)
        await wait_for(pilot, lambda: screen.result is not None, what="the finished run to open")
        grid = screen.query_one("#triplets", ImageGrid)
        assert grid.items and not any("[" in item.title for item in grid.items)  # not certified yet
        await pilot.press("c")
        await wait_for(
            pilot, lambda: bool(screen.brackets) and not screen.busy("certify"), timeout=120, what="certify to end"
        )
        thread, request, ctx = calls[0]
        assert thread is not threading.main_thread()  # a job, not the UI thread
        assert request.attack_run == str(folder) and request.method == "auto"  # what --attack-run builds
        assert ctx.out == folder / CERTIFY_DIR
        rows = {r["index"]: r for r in read_certify(folder / CERTIFY_DIR)["images"]}
        shown = [t for t in screen.triplets if rows[t["index"]]["lower"]]
        assert shown  # softmax1: exact minima under the attack's distances
        for t, item in zip(screen.triplets, grid.items, strict=True):
            row = rows[t["index"]]
            if row["lower"] is not None:
                assert item.title.endswith(f"[{row['lower']:.3f}, {row['upper']:.3f}]")
                assert row["lower"] <= row["upper"] * (1 + 1e-6)
        assert "violations" in str(screen.query_one("#status").render())
        screen.show_run(folder)  # reopened later: the brackets come from the run's certify folder
        await wait_for(pilot, lambda: screen.result is not None and bool(screen.brackets), what="the reopened run")
        t = screen.triplets[0]
        assert grid.items[0].title.endswith(bracket_label(screen.brackets, t["index"]))
        assert bracket_label(screen.brackets, t["index"])


def test_a_certify_of_another_run_leaves_the_shown_run_alone(tmp_path):
    """A certify job keeps running when the screen opens another run: its chunks and its end must not be drawn
    under the new run's examples."""
    from pathlib import Path

    from screens.bracket import BracketMixin

    class Shown(BracketMixin):
        def __init__(self, run_dir: Path) -> None:
            self.run_dir, self.brackets, self.said, self.drawn = run_dir, {}, [], 0

        def say(self, text: str, error: bool = False) -> None:
            self.said.append(text)

        def add_triplets(self, _: list) -> None:
            self.drawn += 1

    old, new = tmp_path / "attack-old", tmp_path / "attack-new"
    shown = Shown(new)
    chunk = CertifiedChunk(task="certify", done=1, total=1, start=0, stop=1, rows=[{"index": 0, "lower": 0.1}])
    shown.show_certified(chunk, old)
    assert shown.brackets == {} and shown.drawn == 0
    shown.certified(object(), old)  # the old run's result: not read, not drawn
    assert shown.brackets == {} and shown.drawn == 0 and "attack-old" in shown.said[-1]
    shown.show_certified(chunk, new)
    assert shown.brackets == {0: {"index": 0, "lower": 0.1}} and shown.drawn == 1
