"""``slowtune generate`` and ``slowtune dataset``: the teacher stage and the review of what it wrote."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_ERROR = 0, 1


def _mix(text: str) -> dict[str, float]:
    mix = {}
    for part in text.split(","):
        name, _, share = part.partition("=")
        try:
            mix[name.strip()] = float(share)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"bad --mix part {part!r}: expected TYPE=SHARE, e.g. fact=0.4,reasoning=0.3") from None
    return mix


def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    from slowtune.teacher.options import DEFAULT_CONCURRENCY
    from slowtune.teacher.pipeline import DEFAULT_MIX, RECIPES, GenerateConfig

    defaults = GenerateConfig()

    p.add_argument("project", help="project name or folder (documents must be ingested first)")
    p.add_argument("--provider", help="teacher provider id (see `slowtune provider list`); default from settings")
    p.add_argument("--model", help="teacher model (default: the provider's default model)")
    p.add_argument("--judge-provider", help="provider of the judge (default: the teacher's)")
    p.add_argument("--judge-model", help="judge model (default: the teacher model; on another --judge-provider, "
                                         "that provider's default model)")
    p.add_argument("--no-judge", action="store_true", help="skip the judge pass (cheaper, less checked)")
    p.add_argument("--recipe", choices=RECIPES,
                   help="facts: a quota of varied questions per fact, fact statements and near-miss refusals (the "
                        "default); plain: questions per chunk in a mix of types (the default when --pairs-per-chunk "
                        "or --mix is given)")
    p.add_argument("--questions-per-fact", type=int, metavar="N",
                   help=f"facts recipe: questions about each fact, asked several ways (default {defaults.questions_per_fact})")
    p.add_argument("--no-statements", action="store_true",
                   help="facts recipe: no fact-statement rows ('What do you know about ...?')")
    p.add_argument("--near-miss", type=int, metavar="N",
                   help="facts recipe: refusals about near-miss entities to train on, per chunk "
                        f"(default {defaults.near_miss_per_chunk})")
    p.add_argument("--near-miss-probes", type=int, metavar="N",
                   help="facts recipe: other near misses held out as leakage probes, per training chunk "
                        f"(default {defaults.near_miss_probes_per_chunk})")
    p.add_argument("--max-facts", type=int, metavar="N",
                   help="facts recipe: facts asked for per chunk (default: scaled with its length)")
    p.add_argument("--pairs-per-chunk", type=int, help="plain recipe: items per chunk (default: about 4 per 500 tokens)")
    p.add_argument("--mix", type=_mix, default=None,
                   help="plain recipe: question-type shares, default "
                        + ",".join(f"{k}={v}" for k, v in DEFAULT_MIX.items()))
    p.add_argument("--system-prompt", help="the student's system prompt, put in every conversation")
    p.add_argument("--style", help="instruction for the answers' style and length")
    p.add_argument("--valid-fraction", type=float, default=0.1, help="share of chunks for validation (0.1)")
    p.add_argument("--probes-per-chunk", type=int, default=1, help="rephrased probe questions per training chunk")
    p.add_argument("--dedup-threshold", type=float, default=0.8, help="near-duplicate similarity (0.8)")
    p.add_argument("--budget", type=float, metavar="USD", help="stop cleanly before spending more than this")
    p.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="most calls in flight (lowered on rate limits)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per call before it is retried")
    p.add_argument("--mode", choices=("json_schema", "json_object", "text"),
                   help="structured-output mode (default: the best the endpoint supports, probed and cached)")
    p.add_argument("--max-chunks", type=int, help="generate for at most this many new chunks")
    p.add_argument("--estimate", action="store_true", help="print the estimate and stop (nothing is sent)")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask before sending document text")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


_FACTS_FLAGS = {"questions_per_fact": "--questions-per-fact", "no_statements": "--no-statements",
                "near_miss": "--near-miss", "near_miss_probes": "--near-miss-probes", "max_facts": "--max-facts"}
_PLAIN_FLAGS = {"pairs_per_chunk": "--pairs-per-chunk", "mix": "--mix"}


def config_from_args(args: argparse.Namespace) -> Any:
    """The pipeline's ``GenerateConfig`` from ``slowtune generate``'s flags (``GenerationError`` for flags of the
    other recipe). Without --recipe, the recipe is facts, or plain when a plain flag is given, so command lines
    written for the plain recipe keep doing what they did."""
    from slowtune.teacher.pipeline import GenerateConfig, GenerationError

    def given(flags: dict[str, str]) -> list[str]:
        return [flag for name, flag in flags.items() if getattr(args, name, None) not in (None, False)]

    facts, plain = given(_FACTS_FLAGS), given(_PLAIN_FLAGS)
    recipe = args.recipe or ("plain" if plain else "facts")
    for chosen, other, flags in (("facts", "plain", plain), ("plain", "facts", facts)):
        if recipe == chosen and flags:
            verb, them = ("applies", "it") if len(flags) == 1 else ("apply", "them")
            raise GenerationError(f"{' and '.join(flags)} {verb} to the {other} recipe: leave {them} out, or pass "
                                  f"--recipe {other}")
    config = GenerateConfig(
        recipe=recipe, pairs_per_chunk=args.pairs_per_chunk, system_prompt=args.system_prompt, judge=not args.no_judge,
        valid_fraction=args.valid_fraction, probes_per_chunk=args.probes_per_chunk,
        dedup_threshold=args.dedup_threshold, budget_usd=args.budget, max_chunks=args.max_chunks,
        statements=not args.no_statements, max_facts=args.max_facts,
    )
    for name, flag in (("questions_per_fact", "questions_per_fact"), ("near_miss_per_chunk", "near_miss"),
                       ("near_miss_probes_per_chunk", "near_miss_probes")):
        if getattr(args, flag) is not None:
            setattr(config, name, getattr(args, flag))
    if args.mix is not None:
        config.mix = args.mix
    if args.style:
        config.style = args.style
    return config


def _open_project(name: str):
    from slowtune.store import DB_NAME, Project, resolve_project_path

    root = resolve_project_path(name)
    if not (root / DB_NAME).exists():
        raise SystemExit(f"slowtune: there is no project {name!r} (looked in {root}); "
                         "add documents first with `slowtune ingest`")
    return Project.open(root)


def _statement(choice: Any, chunks: int, tokens: int, role: str) -> str:
    verb = f"sent to {choice.destination}" if choice.remote else f"read on {choice.destination}"
    return (f"Document text from {chunks} chunks (about {tokens:,} tokens) will be {verb} for the {role} "
            f"(model {choice.model}, {choice.mode} output).")


def _confirm(question: str) -> bool:
    try:
        return input(question + " [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


def run_generate(args: argparse.Namespace) -> int:
    from slowtune.progress import Progress, RichProgressBar
    from slowtune.settings import load_settings
    from slowtune.teacher import cost, providers, session
    from slowtune.teacher.client import TeacherError
    from slowtune.teacher.options import choose_teachers, estimate_run
    from slowtune.teacher.pipeline import GenerationError, load_jobs, plan_run, run_generation
    from slowtune.teacher.probe import ProbeError

    settings = load_settings().settings
    provider_id = args.provider or settings.teacher_provider
    if not provider_id:
        print("slowtune generate: no teacher chosen: pass --provider (see `slowtune provider list`, "
              "`slowtune provider add`)", file=sys.stderr)
        return EXIT_ERROR
    try:
        config = config_from_args(args)
        config.validate()
    except GenerationError as exc:
        print(f"slowtune generate: {exc}", file=sys.stderr)
        return EXIT_ERROR
    project = _open_project(args.project)
    try:
        if args.concurrency < 1:
            raise GenerationError("--concurrency must be at least 1")
        if args.timeout <= 0:
            raise GenerationError("--timeout must be a positive number of seconds")
        jobs, done = load_jobs(project, config)
        total_chunks = len(jobs) + done
        if total_chunks == 0:
            print(f"slowtune generate: project {project.name!r} has no document chunks yet; add documents "
                  "with `slowtune ingest`", file=sys.stderr)
            return EXIT_ERROR
        if not jobs:
            print(f"All {done} chunks already have generated data. `slowtune dataset report {args.project}` "
                  "shows it.")
            return EXIT_OK
        # A missing key is reported here, before anything is said or sent.
        choice, judge_choice = choose_teachers(
            provider_id, args.model or (settings.teacher_model if not args.provider else None), judge=config.judge,
            judge_provider=args.judge_provider, judge_model=args.judge_model, mode=args.mode,
            timeout=min(args.timeout, 30))
        runner = session.make_runner(project, choice, concurrency=args.concurrency, timeout=args.timeout)
        judge_runner = (session.make_runner(project, judge_choice, concurrency=args.concurrency, timeout=args.timeout)
                        if judge_choice else None)
        plan = plan_run(jobs, config)
        judge = judge_choice or choice
        estimates = estimate_run(plan, choice, judge_choice, config.budget_usd, without_budget="leave out --budget")
        statement = _statement(choice, plan.chunks, plan.chunk_tokens, "teacher")
        if judge.destination != choice.destination:  # a judge on another provider, elsewhere
            statement += " " + _statement(judge, plan.chunks, plan.chunk_tokens, "judge")
        print(statement, file=sys.stderr)
        for who, e in estimates:
            print(f"Estimate ({who}): {e.describe()}", file=sys.stderr)
        if done:
            print(f"{done} chunks already done are skipped.", file=sys.stderr)
        if args.estimate:
            if args.json:
                print(json.dumps({"chunks": plan.chunks, "chunks_done_before": done, "plan": dataclasses.asdict(plan),
                                  "estimates": [dataclasses.asdict(e) for _, e in estimates],
                                  "destinations": sorted({choice.destination, judge.destination})}, indent=2))
            return EXIT_OK
        remote = not choice.provider.in_process or not judge.provider.in_process
        if remote and settings.confirm_before_upload and not args.yes:
            if not sys.stdin.isatty():
                print("Nothing was sent: slowtune cannot ask for confirmation here (no terminal). Pass --yes to "
                      "send without asking.", file=sys.stderr)
                return EXIT_ERROR
            if not _confirm("Send it?"):
                print("Nothing was sent.", file=sys.stderr)
                return EXIT_ERROR
        progress = Progress()
        if not args.json:
            bar = RichProgressBar()
            progress.add_listener(bar)
        else:
            bar = None
        try:
            if bar:
                bar.__enter__()
            result = run_generation(project, runner, config, judge_runner=judge_runner, progress=progress)
        finally:
            if bar:
                bar.__exit__(None, None, None)
    except providers.NoModelError as exc:
        print(f"slowtune generate: {exc} Pass --model NAME (`slowtune provider test {exc.provider_id}` lists the "
              "models), or give the provider a default model.", file=sys.stderr)
        return EXIT_ERROR
    except (GenerationError, providers.ProviderError, ProbeError, TeacherError, cost.CostError) as exc:
        print(f"slowtune generate: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        project.close()
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(_describe(result))
    return EXIT_ERROR if result.stopped in ("fatal", "unreachable") else EXIT_OK


def _describe(r) -> str:
    cost = f"${r.cost_usd:.4f}" if r.cost_known else "cost unknown (no price for this model in the price table)"
    lines = [
        f"{r.chunks_done} chunks done, {r.chunks_failed} failed, {r.chunks_not_started} not started "
        f"({r.chunks_already_done} were done before).",
        f"{r.rows_kept} conversations kept, {r.probes} probe questions"
        + (f" ({r.near_miss_probes} about near-miss entities)" if r.near_miss_probes else "") + "; rejected: "
        + (", ".join(f"{g} {n}" for g, n in sorted(r.rejected.items())) or "none") + ".",
        f"Teacher: {r.calls} calls paid, {r.cached_calls} answered from the cache, {r.retries} retries, "
        f"{r.prompt_tokens:,} + {r.completion_tokens:,} tokens, {cost}.",
    ]
    if r.facts:
        lines.append(f"{r.facts} facts, {r.fact_questions} questions about them kept"
                     + (f"; {r.short_facts} facts got fewer than their quota ({r.questions_missing} questions short)"
                        if r.short_facts else "; every fact got its quota") + ".")
    for f in r.failures[:10]:
        lines.append(f"  failed: {f['document']} chunk {f['chunk'][:12]}: {f['reason']}")
    if r.message:
        lines.append(r.message)
    return "\n".join(lines)


# --- slowtune dataset ------------------------------------------------------------------------------------

def add_dataset_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="dataset_command", metavar="ACTION", required=True)
    rep = sub.add_parser("report", help="rows by split, type and document; rejections; failed chunks; cost")
    rep.add_argument("project")
    rep.add_argument("--json", action="store_true")
    ls = sub.add_parser("list", help="list rows (filters: --split --status --type --gate --search)")
    ls.add_argument("project")
    ls.add_argument("--split", choices=("train", "valid", "probe"))
    ls.add_argument("--status", choices=("accepted", "rejected", "pending"))
    ls.add_argument("--type", dest="qtype")
    ls.add_argument("--gate", help="rejected by: quote, refusal, judge, duplicate, schema, user")
    ls.add_argument("--search", help="text the conversation contains")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--json", action="store_true")
    for name, helptext in (("accept", "accept rows by id"), ("reject", "reject rows by id")):
        a = sub.add_parser(name, help=helptext)
        a.add_argument("project")
        a.add_argument("ids", type=int, nargs="+")
    ex = sub.add_parser("export", help="write train.jsonl, valid.jsonl and test.jsonl (probes) to a folder")
    ex.add_argument("project")
    ex.add_argument("out", type=Path)
    ex.add_argument("--provenance", action="store_true", help="also write provenance sidecars")


def run_dataset(args: argparse.Namespace) -> int:
    from slowtune.dataset import DatasetError, export_jsonl
    from slowtune.teacher import review

    project = _open_project(args.project)
    try:
        if args.dataset_command == "report":
            rep = review.report(project)
            print(json.dumps(rep.to_json(), indent=2) if args.json else review.render_report(rep))
        elif args.dataset_command == "list":
            rows = review.list_rows(project, review.RowFilter(split=args.split, status=args.status, qtype=args.qtype,
                                                              gate=args.gate, text=args.search, limit=args.limit))
            if args.json:
                print(json.dumps([{"id": r.id, "split": r.split, "status": r.status, "type": r.provenance.qtype,
                                   "messages": r.messages, "reject_reason": r.reject_reason} for r in rows],
                                 indent=2, ensure_ascii=False))
            for r in [] if args.json else rows:
                question = next(m["content"] for m in r.messages if m["role"] == "user")
                flag = "" if r.status == "accepted" else f"  [{r.status}: {r.reject_reason}]"
                print(f"{r.id:>6} {r.split:<5} {r.provenance.qtype or '':<10} {question[:90]}{flag}")
        elif args.dataset_command in ("accept", "reject"):
            n = review.set_status(project, args.ids, "accepted" if args.dataset_command == "accept" else "rejected")
            print(f"{n} rows {args.dataset_command}ed")
        elif args.dataset_command == "export":
            counts = export_jsonl(project, args.out, provenance=args.provenance)
            print(", ".join(f"{split} {n}" for split, n in counts.items()) + f" rows written to {args.out}")
    except DatasetError as exc:
        print(f"slowtune dataset: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        project.close()
    return EXIT_OK
