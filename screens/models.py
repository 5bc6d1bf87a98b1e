"""Screen 1, Models: the shipped zoo and loaded checkpoints; pick the active model; train a zoo model.

Rows come from `engines.core.model_rows`, as in `blindspot models`. `t` builds the `TrainRequest` that
`blindspot train --model ID` would build and hands it to `run_training`, so the checkpoint lands where
the CLI's would (`<runs dir>/models`), never in the shipped zoo; the trained checkpoint is then
offered as a loaded model next to the zoo one. `R` sends the same request with `resume` (`blindspot train --resume`):
a training cancelled with `x` goes on from its last finished epoch, kept by the engine in the same folder.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import DataTable, Footer, Input, ProgressBar, Static

from engines.core.events import EpochDone, Event, ModelTrained
from screens.forms import in_words
from screens.jobs import Job, WorkbenchScreen
from screens.widgets import NavBar, cursor_item, fmt_num

if TYPE_CHECKING:
    from engines.train.operation import TrainRequest


TRAIN_GROUP = Binding.Group("Train", compact=True)  # "tR Train" in the footer: 80 columns are few


def _pct(v: Any) -> str:
    return "—" if v is None else f"{float(v):.2f}"


class ModelsScreen(WorkbenchScreen):
    """Which model the workbench studies, where it came from and how good it is."""

    DEFAULT_CSS = """
    ModelsScreen #models { height: 1fr; min-height: 5; }
    ModelsScreen #details { height: auto; max-height: 7; padding: 0 1; border-top: solid $panel-lighten-2; }
    ModelsScreen .load-row { height: 1; padding: 0 1; }
    ModelsScreen .load-row Static { width: 9; }
    ModelsScreen #path { width: 2fr; }
    ModelsScreen #weights { width: 1fr; }
    ModelsScreen #data { width: 1fr; }
    ModelsScreen #train-bar { height: 1; padding: 0 1; }
    ModelsScreen #train-bar.-hidden { display: none; }
    """
    BINDINGS = [
        Binding("enter", "use", "Use model"),
        Binding("l", "focus_path", "Load"),
        Binding("i", "focus_data", "Data"),
        Binding("t", "train", "Train", group=TRAIN_GROUP),
        Binding("T", "train(True)", "Train over", show=False),
        Binding("R", "train(False, True)", "Resume training", group=TRAIN_GROUP),
        Binding("d", "device", "Device"),
        Binding("r", "refresh", "Refresh"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, Any]] = []

    def compose(self) -> ComposeResult:
        yield NavBar("models")
        table: DataTable = DataTable(id="models", cursor_type="row", zebra_stripes=True, fixed_columns=1)
        table.border_title = "models"
        yield table
        yield Static("", id="details")
        with Horizontal(classes="load-row"):
            yield Static("model")
            yield Input(placeholder="zoo id · checkpoint · torchvision name · module:function", id="path", compact=True)
            yield Input(placeholder="weights (torchvision/factory)", id="weights", compact=True)
        with Horizontal(classes="load-row"):
            yield Static("data")
            yield Input(
                self.state.settings.data_dir or "",
                placeholder="shipped MNIST · IDX folder · image folder · CIFAR binaries",
                id="data",
                compact=True,
            )
        yield ProgressBar(id="train-bar", show_eta=False, classes="-hidden")
        yield Static(
            "Enter uses the highlighted model · t trains it · l loads any model · i data",
            id="status",
            classes="status",
        )
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one("#models", DataTable)
        for label, key in (
            ("", "active"),
            ("id", "id"),
            ("architecture", "arch"),
            ("params", "params"),
            ("train %", "train"),
            ("test %", "test"),
            ("source", "source"),
        ):
            table.add_column(label, key=key)
        self.action_refresh()

    def focus_main(self) -> None:
        self.query_one("#models", DataTable).focus()

    # ---------------------------------------------------------------- listing
    def action_refresh(self) -> None:
        folder = self.state.settings.models_folder

        def work(job: Job) -> list[dict[str, Any]]:
            from engines.core.model_rows import model_rows

            return model_rows(folder)

        self.start("list models", work, on_done=self.show_rows)

    def show_rows(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows + [r for r in self.state.extra_models if r["path"] not in {x["path"] for x in rows}]
        if not any(self.is_active_row(r) for r in self.rows):  # restored from the last session, not loaded yet
            self.rows.append(self.active_placeholder())
        table = self.query_one("#models", DataTable)
        current = table.cursor_row
        table.clear()
        for row in self.rows:
            active = "●" if self.is_active_row(row) else ""
            source = row.get("source", "zoo")
            if "error" in row:
                table.add_row(active, row["id"], row["error"], "", "", "", source, key=row["path"])
                continue
            params = row.get("parameters")
            table.add_row(
                active,
                row["id"],
                row.get("architecture", ""),
                f"{params:,}" if isinstance(params, int) else "—",
                _pct(row.get("train_error")),
                _pct(row.get("test_error")),
                source,
                key=row["path"],
            )
        if self.rows:
            active_idx = next((i for i, r in enumerate(self.rows) if self.is_active_row(r)), 0)
            table.move_cursor(row=current if 0 < current < len(self.rows) else active_idx)
        self.show_details()
        table.focus()

    def active_placeholder(self) -> dict[str, Any]:
        """A row for an active model that no listing holds (a torchvision name, a factory, a file elsewhere)."""
        ref = self.state.active_ref
        weights = f" · weights {Path(ref.weights).name}" if ref.weights else ""
        return {
            "id": Path(str(ref)).name,
            "architecture": f"{ref.kind}{weights}",
            "path": str(ref),
            "ref": ref.to_json(),
            "loaded": True,
            "source": ref.kind,
        }

    def is_active_row(self, row: dict[str, Any]) -> bool:
        if "ref" in row:
            return row["ref"] == self.state.active_ref.to_json()
        return self.state.active_model in (row["id"], row["path"])

    def highlighted(self) -> dict[str, Any] | None:
        return cursor_item(self.query_one("#models", DataTable), self.rows)

    def on_data_table_row_highlighted(self, _: DataTable.RowHighlighted) -> None:
        self.show_details()

    def show_details(self) -> None:
        row = self.highlighted()
        details = self.query_one("#details", Static)
        if row is None:
            details.update("no checkpoints found: train one (t) or load a file (l)")
            return
        if "error" in row:
            details.update(f"[b]{row['id']}[/b]: [red]{row['error']}[/red]")
            return
        if row.get("source") in ("torchvision", "factory") or row.get("parameters") is None:
            ref = row.get("ref")
            weights = ref.get("weights") if isinstance(ref, dict) else None
            count = f" · {row['parameters']:,} parameters" if isinstance(row.get("parameters"), int) else ""
            details.update(
                f"[b]{escape(row['id'])}[/b] {escape(row.get('architecture', ''))}{count}"
                + (" · [green]active[/green]" if self.is_active_row(row) else "")
                + f"\nweights {escape(weights) if weights else 'random (no weights file: say one in the weights field)'}"
                + f"\nnot a zoo checkpoint: no training record · device "
                f"{self.state.settings.device}"
            )
            return
        paper = row.get("paper") or {}
        ref = (
            f" (paper {fmt_num(paper.get('train_error'))} / {fmt_num(paper.get('test_error'))})"
            if paper.get("test_error") is not None
            else ""
        )
        p12 = ""
        if row.get("p1_error") is not None:
            p12 = f" · P1 {_pct(row['p1_error'])}% P2 {_pct(row['p2_error'])}%"
        decay = row.get("weight_decay")
        lines = [
            f"[b]{row['id']}[/b] {row.get('architecture', '')} · {row.get('parameters') or 0:,} parameters"
            + (" · [green]active[/green]" if self.is_active_row(row) else ""),
            f"trained on {row.get('train_split', '?')} with {row.get('optimizer') or '?'}"
            + (f" · decay {', '.join(fmt_num(d) for d in decay)}" if decay else ""),
            f"error train {_pct(row.get('train_error'))}% · test {_pct(row.get('test_error'))}%{ref}{p12}",
            f"file {Path(row['path']).name} · device {self.state.settings.device}",
        ]
        details.update("\n".join(lines))

    # ------------------------------------------------------------------ actions
    def action_use(self) -> None:
        row = self.highlighted()
        if row is None:
            return
        ref = row.get("ref") or (row["path"] if row.get("loaded") else row["id"])
        self.state.set_active_model(ref)
        self.say(f"active model: {row['id']}")
        self.show_rows([r for r in self.rows if not r.get("loaded")])

    def on_data_table_row_selected(self, _: DataTable.RowSelected) -> None:
        self.action_use()

    def action_focus_path(self) -> None:
        self.query_one("#path", Input).focus()

    def action_device(self) -> None:
        """Cycle through the devices this machine has (cuda only where there is one)."""
        from engines.core.device import usable_devices

        settings, usable = self.state.settings, usable_devices()
        now = usable.index(settings.device) if settings.device in usable else -1
        self.state.set_device(usable[(now + 1) % len(usable)])
        self.show_details()
        missing = "" if "cuda" in usable else " · no CUDA device on this machine"
        self.say(f"device: {settings.device} (used by every screen: attacks, the gallery, training){missing}")

    def action_focus_data(self) -> None:
        self.query_one("#data", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "data":
            self.use_data(event.value)
        else:
            self.load_typed_model()

    def load_typed_model(self) -> None:
        """Load what the model field names, as `--model`/`--weights` would, and make it active."""
        from engines.core.errors import BlindspotError
        from engines.core.models import parse_model_text

        text, weights = self.query_one("#path", Input).value, self.query_one("#weights", Input).value
        if not text.strip():
            self.say("type a zoo id, a checkpoint path, a torchvision name or module:function, then Enter", error=True)
            return
        try:
            ref = parse_model_text(text, weights)
        except BlindspotError as exc:
            self.load_failed(str(exc))
            return
        self.say(f"loading {ref} …")
        device = self.state.settings.device

        def work(job: Job) -> tuple[Any, Any, dict[str, Any]]:
            from engines.core.model_rows import loaded_model_row

            lm = self.state.load_model(ref, device)
            return ref, lm, loaded_model_row(lm)

        self.start("load model", work, on_done=self.loaded, on_error=self.load_failed)

    def loaded(self, outcome: tuple[Any, Any, dict[str, Any]]) -> None:
        ref, lm, row = outcome
        self.offer(
            {**row, "path": str(lm.path or ref), "ref": ref.to_json()}, lm.kind if lm.kind != "checkpoint" else "file"
        )
        self.state.set_active_model(ref)
        self.show_rows([r for r in self.rows if not r.get("loaded")])
        at = next((i for i, r in enumerate(self.rows) if r.get("ref") == ref.to_json()), None)
        if at is not None:
            self.query_one("#models", DataTable).move_cursor(row=at)  # the details below are the loaded model's
        weights = " · random weights: give a weights file" if lm.random_init else ""
        name = lm.path.name if lm.kind == "checkpoint" and lm.path else lm.id
        self.say(f"loaded {name} (sha256 {lm.sha256[:12]}) on {self.state.settings.device}; it is now active{weights}")

    def use_data(self, text: str) -> None:
        """Check the folder as `--data` would (kind, listing, labels), then make it every screen's data."""
        path = str(Path(text.strip()).expanduser()) if text.strip() else None
        if path is None:
            self.state.set_data(None)
            self.say("data: the shipped MNIST")
            return
        self.say(f"opening {path} …")

        def work(job: Job) -> str:
            from engines.core.sources import DataRef, describe, open_data

            return describe(open_data(DataRef(path=path), "test"))

        def opened(line: str) -> None:
            self.state.set_data(path)
            self.query_one("#data", Input).value = path
            self.say(f"data: {line} · used by every screen")
            self.focus_main()

        self.start(
            "open data", work, on_done=opened, on_error=lambda m: self.say(f"cannot use this data: {m}", error=True)
        )

    def offer(self, row: dict[str, Any], source: str) -> None:
        """List a model from outside the models folder (a user's file or torchvision name, a freshly trained one)."""
        row = {**row, "loaded": True, "source": source}
        self.state.extra_models = [r for r in self.state.extra_models if r["path"] != row["path"]] + [row]

    def load_failed(self, message: str) -> None:
        self.say(f"cannot load: {message}", error=True)

    # ----------------------------------------------------------------- training
    def train_request(self, model_id: str, resume: bool = False) -> TrainRequest:
        """The request `blindspot train --model ID [--resume]` builds, with the workbench's data and budget."""
        from engines.train.operation import TrainRequest

        settings = self.state.settings
        return TrainRequest(
            models=(model_id,),
            epochs=settings.train_epochs,
            max_iter=settings.train_max_iter,
            data_dir=None if settings.data_dir is None else str(settings.data_dir),
            resume=resume,
        )

    def action_train(self, overwrite: bool = False, resume: bool = False) -> None:
        """`t` trains into the runs folder; `T` also replaces a checkpoint of the same id there (--overwrite); `R`
        resumes a cancelled training from its last finished epoch (--resume: from the start when none was saved)."""
        from engines.core.errors import BlindspotError
        from engines.core.zoo import ZOO

        row = self.highlighted()
        if row is None or row["id"] not in ZOO:
            self.say("training needs a zoo model: highlight one of the paper's models", error=True)
            return
        try:
            request = self.train_request(row["id"], resume)
        except BlindspotError as exc:
            self.say(f"cannot train: {in_words(exc)}", error=True)
            return
        bar = self.query_one("#train-bar", ProgressBar)
        bar.remove_class("-hidden")
        bar.update(total=None, progress=0)
        device = self.state.settings.device
        if resume:
            self.say(f"resuming {row['id']} from its last finished epoch on {device} … (x cancels)")
        else:
            self.say(f"training {row['id']} on {device} into the runs folder … (x cancels)")

        def work(job: Job) -> tuple[Any, list[dict[str, Any]]]:
            from engines.core.model_rows import checkpoint_row
            from engines.train.operation import run_training

            result = run_training(request, replace(self.job_context(job), overwrite=overwrite))
            return result, [checkpoint_row(m.path) for m in result.models]

        self.start(
            "train",
            work,
            on_event=self.train_event,
            on_done=lambda outcome: self.trained(outcome, resume),
            on_error=self.train_failed,
            on_cancel=self.train_cancelled,
        )

    def train_event(self, event: Event) -> None:
        if isinstance(event, EpochDone):
            self.query_one("#train-bar", ProgressBar).update(total=event.total, progress=event.done)
            validation = event.validation_error  # nan without a validation split
            self.say(
                f"{event.task}: {int(event.done)}/{int(event.total or 0)} {event.stage} loss {fmt_num(event.loss, 4)}"
                + (f" · validation error {validation:.2f}%" if math.isfinite(validation) else "")
            )
        elif isinstance(event, ModelTrained):
            self.say(event.line())

    def trained(self, outcome: tuple[Any, list[dict[str, Any]]], resume: bool = False) -> None:
        result, rows = outcome
        self.query_one("#train-bar", ProgressBar).add_class("-hidden")
        self.state.forget_models()  # a checkpoint loaded before may just have been written again
        for row in rows:
            self.offer(row, "trained")
        self.show_rows([r for r in self.rows if not r.get("loaded")])
        if rows:
            table = self.query_one("#models", DataTable)
            table.move_cursor(row=next(i for i, r in enumerate(self.rows) if r["path"] == rows[-1]["path"]))
        m = result.models[-1]
        resumed = m.training.get("resumed_from")
        how = ""
        if resumed is not None:
            how = f" (resumed after epoch {resumed['epoch']})"
        elif resume:
            how = " (no saved state: trained from the start)"
        self.say(
            f"trained {m.id}{how}: train {m.metrics['train_error']:.2f}% test {m.metrics['test_error']:.2f}% "
            f"→ {m.path} · Enter uses it"
        )

    def train_failed(self, message: str) -> None:
        self.query_one("#train-bar", ProgressBar).add_class("-hidden")
        hint = " (T trains over it)" if "already exists" in message else ""
        if "--resume" in message:  # a saved state R cannot resume from: `t` trains afresh and replaces it
            hint = " (t trains afresh)"
        self.say(f"training failed: {message}{hint}", error=True)

    def train_cancelled(self) -> None:
        self.query_one("#train-bar", ProgressBar).add_class("-hidden")
        self.say("training cancelled · R resumes from the last finished epoch, t starts afresh")
