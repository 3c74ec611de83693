"""The one place that knows how to start a slowtune child process, from source or frozen.

The app runs heavy stages (training, quantisation) in child processes, so that the window stays responsive and an
out-of-memory kill of the child cannot take the app down.

- ``slowtune_command("train", ...)``: one of slowtune's own subcommands. From source the child is
  ``python -m slowtune SUBCOMMAND ...`` with the same interpreter; in the frozen app (PyInstaller sets
  ``sys.frozen``) the app's own executable takes the subcommands, so the child is ``<executable> SUBCOMMAND ...``.
- ``module_command("slowtune.export.quantize", spec)``: one of the few modules slowtune starts as a child,
  ``<python or executable> -m MODULE ...``. The frozen app's entry script (packaging/entry.py) runs only the modules
  in ``CHILD_MODULES``, each only with the arguments slowtune gives it, and never ``-c``: a program that could
  make the app run its code could read the user's keys from the Keychain without a prompt. The modules in
  ``SOURCE_ONLY_MODULES`` (development tools: the benchmarks' test server) are started only from a source checkout.

Reader workers are started by ``multiprocessing`` (spawn), which the frozen entry answers through
``freeze_support``.
"""

from __future__ import annotations

import os
import sys

__all__ = ["CHILD_MODULES", "SOURCE_ONLY_MODULES", "module_command", "program_command", "slowtune_command"]

# Every module slowtune starts with ``-m``; the frozen entry script allows exactly these (a test compares them).
CHILD_MODULES = (
    "slowtune.export.quantize",     # llama.cpp's quantiser, out of process
    "slowtune.bench.worker",        # one measured worker of `slowtune bench train|export|ingest`
    "slowtune.bench.gui",           # the window-start and event-loop workers of `slowtune bench gui`
)
# Started with ``-m`` from a source checkout only; the frozen app neither starts nor runs them.
SOURCE_ONLY_MODULES = (
    "slowtune.testing.fake_openai",  # the local test teacher of `slowtune bench teacher`
)


def slowtune_command(*args: str | os.PathLike[str]) -> list[str]:
    """``[python, "-m", "slowtune", *args]``, or ``[app executable, *args]`` in the frozen app."""
    rest = [os.fspath(arg) for arg in args]
    if getattr(sys, "frozen", False):
        return [sys.executable, *rest]
    return [sys.executable, "-m", "slowtune", *rest]


def module_command(module: str, *args: str | os.PathLike[str]) -> list[str]:
    """``[python or app executable, "-m", module, *args]`` for one of ``CHILD_MODULES`` (or, from a source checkout,
    ``SOURCE_ONLY_MODULES``)."""
    if module in SOURCE_ONLY_MODULES and getattr(sys, "frozen", False):
        raise ValueError(f"{module} is started only from a source checkout; the frozen app does not run it")
    if module not in CHILD_MODULES + SOURCE_ONLY_MODULES:
        raise ValueError(f"{module} is not one of slowtune's child-process modules ({', '.join(CHILD_MODULES)}); "
                         "the frozen app would refuse to run it")
    return [sys.executable, "-m", module, *(os.fspath(arg) for arg in args)]


def program_command(*args: str) -> list[str]:
    """This program with exactly ``args``: the self-test uses it to see the frozen app refuse what it must."""
    return [sys.executable, *args]
