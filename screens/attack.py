"""Screen 3, Attack console: the box-constrained L-BFGS attack (§4.1) streamed live, saved as a run folder."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Input, ProgressBar, Select, Sparkline, Static

from engines.core.choices import DEVICES, SPLITS, TARGETS
from screens.image_view import ImageView
from screens.jobs import Job, WorkbenchScreen
from screens.widgets import GridItem, ImageGrid, NavBar

KEEP_TRIPLETS = 24
HISTORY = 240


def chunk_images(n: int) -> int:
    """Images per saved chunk: about eight chunks per run, so finished examples stream in."""
    return max(8, math.ceil(n / 8))


def read_triplets(folder: Path, images: Any, labels: Any, seen: set[str]) -> list[dict[str, Any]]:
    """Successful examples of chunk files not seen yet, as original | difference ×10 | adversarial."""
    from safetensors.torch import load_file

    from engines.report.figures import magnified_difference, to_uint8

    out = []
    for path in sorted((folder / "chunks").glob("*.safetensors")):
        if path.name in seen:
            continue
        try:
            part = load_file(str(path))
        except Exception:  # a chunk still being renamed into place: read it next time
            continue
        seen.add(path.name)
        start = int(path.stem.split("-")[0])
        for i in part["success"].nonzero().flatten().tolist():
            x, adv = images[start + i], part["x_adv"][i]
            out.append(
                {
                    "index": start + i,
                    "label": int(labels[start + i]),
                    "target": int(part["target"][i]),
                    "distortion": float(part["distortion"][i]),
                    "images": [to_uint8(x), to_uint8(magnified_difference(x, adv)), to_uint8(adv)],
                }
            )
    return out


class AttackScreen(WorkbenchScreen):
    """Choose the images and the search budget, start, watch the c search converge, keep the run."""

    DEFAULT_CSS = """
    AttackScreen #main { height: 1fr; }
    AttackScreen #form { width: 30; border: round $panel-lighten-2; padding: 0 1; height: 100%; }
    AttackScreen .field { height: 1; margin-bottom: 1; }
    AttackScreen .field Static { width: 9; }
    AttackScreen .field Input, AttackScreen .field Select { width: 1fr; }
    AttackScreen #live { width: 1fr; }
    AttackScreen #stats { height: 2; padding: 0 1; }
    AttackScreen #bar { height: 1; padding: 0 1; }
    AttackScreen .spark-row { height: 1; padding: 0 1; }
    AttackScreen .spark-row Static { width: 12; }
    AttackScreen Sparkline { width: 1fr; height: 1; }
    AttackScreen #triplets { min-height: 6; }
    """
    BINDINGS = [
        Binding("s", "start_attack", "Start"),
        Binding("g", "focus_grid", "Examples"),
        Binding("f", "focus_form", "Settings"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.triplets: list[dict[str, Any]] = []
        self.success_history: list[float] = []
        self.distortion_history: list[float] = []
        self.run_dir: Path | None = None
        self.summary: dict[str, Any] | None = None
        self.chunk, self.c_steps = 8, 9

    def compose(self) -> ComposeResult:
        defaults = self.state.settings.attack
        yield NavBar("attack")
        with Horizontal(id="main"):
            with Vertical(id="form") as form:
                form.border_title = "attack settings"
                yield from self._field(
                    "split", Select([(s, s) for s in SPLITS], value="test", allow_blank=False, compact=True, id="split")
                )
                yield from self._field(
                    "N images", Input(str(defaults.get("n", 64)), id="n", compact=True, type="integer")
                )
                yield from self._field(
                    "target",
                    Select([(t, t) for t in TARGETS], value="random", allow_blank=False, compact=True, id="target"),
                )
                yield from self._field(
                    "c-steps", Input(str(defaults.get("c_steps", 9)), id="c_steps", compact=True, type="integer")
                )
                yield from self._field(
                    "iters", Input(str(defaults.get("max_iter", 100)), id="max_iter", compact=True, type="integer")
                )
                yield from self._field(
                    "device",
                    Select(
                        [(d, d) for d in DEVICES],
                        value=self.state.settings.device,
                        allow_blank=False,
                        compact=True,
                        id="device",
                    ),
                )
                yield Static("[dim]s start · x cancel\nEsc leaves a field[/dim]")
            with Vertical(id="live"):
                yield Static("", id="stats")
                yield ProgressBar(total=1, id="bar", show_eta=False)
                with Horizontal(classes="spark-row"):
                    yield Static("success", id="success-label")
                    yield Sparkline([], id="spark-success")
                with Horizontal(classes="spark-row"):
                    yield Static("distortion", id="dist-label")
                    yield Sparkline([], id="spark-dist")
                yield ImageGrid(
                    id="triplets",
                    label="original | difference ×10 | adversarial",
                    max_tile=10,
                    empty="finished examples appear here, newest first",
                )
        yield Static("", id="status", classes="status")
        yield Footer(compact=True)

    def _field(self, label: str, widget: Any) -> ComposeResult:
        with Horizontal(classes="field"):
            yield Static(label)
            yield widget

    def on_mount(self) -> None:
        self.query_one("#stats", Static).update(self._intro())

    def on_screen_resume(self) -> None:
        if not self.busy() and self.run_dir is None:  # keep a finished run's results on screen
            self.query_one("#stats", Static).update(self._intro())

    def _intro(self) -> str:
        return f"model [b]{Path(self.state.active_model).name}[/b] · press s to start; progress streams here"

    def focus_main(self) -> None:
        self.query_one("#triplets", ImageGrid).focus()

    def action_focus_grid(self) -> None:
        self.focus_main()

    def action_focus_form(self) -> None:
        self.query_one("#n", Input).focus()

    # -------------------------------------------------------------------- start
    def on_input_submitted(self, _: Input.Submitted) -> None:
        self.action_start_attack()

    def _int(self, wid: str, name: str) -> int:
        text = self.query_one(f"#{wid}", Input).value.strip()
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"{name} must be a whole number ≥ 1, got {text!r}")
        return int(text)

    def action_start_attack(self) -> None:
        if self.busy("attack"):
            self.say("an attack is running: x cancels it", error=True)
            return
        try:
            n, c_steps, max_iter = self._int("n", "N"), self._int("c_steps", "c-steps"), self._int("max_iter", "iters")
        except ValueError as exc:
            self.say(str(exc), error=True)
            return
        from engines.attack.problems import AttackConfig
        from engines.attack.run import AttackRequest

        settings = self.state.settings
        split = str(self.query_one("#split", Select).value)
        target = str(self.query_one("#target", Select).value)
        device = str(self.query_one("#device", Select).value)
        model = self.state.active_model
        self.chunk, self.c_steps = chunk_images(n), c_steps
        request = AttackRequest(
            model=model,
            split=split,
            n=n,
            target=target,
            config=AttackConfig(c_steps=c_steps, max_iter=max_iter),
            batch_size=self.chunk * (9 if target == "all" else 1),
            data_dir=settings.data_dir,
        )
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = Path(settings.runs_dir) / f"attack-{Path(model).stem}-{stamp}"
        k = 1
        while out.exists():
            k += 1
            out = Path(settings.runs_dir) / f"attack-{Path(model).stem}-{stamp}-{k}"
        self.run_dir, self.summary = out, None
        self.triplets, self.success_history, self.distortion_history = [], [], []
        self.query_one("#triplets", ImageGrid).set_items([])
        self.query_one("#bar", ProgressBar).update(total=n, progress=0)
        for sid in ("#spark-success", "#spark-dist"):
            self.query_one(sid, Sparkline).data = []
        self.query_one("#stats", Static).update(f"attacking {n} {split} images of {Path(model).name} on {device} …")
        self.say(f"run folder {out} · x cancels (finished chunks are kept)")
        self.query_one("#triplets", ImageGrid).focus()
        seen: set[str] = set()
        data: dict[str, Any] = {}

        def work(job: Job) -> Any:
            from engines.attack.run import load_samples, start_attack
            from engines.core.data import load_split
            from engines.core.device import resolve_device

            dev = resolve_device(device)
            subset = load_split(split, settings.data_dir).subset(0, n)
            data.update(images=subset.images, labels=subset.labels)
            state = {"done": 0}

            def on_progress(event: Progress) -> None:
                done = int(event.info.get("images_done", 0))
                if done > state["done"]:
                    state["done"] = done
                    job.update(read_triplets(out, subset.images, subset.labels, seen))
                job.progress(event)

            summary = start_attack(request, out, dev, on_progress=on_progress, cancel=job.cancelled)
            job.update(read_triplets(out, subset.images, subset.labels, seen))
            return summary, load_samples(out)

        def gather(job: Job) -> Any:
            if "images" not in data:
                return 0
            job.update(read_triplets(out, data["images"], data["labels"], seen))
            return len(seen)

        self.start(
            "attack",
            work,
            on_cancelled=gather,
            on_progress=self.show_progress,
            on_update=self.add_triplets,
            on_done=self.finished,
            on_error=self.failed,
            on_cancel=self.cancelled,
        )

    # ------------------------------------------------------------------ stream
    def show_progress(self, event: Progress) -> None:
        info = event.info
        total_images = int(info.get("images_total", 0)) or 1
        done_images = int(info.get("images_done", 0))
        in_chunk = min(self.chunk, total_images - done_images)
        frac = event.done / event.total if event.total else 0.0
        self.query_one("#bar", ProgressBar).update(total=total_images, progress=done_images + in_chunk * frac)
        c_steps = self.c_steps
        succ, dist = info.get("success_rate"), info.get("mean_distortion")
        dist_text = f"{dist:.4f}" if isinstance(dist, float) and math.isfinite(dist) else "—"
        self.query_one("#stats", Static).update(
            f"c-step {info.get('c_step', '?')}/{c_steps} · iteration {info.get('iteration', '?')} · "
            f"objective {info.get('objective', float('nan')):.4g} · running {info.get('running', '?')}\n"
            f"success {100 * (succ or 0):.1f}% · mean distortion {dist_text} · images {done_images}/{total_images}"
        )
        if succ is not None:
            self.success_history = (self.success_history + [float(succ)])[-HISTORY:]
            self.query_one("#spark-success", Sparkline).data = self.success_history
            self.query_one("#success-label", Static).update(f"success {100 * succ:3.0f}%")
        if isinstance(dist, float) and math.isfinite(dist):
            self.distortion_history = (self.distortion_history + [dist])[-HISTORY:]
            self.query_one("#spark-dist", Sparkline).data = self.distortion_history
            self.query_one("#dist-label", Static).update(f"dist {dist:.4f}")

    def add_triplets(self, new: list[dict[str, Any]]) -> None:
        if not new:
            return
        self.triplets = (list(reversed(new)) + self.triplets)[:KEEP_TRIPLETS]
        items = [
            GridItem(
                f"#{t['index']} {t['label']}→{t['target']} d={t['distortion']:.3f}",
                t["images"],
                payload=t,
            )
            for t in self.triplets
        ]
        self.query_one("#triplets", ImageGrid).set_items(items)

    def finished(self, result: Any) -> None:
        summary, _samples = result
        self.summary = summary
        self.query_one("#bar", ProgressBar).update(total=summary["n"], progress=summary["n"])
        dist = summary.get("mean_distortion")
        self.query_one("#stats", Static).update(
            f"[b]done[/b]: {summary['n']} images · success {100 * summary['success_rate']:.1f}% · "
            f"mean distortion {dist if dist is None else f'{dist:.4f}'} · {summary['seconds']:.1f} s on "
            f"{summary['device']}"
        )
        self.say(f"saved run folder {self.run_dir} (samples, summary.json, figure.png)")

    def failed(self, message: str) -> None:
        self.query_one("#stats", Static).update("the attack stopped with an error")
        self.say(message, error=True)

    def cancelled(self, chunks: Any) -> None:
        self.query_one("#stats", Static).update(f"[b]cancelled[/b]: {chunks or 0} finished chunk(s) kept")
        self.say(f"kept in {self.run_dir}; finish it with `blindspot attack --resume {self.run_dir}`")

    def on_image_grid_opened(self, event: ImageGrid.Opened) -> None:
        t = self.triplets[event.item]
        names = ["original", "difference ×10", "adversarial"]
        caption = (
            f"{names[event.index]} · {self.query_one('#split', Select).value} #{t['index']} · "
            f"label {t['label']} → target {t['target']} · distortion {t['distortion']:.4f}"
        )
        self.app.push_screen(ImageView(t["images"], caption, start=event.index, names=names))
