"""``slowtune eval``: score a tuned GGUF against its base on a project's held-out probes.

Every input is checked before a model is loaded (a model load takes seconds, a judge call costs money), so a
typo in a path or a provider id fails at once with a message naming it, and no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

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


def _split_judge(text: str) -> tuple[str, str | None]:
    # Model ids may contain slashes themselves ("openai/gpt-4o-mini" on OpenRouter); provider ids never do.
    provider, _, model = text.partition("/")
    return provider.strip(), (model.strip() or None)


def run(args: argparse.Namespace) -> int:
    from slowtune.chat.evaluate import EvalError, evaluate, load_probes, save_report
    from slowtune.store import DB_NAME, Project, StoreError, resolve_project_path

    for value, flag in ((args.max_probes, "--max-probes"), (args.max_tokens, "--max-tokens")):
        if value is not None and value < 1:
            return _fail(f"{flag} must be at least 1")
    if args.ctx < 128:
        return _fail("--ctx must be at least 128 tokens")
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
    try:
        project = Project.open(root)
    except StoreError as exc:
        return _fail(str(exc))
    models: list[Any] = []
    try:
        probes = load_probes(project, args.max_probes)
        # The judge is resolved (and probed) before the models load, so a wrong provider fails in a second.
        judge = _judge_choice(args.judge) if args.judge else None
        tuned, base = _load_models(args, models)
        for m in models:
            for warning in m.warnings:
                print(f"slowtune eval: warning: {warning}", file=sys.stderr)
        runner = _judge_runner(project, judge) if judge else None
        report = _evaluate(project, tuned, base, runner, probes, args, evaluate)
        folder = save_report(project, report)
    except (EvalError, _InputError) as exc:
        return _fail(str(exc))
    finally:
        for m in models:
            m.close()
        project.close()
    if args.json:
        print(json.dumps({**report.to_json(), "saved": str(folder)}, ensure_ascii=False, indent=1))
        print(f"Report saved in {folder}", file=sys.stderr)
    else:
        print(report.to_markdown())
        print(f"Report saved in {folder} (report.md, report.json)")
    return EXIT_OK


class _InputError(RuntimeError):
    """Bad input found while setting up (a model llama.cpp cannot load, an unusable judge)."""


def _judge_choice(spec: str) -> Any:
    from slowtune.teacher import providers, session
    from slowtune.teacher.probe import ProbeError

    provider_id, model = _split_judge(spec)
    if not provider_id:
        raise _InputError("--judge needs a provider id, as PROVIDER or PROVIDER/MODEL")
    try:
        return session.choose(provider_id, model, timeout=30)
    except (providers.ProviderError, ProbeError) as exc:
        raise _InputError(f"judge {spec!r}: {exc}") from None


def _judge_runner(project: Any, choice: Any) -> Any:
    from slowtune.teacher import session

    where = f"sent to {choice.destination}" if choice.remote else f"read on {choice.destination}"
    print(f"The probes' questions, reference answers and the models' answers will be {where} for grading "
          f"(model {choice.model}).", file=sys.stderr)
    return session.make_runner(project, choice, concurrency=4, timeout=120)


def _load_models(args: argparse.Namespace, models: list[Any]) -> tuple[Any, Any]:
    """The tuned model and the base (or None); each is appended to ``models`` as it loads, to be closed."""
    from slowtune.chat.model import ChatError, ChatModel

    try:
        tuned = ChatModel(Path(args.model), n_ctx=args.ctx, lora_path=Path(args.lora) if args.lora else None)
        models.append(tuned)
        base = None
        if args.base or args.lora:
            # With an adapter and no other base, the natural "before" is the same file without the adapter.
            base = ChatModel(Path(args.base or args.model), n_ctx=args.ctx)
            models.append(base)
    except ChatError as exc:
        raise _InputError(str(exc)) from None
    return tuned, base


def _evaluate(project: Any, tuned: Any, base: Any, runner: Any, probes: list[Any], args: argparse.Namespace,
              evaluate: Any) -> Any:
    from slowtune.progress import Progress, RichProgressBar

    progress = Progress()
    bar = RichProgressBar(transient=True)
    progress.add_listener(bar)
    with bar:
        return evaluate(project, tuned, base=base, judge_runner=runner, open_book=args.open_book,
                        max_tokens=args.max_tokens, progress=progress, probes=probes)


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone parser for ``slowtune eval`` (tests; the CLI adds the same arguments to its subcommand)."""
    parser = argparse.ArgumentParser(prog="slowtune eval",
                                     description="Score a tuned model against its base on the held-out probes.")
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))
