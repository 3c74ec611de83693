"""Generation options, and the teacher, judge and estimate of a run: one implementation for the CLI and the app.

``GenerateOptions`` is what the user sets before a run on the Dataset page (the recipe and its knobs: questions per
fact, fact statements and near misses for the facts recipe, questions per chunk and question mix for the plain one;
budget, system prompt, answer style, judge, parallel calls); ``to_config`` turns it into the pipeline's
``GenerateConfig``. The options are kept per project in the project database's ``meta`` table
(``load_options``, ``save_options``), so they come back with the project.

``choose_teachers`` resolves the teacher and, when it is another provider or model, the judge (probing their
structured-output support and saying a missing key before anything is sent); ``estimate_run`` prices a planned
run, one estimate for teacher and judge together or one each. ``slowtune generate`` and the Dataset page both
use them. ``prepare_run``, ``run_prepared`` and ``regenerate`` are the page's calls, run in a worker thread on
a connection of their own.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from slowtune.progress import Progress
from slowtune.store import Project, dumps
from slowtune.teacher import prompts

OPTIONS_META_KEY = "generate_options"  # the project's meta table: the options come back with the project
MAX_PAIRS_PER_CHUNK = 20  # GenerateConfig.validate's bound
MAX_CONCURRENCY = 64
DEFAULT_CONCURRENCY = 8  # `slowtune generate --concurrency`'s default too
QTYPE_LABELS = {"fact": "Facts", "reasoning": "Reasoning", "multi_turn": "Multi-turn",
                "refusal": "Not in the documents",
                # the facts recipe's kinds of rows
                "reversed": "Reversed", "context": "In context", "combination": "Combined facts",
                "statement": "Fact statements", "near_miss": "Near misses (held out)"}
RECIPE_LABELS = {"facts": "Facts: teaches facts and keeps the model itself (recommended)", "plain": "Plain Q&A"}
FIELD_LABELS = {
    "recipe": "Recipe", "questions_per_fact": "Questions per fact", "statements": "Fact statements",
    "near_miss_per_chunk": "Near-miss refusals per chunk", "near_miss_probes_per_chunk": "Near-miss probes per chunk",
    "budget_usd": "Budget", "pairs_per_chunk": "Questions per chunk", "mix": "Question mix",
    "system_prompt": "Student system prompt", "style": "Answer style", "judge": "Judge",
    "judge_provider": "Judge provider", "judge_model": "Judge model", "concurrency": "Parallel calls",
}


class OptionError(ValueError):
    """A generation option the run cannot take; the message starts with the field's name as the user sees it."""

    def __init__(self, field_name: str, problem: str) -> None:
        self.field = field_name
        super().__init__(f"{FIELD_LABELS[field_name]}: {problem}")


def default_mix() -> dict[str, float]:
    """The pipeline's default mix, as percentages."""
    from slowtune.teacher.pipeline import DEFAULT_MIX

    return {t: float(round(100 * DEFAULT_MIX.get(t, 0.0))) for t in prompts.QTYPES}


def parse_budget(text: str) -> float | None:
    """A budget as typed ("2", "$2.50", "1,000"); None when empty (no budget). Checked by ``validate``."""
    cleaned = text.strip().removeprefix("$").replace(",", "").strip()
    if not cleaned:
        return None
    try:
        value = float(cleaned)
    except ValueError:
        raise OptionError("budget_usd", f"“{text.strip()}” is not an amount in US dollars (such as 2.50); "
                                        "leave it empty for no budget") from None
    if not math.isfinite(value) or value <= 0:
        raise OptionError("budget_usd", f"“{text.strip()}” is not a positive amount in US dollars; leave it "
                                        "empty for no budget")
    return value


def money(amount: float) -> str:
    """Dollars for a budget or a spend: cents, or four decimals below a cent."""
    return f"${amount:,.2f}" if amount >= 0.01 else f"${amount:.4f}"


