"""Engine operations in thread workers: typed events as messages, one-key cancel, errors as text.

An operation never runs on the UI thread. A `Job` builds the operation's `RunContext`: its event
sink posts each event to the screen through the one `Throttle` (ticks at most every `interval`
seconds, milestones such as finished chunks always), and queued ticks of the same job merge
(`can_replace`), so a fast engine cannot flood the UI. Cancelling sets an event that the
operation checks between units of work; it then raises `Cancelled` and keeps what finished.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Input, Static

from engines.core.context import RunContext
from engines.core.errors import BlindspotError, Cancelled
from engines.core.events import Event, Throttle
from engines.core.memory import release_memory
from screens.forms import in_words
from screens.state import HasState, WorkbenchState
from screens.widgets import NAV, NavBar


class JobEvent(Message):
    """An operation's event for the screen that runs it; a newer tick replaces an older queued tick."""

    def __init__(self, job: Job, event: Event) -> None:
        super().__init__()
        self.job, self.event = job, event

    def can_replace(self, message: Message) -> bool:
        return (
            not self.event.milestone
            and isinstance(message, JobEvent)
            and message.job is self.job
            and not message.event.milestone
        )


class JobDone(Message):
    """A job ended: with a result, an error message, or cancelled."""

    def __init__(self, job: Job, result: Any = None, error: str | None = None, cancelled: bool = False) -> None:
        super().__init__()
        self.job, self.result, self.error, self.cancelled = job, result, error, cancelled


class Job:
    """One cancellable engine call; callbacks run on the UI thread."""

    def __init__(
        self,
        owner: Screen,
        name: str,
        *,
        on_done: Callable[[Any], None] | None = None,
        on_event: Callable[[Event], None] | None = None,
        on_error: Callable[[str], None] | None = None,
        on_cancel: Callable[[], None] | None = None,  # a cancelled job has no result
        interval: float = 0.2,
    ) -> None:
        self.owner, self.name, self.interval = owner, name, interval
        self.on_done, self.on_event_ui = on_done, on_event
        self.on_error, self.on_cancel = on_error, on_cancel
        self._cancel = threading.Event()
        self._throttle = Throttle(self._post, interval)
        self.running = True
        self.last_line = ""  # the latest progress, for the jobs panel

    # thread side -------------------------------------------------------------
    def cancelled(self) -> bool:
        """The engine's cancel check."""
        return self._cancel.is_set()

    def emit(self, event: Event) -> None:
        """The operation's event sink (thread-safe), behind the job's throttle."""
        self._throttle(event)

    def _post(self, event: Event) -> None:
        self.last_line = event.line()
        self.owner.post_message(JobEvent(self, event))

    def context(self, device: str, runs_root: Path, out: Path | None = None) -> RunContext:
        """The run context every screen hands to its operation: this job's events and cancel check."""
        return RunContext(device=device, runs_root=runs_root, out=out, on_event=self.emit, cancelled=self.cancelled)

    # UI side -----------------------------------------------------------------
    def cancel(self) -> None:
        self._cancel.set()


def run_job(screen: Screen, name: str, work: Callable[[Job], Any], **kw: Any) -> Job:
    """Start `work(job)` in a thread worker; the outcome arrives as a JobDone message on `screen`."""
    job = Job(screen, name, **kw)

    def body() -> None:
        try:
            result = work(job)
        except Cancelled:
            screen.post_message(JobDone(job, cancelled=True))
        except BlindspotError as exc:
            screen.post_message(JobDone(job, error=in_words(exc)))  # request fields named by their labels
        except Exception as exc:  # an engine bug must not kill the workbench: show it instead
            screen.post_message(JobDone(job, error=f"{type(exc).__name__}: {exc}"))
        else:
            screen.post_message(JobDone(job, result))
        release_job_memory()

    screen.run_worker(body, thread=True, name=name, group=name, exit_on_error=False)
    return job


def release_job_memory() -> None:
    """After a job: the GPU memory PyTorch cached for it goes back to the driver (outside any handler, so a failed
    job's traceback no longer holds its tensors), so that the next job, or another process, can have it."""
    release_memory("cuda")


NAV_GROUP = Binding.Group("screens", compact=True)


