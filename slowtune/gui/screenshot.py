"""Screenshots of every page with a demo project: ``python -m slowtune.gui.screenshot OUT_DIR``.

Builds a throw-away SLOWTUNE_HOME with a few real documents (and two that cannot be read), adds them through the
Library page's own worker, and saves each page, the empty Library and the welcome as PNG at 1280×800. Without a
display it uses Qt's offscreen platform; under Xvfb (``xvfb-run python -m slowtune.gui.screenshot OUT``) it draws
the way a Linux desktop does. Used to look at the app as a new user would.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

SIZE = (1280, 800)

HANDBOOK = """# Volunteer handbook

Welcome to the Harbour Street community garden. This handbook explains how the garden runs, who to ask, and what
we expect from everyone who holds a plot.

## Opening hours

The gates open at 7:00 and close at dusk, every day except the first Monday of the month, when the water system is
serviced. Keys are held by the two duty volunteers listed on the board by the shed.

## Plots

Each plot is 3 by 4 metres. A plot left unworked for six weeks in the growing season is offered to the next person
on the waiting list, after one reminder by email.

### Watering

Water in the early morning or after 18:00. The hoses are shared: coil them after use and close the tap at the wall.

### Compost

Green waste goes in the left bay, woody stems in the right. Never add cooked food, meat or diseased plants.

## Tools

The shed holds spades, forks, rakes and two wheelbarrows. Sign tools out in the book and clean them before you put
them back. Report anything broken to the tools volunteer, Amira.
"""

MINUTES = """Committee minutes, 4 March

Present: Jonas, Amira, Pete, Lin.

1. The new water meter was fitted on 28 February. Usage is down 12% on last March.
2. Seed swap on Saturday 22 March, 10:00 to 13:00, in the church hall.
3. Pete will price a second compost bin. Budget up to 180 euros agreed.
4. Next meeting: 1 April at 19:30.
"""

SEEDS = """<html><head><title>Seed saving guide</title></head><body>
<h1>Seed saving guide</h1>
<p>Save seed only from open-pollinated varieties; hybrids (F1) do not come true.</p>
<h2>Tomatoes</h2>
<p>Scoop the seeds into a jar with a little water and leave them for three days, until a mould forms. Rinse, then dry
on a plate for a week.</p>
<h2>Beans</h2>
<p>Leave the pods on the plant until they rattle. Shell them and store the beans in a paper bag somewhere cool.</p>
</body></html>
"""


def write_demo_documents(folder: Path) -> list[Path]:
    """A small folder like a user's: three readable documents, an empty note and a broken PDF."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "handbook.md").write_text(HANDBOOK, encoding="utf-8")
    (folder / "minutes-march.txt").write_text(MINUTES, encoding="utf-8")
    (folder / "seed-saving.html").write_text(SEEDS, encoding="utf-8")
    (folder / "todo.txt").write_text("", encoding="utf-8")
    (folder / "scan-of-lease.pdf").write_bytes(b"%PDF-1.4\n% truncated while copying from the scanner\n")
    return sorted(folder.iterdir())


def _wait(app: object, until: object, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not until() and time.monotonic() < deadline:  # type: ignore[operator]
        app.processEvents()  # type: ignore[attr-defined]
        time.sleep(0.01)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m slowtune.gui.screenshot OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[0]).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="slowtune-screenshots-"))
    os.environ["SLOWTUNE_HOME"] = str(home)
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

    # Qt is imported only now, after the environment is set (and never by the parser processes, which import
    # this module again under the "spawn" start method).
    from slowtune.gui.app import PAGES, MainWindow, make_app, window_state

    app = make_app(["slowtune"])
    state = window_state()
    state.setValue("welcome/shown", True)  # the welcome gets its own picture below
    state.sync()
    saved: list[Path] = []

    def grab(widget: object, name: str) -> None:
        app.processEvents()
        path = out / f"{name}.png"
        widget.grab().save(str(path))  # type: ignore[attr-defined]
        saved.append(path)

    window = MainWindow()
    window.resize(*SIZE)
    window.show()
    _wait(app, lambda: window.isVisible())
    grab(window, "library-no-project")

    window.new_project("Garden club")
    # Smaller chunks than the default, so that the short demo documents show several chunks each.
    window.apply_preferences({"chunk_tokens": 128, "chunk_overlap": 16})
    grab(window, "library-empty")

    docs = write_demo_documents(home / "Documents" / "Garden club")
    job = window.library.add_paths([docs[0].parent])
    _wait(app, lambda: job is None or job.is_over)
    window.library.select_document(str(docs[0]))  # handbook.md: several chunks with headings
    for row, name in enumerate(PAGES):
        window.show_page(row)
        grab(window, f"{row + 1}-{name.lower()}")

    window.show_page(0)
    # What a drag from Finder looks like while it hovers over the window.
    window.overlay.show_message(f"Drop to add 3 items to “{window.project.name}”")
    grab(window, "drop-overlay")
    window.overlay.hide()
    from slowtune.gui.preferences import PreferencesDialog
    from slowtune.gui.projects import NewProjectDialog

    for name, dialog in (("preferences", PreferencesDialog(window.settings, window)),
                         ("new-project", NewProjectDialog(window, name="Garden club"))):
        dialog.show()
        grab(dialog, name)
        dialog.close()
    window.show_welcome()
    if window.welcome is not None:
        _wait(app, lambda: window.welcome.isVisible())
        grab(window.welcome, "welcome")
        window.welcome.reject()
    window.close()
    if window.project is not None:
        window.project.close()
    shutil.rmtree(home, ignore_errors=True)  # the demo home was only for the pictures
    for path in saved:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
