"""The command line that runs one of slowtune's own subcommands in a child process.

The app runs heavy stages (training) in a child process, so that the window stays responsive and an out-of-memory
kill of the child cannot take the app down. From source, the child is ``python -m slowtune SUBCOMMAND ...`` with the
same interpreter. In the frozen app (PyInstaller sets ``sys.frozen``) there is no ``-m``: the app's own executable
takes the subcommands (``slowtune train ...``), so the child is ``<executable> SUBCOMMAND ...``.
"""

from __future__ import annotations

import os
import sys

__all__ = ["slowtune_command"]


def slowtune_command(*args: str | os.PathLike[str]) -> list[str]:
    """``[python, "-m", "slowtune", *args]``, or ``[app executable, *args]`` in the frozen app."""
    rest = [os.fspath(arg) for arg in args]
    if getattr(sys, "frozen", False):
        return [sys.executable, *rest]
    return [sys.executable, "-m", "slowtune", *rest]
