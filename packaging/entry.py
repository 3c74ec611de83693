"""The frozen app's main script: the ``slowtune`` command (no arguments opens the window).

The app runs no code it is handed. A Keychain item the app created is readable by the app without a prompt, so a
program that could make the app run its code could read the user's API keys silently. This script therefore answers
only:

- ``slowtune [SUBCOMMAND ...]``: slowtune's own command line;
- ``slowtune -m MODULE ARGS``: one of the few modules slowtune itself starts as a child process
  (``slowtune.selfcmd.CHILD_MODULES``), each only with arguments of the shape slowtune gives it (the development
  tools of ``slowtune.selfcmd.SOURCE_ONLY_MODULES`` are not among them);
- the spawned worker processes of ``multiprocessing`` (reader workers), through ``freeze_support``.

``-c CODE``, any other module and a known module with foreign arguments are refused with one line on stderr and exit
code 2, before anything but this script and the standard library's ``sys`` is imported. (PyInstaller's own bootstrap
and run-time hooks run before any main script; they run no code from the command line.)
"""

from __future__ import annotations

import multiprocessing
import sys

REFUSED = 2


def _json_object(text: str) -> dict | None:
    import json  # the standard library's; only for a module that is allowed at all

    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _scalars(spec: dict) -> bool:
    return all(isinstance(v, (str, int, float, bool)) or v is None for v in spec.values())


def _quantize_args(args: list[str]) -> bool:
    """``slowtune.export.quantize SPEC``: llama.cpp's quantiser on one file (slowtune/export/quantize.py)."""
    spec = _json_object(args[0]) if len(args) == 1 else None
    return (spec is not None and set(spec) == {"source", "dest", "ftype", "threads"} and _scalars(spec)
            and isinstance(spec["ftype"], str) and spec["ftype"].startswith("LLAMA_FTYPE_")
            and isinstance(spec["threads"], int))


# The variants of slowtune.bench.worker (a test compares them).
BENCH_VARIANTS = ("memory_ckpt", "memory", "streamed_warm", "streamed_cold", "loader_cold", "export", "ingest_big")


def _bench_args(args: list[str]) -> bool:
    """``slowtune.bench.worker SPEC``: one measured worker of ``slowtune bench`` (slowtune/bench/worker.py)."""
    spec = _json_object(args[0]) if len(args) == 1 else None
    return spec is not None and spec.get("variant") in BENCH_VARIANTS and _scalars(spec)


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _gui_bench_args(args: list[str]) -> bool:
    """``slowtune.bench.gui bare | latency OUT WORK IDLE_S STEPS`` (slowtune/bench/gui.py)."""
    if args == ["bare"]:
        return True
    return len(args) == 5 and args[0] == "latency" and _number(args[3]) and args[4].isdigit()


# module -> the check of its arguments. Keep in step with slowtune.selfcmd.CHILD_MODULES (a test compares them).
ALLOWED = {
    "slowtune.export.quantize": _quantize_args,
    "slowtune.bench.worker": _bench_args,
    "slowtune.bench.gui": _gui_bench_args,
}


def refusal(args: list[str]) -> str | None:
    """Why the command line ``args`` (after the program name) is refused, or None when it may run."""
    if not args:
        return None
    first = args[0]
    if first == "-c" or first.startswith("-c"):
        return "slowtune: refused: -c (this app runs no code it is handed)"
    if first == "-m" or first.startswith("-m"):
        module = args[1] if first == "-m" and len(args) > 1 else first[2:]
        rest = args[2:] if first == "-m" else args[1:]
        if module not in ALLOWED:
            return f"slowtune: refused: -m {module or '(no module)'} (not one of slowtune's own child processes)"
        if not ALLOWED[module](rest):
            return f"slowtune: refused: -m {module} with arguments slowtune never gives it"
        return None
    # Anything else is slowtune's own command line, whose parser refuses what it does not know.
    return None


def main() -> int:
    multiprocessing.freeze_support()  # a spawned worker (and the resource tracker) runs its task here and exits
    args = sys.argv[1:]
    why = refusal(args)
    if why is not None:
        print(why, file=sys.stderr)
        return REFUSED
    if args and args[0] == "-m":
        import runpy

        sys.argv = [args[1], *args[2:]]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        return 0
    from slowtune.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