@dataclass
class GenerateOptions:
    """What the user sets before a run; ``to_config`` turns it into the pipeline's ``GenerateConfig``.

    ``recipe`` picks what the teacher is asked: "facts" (the default: a quota of questions per fact, fact statements,
    near-miss refusals and held-out near-miss probes) or "plain" (questions per chunk in a mix of types). The knobs
    of the other recipe are kept as set, for when the user switches back.
    """

    recipe: str = "facts"  # the pipeline's defaults, as GenerateConfig has them
    questions_per_fact: int = 6
    statements: bool = True
    near_miss_per_chunk: int = 2  # training refusals about near-miss entities
    near_miss_probes_per_chunk: int = 1  # other near misses, held out as leakage probes (training chunks only)
    budget_usd: float | None = None  # per run; None: no budget
    pairs_per_chunk: int | None = None  # None: scaled with the chunk's length (about 4 per 500 tokens)
    mix: dict[str, float] = field(default_factory=default_mix)  # weights, shown as percentages
    system_prompt: str = ""
    style: str = ""  # empty: the pipeline's default style
    judge: bool = True
    judge_provider: str | None = None  # None: the teacher's provider
    judge_model: str | None = None  # None: the teacher's model (or the judge provider's default model)
    concurrency: int = DEFAULT_CONCURRENCY

    def validate(self) -> None:
        """Raise ``OptionError`` naming the first field a run cannot take."""
        if self.recipe not in prompts.RECIPES:
            raise OptionError("recipe", f"“{self.recipe}” is not a recipe; choose {' or '.join(prompts.RECIPES)}")
        for name, low, high in (("questions_per_fact", 1, prompts.MAX_QUESTIONS_PER_FACT),
                                ("near_miss_per_chunk", 0, prompts.MAX_NEAR_MISS),
                                ("near_miss_probes_per_chunk", 0, prompts.MAX_NEAR_MISS_PROBES)):
            value = getattr(self, name)
            if not low <= value <= high:
                raise OptionError(name, f"{value} is not between {low} and {high}")
        budget = self.budget_usd
        if budget is not None and not (math.isfinite(budget) and budget > 0):
            raise OptionError("budget_usd", f"{budget:g} is not a positive amount in US dollars; leave it empty "
                                            "for no budget")
        if self.pairs_per_chunk is not None and not 1 <= self.pairs_per_chunk <= MAX_PAIRS_PER_CHUNK:
            raise OptionError("pairs_per_chunk", f"{self.pairs_per_chunk} is not between 1 and "
                                                 f"{MAX_PAIRS_PER_CHUNK}; choose Automatic to scale it with the "
                                                 "chunk's length")
        unknown = sorted(set(self.mix) - set(prompts.QTYPES))
        if unknown:
            raise OptionError("mix", f"unknown question type {', '.join(unknown)}")
        if any(not math.isfinite(v) or v < 0 for v in self.mix.values()):
            raise OptionError("mix", "a share cannot be negative")
        if sum(self.mix.values()) <= 0:
            raise OptionError("mix", "the shares add up to 0%; give at least one question type a share")
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise OptionError("concurrency", f"{self.concurrency} is not between 1 and {MAX_CONCURRENCY}")

    def to_config(self) -> Any:
        """The pipeline's ``GenerateConfig`` (``OptionError`` first when a value is bad)."""
        from slowtune.teacher.pipeline import GenerateConfig

        self.validate()
        total = sum(self.mix.values())
        return GenerateConfig(
            recipe=self.recipe,
            questions_per_fact=self.questions_per_fact,
            statements=self.statements,
            near_miss_per_chunk=self.near_miss_per_chunk,
            near_miss_probes_per_chunk=self.near_miss_probes_per_chunk,
            pairs_per_chunk=self.pairs_per_chunk,
            mix={t: v / total for t, v in self.mix.items() if v > 0},
            system_prompt=self.system_prompt.strip() or None,
            style=self.style.strip() or prompts.DEFAULT_STYLE,
            judge=self.judge,
            budget_usd=self.budget_usd,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> GenerateOptions:
        """Options as stored. A value of the wrong type falls back to its default; a value of the right type is
        kept as it is, so a bad one (a negative budget) is named by ``validate`` rather than silently changed.
        Options saved before a field existed (the recipe and its knobs) get its default."""
        options = cls()
        if not isinstance(data, dict):
            return options

        def number(value: Any) -> bool:
            return isinstance(value, int | float) and not isinstance(value, bool)

        def text(value: Any) -> bool:
            return isinstance(value, str)

        def whole(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        checks: dict[str, Callable[[Any], bool]] = {
            "recipe": text, "questions_per_fact": whole, "statements": lambda v: isinstance(v, bool),
            "near_miss_per_chunk": whole, "near_miss_probes_per_chunk": whole,
            "budget_usd": lambda v: v is None or number(v),
            "pairs_per_chunk": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)),
            "system_prompt": text, "style": text,
            "judge": lambda v: isinstance(v, bool),
            "judge_provider": lambda v: v is None or text(v), "judge_model": lambda v: v is None or text(v),
            "concurrency": lambda v: isinstance(v, int) and not isinstance(v, bool),
        }
        for name, ok in checks.items():
            if name in data and ok(data[name]):
                setattr(options, name, data[name])
        mix = data.get("mix")
        if isinstance(mix, dict) and all(isinstance(k, str) and number(v) for k, v in mix.items()):
            options.mix = {k: float(v) for k, v in mix.items()}
        return options

    def summary(self) -> str:
        """One line for the user: what the next run will do."""
        def count(n: int, what: str) -> str:
            return f"{n} {what}{'s' if n != 1 else ''}"

        parts = [f"budget {money(self.budget_usd)} per run" if self.budget_usd is not None else "no budget"]
        if self.recipe == "facts":
            parts.append(f"facts recipe: {count(self.questions_per_fact, 'question')} per fact"
                         + (" and its statement" if self.statements else ""))
            parts.append(f"{count(self.near_miss_per_chunk, 'near-miss refusal')} and "
                         f"{count(self.near_miss_probes_per_chunk, 'held-out near-miss probe')} per chunk")
        else:
            parts.append("plain Q&A" if self.recipe == "plain" else f"recipe {self.recipe}")
            if self.pairs_per_chunk is None:
                parts.append("questions per chunk scaled with its length")
            else:
                parts.append(f"{count(self.pairs_per_chunk, 'question')} per chunk")
            total = sum(v for v in self.mix.values() if v > 0)
            if total > 0:
                parts.append(", ".join(f"{QTYPE_LABELS.get(t, t).lower()} {100 * v / total:.0f}%"
                                       for t, v in self.mix.items() if v > 0))
        if not self.judge:
            parts.append("no judge")
        elif self.judge_provider or self.judge_model:
            parts.append(f"judge {self.judge_model or 'default model'}"
                         + (f" on {self.judge_provider}" if self.judge_provider else ""))
        else:
            parts.append("judged by the teacher")
        if self.system_prompt.strip():
            parts.append("with a system prompt")
        parts.append(f"{self.concurrency} parallel call{'s' if self.concurrency != 1 else ''}")
        return " · ".join(parts)


