"""Screen 3, Attack console: the box-constrained L-BFGS attack (§4.1) streamed live, saved as a run folder.

The screen builds an `AttackRequest` from its form and hands it to `run_attack`, the same operation
`blindspot attack` calls. It draws what the operation announces: `SolverStep` events move the bar
and the sparklines, `ChunkDone` events carry each finished chunk's images and results.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Input, ProgressBar, Select, Sparkline, Static

from engines.attack.request import AttackRequest
from engines.attack.search import AttackConfig
from engines.core.device import usable_devices
from engines.core.events import ChunkDone, Event, SolverStep, Step
from screens.bracket import BracketMixin, bracket_label
from screens.forms import form_fields, in_words, read_fields
from screens.image_grid import change_zoom
from screens.image_view import ImageView
from screens.jobs import Job, WorkbenchScreen
from screens.pictures import scale_label
from screens.widgets import GridItem, ImageGrid, NavBar

if TYPE_CHECKING:
    from engines.attack.follow import FollowOutcome
    from engines.attack.results import AttackResult

TRIPLET_LABEL = "original | difference r (blue −, white 0, red +) | adversarial"
KEEP_BYTES = 256 << 20  # examples kept for paging; past this the run folder holds the rest (ImageNet-sized images)
HISTORY = 240
REQUEST_FIELDS = ("split", "n", "target")  # the form's fields, from the requests' declarations (as the CLI's)
CONFIG_FIELDS = ("c_steps", "max_iter")


def chunk_images(n: int) -> int:
    """Images per saved chunk: about eight chunks per run, so finished examples stream in."""
    return max(8, math.ceil(n / 8))


def finished_examples(event: ChunkDone) -> list[dict[str, Any]]:
    """The successes of a finished chunk as original | difference r | adversarial, from the event alone.

    r is drawn in a diverging map (blue negative, white zero, red positive) scaled to its own largest
    |r|, so that its structure shows whatever its size; `scale` says what full colour means."""
    from engines.report.figures import to_uint8
    from screens.pictures import difference_picture

    res = event.results
    out = []
    for i in res["success"].nonzero().flatten().tolist():
        x, adv = event.x[i], res["x_adv"][i]
        diff, scale = difference_picture(x, adv)
        out.append(
            {
                "index": int(event.index[i]),
                "label": int(event.label[i]),
                "target": int(res["target"][i]),
                "distortion": float(res["distortion"][i]),
                "images": [to_uint8(x), diff, to_uint8(adv)],
                "scale": scale,
            }
        )
    return out


class AttackScreen(BracketMixin, WorkbenchScreen):
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
        Binding("g", "focus_grid", "Examples", show=False),
        Binding("f", "focus_form", "Settings"),
        Binding("e", "export", "Export"),
        Binding("R", "resume", "Resume", show=False),
        Binding("c", "certify", "Certify", show=False),
        Binding("z", "zoom(1)", "Zoom", show=False),
        Binding("Z", "zoom(-1)", "Zoom out", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.triplets: list[dict[str, Any]] = []
        self.kept_bytes, self.dropped = 0, 0  # memory of the kept examples; found ones not kept for lack of it
        self.success_history: list[float] = []
        self.distortion_history: list[float] = []
        self.run_dir: Path | None = None
        self.result: AttackResult | None = None  # the finished run's
        self.chunks_done = 0  # ChunkDone events of the current run
        self.split = "test"
        self.watching = False  # the shown run is another process's (or a finished one): read-only
        self.live_ticks = 0  # progress ticks of a run followed while another process writes it
        self.brackets: dict[int, dict[str, Any]] = {}  # certified [lower, upper] by image index (screens/bracket)

    def compose(self) -> ComposeResult:
        defaults, devices = self.state.settings.attack, usable_devices()
        yield NavBar("attack")
        with Horizontal(id="main"):
            with Vertical(id="form") as form:
                form.border_title = "attack settings"
                yield from form_fields(AttackRequest, REQUEST_FIELDS, defaults)
                yield from form_fields(AttackConfig, CONFIG_FIELDS, defaults)
                yield from self._field(
                    "device",
                    Select(
                        [(d, d) for d in devices],
                        value=self.state.settings.device if self.state.settings.device in devices else "auto",
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
                    label=TRIPLET_LABEL,
                    zoom=self.state.settings.zoom.get("attack", 0),
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

    def on_select_changed(self, event: Select.Changed) -> None:
        """The device field is a view of the workbench's one device setting (the header shows it too)."""
        if event.select.id == "device" and isinstance(event.value, str) and event.value != self.state.settings.device:
            self.state.set_device(event.value)

    def on_screen_resume(self) -> None:
        device = self.query_one("#device", Select)
        if self.state.settings.device in usable_devices() and device.value != self.state.settings.device:
            device.value = self.state.settings.device
        if not self.busy() and self.run_dir is None:  # keep a finished run's results on screen
            self.query_one("#stats", Static).update(self._intro())

    def _intro(self) -> str:
        return f"model [b]{Path(self.state.active_model).name}[/b] · press s to start; progress streams here"

    def focus_main(self) -> None:
        self.query_one("#triplets", ImageGrid).focus()

    def action_zoom(self, delta: int) -> None:
        zoom = change_zoom(self.state, "attack", [self.query_one("#triplets", ImageGrid)], delta)
        self.say(f"zoom {zoom}: z larger examples, Z smaller" + (" (the smallest legible size)" if zoom == 0 else ""))

    def action_focus_grid(self) -> None:
        self.focus_main()

    def action_focus_form(self) -> None:
        self.query_one("#n", Input).focus()

    # -------------------------------------------------------------------- start
    def on_input_submitted(self, _: Input.Submitted) -> None:
        self.action_start_attack()

    def action_start_attack(self) -> None:
        if self.busy("attack"):
            self.say("an attack is running: x cancels it", error=True)
            return
        from engines.core.errors import InputError
        from engines.core.runs import new_run_folder

        settings = self.state.settings
        device = str(self.query_one("#device", Select).value)
        model = self.state.active_ref
        try:
            asked = read_fields(self, AttackRequest, REQUEST_FIELDS)
            config = read_fields(self, AttackConfig, CONFIG_FIELDS)
            split, n = asked["split"], asked["n"]
            request = AttackRequest(
                model=model,
                **asked,
                config=AttackConfig(**config),
                data_dir=settings.data_dir,
                chunk_images=chunk_images(n),
            )
        except InputError as exc:
            self.say(in_words(exc), error=True)
            return
        settings.attack = {**settings.attack, **asked, **config}
        self.state.remember(attack=settings.attack)
        out = new_run_folder(Path(settings.runs_dir), "attack", str(model))
        self.reset_view(out, split, n)
        self.query_one("#stats", Static).update(
            f"attacking {n} {split} images of {Path(str(model)).name} on {device} …"
        )
        self.say(f"run folder {out} · x cancels (finished chunks are kept)")
        self.query_one("#triplets", ImageGrid).focus()

        from engines.attack.operation import run_attack

        self.run_operation(lambda ctx: run_attack(request, ctx), out, device)

    def run_operation(self, operation: Any, out: Path, device: str) -> None:
        """Run an attack operation (`run_attack`, `resume_attack`) in a worker, its events drawn here."""

        def work(job: Job) -> Any:
            return operation(self.job_context(job, out=out, device=device))

        self.start(
            "attack",
            work,
            on_event=self.show_event,
            on_done=self.finished,
            on_error=self.failed,
            on_cancel=self.cancelled,
        )

    def reset_view(self, out: Path, split: str, n: int, watching: bool = False) -> None:
        """Forget the shown run: a new, resumed or reopened one fills the screen from its own events."""
        self.run_dir, self.result, self.split, self.chunks_done, self.watching = out, None, split, 0, watching
        self.live_ticks = 0
        self.triplets, self.success_history, self.distortion_history = [], [], []
        self.kept_bytes, self.dropped, self.brackets = 0, 0, {}
        self.query_one("#triplets", ImageGrid).set_items([])
        self.query_one("#bar", ProgressBar).update(total=n, progress=0)
        for sid in ("#spark-success", "#spark-dist"):
            self.query_one(sid, Sparkline).data = []

    # ------------------------------------------------------- reopen, watch, resume
    def _take_over(self, folder: Path, verb: str, watching: bool) -> bool:
        """Clear the screen for the run in `folder` (its split and size from run.json); False if it cannot be."""
        from engines.core.errors import BlindspotError
        from engines.core.runs import read_run_record

        if self.busy("attack"):
            self.say("an attack is running here: x cancels it first", error=True)
            return False
        try:
            request = read_run_record(folder)["request"]
        except BlindspotError as exc:
            self.say(str(exc), error=True)
            return False
        self.reset_view(folder, str(request.get("split", "test")), int(request.get("n", 1)), watching=watching)
        self.query_one("#stats", Static).update(f"{verb} {folder.name} …")
        self.query_one("#triplets", ImageGrid).focus()
        return True

    def show_run(self, folder: Path) -> None:
        """Reopen a run folder (from Runs): every example of a finished run, paged; a running run written by
        another process followed live (read-only); an interrupted one up to where it stopped."""
        if not self._take_over(folder, "opening", watching=True):
            return
        self.say(f"{folder} · read-only: x stops watching, never the run")

        def work(job: Job) -> Any:
            from engines.attack.follow import follow_attack

            return follow_attack(folder, self.job_context(job))

        self.start(
            "attack",
            work,
            on_event=self.show_event,
            on_done=self.followed,
            on_error=self.failed,
            on_cancel=lambda: self.say(f"stopped watching {folder.name}; the run itself goes on"),
        )

    def followed(self, outcome: FollowOutcome) -> None:
        if outcome.status == "finished":
            if outcome.result is not None:
                self.finished(outcome.result)
            else:
                self.query_one("#stats", Static).update(f"[b]finished[/b] · {len(self.triplets)} examples shown")
                self.say(f"{self.run_dir}: summary.json is missing or damaged; the examples come from the samples")
            return
        self.query_one("#bar", ProgressBar).update(total=outcome.total or 1, progress=outcome.done)
        self.query_one("#stats", Static).update(
            f"[b]interrupted[/b] at {outcome.done}/{outcome.total} images · {len(self.triplets)} examples shown"
        )
        self.say(f"{self.run_dir} · R resumes it here")

    def action_resume(self) -> None:
        """R: carry on the shown run, if it is interrupted (a finished one is complete, a running one is not ours)."""
        from engines.core.errors import BlindspotError
        from engines.kinds import read_run_entry

        if self.run_dir is None or self.busy("attack"):
            self.say("nothing to resume here: reopen an interrupted run from Runs (6)", error=True)
            return
        try:
            status = read_run_entry(self.run_dir).status
        except BlindspotError as exc:
            self.say(str(exc), error=True)
            return
        if status != "interrupted":
            self.say(f"{self.run_dir.name} is {status}: only an interrupted run resumes", error=True)
            return
        self.resume_run(self.run_dir)

    def resume_run(self, folder: Path) -> None:
        """Carry an interrupted run on in the app (`blindspot attack --resume`): its finished chunks are shown
        first, then the rest streams in as it is attacked."""
        if not self._take_over(folder, "resuming", watching=False):
            return
        self.say(f"resuming {folder} · x cancels (finished chunks are kept)")
        from engines.attack.operation import resume_attack

        self.run_operation(lambda ctx: resume_attack(folder, ctx), folder, self.state.settings.device)

    # ------------------------------------------------------------------ stream
    def show_event(self, event: Event) -> None:
        if isinstance(event, SolverStep):
            self.show_progress(event)
        elif isinstance(event, Step) and event.total:
            self.live_ticks += 1
            self.query_one("#bar", ProgressBar).update(total=event.total, progress=event.done)
            self.query_one("#stats", Static).update(
                f"watching {self.run_dir.name if self.run_dir else ''}: {int(event.done)}/{int(event.total)} images "
                "finished by the writing process(es)"
            )
        elif isinstance(event, ChunkDone):
            self.chunks_done += 1
            self.add_triplets(finished_examples(event))
            self.query_one("#bar", ProgressBar).update(total=event.total or 1, progress=event.done)

    def show_progress(self, event: SolverStep) -> None:
        total_images = event.images_total or 1
        done_images = event.images_done
        frac = event.done / event.total if event.total else 0.0
        self.query_one("#bar", ProgressBar).update(total=total_images, progress=done_images + event.chunk_images * frac)
        succ, dist = event.success_rate, event.mean_distortion
        finite = dist is not None and math.isfinite(dist)
        dist_text = f"{dist:.4f}" if finite else "—"
        self.query_one("#stats", Static).update(  # what matters first: 80 columns leave this panel ~48
            f"images {done_images}/{total_images} · c-step {event.c_step}/{event.c_steps} · "
            f"iteration {event.iteration} · running {event.running} · objective {event.objective:.4g}\n"
            f"success {100 * (succ or 0):.1f}% · mean distortion {dist_text}"
        )
        if succ is not None:
            self.success_history = (self.success_history + [float(succ)])[-HISTORY:]
            self.query_one("#spark-success", Sparkline).data = self.success_history
            self.query_one("#success-label", Static).update(f"success {100 * succ:3.0f}%")
        if finite and dist is not None:
            self.distortion_history = (self.distortion_history + [dist])[-HISTORY:]
            self.query_one("#spark-dist", Sparkline).data = self.distortion_history
            self.query_one("#dist-label", Static).update(f"dist {dist:.4f}")

    def add_triplets(self, new: list[dict[str, Any]]) -> None:
        """Every found example of the run, in image order, paged in the grid (the cursor stays where the user is)."""
        room = [t for t in new if self.kept_bytes + sum(im.nbytes for im in t["images"]) <= KEEP_BYTES]
        self.kept_bytes += sum(im.nbytes for t in room for im in t["images"])
        self.dropped += len(new) - len(room)
        if new and not room:
            return
        self.triplets = sorted(self.triplets + room, key=lambda t: t["index"])
        items = [
            GridItem(
                f"#{t['index']} {t['label']}→{t['target']} d={t['distortion']:.3f}{bracket_label(self.brackets, t['index'])}",
                t["images"],
                captions=["original", scale_label(t["scale"]), "adversarial"],
                payload=t,
            )
            for t in self.triplets
        ]
        self.query_one("#triplets", ImageGrid).set_items(items, keep_cursor=True)

    def finished(self, result: AttackResult) -> None:
        self.result = result
        self.query_one("#bar", ProgressBar).update(total=result.n, progress=result.n)
        dist = result.mean_distortion
        self.query_one("#stats", Static).update(
            f"[b]done[/b]: {result.n} images · success {100 * result.success_rate:.1f}% · "
            f"mean distortion {dist if dist is None else f'{dist:.4f}'} · {result.seconds:.1f} s on "
            f"{result.device}"
        )
        shown = f" · {len(self.triplets)} of {len(self.triplets) + self.dropped} examples shown" if self.dropped else ""
        self.say(f"saved run folder {result.run} (samples, summary.json, figure.png){shown}")
        self.load_brackets()  # a certified run shows [lower, upper] under each example; c certifies it

    def failed(self, message: str) -> None:
        self.query_one("#stats", Static).update("the attack stopped with an error")
        self.say(message, error=True)

    def cancelled(self) -> None:
        self.query_one("#stats", Static).update(f"[b]cancelled[/b]: {self.chunks_done} finished chunk(s) kept")
        self.say(f"kept in {self.run_dir} · R resumes it (or `blindspot attack --resume {self.run_dir}`)")

    def action_export(self) -> None:
        """The run's per-image results as CSV (finished images only while it runs or after a cancel)."""
        folder = self.run_dir
        if folder is None or not (folder / "run.json").is_file():
            self.say("start or reopen an attack first: its run folder is what gets exported", error=True)
            return

        def text() -> str:
            from engines.attack.export import attack_csv

            return attack_csv(folder)

        self.ask_export("the attack's per-image results as CSV", folder / "examples.csv", text)

    def on_image_grid_opened(self, event: ImageGrid.Opened) -> None:
        t = self.triplets[event.item]
        names = ["original", f"difference ({scale_label(t['scale'])}: blue −, red +)", "adversarial"]
        about = (
            f"{self.split} #{t['index']} · label {t['label']} → target {t['target']} · distortion {t['distortion']:.4f}"
        )
        captions = [f"{name} · {about}" for name in names]
        self.app.push_screen(ImageView(t["images"], captions, start=event.index, names=names))
