"""The generation stage: chunks in, checked and de-duplicated conversations out.

Two recipes say what the teacher is asked for each chunk that has no finished generation yet:

- **facts** (the default): one ``facts`` call lists the chunk's atomic facts, each with its verbatim quote, and
  asks about each fact ``questions_per_fact`` times, several ways (direct, reversed, in context, in combination
  with another fact); each fact also becomes a statement row ("What do you know about <subject>?" answered with
  the fact stated plainly), so the facts are seen as statements beside the Q&A. The same call writes questions
  about near-miss entities (resembling the chunk's subjects, mentioned by no document): some become training
  refusals, others, different ones, held-out leakage probes (split ``probe``, question type ``near_miss``).
- **plain**: one ``generate`` call writes question/answer items of four types (fact, reasoning, multi-turn, "not
  in the documents"), as many as the mix and the chunk's length say.

For either:

1. **Plan** what to ask for (the plain mix, scaled by the chunk's tokens; or the facts' quotas).
2. **Generate**: one call; the reply is parsed, repaired or re-asked a bounded number of times.
3. **Gates**, cheapest first, so no judge call is spent on a row that fails a free check:
   the evidence quote must be found in the chunk (fuzzy match); a "not in the documents" or near-miss question
   must really be absent from the whole corpus (keyword search); then one **judge** call per chunk at
   temperature 0; then de-duplication (exact and MinHash) against every question kept so far.
4. **Store** kept rows and rejected ones (with the gate and reason, for review) in the chunk's split.
   Splits are assigned per chunk, never per row, and kept for good.
5. **Probes**: for training chunks, a few kept questions are rephrased into the held-out probe set, so
   the chat stage can check the tuned model learned facts, not sentences.

Every teacher call goes through :class:`~slowtune.teacher.client.CallRunner`, whose cache makes the whole
stage resumable: run it again after an interruption and it continues where it stopped, paying only for
calls it had not received an answer to. Adding documents later generates only for their chunks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import math
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from slowtune.dataset import DatasetRow, Provenance, add_rows, current_row_sql
from slowtune.progress import Progress, ensure
from slowtune.store import Project, dumps
from slowtune.teacher import prompts
from slowtune.teacher.client import CallRunner, TeacherError
from slowtune.teacher.parse import parse_reply

log = logging.getLogger(__name__)

DEFAULT_MIX = {"fact": 0.4, "reasoning": 0.25, "multi_turn": 0.15, "refusal": 0.2}
REFUSAL_ANSWER_HINT = "The documents do not cover"
RECIPES = prompts.RECIPES
DEFAULT_RECIPE = "facts"
# The facts recipe's bounds (GenerateConfig.validate's and the options').
MAX_QUESTIONS_PER_FACT = prompts.MAX_QUESTIONS_PER_FACT
MAX_NEAR_MISS = prompts.MAX_NEAR_MISS
MAX_NEAR_MISS_PROBES = prompts.MAX_NEAR_MISS_PROBES
MAX_FACTS_PER_CHUNK = prompts.MAX_FACTS_PER_CHUNK
TOKENS_PER_FACT = 25  # a chunk's facts, when not fixed, are asked for up to one per this many tokens (at least 3)


class GenerationError(RuntimeError):
    """The run could not start or had to stop; the message says why and what to do."""


@dataclass
class GenerateConfig:
    recipe: str = field(default=DEFAULT_RECIPE, metadata={"help": "facts (the default) or plain Q&A"})
    questions_per_fact: int = field(default=6, metadata={"help": "facts recipe: questions about each fact"})
    statements: bool = field(default=True, metadata={"help": "facts recipe: a fact-statement row per fact"})
    near_miss_per_chunk: int = field(default=2, metadata={"help": "facts recipe: near-miss refusals to train on"})
    near_miss_probes_per_chunk: int = field(
        default=1, metadata={"help": "facts recipe: other near misses held out as leakage probes (training chunks)"})
    max_facts: int | None = field(default=None, metadata={"help": "facts recipe: facts asked per chunk (default: "
                                                                  "scaled with its length)"})
    pairs_per_chunk: int | None = field(default=None, metadata={"help": "plain recipe: fixed items per chunk (default: scaled)"})
    pairs_per_500_tokens: float = field(default=4.0, metadata={"help": "plain recipe: items per 500 chunk tokens when scaled"})
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX),
                                  metadata={"help": "plain recipe: share of each question type"})
    system_prompt: str | None = field(default=None, metadata={"help": "the student's system prompt in every row"})
    style: str = field(default=prompts.DEFAULT_STYLE, metadata={"help": "answer style/length instruction"})
    temperature: float = field(default=0.7, metadata={"help": "teacher sampling temperature for generation"})
    judge: bool = field(default=True, metadata={"help": "run the judge pass"})
    quote_threshold: float = field(default=0.85, metadata={"help": "fuzzy match needed for evidence quotes"})
    dedup_threshold: float = field(default=0.8, metadata={"help": "MinHash similarity of near-duplicates"})
    valid_fraction: float = field(default=0.1, metadata={"help": "share of chunks held out for validation"})
    probes_per_chunk: int = field(default=1, metadata={"help": "rephrased probe questions per training chunk"})
    max_repairs: int = field(default=2, metadata={"help": "re-asks after a malformed reply"})
    budget_usd: float | None = field(default=None, metadata={"help": "stop cleanly once this much is spent"})
    document_ids: list[int] | None = field(default=None, metadata={"help": "only these documents"})
    max_chunks: int | None = field(default=None, metadata={"help": "at most this many new chunks"})

    def validate(self) -> None:
        if self.recipe not in RECIPES:
            raise GenerationError(f"unknown recipe (--recipe) {self.recipe!r}; known: {', '.join(RECIPES)}")
        if not 1 <= self.questions_per_fact <= MAX_QUESTIONS_PER_FACT:
            raise GenerationError(f"questions per fact (--questions-per-fact) must be between 1 and "
                                  f"{MAX_QUESTIONS_PER_FACT}")
        if not 0 <= self.near_miss_per_chunk <= MAX_NEAR_MISS:
            raise GenerationError(f"near-miss refusals per chunk (--near-miss) must be between 0 and {MAX_NEAR_MISS}")
        if not 0 <= self.near_miss_probes_per_chunk <= MAX_NEAR_MISS_PROBES:
            raise GenerationError(f"near-miss probes per chunk (--near-miss-probes) must be between 0 and "
                                  f"{MAX_NEAR_MISS_PROBES}")
        if self.max_facts is not None and not 1 <= self.max_facts <= MAX_FACTS_PER_CHUNK:
            raise GenerationError(f"facts per chunk (--max-facts) must be between 1 and {MAX_FACTS_PER_CHUNK}")
        unknown = set(self.mix) - set(prompts.QTYPES)
        if unknown:
            raise GenerationError(f"unknown question type(s) in the mix (--mix): {', '.join(sorted(unknown))}; "
                                  f"known: {', '.join(prompts.QTYPES)}")
        if any(v < 0 for v in self.mix.values()) or sum(self.mix.values()) <= 0:
            raise GenerationError("the question mix (--mix) needs at least one type with a positive share")
        if self.pairs_per_chunk is not None and not 1 <= self.pairs_per_chunk <= 20:
            raise GenerationError("pairs per chunk (--pairs-per-chunk) must be between 1 and 20")
        if not 0 <= self.valid_fraction < 1:
            raise GenerationError("the validation share (--valid-fraction) must be at least 0 and below 1")
        if not 0 < self.dedup_threshold <= 1:
            raise GenerationError("the duplicate threshold (--dedup-threshold) must be above 0 and at most 1")
        if self.budget_usd is not None and self.budget_usd <= 0:
            raise GenerationError("the budget (--budget) must be a positive amount in USD")
        if self.probes_per_chunk < 0:
            raise GenerationError("probes per chunk (--probes-per-chunk) must be 0 or more")
        if self.max_chunks is not None and self.max_chunks < 1:
            raise GenerationError("--max-chunks must be at least 1")


@dataclass
class ChunkJob:
    id: str
    document_id: int
    title: str
    text: str
    tokens: int
    headings: list[str]
    split: str
    regeneration: int = 0


@dataclass
class GenerateResult:
    chunks_total: int = 0  # chunks in scope
    chunks_already_done: int = 0
    chunks_done: int = 0
    chunks_failed: int = 0
    chunks_not_started: int = 0
    rows_kept: int = 0
    probes: int = 0  # held-out probes written, near-miss ones included
    near_miss_probes: int = 0  # of which held-out near-miss (leakage) probes
    # The facts recipe: the facts the teacher listed, the questions about them that were kept (statements not
    # counted), and the facts that got fewer than their quota, because the teacher wrote fewer or the gates
    # rejected some (``questions_missing`` in all), so training can say when the facts are thinly asked about.
    facts: int = 0
    fact_questions: int = 0
    short_facts: int = 0
    questions_missing: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    calls: int = 0
    cached_calls: int = 0
    retries: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cost_known: bool = True
    stopped: str | None = None  # "budget", "fatal", "cancelled"
    message: str | None = None
    failures: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# --- planning ----------------------------------------------------------------------------------------

def items_for(tokens: int, config: GenerateConfig) -> int:
    if config.pairs_per_chunk is not None:
        return config.pairs_per_chunk
    return max(1, min(20, round(tokens / 500 * config.pairs_per_500_tokens)))


def facts_for(tokens: int, config: GenerateConfig, near_misses: int = 0) -> int:
    """How many facts a ``facts`` call asks for: ``max_facts``, or up to one per ``TOKENS_PER_FACT`` tokens of the
    chunk (at least 3); never more than one answer's token limit holds with their questions."""
    wanted = config.max_facts if config.max_facts is not None else max(3, math.ceil(tokens / TOKENS_PER_FACT))
    per_fact = prompts.facts_max_tokens(1, config.questions_per_fact, 0) - 200
    room = (prompts.facts_max_tokens(MAX_FACTS_PER_CHUNK, config.questions_per_fact, 0) - 200
            - 80 * near_misses) // per_fact
    return max(1, min(wanted, room, MAX_FACTS_PER_CHUNK))


