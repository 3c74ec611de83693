"""What every page of the window is: the skeleton the Library, Providers, Dataset, Train, Export and Chat pages share.

A :class:`Page` is a widget named ``page-<name>`` with the window's job runner, a way to read the settings, the
open project (None until one is open), and a message banner for what the page has to say. The window hands it the
project through :meth:`Page.set_project`: the page forgets what belonged to the one before
(:meth:`Page.project_set`, which clears the banner) and draws itself again (:meth:`Page.refresh`). Showing a page
draws it again too, unless :meth:`Page.refresh_on_show` says no (while a job of it runs, say). Long work goes
through :meth:`Page.start_job`, and :meth:`Page.busy` says whether one of the page's jobs (:meth:`Page.page_jobs`)
has not ended yet. :meth:`Page.command_line` is the page's work as a command line (Copy as Command).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import QVBoxLayout, QWidget

from slowtune.gui.widgets import MessageBanner
from slowtune.gui.workers import Job, JobRunner
from slowtune.settings import Settings
from slowtune.store import Project

PAGE_MARGINS = (24, 8, 24, 16)  # left, top, right, bottom: every page's content is inset the same


class Page(QWidget):
    """A page of the main window: its project, its banner, its jobs, and drawing itself again when shown."""

    def __init__(self, name: str, runner: JobRunner, settings: Callable[[], Settings],
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName(f"page-{name}")
        self.runner = runner
        self._settings = settings
        self.project: Project | None = None
        self.banner = MessageBanner()

    def page_layout(self) -> QVBoxLayout:
        """The page's column, inset as every page's; the page adds its banner where it wants it."""
        layout = QVBoxLayout(self)
        layout.setContentsMargins(*PAGE_MARGINS)
        return layout

    # --- the project -----------------------------------------------------------------------------------------
    def set_project(self, project: Project | None) -> None:
        """Show ``project`` (None: no project is open)."""
        changed = project is None or self.project is None or project.root != self.project.root
        self.project = project
        self.project_set(changed)
        self.refresh()

    def project_set(self, changed: bool) -> None:
        """The project was set (``self.project`` is the new one; ``changed`` is False when the same project
        folder was set again): forget what belonged to the one before. The banner is cleared."""
        self.banner.clear()

    def refresh(self) -> None:
        """Draw the page again from the project and the settings."""

    def refresh_on_show(self) -> bool:
        """Whether showing the page draws it again (what it shows may have changed while it was hidden)."""
        return True

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        if self.refresh_on_show():
            self.refresh()

    def command_line(self) -> str | None:
        """What the page does, as a ``slowtune`` command line, for the window's Edit › Copy as Command (pages
        never show commands themselves); None where the page has no such command (the menu item is disabled)."""
        return None

    # --- jobs --------------------------------------------------------------------------------------------------
    def page_jobs(self) -> Iterable[Job | None]:
        """The page's own jobs (None where it has not started one)."""
        return ()

    def busy(self) -> bool:
        """Whether one of the page's jobs is waiting or running."""
        return any(job is not None and not job.is_over for job in self.page_jobs())

    def start_job(self, job: Job, *, queue: bool = False, progress: Callable[..., Any] | None = None,
                  finished: Callable[..., Any] | None = None, failed: Callable[..., Any] | None = None,
                  cancelled: Callable[..., Any] | None = None, done: Callable[..., Any] | None = None) -> bool:
        """Connect ``job``'s signals to the handlers given and hand it to the window's runner, which starts it now
        or, with ``queue``, after the job running for its key. False when the runner refused it (it says why)."""
        for signal, handler in ((job.progress, progress), (job.finished, finished), (job.failed, failed),
                                (job.cancelled, cancelled), (job.done, done)):
            if handler is not None:
                signal.connect(handler)
        return self.runner.submit(job, queue=queue)