def load_options(project: Project) -> tuple[GenerateOptions, str | None]:
    """The project's options, and a problem to show when what was stored could not be read."""
    stored = project.get_meta(OPTIONS_META_KEY)
    if stored is None:
        return GenerateOptions(), None
    try:
        data = json.loads(stored)
    except ValueError:
        return GenerateOptions(), "The saved generation options could not be read; the defaults are used."
    return GenerateOptions.from_json(data), None


def save_options(project: Project, options: GenerateOptions) -> None:
    # One row in the project's SQLite database: the write is atomic, like every change there.
    project.set_meta(OPTIONS_META_KEY, dumps(options.to_json()))


# --- teacher, judge and estimate -------------------------------------------------------------------------------

def _check_key(choice: Any) -> None:
    """A missing key is said before the user is asked to send anything."""
    from slowtune.teacher import providers

    provider = choice.provider
    if not provider.in_process and provider.needs_key and not providers.api_key(provider):
        raise providers.MissingKeyError(provider)


def choose_teachers(provider_id: str, model: str | None, *, judge: bool = True, judge_provider: str | None = None,
                    judge_model: str | None = None, mode: str | None = None,
                    timeout: float = 30) -> tuple[Any, Any]:
    """The teacher's ``TeacherChoice``, and the judge's when it is another provider or model (else None: the
    teacher judges, or there is no judge).

    ``model`` None is the provider's default model; ``mode`` None is the best structured-output mode the teacher
    supports (probed, or read from the cache). The judge's model defaults to the teacher's when the judge is on
    the teacher's provider, else to the judge provider's default model. A missing API key raises
    ``ProviderError`` here, before anything is sent.
    """
    from slowtune.teacher import session

    choice = session.choose(provider_id, model, mode=mode, timeout=timeout)
    _check_key(choice)
    judge_choice = None
    if judge and (judge_provider or judge_model):
        provider = judge_provider or provider_id
        model = judge_model or (choice.model if provider == provider_id else None)
        if provider != provider_id or model != choice.model:
            judge_choice = session.choose(provider, model, timeout=timeout)
            _check_key(judge_choice)
    return choice, judge_choice


def estimate_run(plan: Any, choice: Any, judge: Any, budget: float | None, *,
                 without_budget: str = "run without a budget") -> list[tuple[str, Any]]:
    """The estimates of a planned run (``pipeline.plan_run``), as (who, ``cost.Estimate``): one for teacher and
    judge together, or one each when the judge is another choice.

    With a budget, a model without a price raises ``GenerationError`` (the run could not tell what it spends, so
    the budget would never stop it), ending "or ``without_budget``".
    """
    from slowtune.teacher import cost
    from slowtune.teacher.pipeline import GenerationError

    if judge is None:
        who = "teacher and judge" if plan.judge_calls else "teacher"
        estimates = [(who, choice, cost.estimate(
            choice.model, plan.calls + plan.judge_calls, plan.input_tokens + plan.judge_input_tokens,
            plan.output_tokens + plan.judge_output_tokens, free=choice.free))]
    else:
        estimates = [("teacher", choice, cost.estimate(choice.model, plan.calls, plan.input_tokens,
                                                       plan.output_tokens, free=choice.free)),
                     ("judge", judge, cost.estimate(judge.model, plan.judge_calls, plan.judge_input_tokens,
                                                    plan.judge_output_tokens, free=judge.free))]
    if budget is not None:
        for _, c, e in estimates:
            if e.cost_usd is None:
                raise GenerationError(
                    f"A budget needs a price for model {c.model}: add it to {cost.user_prices_file()} (US dollars "
                    f"per million input and output tokens), or {without_budget}.")
    return [(who, e) for who, _, e in estimates]