def near_misses_for(job: ChunkJob, config: GenerateConfig) -> tuple[int, int]:
    """(training refusals, held-out probes) of near-miss questions asked for a chunk: probes only for training
    chunks, so a validation chunk's near misses are never held out."""
    return config.near_miss_per_chunk, config.near_miss_probes_per_chunk if job.split == "train" else 0


def plan_types(chunk_id: str, n: int, mix: dict[str, float]) -> dict[str, int]:
    """``n`` items split by the mix. Whole parts go to each type; the leftover slots are drawn by weight with
    a generator seeded by the chunk, so small chunks still cover every type across the corpus."""
    weights = {t: mix.get(t, 0.0) for t in prompts.QTYPES if mix.get(t, 0.0) > 0}
    total = sum(weights.values())
    exact = {t: n * w / total for t, w in weights.items()}
    counts = {t: math.floor(v) for t, v in exact.items()}
    rest = {t: exact[t] - counts[t] for t in weights}
    rng = random.Random(int(hashlib.sha256(chunk_id.encode()).hexdigest()[:16], 16))
    for _ in range(n - sum(counts.values())):
        pool = [t for t in rest if rest[t] > 0]
        pick = rng.choices(pool, weights=[rest[t] for t in pool])[0]
        counts[pick] += 1
        rest[pick] = 0.0
    return {t: c for t, c in counts.items() if c}


def _split_fraction(chunk_id: str) -> float:
    return int(hashlib.sha256(f"split:{chunk_id}".encode()).hexdigest()[:12], 16) / 16**12


