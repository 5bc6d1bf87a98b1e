"""The Attack screen's certified brackets: [lower, upper] under each finished example, and `c` to certify the
shown attack run (the `blindspot certify --attack-run RUN --out RUN/certify` operation, run as a job here).

Which certify run an attack run's brackets come from: the one inside it, `RUN/certify/` (what `c` writes; the
CLI writes the same with `--out RUN/certify`), else, for the `attack/` folder of a `blindspot certify` run,
that certify run (`RUN/../certify.json`). Distortions are rms over pixels, as the attack's.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from engines.certify.events import CertifiedChunk
from engines.certify.operation import CertifyRequest
from engines.certify.results import CERTIFY_FILE
from engines.core.errors import BlindspotError
from engines.core.events import Event, Step

CERTIFY_DIR = "certify"  # the certify run the workbench writes inside an attack run


def bracket_folder(attack: Path) -> Path | None:
    """The certify run holding the brackets of the attack run in `attack`, if there is one."""
    inside = attack / CERTIFY_DIR
    if (inside / CERTIFY_FILE).is_file():
        return inside
    if attack.name == "attack" and (attack.parent / CERTIFY_FILE).is_file():
        return attack.parent
    return None


def read_brackets(attack: Path) -> dict[int, dict[str, Any]]:
    """certify.json's rows of the attack run's certify run by image index ({} when none or unreadable)."""
    from engines.certify.results import read_certify

    folder = bracket_folder(attack)
    if folder is None:
        return {}
    try:
        rows = read_certify(folder)["images"]
    except (BlindspotError, KeyError, TypeError):
        return {}
    return {int(r["index"]): r for r in rows if isinstance(r, dict) and "index" in r}


def bracket_label(brackets: dict[int, dict[str, Any]], index: int) -> str:
    """' [lower, upper]' of image `index` for its grid label ('' when it has no certified lower end)."""
    row = brackets.get(index)
    if row is None or row.get("lower") is None:
        return ""
    upper = row.get("upper")
    return f" [{row['lower']:.3f}, {'–' if upper is None else f'{upper:.3f}'}]"


def certify_request(attack: Path) -> CertifyRequest:
    """The request `blindspot certify --attack-run ATTACK` builds: the attack run's model, method auto (the
    targets are the attack run's own: certify reads its target mode from the run)."""
    from engines.core.runs import read_run_record

    asked = read_run_record(attack)["request"]
    return CertifyRequest(
        model=asked["model"],
        split=str(asked.get("split", "test")),
        n=int(asked.get("n", 1)),
        offset=int(asked.get("offset", 0)),
        attack_run=str(attack),
        data_dir=asked.get("data_dir"),
        image_size=asked.get("image_size"),
        classes_file=asked.get("classes_file"),
    )


class BracketMixin:
    """For the Attack screen (a WorkbenchScreen with run_dir, result and add_triplets): `c` certifies the shown
    finished run as a job; the brackets stream into the examples' labels as chunks are certified."""

    brackets: dict[int, dict[str, Any]]

    def load_brackets(self) -> None:
        """The shown run's brackets, if it was certified (called when a run finishes or is reopened)."""
        folder = getattr(self, "run_dir", None)
        self.brackets = {} if folder is None else read_brackets(folder)
        self.add_triplets([])  # type: ignore[attr-defined]

    def action_certify(self) -> None:
        """c: certify the shown attack run (its images, the attack's distances as the upper ends)."""
        from engines.certify.operation import run_certify

        screen: Any = self
        folder = screen.run_dir
        if folder is None or screen.result is None or screen.busy("attack"):
            screen.say("certify needs a finished attack run here: start one (s) or open one from Runs (6)", error=True)
            return
        if screen.busy("certify"):
            screen.say("certify is running: x cancels it", error=True)
            return
        try:
            request = certify_request(folder)
        except BlindspotError as exc:
            screen.say(str(exc), error=True)
            return
        out = folder / CERTIFY_DIR
        self.brackets = {}

        def work(job: Any) -> Any:  # a new certification replaces the one inside the run
            return run_certify(request, replace(screen.job_context(job, out=out), overwrite=True))

        screen.say(f"certifying {folder.name} into {out} · x cancels (certified chunks are kept)")
        screen.start(
            "certify",
            work,
            on_event=lambda event: self.show_certified(event, folder),
            on_done=lambda result: self.certified(result, folder),
            on_error=lambda message: screen.say(message, error=True),
            on_cancel=lambda: screen.say(f"certify cancelled; the certified chunks are in {out}"),
        )

    def _shows(self, folder: Path) -> bool:
        """Whether the screen still shows the run being certified (another run may have been opened since)."""
        return getattr(self, "run_dir", None) == folder

    def show_certified(self, event: Event, folder: Path) -> None:
        if not self._shows(folder):
            return
        if isinstance(event, CertifiedChunk):
            self.brackets.update({int(r["index"]): r for r in event.rows})
            self.add_triplets([])  # type: ignore[attr-defined]
        if isinstance(event, Step) and event.total:
            self.say(f"certifying: {int(event.done)}/{int(event.total)} images · {event.message}")  # type: ignore[attr-defined]

    def certified(self, result: Any, folder: Path) -> None:
        if not self._shows(folder):
            self.say(f"certified {folder.name}: its brackets show when it is opened again")  # type: ignore[attr-defined]
            return
        self.load_brackets()
        ratio = "–" if result.median_ratio is None else f"{result.median_ratio:.2f}"
        if result.exact:
            ratio = f"attack/exact {result.attack_over_exact_mean:.4f}" if result.attack_over_exact_mean else "exact"
        self.say(  # type: ignore[attr-defined]
            f"certified ({result.method}): [lower, upper] under each example · median upper/lower {ratio} · "
            f"{result.violations} violations · {result.run}"
        )
