"""The frozen app's main script: the ``slowtune`` command (no arguments opens the window).

slowtune starts child processes with ``sys.executable``: reader workers through multiprocessing's "spawn", and a
few stages as ``sys.executable -m MODULE ...`` (quantisation, benchmarks). In the frozen app ``sys.executable``
is this program, so it answers those the way a Python interpreter would.
"""

from __future__ import annotations

import multiprocessing
import runpy
import sys


def main() -> int:
    multiprocessing.freeze_support()  # a spawned worker runs its task here and exits
    args = sys.argv[1:]
    if len(args) >= 2 and args[0] == "-m":
        sys.argv = [args[1], *args[2:]]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        return 0
    if len(args) >= 2 and args[0] == "-c":
        sys.argv = ["-c", *args[2:]]
        exec(compile(args[1], "<string>", "exec"), {"__name__": "__main__"})
        return 0
    from slowtune.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
