"""``slowtune eval``: score a tuned GGUF against its base on a project's held-out probes, and on the three
closed-book axes: knowledge, retention (general questions the base answers right) and leakage (questions about
things the documents do not mention).

The flags become an :class:`~slowtune.eval.pipeline.EvalOptions` for :func:`slowtune.eval.pipeline.run`. Every
input is checked before a model is loaded (a model load takes seconds, a judge call costs money), so a
typo in a path or a provider id fails at once with a message naming it, and no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from slowtune.eval.axes import DEFAULT_MAX_GENERAL

EXIT_OK, EXIT_ERROR = 0, 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("project", help="project name or folder (its held-out probes are used)")
    p.add_argument("--model", required=True, metavar="TUNED.gguf", help="the tuned model, a GGUF file")
    p.add_argument("--base", metavar="BASE.gguf",
                   help="the base model to compare with (with --lora and no --base: --model without the adapter)")
    p.add_argument("--lora", metavar="ADAPTER.gguf", help="a LoRA adapter in GGUF, applied to --model")
    p.add_argument("--judge", metavar="PROVIDER[/MODEL]",
                   help="also have an LLM grade each answer 1-5 against the reference (a provider from "
                   "`slowtune provider list`; its default model unless /MODEL is given)")
    p.add_argument("--open-book", action="store_true",
                   help="also answer with the source excerpt in the prompt, to see whether retrieval would "
                   "serve better than tuning")
    p.add_argument("--max-probes", type=int, metavar="N", help="use at most N probes, spread over the documents")
    p.add_argument("--max-tokens", type=int, default=200, metavar="N", help="longest answer in tokens (200)")
    p.add_argument("--ctx", type=int, default=4096, metavar="N", help="context window in tokens (4096)")
    p.add_argument("--general", action="append", default=[], metavar="FILE",
                   help="more general questions for retention, in the format of the shipped general.jsonl "
                   "(repeatable; general-questions.jsonl in the config folder is always read)")
    p.add_argument("--max-general", type=int, default=DEFAULT_MAX_GENERAL, metavar="N",
                   help=f"ask at most N general questions, spread over their categories ({DEFAULT_MAX_GENERAL}; "
                   "0 for all)")
    p.add_argument("--no-general", action="store_true", help="do not measure retention")
    p.add_argument("--no-leakage", action="store_true", help="do not measure leakage")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _fail(message: str) -> int:
    print(f"slowtune eval: {message}", file=sys.stderr)
    return EXIT_ERROR


def _check_gguf(path: str, what: str) -> str | None:
    """Why ``path`` cannot be the GGUF file asked for, or None. Checked before anything is loaded."""
    file = Path(path).expanduser()
    if not file.is_file():
        return f"{what} {path}: no such file"
    try:
        with file.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        return f"{what} {path}: cannot be read ({exc.strerror})"
    if magic != b"GGUF":
        return f"{what} {path}: not a GGUF file (export the trained model with `slowtune export`)"
    return None


def run(args: argparse.Namespace) -> int:
    from slowtune.eval.judge import split_judge
    from slowtune.eval.pipeline import EvalOptions, ModelFile
    from slowtune.eval.pipeline import run as run_eval
    from slowtune.eval.probes import EvalError
    from slowtune.progress import Progress, RichProgressBar
    from slowtune.store import DB_NAME, StoreError, resolve_project_path

    for value, flag in ((args.max_probes, "--max-probes"), (args.max_tokens, "--max-tokens")):
        if value is not None and value < 1:
            return _fail(f"{flag} must be at least 1")
    if args.max_general < 0:
        return _fail("--max-general must be 0 (all) or more")
    if args.no_general and args.general:
        return _fail("--general and --no-general contradict each other")
    for path in args.general:
        if not Path(path).expanduser().is_file():
            return _fail(f"--general {path}: no such file")
    if args.ctx < 128:
        return _fail("--ctx must be at least 128 tokens")
    if args.judge is not None and not split_judge(args.judge)[0]:
        return _fail("--judge needs a provider id, as PROVIDER or PROVIDER/MODEL")
    try:
        root = resolve_project_path(args.project)
    except StoreError as exc:
        return _fail(str(exc))
    if not (root / DB_NAME).is_file():
        return _fail(f"there is no project {args.project!r} (looked in {root})")
    checks = [(args.model, "model"), (args.base, "base model"), (args.lora, "LoRA adapter")]
    for path, what in checks:
        problem = _check_gguf(path, what) if path else None
        if problem:
            return _fail(problem)
    # With an adapter and no other base, the natural "before" is the same file without the adapter.
    base = ModelFile(Path(args.base or args.model)) if args.base or args.lora else None
    options = EvalOptions(root, ModelFile(Path(args.model), Path(args.lora) if args.lora else None), base,
                          judge=args.judge, open_book=args.open_book, max_probes=args.max_probes,
                          max_tokens=args.max_tokens, n_ctx=args.ctx, retention=not args.no_general,
                          general_files=[Path(p).expanduser() for p in args.general],
                          max_general=args.max_general or None, leakage=not args.no_leakage)
    progress = Progress()
    bar = RichProgressBar(transient=True)
    progress.add_listener(bar)
    try:
        with bar:
            result = run_eval(options, progress, warn=_warn, inform=lambda text: print(text, file=sys.stderr))
    except (EvalError, StoreError) as exc:
        return _fail(str(exc))
    report, folder = result.report, result.folder
    if args.json:
        print(json.dumps({**report.to_json(), "saved": str(folder)}, ensure_ascii=False, indent=1))
        for warning in report.axes.warnings if report.axes is not None else []:
            print(f"slowtune eval: warning: {warning}", file=sys.stderr)
        print(f"Report saved in {folder}", file=sys.stderr)
    else:
        print(report.to_markdown())  # the three axes in words, and their warnings, come first
        print(f"Report saved in {folder} (report.md, report.json)")
    return EXIT_OK


def _warn(warning: str) -> None:
    print(f"slowtune eval: warning: {warning}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone parser for ``slowtune eval`` (tests; the CLI adds the same arguments to its subcommand)."""
    parser = argparse.ArgumentParser(prog="slowtune eval",
                                     description="Score a tuned model against its base on the held-out probes.")
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))
