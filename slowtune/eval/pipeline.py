"""Running an evaluation: every held-out probe answered by the tuned model (and the base), scored, reported, and
the three closed-book axes (knowledge, retention, leakage) beside it.

:func:`run` is the one way in, for ``slowtune eval`` and the Chat page's Evaluation tab alike: it opens the
project, reads the probes, chooses the judge, loads the models (llama.cpp, through
:class:`~slowtune.chat.model.ChatModel`), calls :func:`evaluate` and saves the report. :func:`evaluate` takes
models that are already loaded: each probe question goes to the tuned model (and the base model, when given)
with greedy decoding, closed book and, with ``open_book``, again with the source chunk in the prompt; every
answer is scored (:mod:`slowtune.scoring`), optionally graded by the judge (:mod:`slowtune.eval.judge`),
and the report is built (:mod:`slowtune.eval.report`). Then both models answer the general questions (retention)
and the questions about things the documents do not mention (leakage), short and greedy
(:mod:`slowtune.eval.axes`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slowtune import quality
from slowtune.eval.axes import (
    DEFAULT_AXIS_MAX_TOKENS,
    DEFAULT_MAX_GENERAL,
    STAGES,
    EvalAxes,
    answer_items,
    score_axes,
    spread_items,
)
from slowtune.eval.judge import choose_judge, close_runner, judge_notice, judge_results, make_judge_runner
from slowtune.eval.probes import LABELS, EvalError, Probe, load_probes, near_miss_items, open_book_messages
from slowtune.eval.report import EvalReport, build_report, save_report
from slowtune.progress import Progress, ensure
from slowtune.quality import QualityItem
from slowtune.scoring import CorpusVocabulary, ProbeResult, corpus_vocabulary, score_answer
from slowtune.store import Project

if TYPE_CHECKING:
    from slowtune.chat.model import ChatModel
    from slowtune.teacher.client import CallRunner

__all__ = ["DEFAULT_CTX", "DEFAULT_MAX_TOKENS", "EvalOptions", "EvalResult", "ModelFile", "axis_questions", "evaluate",
           "run"]

DEFAULT_MAX_TOKENS = 200  # longest answer
DEFAULT_CTX = 4096  # context window of the evaluated models


@dataclass(frozen=True)
class ModelFile:
    """A GGUF file to evaluate, and a LoRA adapter (in GGUF) applied to it."""

    path: Path
    lora: Path | None = None

    @property
    def name(self) -> str:
        return f"{self.lora.name} on {self.path.name}" if self.lora else self.path.name


@dataclass
class EvalOptions:
    """What :func:`run` evaluates, and how."""

    project: Path  # the project's folder: its held-out probes are used, and the report is saved there
    model: ModelFile  # the tuned model
    base: ModelFile | None = None  # the model it is compared with
    judge: str | None = None  # PROVIDER[/MODEL]: also have an LLM grade each answer 1-5
    open_book: bool = False  # also answer with the source excerpt in the prompt
    max_probes: int | None = None  # at most this many probes, spread over the documents
    max_tokens: int = DEFAULT_MAX_TOKENS
    n_ctx: int = DEFAULT_CTX
    retention: bool = True  # ask the general questions (the shipped ones and the user's own)
    general_files: list[Path] = field(default_factory=list)  # more general questions, in general.jsonl's format
    max_general: int | None = DEFAULT_MAX_GENERAL  # at most this many general questions, spread over categories
    leakage: bool = True  # ask the near-miss and unknown-entity questions
    axis_max_tokens: int = DEFAULT_AXIS_MAX_TOKENS  # longest answer to a general or unknown-entity question


@dataclass
class EvalResult:
    report: EvalReport
    folder: Path  # where the report was saved (report.json, report.md)


def run(options: EvalOptions, progress: Progress | None = None, *, warn: Callable[[str], None] | None = None,
        inform: Callable[[str], None] | None = None) -> EvalResult:
    """Evaluate as ``options`` say and save the report in the project's ``evals/`` folder.

    What can fail fails before the slow and the costly parts: the probes and the question sets are read (none,
    or a bad line: :class:`EvalError`) and the judge is chosen and probed before a model loads. A model
    llama.cpp cannot load raises :class:`EvalError`. ``warn`` gets each loaded model's warnings; ``inform`` is
    told where the answers go before the judge's runner is made. Reports ("Loading models", models loaded, models) with the model's name
    as status, then :func:`evaluate`'s stages; a cancel raises ``Cancelled`` after a model loads or between
    answers, and then nothing is saved.
    """
    from slowtune.chat.model import ChatError, ChatModel

    progress = ensure(progress)
    with Project.open(options.project) as project:
        probes = load_probes(project, options.max_probes)
        general, unknown, near_miss = axis_questions(project, options)
        judge = choose_judge(options.judge) if options.judge else None
        wanted = [options.model] + ([options.base] if options.base is not None else [])
        models: list[ChatModel] = []
        try:
            for i, spec in enumerate(wanted):
                progress.report("Loading models", i, len(wanted), status=spec.name, force=True)
                try:
                    models.append(ChatModel(spec.path, n_ctx=options.n_ctx, lora_path=spec.lora))
                except ChatError as exc:
                    raise EvalError(str(exc)) from None
                progress.check()
            for model in models if warn is not None else []:
                for warning in model.warnings:
                    warn(warning)
            runner = None
            if judge is not None:
                if inform is not None:
                    inform(judge_notice(judge))
                runner = make_judge_runner(project, judge)
            report = evaluate(project, models[0], base=models[1] if len(models) > 1 else None,
                              judge_runner=runner, open_book=options.open_book, max_tokens=options.max_tokens,
                              progress=progress, probes=probes, general=general, unknown=unknown,
                              near_miss=near_miss, axis_max_tokens=options.axis_max_tokens)
        finally:
            for model in models:
                model.close()
        folder = save_report(project, report)
    return EvalResult(report, folder)


def axis_questions(project: Project, options: EvalOptions,
                   ) -> tuple[list[QualityItem], list[QualityItem], list[QualityItem]]:
    """The questions of the retention and leakage axes as ``options`` want them: (general questions, at most
    ``max_general`` of them; unknown-entity questions, at most as many; the project's held-out near-miss
    questions). A set that
    cannot be read raises :class:`EvalError` naming the file and the line."""
    try:
        general: list[QualityItem] = []
        if options.retention:
            general = quality.general_items()
            for path in options.general_files:
                general += quality.load_items(Path(path).expanduser(), "retention", source="user")
            general = spread_items(general, options.max_general)
        unknown = spread_items(quality.unknown_items(), options.max_general) if options.leakage else []
    except (quality.QualityError, OSError) as exc:
        raise EvalError(str(exc)) from None
    return general, unknown, near_miss_items(project) if options.leakage else []


# --- answering and scoring -------------------------------------------------------------------------------

def _model_name(model: Any) -> str:
    name = getattr(model, "name", None) or Path(str(getattr(model, "path", "model"))).name
    lora = getattr(model, "lora_path", None)
    return f"{name} + {Path(lora).name}" if lora else name


def _answer(model: Any, probe: Probe, messages: list[dict[str, str]], variant: str, max_tokens: int,
            vocabulary: CorpusVocabulary | None) -> ProbeResult:
    from slowtune.chat.model import ChatError, Sampling

    started = time.perf_counter()
    try:
        reply = model.chat(messages, Sampling.greedy(max_tokens))
    except ChatError as exc:
        result = score_answer(probe, "", variant, vocabulary=vocabulary)
        result.error = str(exc)
        result.seconds = round(time.perf_counter() - started, 3)
        return result
    choice = reply["choices"][0]
    result = score_answer(probe, (choice["message"]["content"] or "").strip(), variant, vocabulary=vocabulary)
    result.finish_reason = choice.get("finish_reason")
    result.completion_tokens = int(reply.get("usage", {}).get("completion_tokens", 0))
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def evaluate(project: Project, model: ChatModel, *, base: ChatModel | None = None,
             judge_runner: CallRunner | None = None, open_book: bool = False,
             max_tokens: int = DEFAULT_MAX_TOKENS, progress: Progress | None = None,
             probes: list[Probe] | None = None, max_probes: int | None = None,
             general: Sequence[QualityItem] | None = None, unknown: Sequence[QualityItem] | None = None,
             near_miss: Sequence[QualityItem] | None = None, max_general: int | None = None,
             axis_max_tokens: int = DEFAULT_AXIS_MAX_TOKENS) -> EvalReport:
    """Answer every held-out probe with ``model`` (a ChatModel; and ``base`` when given), greedily, and score;
    then the three axes.

    ``open_book`` answers the same probes again with the source chunk in the prompt. ``judge_runner``
    (a CallRunner) grades every answer 1-5; it is closed afterwards. ``probes`` defaults to
    :func:`load_probes` (``max_probes`` of them). The retention axis asks ``general`` (default:
    :func:`slowtune.quality.general_items`; at most ``max_general`` of them, spread over categories); the leakage
    axis asks ``near_miss`` (default: the project's held-out near-miss questions) and ``unknown`` (default:
    :func:`slowtune.quality.unknown_items`); an empty list leaves that part out. Those answers are at most
    ``axis_max_tokens`` long. Reports progress as ("Answering probes", done, total), ("Answering general
    questions", ...), ("Answering unknown-entity questions", ...) and ("Judging answers", batches done, batches);
    a cancel raises ``Cancelled`` between answers.
    """
    progress = ensure(progress)
    try:
        if axis_max_tokens < 1:
            raise EvalError("max tokens must be at least 1")
        try:
            general = quality.general_items() if general is None else list(general)
            unknown = quality.unknown_items() if unknown is None else list(unknown)
        except (quality.QualityError, OSError) as exc:
            raise EvalError(str(exc)) from None
        general = spread_items(general, max_general)
        unknown = spread_items(unknown, max_general)  # the same limit: a quick evaluation is quick on both axes
        leakage = [*(near_miss_items(project) if near_miss is None else near_miss), *unknown]
        texts = [r["text"] for r in project.conn.execute("SELECT text FROM chunks")]
        vocabulary = corpus_vocabulary(texts)
        if probes is None:
            probes = load_probes(project, max_probes)
        answering = 1 + (base is not None)
        progress = _Overall(progress, {"Answering probes": len(probes) * answering * (1 + open_book),
                                       STAGES["retention"]: len(general) * answering,
                                       STAGES["leakage"]: len(leakage) * answering})
        probes, results, runs = _answer_all(project, model, base, open_book, max_tokens, progress, probes,
                                            max_probes, vocabulary)
        closed = [(variant, m) for variant, m, with_source in runs if not with_source]
        retention = answer_items(closed, general, "retention", max_tokens=axis_max_tokens, progress=progress,
                                 label=LABELS.__getitem__)
        terms = quality.corpus_terms(texts) if leakage else None
        leaked = answer_items(closed, leakage, "leakage", max_tokens=axis_max_tokens, progress=progress,
                              terms=terms, label=LABELS.__getitem__)
    except BaseException:
        if judge_runner is not None:
            close_runner(judge_runner)  # it was handed over to be closed here, judged or not
        raise
    started = time.time()
    judge = None
    if judge_runner is not None:
        judge = judge_results(judge_runner, probes, results, progress)
    models = {variant: _model_name(m) for variant, m, _ in runs}
    axis_settings = {"max_tokens": axis_max_tokens, "general": len(general), "near_miss": len(leakage) - len(unknown),
                     "unknown": len(unknown), "user_general": sum(1 for i in general if i.source == "user")}
    settings = {"max_tokens": max_tokens, "open_book": open_book, "probes": len(probes),
                "models": {v: {**_describe(m), "name": models[v]} for v, m, _ in runs},
                "answer_seconds": round(sum(r.seconds for rs in results.values() for r in rs), 2),
                "judge_seconds": round(time.time() - started, 2) if judge is not None else None}
    # The judge's grades rank the probes when there are any; when every judge call failed, F1 does.
    report = build_report(project.name, probes, results, models=models, settings=settings, judge=judge)
    report.set_axes(_axes(report, retention, leaked, axis_settings))
    return report


class _Overall:
    """The evaluation's progress as a whole, beside each stage's own: every report carries ``overall_done`` and
    ``overall_total`` (answers over all the stages), so a watcher can show one bar and the time left instead of a
    bar that starts again at each stage."""

    def __init__(self, inner: Progress, totals: dict[str, int]) -> None:
        self.inner, self.total = inner, sum(totals.values())
        self.offsets: dict[str, int] = {}
        start = 0
        for stage, count in totals.items():
            self.offsets[stage] = start
            start += count

    def report(self, stage: str, done: float, total: float | None = None, **kwargs: Any) -> None:
        if stage in self.offsets and self.total:
            kwargs.update(overall_done=self.offsets[stage] + done, overall_total=self.total)
        self.inner.report(stage, done, total, **kwargs)

    def check(self) -> None:
        self.inner.check()

    @property
    def cancelled(self) -> bool:
        return self.inner.cancelled


def _axes(report: EvalReport, retention: list[Any], leakage: list[Any], settings: dict[str, Any]) -> EvalAxes:
    """The three axes: knowledge is the key-fact recall the report gives over the probes the documents answer."""
    knowledge = {v: (s.key_fact_recall, s.answerable) for v, s in report.summaries.items() if v in ("tuned", "base")}
    return score_axes(knowledge, retention if settings["general"] else None,
                      leakage if settings["near_miss"] + settings["unknown"] else None, settings=settings)


def _answer_all(project: Project, model: ChatModel, base: ChatModel | None, open_book: bool, max_tokens: int,
                progress: Progress, probes: list[Probe] | None, max_probes: int | None,
                vocabulary: CorpusVocabulary | None,
                ) -> tuple[list[Probe], dict[str, list[ProbeResult]], list[tuple[str, Any, bool]]]:
    """Every model's answers to every probe, scored: (probes, results by variant, the runs made)."""
    if max_tokens < 1:
        raise EvalError("max tokens must be at least 1")
    if probes is None:
        probes = load_probes(project, max_probes)
    if not probes:
        raise EvalError(f"no held-out probes in project {project.name!r}: run `slowtune generate` first")
    runs: list[tuple[str, Any, bool]] = [("tuned", model, False)]
    if base is not None:
        runs.append(("base", base, False))
    if open_book:
        runs.append(("tuned_open_book", model, True))
        if base is not None:
            runs.append(("base_open_book", base, True))
    total, done = len(runs) * len(probes), 0
    results: dict[str, list[ProbeResult]] = {}
    progress.report("Answering probes", 0, total, force=True)
    for variant, chat_model, with_source in runs:
        answers = []
        for probe in probes:
            progress.check()
            messages = open_book_messages(probe) if with_source else probe.messages()
            answers.append(_answer(chat_model, probe, messages, variant, max_tokens, vocabulary))
            done += 1
            progress.report("Answering probes", done, total, model=LABELS[variant])
        results[variant] = answers
    return probes, results, runs


def _describe(model: Any) -> dict[str, Any]:
    describe = getattr(model, "describe", None)
    return describe() if callable(describe) else {}