def assign_splits(project: Project, chunk_ids: list[str], valid_fraction: float) -> dict[str, str]:
    """Each chunk's split, assigned once and kept (so adding documents never moves a chunk)."""
    known = {r["chunk_id"]: r["split"] for r in project.conn.execute("SELECT chunk_id, split FROM chunk_splits")}
    new = [c for c in chunk_ids if c not in known]
    if new:
        fresh = {c: "valid" if _split_fraction(c) < valid_fraction else "train" for c in new}
        every = {**known, **fresh}
        # Hash-based assignment can leave a small corpus with no validation chunk at all (or only one).
        if valid_fraction > 0 and len(every) >= 2 and "valid" not in every.values():
            fresh[min(new, key=_split_fraction)] = "valid"
        if "train" not in {**known, **fresh}.values() and len(new) >= 1 and len(every) >= 2:
            fresh[max(new, key=_split_fraction)] = "train"
        # ... or, as luck has it, far more than its share: two of a three-document corpus held out, so the model
        # never sees two of the three documents. At most the share (rounded, at least one) is held out; the new
        # chunks drawn last go back to training.
        allowed = max(1, round(valid_fraction * len(every)))
        extra = sum(1 for s in {**known, **fresh}.values() if s == "valid") - allowed
        for c in sorted((c for c in new if fresh[c] == "valid"), key=_split_fraction, reverse=True)[:max(0, extra)]:
            fresh[c] = "train"
        now = time.time()
        with project.transaction() as conn:
            conn.executemany("INSERT OR IGNORE INTO chunk_splits(chunk_id, split, assigned_at) VALUES (?, ?, ?)",
                             [(c, s, now) for c, s in fresh.items()])
        known.update(fresh)
    return {c: known[c] for c in chunk_ids}


def load_jobs(project: Project, config: GenerateConfig, *, only_chunks: list[str] | None = None,
              include_done: bool = False) -> tuple[list[ChunkJob], int]:
    """Chunks still to generate for (and how many in scope are already done)."""
    query = """SELECT c.id, c.document_id, c.text, c.tokens, c.heading_path, d.title, d.path,
                      g.status AS gstatus, g.regenerations
               FROM chunks c JOIN documents d ON d.id = c.document_id
               LEFT JOIN generation_chunks g ON g.chunk_id = c.id
               WHERE d.status = 'ok'"""
    args: list[Any] = []
    if config.document_ids:
        query += f" AND c.document_id IN ({','.join('?' * len(config.document_ids))})"
        args += config.document_ids
    if only_chunks is not None:
        query += f" AND c.id IN ({','.join('?' * len(only_chunks))})"
        args += only_chunks
    rows = project.conn.execute(query + " ORDER BY c.document_id, c.ord", args).fetchall()
    splits = assign_splits(project, [r["id"] for r in rows], config.valid_fraction)
    jobs, done = [], 0
    for r in rows:
        if r["gstatus"] == "done" and not include_done:
            done += 1
            continue
        title = r["title"] or r["path"].rsplit("/", 1)[-1]
        jobs.append(ChunkJob(
            id=r["id"], document_id=r["document_id"], title=title, text=r["text"], tokens=r["tokens"],
            headings=json.loads(r["heading_path"] or "[]"), split=splits[r["id"]],
            regeneration=r["regenerations"] or 0,
        ))
    if config.max_chunks is not None:
        jobs = jobs[: config.max_chunks]
    return jobs, done


# --- estimates -------------------------------------------------------------------------------------------

def _tokens(text: str) -> int:
    return len(text) // 4 + 1


@dataclass
class Plan:
    chunks: int
    calls: int  # teacher calls (generate, rephrase)
    input_tokens: int
    output_tokens: int
    chunk_tokens: int  # document text that will be sent
    judge_calls: int = 0
    judge_input_tokens: int = 0
    judge_output_tokens: int = 0


def plan_run(jobs: list[ChunkJob], config: GenerateConfig) -> Plan:
    """Calls and tokens a run will use (for the estimate and the upload statement)."""
    gen_sys = _tokens(prompts.GENERATE_SYSTEM) + 700  # plus the schema
    facts_sys = _tokens(prompts.FACTS_SYSTEM) + 1000
    judge_sys = _tokens(prompts.JUDGE_SYSTEM) + 200
    calls = input_tokens = output_tokens = chunk_tokens = judge_calls = judge_in = judge_out = 0
    for job in jobs:
        chunk_tokens += job.tokens
        calls += 1
        if config.recipe == "facts":
            near = sum(near_misses_for(job, config))
            # The facts a chunk holds: about one per TOKENS_PER_FACT tokens, up to what is asked for.
            facts = min(facts_for(job.tokens, config, near), max(1, math.ceil(job.tokens / TOKENS_PER_FACT)))
            input_tokens += facts_sys + job.tokens + 250
            output_tokens += prompts.facts_max_tokens(facts, config.questions_per_fact, near) - 200
            n = facts * (config.questions_per_fact + (1 if config.statements else 0)) + near
            judge_in_extra = _tokens(prompts.FACTS_JUDGE_NOTE)
        else:
            n = items_for(job.tokens, config)
            input_tokens += gen_sys + job.tokens + 150
            output_tokens += 120 * n
            judge_in_extra = 0
        if config.judge:
            judge_calls += 1
            judge_in += judge_sys + judge_in_extra + job.tokens + 110 * n
            judge_out += 45 * n
        if job.split == "train" and config.probes_per_chunk:
            calls += 1
            input_tokens += 250 + 40 * config.probes_per_chunk
            output_tokens += 40 * config.probes_per_chunk
    return Plan(len(jobs), calls, input_tokens, output_tokens, chunk_tokens, judge_calls, judge_in, judge_out)


# --- the run ---------------------------------------------------------------------------------------------