# --- the Dataset page's calls, run in a worker thread ----------------------------------------------------------

OPTIONS_HINT = "clear the budget in Options…"  # where the app's user changes the options


@dataclass
class Prepared:
    """What a run would send and cost, for the confirmation; and what the run needs."""
    choice: Any  # slowtune.teacher.session.TeacherChoice
    chunks: int  # chunks that will be sent
    chunk_tokens: int
    chunks_done: int  # chunks generated before (skipped)
    estimates: list[tuple[str, Any]]  # (who, slowtune.teacher.cost.Estimate): teacher and judge, together or apart
    options: GenerateOptions = field(default_factory=GenerateOptions)
    judge_choice: Any = None  # a TeacherChoice when the judge is another provider or model

    @property
    def estimated_cost(self) -> float | None:
        costs = [e.cost_usd for _, e in self.estimates]
        return None if any(c is None for c in costs) else sum(costs)


def _choose(provider_id: str, model: str | None, options: GenerateOptions) -> tuple[Any, Any]:
    return choose_teachers(provider_id, model, judge=options.judge, judge_provider=options.judge_provider,
                           judge_model=options.judge_model)


def prepare_run(project: Project, provider_id: str, model: str | None,
                options: GenerateOptions | None = None) -> Prepared | None:
    """Probe the teacher (or read the cached probe) and estimate the run with ``options``; None when every chunk
    is done."""
    from slowtune.teacher.pipeline import load_jobs, plan_run

    options = options or GenerateOptions()
    config = options.to_config()
    jobs, done = load_jobs(project, config)
    if not jobs:
        return None
    choice, judge = _choose(provider_id, model, options)
    plan = plan_run(jobs, config)
    estimates = estimate_run(plan, choice, judge, config.budget_usd, without_budget=OPTIONS_HINT)
    return Prepared(choice, plan.chunks, plan.chunk_tokens, done, estimates, options, judge)


def run_prepared(project: Project, prepared: Prepared, progress: Progress | None = None) -> Any:
    """The run (a ``GenerateResult``); the CallRunners are built here, as they run asyncio in this thread."""
    from slowtune.teacher import session
    from slowtune.teacher.pipeline import run_generation

    config = prepared.options.to_config()
    concurrency = prepared.options.concurrency
    runner = session.make_runner(project, prepared.choice, concurrency=concurrency)
    judge_runner = (session.make_runner(project, prepared.judge_choice, concurrency=concurrency)
                    if prepared.judge_choice is not None else None)
    return run_generation(project, runner, config, judge_runner=judge_runner, progress=progress)


def regenerate(project: Project, chunk_id: str, provider_id: str, model: str | None, options: GenerateOptions,
               progress: Progress) -> Any:
    """Ask the teacher afresh for one chunk with ``options``; the rows the user edited are kept.

    This is ``pipeline.regenerate_chunk`` with progress, cancel and the budget checked before the chunk's rows
    are cleared, so a refused run leaves them as they were.
    """
    from slowtune.teacher import review, session
    from slowtune.teacher.pipeline import GenerationError, load_jobs, plan_run, run_generation

    config = options.to_config()
    progress.report("prepare", 0, None, status="asking the teacher what it supports")
    choice, judge = _choose(provider_id, model, options)
    jobs, _ = load_jobs(project, config, only_chunks=[chunk_id], include_done=True)
    if not jobs:
        raise GenerationError("This chunk is no longer in the library (its document was removed or has "
                              "changed), so it cannot be generated again. Nothing was changed.")
    estimates = estimate_run(plan_run(jobs, config), choice, judge, config.budget_usd, without_budget=OPTIONS_HINT)
    spend = sum(e.cost_usd or 0.0 for _, e in estimates)
    if config.budget_usd is not None and spend > config.budget_usd:
        raise GenerationError(
            f"Regenerating this chunk would cost about {money(spend)}, more than the budget of "
            f"{money(config.budget_usd)} per run: raise the budget in Options…. Nothing was changed.")
    progress.check()  # the last point where nothing has changed yet
    runner = session.make_runner(project, choice, concurrency=options.concurrency)
    judge_runner = (session.make_runner(project, judge, concurrency=options.concurrency)
                    if judge is not None else None)
    review.clear_chunk(project, chunk_id)
    jobs, _ = load_jobs(project, config, only_chunks=[chunk_id], include_done=True)
    return run_generation(project, runner, config, judge_runner=judge_runner, progress=progress, jobs=jobs)
