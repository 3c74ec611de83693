"""The screenshot tour's runner: ``python -m slowtune.bench.screenshots OUT_DIR``.

It starts the test teacher (``slowtune.testing.fake_openai``, a development tool that only the benchmarks and the
tests use) and walks the app through the steps in ``slowtune.gui.screenshot``, which saves each page as a PNG. Run it
from a source checkout; see that module for what each step shows.
"""

from __future__ import annotations

import os
import secrets as pysecrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

from slowtune.gui.screenshot import (
    SIZE,
    ScreenshotError,
    Tour,
    chat,
    dataset,
    dialogs,
    export,
    library,
    providers,
    train,
    use_throwaway_keyring,
)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m slowtune.bench.screenshots OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[0]).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="slowtune-screenshots-"))
    os.environ["SLOWTUNE_HOME"] = str(home)
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    use_throwaway_keyring(home)

    # Qt is imported only now, after the environment is set (and never by the parser processes, which import
    # this module again under the "spawn" start method).
    from slowtune.gui.app import MainWindow, make_app, window_state
    from slowtune.testing.fake_openai import FakeTeacher

    app = make_app(["slowtune"])
    state = window_state()
    state.setValue("welcome/shown", True)  # the welcome gets its own picture at the end
    state.sync()
    window = MainWindow()
    window.resize(*SIZE)
    window.show()
    tour = Tour(app, window, out)
    tour.wait(lambda: window.isVisible(), "the window")
    key = "sk-local-" + pysecrets.token_hex(16)
    started = time.monotonic()
    try:
        library(tour, home)
        with FakeTeacher(api_key=key) as teacher:
            providers(tour, teacher, key)
            dataset(tour)
        run_dir = train(tour, home)
        export(tour, run_dir)
        chat(tour)
        tour.page("Library")
        dialogs(tour)
    except ScreenshotError as exc:
        print(f"screenshot: {exc}", file=sys.stderr)
        return 1
    finally:
        window.runner.cancel_all()
        window.runner.wait_all(30)
        window.chat.unload()
        window.close()
        if window.project is not None:
            window.project.close()
        shutil.rmtree(home, ignore_errors=True)  # the demo home (and its keyring) was only for the pictures
    print(f"{len(tour.saved)} pictures in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