def _conversation(item: dict[str, Any], system_prompt: str | None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages += [{"role": "user", "content": item["question"].strip()},
                 {"role": "assistant", "content": item["answer"].strip()}]
    if item["type"] == "multi_turn":
        for turn in item.get("follow_ups") or []:
            messages += [{"role": "user", "content": turn["question"].strip()},
                         {"role": "assistant", "content": turn["answer"].strip()}]
    return messages


@dataclass
class Candidate:
    item: dict[str, Any]
    messages: list[dict[str, str]]
    verdicts: dict[str, Any] = field(default_factory=dict)
    gate: str | None = None
    reason: str | None = None
    split: str | None = None  # None: the chunk's split (a held-out near-miss probe: "probe")


class Generator:
    """One generation run over a project with one teacher (and optionally a separate judge)."""

    def __init__(self, project: Project, runner: CallRunner, config: GenerateConfig, *,
                 judge_runner: CallRunner | None = None, progress: Progress | None = None) -> None:
        from slowtune.teacher.checks import CorpusIndex, Deduplicator

        config.validate()
        self.project = project
        self.runner = runner
        self.judge_runner = judge_runner or runner
        self.config = config
        self.progress = ensure(progress)
        self.result = GenerateResult()
        self.index = CorpusIndex(
            (r["id"], r["title"] or r["path"].rsplit("/", 1)[-1], r["text"])
            for r in project.conn.execute(
                "SELECT c.id, c.text, d.title, d.path FROM chunks c JOIN documents d ON d.id = c.document_id "
                "WHERE d.status = 'ok'")
        )
        # Questions kept so far: training and validation rows, and the held-out near-miss probes (so that training
        # never asks one of them); statements, whose question is the same for every fact about a subject, are
        # compared by the fact they state instead.
        self.dedup = Deduplicator(threshold=config.dedup_threshold)
        self.statement_dedup = Deduplicator(threshold=config.dedup_threshold)
        # Near-miss entities asked about so far, in training refusals and in held-out probes: the two never share
        # an entity, so a leakage probe asks about something training never mentioned.
        self.near_miss_entities: dict[str, set[str]] = {"train": set(), "probe": set()}
        seen = project.conn.execute(
            """SELECT r.id, r.messages_json, r.qtype, r.split, r.verdicts_json FROM dataset_rows r
               LEFT JOIN generation_chunks g ON g.chunk_id = r.chunk_id
               WHERE r.status = 'accepted' AND (r.split != 'probe' OR r.qtype = ?)
                 AND (r.source != 'teacher' OR r.edited = 1 OR g.status = 'done')
                 AND """ + current_row_sql("r"), (prompts.NEAR_MISS_QTYPE,)).fetchall()
        questions, statements = [], []
        for r in seen:
            messages = json.loads(r["messages_json"])["messages"]
            if r["qtype"] == prompts.STATEMENT_QTYPE:
                statements.append((f"row:{r['id']}", _last_answer(messages)))
            else:
                questions.append((f"row:{r['id']}", _first_question(messages)))
            entity = (json.loads(r["verdicts_json"] or "{}").get("near_miss") or {}).get("entity")
            if entity and r["qtype"] in ("refusal", prompts.NEAR_MISS_QTYPE):
                self.near_miss_entities["probe" if r["split"] == "probe" else "train"].add(_entity_key(entity))
        self.dedup.seed(questions)
        self.statement_dedup.seed(statements)
        self._consecutive_failures = 0
        self._chunk_finished = asyncio.Event()
        self._reserved = 0.0
        self._running = 0  # chunks in progress
        self._done = 0
        self._total = 0

    # -- budget --
    def _estimate_cost(self, job: ChunkJob) -> float:
        plan = plan_run([job], self.config)
        cost = self.runner._cost(plan.input_tokens, plan.output_tokens) or 0.0
        return cost + (self.judge_runner._cost(plan.judge_input_tokens, plan.judge_output_tokens) or 0.0)

    def _spent(self) -> float:
        spent = self.runner.stats.cost_usd
        if self.judge_runner is not self.runner:
            spent += self.judge_runner.stats.cost_usd
        return spent

    # -- calls --
    async def _ask(self, runner: CallRunner, request: prompts.Request, nonce: int) -> tuple[dict | None, str | None]:
        """Data of a valid reply, re-asking with the problem after a malformed one; or the last problem."""
        messages = request.messages
        schema = request.schema
        problem = None
        for attempt in range(self.config.max_repairs + 1):
            completion = await runner.complete(messages, schema=schema, temperature=request.temperature,
                                               max_tokens=request.max_tokens, nonce=nonce)
            parsed = parse_reply(completion.content, schema, finish_reason=completion.finish_reason)
            if parsed.data is not None:
                if parsed.dropped:
                    log.debug("%s: dropped %s", request.task, "; ".join(parsed.dropped))
                return parsed.data, None
            problem = parsed.problem
            log.info("teacher %s reply unusable (%s); attempt %d", request.task, problem, attempt + 1)
            messages = prompts.repair_messages(request, completion.content, problem or "invalid")
        return None, f"{request.task}: {problem} (after {self.config.max_repairs + 1} attempts)"

    # -- gates --
    def _check_grounding(self, job: ChunkJob, cand: Candidate) -> None:
        from slowtune.teacher.checks import quote_check, refusal_check

        item = cand.item
        if item["type"] == "refusal":
            check = refusal_check(item["question"], item.get("search_terms") or [], self.index)
            cand.verdicts["refusal"] = {"ok": check.ok, "reason": check.reason, "found_in": check.found_in}
            if not check.ok:
                cand.gate, cand.reason = "refusal", check.reason
            return
        turns = [item] + (item.get("follow_ups") or [] if item["type"] == "multi_turn" else [])
        if item["type"] == "multi_turn" and len(turns) < 2:
            cand.gate, cand.reason = "schema", "multi-turn item without a follow-up"
            return
        scores = []
        for turn in turns:
            check = quote_check(turn.get("quote") or "", job.text, threshold=self.config.quote_threshold)
            scores.append(round(check.score, 3))
            if not check.ok:
                cand.verdicts["quote"] = {"ok": False, "scores": scores, "reason": check.reason}
                cand.gate, cand.reason = "quote", check.reason
                return
        cand.verdicts["quote"] = {"ok": True, "scores": scores}

    async def _judge(self, job: ChunkJob, cands: list[Candidate]) -> str | None:
        payload = [{"id": i, "type": c.item["type"], "conversation": [m for m in c.messages if m["role"] != "system"]}
                   for i, c in enumerate(cands)]
        note = prompts.FACTS_JUDGE_NOTE if self.config.recipe == "facts" else None
        request = prompts.judge_request(job.text, payload, title=job.title, note=note)
        request, problem = _fit_context(request, self.judge_runner.context_length)
        if problem is not None:
            return problem
        data, problem = await self._ask(self.judge_runner, request, job.regeneration)
        if data is None:
            return problem
        by_id = {v["id"]: v for v in data["verdicts"]}
        for i, cand in enumerate(cands):
            verdict = by_id.get(i)
            if verdict is None:
                cand.gate, cand.reason = "judge", "the judge gave no verdict"
                cand.verdicts["judge"] = None
                continue
            cand.verdicts["judge"] = {k: verdict[k] for k in ("standalone", "answerable", "supported", "complete",
                                                                "reason")}
            failed = [k for k in ("standalone", "answerable", "supported", "complete") if not verdict[k]]
            if failed:
                cand.gate = "judge"
                cand.reason = f"judge: not {', not '.join(failed)} ({verdict['reason']})"
        return None

    # -- one chunk --
    async def _chunk(self, job: ChunkJob) -> None:
        # Rows an interrupted run stored for this chunk before marking it done: they come back from the cache.
        self.project.conn.execute(
            "DELETE FROM dataset_rows WHERE chunk_id = ? AND source = 'teacher' AND edited = 0", (job.id,))
        if self.config.recipe == "facts":
            await self._facts_chunk(job)
            return
        n = items_for(job.tokens, self.config)
        counts = plan_types(job.id, n, self.config.mix)
        request = prompts.generate_request(job.text, counts, title=job.title, headings=job.headings,
                                           style=self.config.style, temperature=self.config.temperature)
        request, problem = _fit_context(request, self.runner.context_length)
        if problem is not None:
            self._finish(job, "failed", problem, [])
            return
        data, problem = await self._ask(self.runner, request, job.regeneration)
        if data is None:
            self._finish(job, "failed", problem, [], ask_afresh=True)
            return
        cands = [Candidate(item, _conversation(item, self.config.system_prompt)) for item in data["items"]]
        for cand in cands:
            self._check_grounding(job, cand)
        passing = [c for c in cands if c.gate is None]
        if passing and self.config.judge:
            problem = await self._judge(job, passing)
            if problem is not None:
                self._finish(job, "failed", problem, cands, ask_afresh=True)
                return
        for i, cand in enumerate(cands):
            if cand.gate is not None:
                continue
            dup = self.dedup.check_and_add(f"{job.id}:{job.regeneration}:{i}", cand.item["question"])
            if dup is not None:
                cand.gate = "duplicate"
                cand.reason = f"{dup.kind} duplicate of an earlier question (similarity {dup.similarity:.2f})"
                cand.verdicts["duplicate"] = {"of": dup.of_key, "kind": dup.kind, "similarity": dup.similarity}
        kept = self._store(job, cands)
        if kept and job.split == "train" and self.config.probes_per_chunk:
            await self._probes(job, kept)
        self._finish(job, "done", None, cands)

    async def _facts_chunk(self, job: ChunkJob) -> None:
        """The facts recipe for one chunk: one ``facts`` call, the gates, the near misses' roles, the probes."""
        from slowtune.teacher.checks import refusal_check

        config = self.config
        train_quota, probe_quota = near_misses_for(job, config)
        n_facts = facts_for(job.tokens, config, train_quota + probe_quota)
        request = prompts.facts_request(job.text, max_facts=n_facts, questions_per_fact=config.questions_per_fact,
                                        near_misses=train_quota + probe_quota, title=job.title,
                                        headings=job.headings, style=config.style, temperature=config.temperature)
        request, problem = _fit_context(request, self.runner.context_length)
        if problem is not None:
            self._finish(job, "failed", problem, [])
            return
        data, problem = await self._ask(self.runner, request, job.regeneration)
        if data is None:
            self._finish(job, "failed", problem, [], ask_afresh=True)
            return
        facts = data["facts"][:n_facts]
        by_id: dict[int, dict[str, Any]] = {}
        for fact in facts:
            by_id.setdefault(fact["id"], fact)
        quotes: dict[int, Any] = {}  # id(fact) -> its quote check, made once per fact

        def quote_of(fact: dict[str, Any]) -> Any:
            from slowtune.teacher.checks import quote_check

            if id(fact) not in quotes:
                quotes[id(fact)] = quote_check(fact["quote"], job.text, threshold=config.quote_threshold)
            return quotes[id(fact)]

        cands: list[Candidate] = []
        of_fact: list[int | None] = []  # the position in ``facts`` of each candidate's fact (None: a near miss)
        for position, fact in enumerate(facts):
            about = {"id": fact["id"], "subject": fact["subject"].strip(), "fact": fact["fact"].strip()}
            # (each row gets its own copy: a combination row adds the other fact to it)
            items = [{"type": prompts.FACT_KIND_QTYPES[q["kind"]], "question": q["question"], "answer": q["answer"],
                      "quote": fact["quote"], "follow_ups": [], "search_terms": [], "with_fact": q["with_fact"]}
                     for q in fact["questions"][:config.questions_per_fact]]
            if config.statements:
                items.append({"type": prompts.STATEMENT_QTYPE, "question": _statement_question(fact["subject"]),
                              "answer": fact["fact"], "quote": fact["quote"], "follow_ups": [], "search_terms": [],
                              "with_fact": -1})
            for item in items:
                cand = Candidate(item, [])
                cand.verdicts["fact"] = dict(about)
                cands.append(cand)
                of_fact.append(position)
                if not item["question"].strip() or not item["answer"].strip() or not about["subject"]:
                    cand.gate, cand.reason = "schema", "a question, answer or subject without text"
                    continue
                cand.messages = _conversation(item, config.system_prompt)
                self._check_fact_quotes(cand, fact, by_id, quote_of)
        for near in data["near_misses"][:train_quota + probe_quota]:
            item = {"type": "refusal", "question": near["question"], "answer": near["answer"], "quote": "",
                    "follow_ups": [], "search_terms": near["search_terms"], "entity": near["entity"].strip()}
            cand = Candidate(item, [])
            cand.verdicts["near_miss"] = {"entity": item["entity"], "search_terms": item["search_terms"]}
            cands.append(cand)
            of_fact.append(None)
            if not item["question"].strip() or not item["answer"].strip():
                cand.gate, cand.reason = "schema", "a near-miss question or answer without text"
                continue
            cand.messages = _conversation(item, config.system_prompt)
            check = refusal_check(item["question"], item["search_terms"], self.index)
            cand.verdicts["refusal"] = {"ok": check.ok, "reason": check.reason, "found_in": check.found_in}
            if not check.ok:
                cand.gate, cand.reason = "refusal", check.reason.replace("refusal", "near miss", 1)
                continue
            stated = refusal_states_facts(item["answer"], item["question"], job.text)
            if stated:
                cand.verdicts["refusal"]["states"] = stated
                cand.gate = "refusal"
                cand.reason = (f"near miss rejected: its refusal also states the documents' {', '.join(stated)}, "
                               "which the question did not ask about")
        passing = [c for c in cands if c.gate is None]
        if passing and config.judge:
            problem = await self._judge(job, passing)
            if problem is not None:
                self._finish(job, "failed", problem, cands, ask_afresh=True)
                return
        left = {"train": train_quota, "probe": probe_quota}
        for i, cand in enumerate(cands):
            if cand.gate is not None:
                continue
            key = f"{job.id}:{job.regeneration}:f{i}"
            if cand.item["type"] == prompts.STATEMENT_QTYPE:
                dup = self.statement_dedup.check_and_add(key, cand.item["answer"])
            elif of_fact[i] is not None:
                dup = self.dedup.check_and_add(key, cand.item["question"])
            else:
                dup = self._near_miss_role(cand, key, left)
            if dup is not None:
                cand.gate = "duplicate"
                cand.reason = f"{dup.kind} duplicate of an earlier question (similarity {dup.similarity:.2f})"
                cand.verdicts["duplicate"] = {"of": dup.of_key, "kind": dup.kind, "similarity": dup.similarity}
        stored = [c for c in cands if c.messages]  # a row needs a question and an answer to be kept for review
        kept = self._store(job, stored)
        # The quota per fact, kept honestly: how many of its questions survived every gate.
        counts = {"facts": len(facts), "questions": 0, "short": 0, "missing": 0}
        for position in range(len(facts)):
            survived = sum(1 for c, f in zip(cands, of_fact, strict=True)
                           if f == position and c.gate is None and c.item["type"] != prompts.STATEMENT_QTYPE)
            counts["questions"] += survived
            if survived < config.questions_per_fact:
                counts["short"] += 1
                counts["missing"] += config.questions_per_fact - survived
        self.result.facts += counts["facts"]
        self.result.fact_questions += counts["questions"]
        self.result.short_facts += counts["short"]
        self.result.questions_missing += counts["missing"]
        if kept and job.split == "train" and config.probes_per_chunk:
            await self._probes(job, kept)
        self._finish(job, "done", None, cands, facts=counts)

    def _check_fact_quotes(self, cand: Candidate, fact: dict[str, Any], by_id: dict[int, dict[str, Any]],
                           quote_of: Any) -> None:
        """The quote gate of a facts-recipe row: its fact's quote, and the other fact's for a combination."""
        checked = [fact]
        if cand.item["type"] == "combination":
            other = by_id.get(cand.item["with_fact"])
            if other is None or other is fact:
                cand.gate, cand.reason = "schema", "a combination question that names no other fact of the chunk"
                return
            checked.append(other)
            cand.verdicts["fact"]["with"] = {"id": other["id"], "fact": other["fact"].strip()}
            cand.verdicts["other_quote"] = other["quote"]
        scores = []
        for f in checked:
            check = quote_of(f)
            scores.append(round(check.score, 3))
            if not check.ok:
                cand.verdicts["quote"] = {"ok": False, "scores": scores, "reason": check.reason}
                cand.gate, cand.reason = "quote", check.reason
                return
        cand.verdicts["quote"] = {"ok": True, "scores": scores}

    def _near_miss_role(self, cand: Candidate, key: str, left: dict[str, int]) -> Any:
        """Make a near miss that passed its gates a training refusal, while the chunk's quota of them lasts, and then
        a held-out near-miss probe: about an entity no training row asks about, and not a duplicate of a question
        kept so far. Returns the ``Duplicate`` that rejects it, or None (also when rejected here for its entity)."""
        role = "train" if left["train"] > 0 else "probe"
        if left[role] <= 0:  # more near misses than asked for (the reply is cut to the quota, so never so far)
            cand.gate, cand.reason = "schema", "more near-miss questions than asked for"
            return None
        if role == "probe":  # kept or not, it is reviewed as what it was to be
            cand.item["type"] = prompts.NEAR_MISS_QTYPE
            cand.split = "probe"
        entity = _entity_key(cand.item["entity"] or " ".join(cand.item["search_terms"]) or cand.item["question"])
        other = "probe" if role == "train" else "train"
        if entity in self.near_miss_entities[other]:
            what = "a held-out near-miss probe" if role == "train" else "a training refusal"
            cand.gate = "duplicate"
            cand.reason = (f"the same entity ({cand.item['entity'] or entity}) as {what}: training refusals and "
                           "held-out probes are about different entities")
            cand.verdicts["duplicate"] = {"entity": entity, "of": what}
            return None
        dup = self.dedup.check_and_add(key, cand.item["question"])
        if dup is not None:
            return dup
        left[role] -= 1
        self.near_miss_entities[role].add(entity)
        cand.verdicts["near_miss"]["role"] = "training refusal" if role == "train" else "held-out probe"
        return None

    def _store(self, job: ChunkJob, cands: list[Candidate]) -> list[DatasetRow]:
        rows = []
        for cand in cands:
            cand.verdicts["gate"] = cand.gate
            rows.append(DatasetRow(
                messages=cand.messages, split=cand.split or job.split, status="rejected" if cand.gate else "accepted",
                provenance=Provenance(document_id=job.document_id, chunk_id=job.id,
                                      evidence=cand.item.get("quote") or None, qtype=cand.item["type"],
                                      verdicts=cand.verdicts),
                reject_reason=cand.reason,
            ))
        add_rows(self.project, rows)
        for cand in cands:
            if cand.gate:
                self.result.rejected[cand.gate] = self.result.rejected.get(cand.gate, 0) + 1
        kept = [r for r in rows if r.status == "accepted" and r.id is not None]
        held_out = [r for r in kept if r.split == "probe"]  # the facts recipe's near-miss probes
        self.result.rows_kept += len(kept) - len(held_out)
        self.result.probes += len(held_out)
        self.result.near_miss_probes += sum(1 for r in held_out if r.provenance.qtype == prompts.NEAR_MISS_QTYPE)
        return [r for r in kept if r.split != "probe"]

    async def _probes(self, job: ChunkJob, kept: list[DatasetRow]) -> None:
        # Questions about facts, and one "not in the documents" question when the chunk has one: the evaluation
        # checks both that the model learned the facts and that it still refuses what the documents do not say.
        chosen = [r for r in kept if r.provenance.qtype in ("fact", "reasoning")][: self.config.probes_per_chunk]
        chosen += [r for r in kept if r.provenance.qtype == "refusal"][:1]
        if not chosen:
            return
        request = prompts.rephrase_request([{"id": i, "question": _first_question(r.messages)}
                                            for i, r in enumerate(chosen)])
        data, problem = await self._ask(self.runner, request, job.regeneration)
        if data is None:
            log.info("chunk %s: no probes (%s)", job.id, problem)
            return
        by_id = {q["id"]: q["question"].strip() for q in data["questions"]}
        probes = []
        for i, row in enumerate(chosen):
            question = by_id.get(i)
            if not question or _norm(question) == _norm(_first_question(row.messages)):
                continue  # not rephrased: it would test memory of a sentence, not of a fact
            messages = [m for m in row.messages if m["role"] == "system"]
            answer = next(m["content"] for m in row.messages if m["role"] == "assistant")
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            probes.append(DatasetRow(
                messages=messages, split="probe",
                provenance=Provenance(document_id=job.document_id, chunk_id=job.id, evidence=row.provenance.evidence,
                                      qtype=row.provenance.qtype, verdicts={"probe_of": row.id}),
            ))
        added, _ = add_rows(self.project, probes)
        self.result.probes += added

    def _finish(self, job: ChunkJob, status: str, reason: str | None, cands: list[Candidate], *,
                ask_afresh: bool = False, facts: dict[str, int] | None = None) -> None:
        """Record how the chunk went. ``ask_afresh``: it failed on unusable replies, which are cached; the next
        run must not replay them, so it asks under a new regeneration number."""
        gates = Counter(c.gate for c in cands if c.gate)
        kept = sum(1 for c in cands if not c.gate)
        now = time.time()
        self.project.conn.execute(
            """INSERT INTO generation_chunks(chunk_id, document_id, status, reason, candidates, kept, stats_json,
                                            regenerations, updated_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT(chunk_id) DO UPDATE SET status=excluded.status, reason=excluded.reason,
                 candidates=excluded.candidates, kept=excluded.kept, stats_json=excluded.stats_json,
                 document_id=excluded.document_id, regenerations=excluded.regenerations,
                 updated_at=excluded.updated_at""",
            (job.id, job.document_id, status, reason, len(cands), kept,
             dumps({"rejected": dict(gates), **({"facts": facts} if facts is not None else {})}),
             job.regeneration + (1 if ask_afresh else 0), now),
        )
        if status == "failed":
            self.result.chunks_failed += 1
            self.result.failures.append({"chunk": job.id, "document": job.title, "reason": reason or ""})
        else:
            self.result.chunks_done += 1

    # -- driver --
    def _report(self, *, force: bool = False) -> None:
        stats = [self.runner.stats] + ([self.judge_runner.stats] if self.judge_runner is not self.runner else [])
        metrics = {
            "rows": self.result.rows_kept,
            "cost_usd": round(self._spent(), 4),
            "tokens": sum(s.prompt_tokens + s.completion_tokens for s in stats),
            "errors": sum(s.errors for s in stats) + self.result.chunks_failed,
            "calls": sum(s.calls for s in stats),
            "cached": sum(s.cached for s in stats),
            "concurrency": self.runner.limiter.limit,
        }
        self.progress.report("generate", self._done, self._total, force=force, **metrics)

    async def run(self, jobs: list[ChunkJob]) -> GenerateResult:
        queue: asyncio.Queue[ChunkJob] = asyncio.Queue()
        for job in jobs:
            queue.put_nowait(job)
        self._total = len(jobs)
        stop = asyncio.Event()
        budget = self.config.budget_usd
        # Chunks in a row that failed because the teacher could not be reached: past this, the endpoint is gone
        # and the run stops (to be resumed later) rather than marking every remaining chunk failed.
        unreachable_after = max(3, self.runner.limiter.maximum)

        def halt(reason: str, message: str, job: ChunkJob) -> None:
            if self.result.stopped is None:
                self.result.stopped, self.result.message = reason, message
            queue.put_nowait(job)  # not started: counted as such, and picked up by the next run
            stop.set()
            self._chunk_finished.set()  # wake workers waiting for budget to free up: they stop too

        async def over_budget(estimate: float) -> bool:
            # Chunks in progress may spend less than reserved for them: wait for them before giving up.
            while self._spent() + self._reserved + estimate > budget and self._running and not stop.is_set():
                self._chunk_finished.clear()
                await self._chunk_finished.wait()
            return self._spent() + self._reserved + estimate > budget

        async def worker() -> None:
            while not stop.is_set():
                try:
                    job = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                if self.progress.cancelled:
                    halt("cancelled", "cancelled; run the same command again to continue", job)
                    return
                estimate = self._estimate_cost(job) if budget is not None else 0.0
                if budget is not None and await over_budget(estimate):
                    halt("budget", "", job)
                    return
                if stop.is_set():
                    queue.put_nowait(job)
                    return
                self._reserved += estimate
                self._running += 1
                try:
                    await self._chunk(job)
                    self._consecutive_failures = 0
                except TeacherError as exc:
                    if exc.fatal:
                        halt("fatal", str(exc), job)
                        return
                    self._finish(job, "failed", str(exc), [])
                    self._consecutive_failures += 1
                    if self._consecutive_failures >= unreachable_after:
                        self.result.stopped = "unreachable"
                        self.result.message = (f"stopped: the teacher failed {self._consecutive_failures} chunks in a "
                                               f"row ({exc}); run the same command again when it answers")
                        stop.set()
                        self._chunk_finished.set()
                finally:
                    self._running -= 1
                    # Summing and subtracting floats leaves crumbs; with nothing running, nothing is reserved.
                    self._reserved = self._reserved - estimate if self._running else 0.0
                    self._chunk_finished.set()
                self._done += 1
                self._report()

        # Twice as many chunks in progress as calls allowed in flight: each chunk makes its calls one after
        # another, so this keeps the limiter full, also near the end of the run.
        workers = [asyncio.create_task(worker()) for _ in range(2 * max(1, self.runner.limiter.maximum))]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
        self.result.chunks_not_started = queue.qsize()
        self._collect_stats()
        if self.result.stopped == "budget":
            self.result.message = (
                f"stopped at the budget: this run spent ${self.result.cost_usd:.4f} of its ${budget:.2f} and the next "
                f"chunk would have gone over; {self.result.chunks_not_started} chunks are left. Run again to "
                "continue (each run has its own --budget)")
        self._report(force=True)
        return self.result

    def _collect_stats(self) -> None:
        runners = [self.runner] + ([self.judge_runner] if self.judge_runner is not self.runner else [])
        r = self.result
        for runner in runners:
            s = runner.stats
            r.calls += s.calls
            r.cached_calls += s.cached
            r.retries += s.retries
            r.errors += s.errors
            r.prompt_tokens += s.prompt_tokens
            r.completion_tokens += s.completion_tokens
            r.cost_usd += s.cost_usd
            r.cost_known = r.cost_known and not s.unknown_price


def _fit_context(request: prompts.Request, context_length: int | None) -> tuple[prompts.Request, str | None]:
    """Lower the answer's token limit to what the model's context leaves; a problem when nothing is left."""
    if not context_length:
        return request, None
    prompt = sum(_tokens(m["content"]) for m in request.messages) + 10 * len(request.messages)
    room = context_length - prompt
    if room < 256:
        return request, (f"{request.task}: the prompt (about {prompt:,} tokens) leaves no room for an answer in the "
                         f"model's context of {context_length:,} tokens; ingest with smaller chunks")
    if room >= request.max_tokens:
        return request, None
    return dataclasses.replace(request, max_tokens=room), None


def _first_question(messages: list[dict[str, str]]) -> str:
    return next((m["content"] for m in messages if m["role"] == "user"), "")


def refusal_states_facts(answer: str, question: str, chunk_text: str) -> list[str]:
    """The chunk's names and numbers that a near-miss refusal states and its question did not contain.

    "The documents do not cover the Quorvel dam, but the Hollow dam is 40 metres tall" refuses and then teaches
    the very leak the leakage probes measure: answering about a look-alike with the documents' facts.
    """
    from slowtune.quality import corpus_terms
    from slowtune.scoring import KeyFact, fact_found, numbers_in

    terms = corpus_terms([chunk_text])
    names = [terms.shown.get(key, key) for key in sorted(terms.names)
             if fact_found(KeyFact("name", key), answer) and not fact_found(KeyFact("name", key), question)]
    # A name's words are terms too ("Edda Strom", "Strom"): say the whole name only.
    found = [n for n in names if not any(n != m and n in m.split() for m in names)]
    asked = {value for value, _ in numbers_in(question)}
    found += [written for value, written in numbers_in(answer) if value in terms.numbers and value not in asked]
    return list(dict.fromkeys(found))


def _statement_question(subject: str) -> str:
    """The question of a fact-statement row: "What do you know about <subject>?" (a leading article in lower case)."""
    subject = " ".join(subject.split()).rstrip(".?!")
    first, _, rest = subject.partition(" ")
    if first in ("The", "A", "An") and rest:
        subject = f"{first.lower()} {rest}"
    return prompts.STATEMENT_QUESTION.format(subject=subject)


def _entity_key(entity: str) -> str:
    """A near-miss entity as compared: normalised, without a leading article."""
    from slowtune.teacher.checks import normalise

    words = normalise(entity).strip(" .?!\"'").split()
    if len(words) > 1 and words[0] in ("the", "a", "an"):
        words = words[1:]
    return " ".join(words)


def _last_answer(messages: list[dict[str, str]]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "assistant"), "")


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