class WorkbenchScreen(Screen):
    """A screen that runs engine jobs: one key cancels them, Escape leaves a text field."""

    AUTO_FOCUS = None  # start on the screen's main widget, never in a text field (keys 1–5 must switch screens)

    BINDINGS = [
        *(
            Binding(key, f"app.switch_mode('{mode}')", label, group=NAV_GROUP, tooltip=f"the {label} screen")
            for mode, key, label in NAV
        ),
        Binding("x", "cancel_jobs", "Cancel"),
        Binding("q", "app.quit", "Quit", show=False),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("f1", "help", "Help", show=False),
        Binding("j", "jobs", "Jobs", show=False),
        Binding("escape", "leave_field", "Leave field"),  # in the footer only while a text field has focus
    ]

    def __init__(self) -> None:
        super().__init__()
        self.jobs: dict[str, Job] = {}

    @property
    def state(self) -> WorkbenchState:
        """The workbench's shared settings and active model (declared in `screens.state`)."""
        return cast(HasState, self.app).state

    def say(self, text: str, error: bool = False) -> None:
        """Show `text` on the screen's status line (`#status`), in the error colour if `error`."""
        status = self.query_one("#status", Static)
        status.set_class(error, "error")
        status.update(text)

    def job_context(self, job: Job, out: Path | None = None, device: str | None = None) -> RunContext:
        """The run context for an operation started from this screen: the workbench's device and runs folder."""
        return job.context(device or self.state.settings.device, Path(self.state.settings.runs_dir), out)

    def start(self, name: str, work: Callable[[Job], Any], replace: bool = False, **kw: Any) -> Job | None:
        """Run a job unless one of the same name is still running (then say so, or cancel it if `replace`)."""
        if name in self.jobs and self.jobs[name].running:
            if not replace:
                self.notify(f"{name} is already running (x cancels it)", severity="warning")
                return None
            self.jobs[name].cancel()
        job = run_job(self, name, work, **kw)
        self.jobs[name] = job
        self.state.track_job(self.label(), job)
        self.refresh_bindings()
        return job

    def on_mount(self) -> None:
        self.focus_main()

    def on_screen_resume(self) -> None:
        for nav in self.query(NavBar):
            nav.refresh()

    def busy(self, name: str | None = None) -> bool:
        return any(j.running for n, j in self.jobs.items() if name is None or n == name)

    def cancel_all(self) -> int:
        running = [j for j in self.jobs.values() if j.running]
        for job in running:
            job.cancel()
        return len(running)

    def action_cancel_jobs(self) -> None:
        if self.cancel_all():  # on the status line: a toast would cover the line that then says where the run is
            self.say("cancelling … finished work is kept")

    def nav_entry(self) -> tuple[str, str]:
        """(mode, label) of this screen as the navigation bar names it."""
        name = type(self).__name__
        return next(((m, lab) for m, _, lab in NAV if f"{lab}Screen" == name), ("", name))

    def label(self) -> str:
        return self.nav_entry()[1]

    def action_help(self) -> None:
        """What this screen shows, in the paper's terms, and its keys."""
        from screens.help import HelpScreen, screen_keys

        mode, label = self.nav_entry()
        self.app.push_screen(HelpScreen(mode, label, screen_keys(self)))

    def action_jobs(self) -> None:
        """Every running job of the workbench, whichever screen started it, with a cancel key."""
        from screens.jobs_panel import JobsPanel

        self.app.push_screen(JobsPanel(self.state))

    def ask_export(self, what: str, suggested: Path, make_text: Callable[[], str]) -> None:
        """Ask where the export goes (a suggestion in the run folder), then write `make_text()` there in a worker."""
        from screens.export_dialog import ExportDialog

        def write(path: Path | None) -> None:
            if path is None:
                return

            def work(job: Job) -> Path:
                from engines.core.exports import write_export

                return write_export(make_text(), path)

            self.start(
                "export",
                work,
                on_done=lambda p: self.say(f"wrote {p}"),
                on_error=lambda m: self.say(f"cannot export: {m}", error=True),
            )

        self.app.push_screen(ExportDialog(what, suggested), write)

    def action_leave_field(self) -> None:
        self.focus_main()

    def focus_main(self) -> None:
        """Give the keyboard back to the screen's main widget (overridden per screen)."""
        self.set_focus(None)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "cancel_jobs":
            return self.busy()  # in the footer only while there is something to cancel (80 columns are few)
        if action == "leave_field":
            return isinstance(self.focused, Input)  # the way out of a field, shown while in one
        return True

    def owns(self, job: Job) -> bool:
        """Whether `job` is still this screen's job of its name (a replaced job's events and outcome are stale)."""
        return self.jobs.get(job.name) is job

    def on_job_event(self, message: JobEvent) -> None:
        message.stop()
        job = message.job
        if job.running and job.on_event_ui and self.owns(job):
            job.on_event_ui(message.event)

    def on_job_done(self, message: JobDone) -> None:
        message.stop()
        job = message.job
        job.running = False
        self.refresh_bindings()
        self.state.on_change()  # the jobs indicator
        if not self.owns(job):
            return  # replaced by a newer job of the same name: its outcome is stale
        if message.cancelled:
            if job.on_cancel:
                job.on_cancel()
            else:
                self.notify(f"{job.name}: cancelled")
        elif message.error is not None:
            if job.on_error:
                job.on_error(message.error)
            else:
                self.notify(message.error, title=job.name, severity="error", timeout=8)
        elif job.on_done:
            job.on_done(message.result)