def run_generation(project: Project, runner: CallRunner, config: GenerateConfig, *,
                   judge_runner: CallRunner | None = None, progress: Progress | None = None,
                   jobs: list[ChunkJob] | None = None) -> GenerateResult:
    """Generate for every chunk without a finished generation (or for ``jobs``)."""
    generator = Generator(project, runner, config, judge_runner=judge_runner, progress=progress)
    if jobs is None:
        jobs, done = load_jobs(project, config)
        generator.result.chunks_already_done = done
    generator.result.chunks_total = len(jobs) + generator.result.chunks_already_done

    async def main() -> GenerateResult:
        try:
            return await generator.run(jobs)
        finally:
            await runner.teacher.aclose()
            if judge_runner is not None and judge_runner.teacher is not runner.teacher:
                await judge_runner.teacher.aclose()

    return asyncio.run(main())


def regenerate_chunk(project: Project, chunk_id: str, runner: CallRunner, config: GenerateConfig, *,
                     judge_runner: CallRunner | None = None) -> GenerateResult:
    """Ask the teacher afresh for one chunk; rows the user edited are kept."""
    from slowtune.teacher.review import clear_chunk

    clear_chunk(project, chunk_id)
    jobs, _ = load_jobs(project, config, only_chunks=[chunk_id], include_done=True)
    return run_generation(project, runner, config, judge_runner=judge_runner, jobs=jobs)
