"""Replay: the base model's own answers to general prompts, mixed into training so the tuned model stays itself.

Where the documents say nothing, the tuned model should answer as the base did. So before the first step the base
model (the model in training with its LoRA switched off; or llama.cpp on the GGUF file a model was imported from,
which answers much faster on a CPU) answers shipped general prompts (``resources/quality/
replay.jsonl``, never the retention questions), greedily, on this Mac: no teacher call, nothing leaves the machine.
The answers are cached beside the data (a project's ``replay/`` folder, else slowtune's cache folder), keyed by the
model, so the next run on the same model generates nothing.

The mix: ``replay`` is the share of the training rows that are replay rows (``DEFAULT_REPLAY``, a half). Generating must not
take longer than a tenth of the training itself: the first answers are timed, and when the rest would overrun,
fewer prompts are used, or replay is skipped, with a warning saying so.

Each answer is at most ``MAX_NEW_TOKENS`` long. An answer the base model had not finished by then is kept as far as
it got and trained on without an end-of-turn token, so the tuned model learns how the base answer opens (where the
key fact usually is) and not that answers stop there. Short answers buy more prompts within the same tenth.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slowtune.fsutil import atomic_write_text
from slowtune.progress import Progress, ensure
from slowtune.quality import QualityItem, replay_prompts, spread
from slowtune.train.config import DEFAULT_REPLAY

__all__ = ["DEFAULT_REPLAY", "Answer", "ReplayResult", "build_replay", "cache_file", "encode_replay", "kept_answer",
           "replay_rows_wanted"]

MAX_NEW_TOKENS = 64
TIME_SHARE = 0.10  # of the estimated training time, at most
MIN_ROWS = 8  # fewer replay rows than this are not worth mixing in
FIRST_BATCH = 8  # timed first when nothing says how fast the model answers
BATCH = 32  # prompts answered together: on a CPU a batch costs little more than one prompt


def replay_rows_wanted(train_rows: int, share: float) -> int:
    """Replay rows that make up ``share`` of the mixed training set of ``train_rows`` data rows."""
    if share <= 0 or train_rows <= 0:
        return 0
    return round(train_rows * share / (1.0 - share))


def _model_key(model_dir: Path, max_new: int) -> str:
    digest = hashlib.sha256()
    for name in ("config.json", "tokenizer_config.json"):
        path = model_dir / name
        if path.exists():
            digest.update(path.read_bytes())
    for path in sorted(model_dir.glob("*.safetensors")):
        digest.update(f"{path.name}:{path.stat().st_size}".encode())
    digest.update(f"max_new={max_new}".encode())
    return digest.hexdigest()[:16]


def cache_file(data: Path, model_dir: Path, *, max_new: int = MAX_NEW_TOKENS) -> Path:
    """Where the base model's replay answers are kept: in the project, else in slowtune's cache folder."""
    from slowtune.store import DB_NAME

    key = _model_key(model_dir, max_new)
    if data.is_dir() and (data / DB_NAME).is_file():
        return data / "replay" / f"{key}.jsonl"
    from slowtune.paths import cache_dir

    return cache_dir() / "replay" / f"{key}.jsonl"


@dataclass(frozen=True)
class Answer:
    """The base model's answer to one prompt: ``text`` is None when there was none (empty); ``finished`` is False
    when the base had not ended it within the token limit (it is trained on without an end-of-turn token)."""

    text: str | None
    finished: bool = True


Entries = dict[str, tuple[str, Answer]]  # prompt id: (prompt, answer)


def _read_cache(path: Path) -> Entries:
    """(prompt, answer) by prompt id."""
    out: Entries = {}
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            data = json.loads(line)
            text = None if data["answer"] is None else str(data["answer"])
            out[str(data["id"])] = (str(data.get("prompt") or ""), Answer(text, bool(data.get("finished", True))))
        except (ValueError, KeyError, TypeError):
            continue  # a torn or foreign line: that answer is generated again
    return out


def _write_cache(path: Path, entries: Entries) -> None:
    """Every answer kept so far, this run's and earlier runs' (a smaller run keeps a larger one's answers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps({"id": k, "prompt": p, "answer": a.text, "finished": a.finished})
                                    + "\n" for k, (p, a) in sorted(entries.items())))


def _generate_llama(gguf: Path, missing: list[QualityItem], entries: Entries, result: ReplayResult, budget_s: float | None, max_new: int,
                    progress: Progress) -> bool:
    """Answer ``missing`` with llama.cpp on ``gguf`` (greedy), while the budget lasts; True when it ran out."""
    from slowtune.llama import complete_chat, load_gguf

    started = time.perf_counter()
    llm = load_gguf(gguf, n_ctx=2048)
    try:
        for done, item in enumerate(missing):
            elapsed = time.perf_counter() - started
            if budget_s is not None and done and elapsed + elapsed / done > budget_s:
                return True
            progress.report("replay", result.cached + done, result.cached + len(missing),
                            status="the base model answers general prompts (llama.cpp)")
            progress.check()
            reply = complete_chat(llm, [{"role": "user", "content": item.question}], temperature=0.0,
                                  max_tokens=max_new, seed=0)
            choice = reply["choices"][0]
            entries[item.id] = (item.question, kept_answer(choice["message"]["content"] or "",
                                                           choice.get("finish_reason") == "stop"))
            result.generated += 1
    finally:
        llm.close()
        result.generator = f"llama.cpp ({gguf.name})"
    return False


def kept_answer(text: str, stopped: bool) -> Answer:
    """The answer as kept: whole, and unfinished when the model had not ended it (None when it is empty)."""
    if stopped:
        text = text.strip()
        return Answer(text or None)
    text = text.lstrip()
    return Answer(text if text.strip() else None, finished=False)


def encode_replay(renderer: Any, result: ReplayResult, max_seq_len: int) -> list[Any]:
    """The replay rows as training examples; an unfinished answer has no end-of-turn token among its targets."""
    from slowtune.train.data import encode_all

    examples = []
    for conversation, finished in zip(result.conversations, result.finished, strict=True):
        encoded, _ = encode_all(renderer, [conversation], max_seq_len)
        for example in encoded:
            if not finished:
                _drop_end_of_turn(example, renderer.end_of_turn_ids)
            if example.n_loss_tokens:
                examples.append(example)
    return examples


def _drop_end_of_turn(example: Any, end_ids: Any) -> None:
    """Take the end-of-turn token(s) after the last answer out of the loss (and whatever the template writes after
    them): the base model had not ended that answer."""
    targets = [int(i) for i in example.mask.nonzero()[0]]
    if not targets:
        return
    last = targets[-1]
    first = last
    while first - 1 >= 0 and example.mask[first - 1] and int(example.tokens[first - 1]) in end_ids:
        first -= 1
    if int(example.tokens[last]) in end_ids:
        example.mask[first:last + 1] = False


@dataclass
class ReplayResult:
    conversations: list[list[dict[str, str]]] = field(default_factory=list)
    finished: list[bool] = field(default_factory=list)  # per conversation: False when the base had not ended it
    wanted: int = 0
    cached: int = 0
    generated: int = 0
    seconds: float = 0.0
    budget_s: float | None = None
    file: str | None = None
    warning: str | None = None
    ids: list[str] = field(default_factory=list)  # the prompts used: a resumed run uses exactly these
    generator: str = "MLX"  # what answered: the model in training (LoRA off), or llama.cpp on its source GGUF

    def to_json(self) -> dict[str, Any]:
        return {"rows": len(self.conversations), "unfinished": self.finished.count(False), "ids": self.ids,
                "generator": self.generator,
                "wanted": self.wanted, "cached": self.cached,
                "generated": self.generated, "seconds": round(self.seconds, 2),
                "budget_s": None if self.budget_s is None else round(self.budget_s, 1), "file": self.file,
                "warning": self.warning}


def build_replay(engine: Any, renderer: Any, wanted: int, cache: Path, *, budget_s: float | None,
                 prompts: list[QualityItem] | None = None, max_new: int = MAX_NEW_TOKENS,
                 step_s: float | None = None, gguf: Path | None = None, progress: Progress | None = None,
                 warn: Callable[[str], None] | None = None) -> ReplayResult:
    """``wanted`` replay conversations (fewer when there are not so many prompts or not so much time).

    ``budget_s``: the most seconds generating may take (None: no limit). Cached answers cost nothing.
    ``step_s``: seconds one decoding step of a batch takes, when known (the run's scoring of the base model
    measured it): then only the batches that fit in the budget are started. Without it, a first small batch is
    timed and the rest follows as the budget allows.
    ``gguf``: the GGUF file the base model was imported from (unchanged): llama.cpp answers with it, one prompt at a
    time, as long as the budget allows.
    """
    from slowtune.train.decode import greedy

    progress = ensure(progress)
    result = ReplayResult(wanted=wanted, budget_s=budget_s, file=str(cache))
    if wanted < MIN_ROWS:  # a handful of rows would not matter either way: nothing is generated
        return result
    available = replay_prompts() if prompts is None else prompts
    items = spread(available, wanted)  # every kind of prompt in its share, not the file's first kind only
    entries = _read_cache(cache)
    result.cached = sum(1 for i in items if i.id in entries)
    missing = [i for i in items if i.id not in entries]
    stop = set(renderer.end_of_turn_ids)

    def encode(item: QualityItem) -> list[int]:
        text = renderer.render_prompt([{"role": "user", "content": item.question}])
        ids = [int(t) for t in renderer.tokenizer(text, add_special_tokens=False)["input_ids"]]
        if renderer.adds_bos and (not ids or ids[0] != renderer.bos_id):
            ids.insert(0, int(renderer.bos_id))
        return ids

    def generate(batch: list[QualityItem]) -> None:
        outs = greedy(engine, [encode(i) for i in batch], max_new + 1, stop, lora=False, progress=progress)
        for item, out in zip(batch, outs, strict=True):
            text = renderer.tokenizer.decode(out[:max_new], skip_special_tokens=True)
            entries[item.id] = (item.question, kept_answer(text, len(out) <= max_new))
        result.generated += len(batch)

    short_of_time = False
    started = time.perf_counter()
    if gguf is not None and missing:
        short_of_time = _generate_llama(gguf, missing, entries, result, budget_s, max_new, progress)
        missing = []
        _write_cache(cache, entries)
    elif step_s is not None and budget_s is not None and step_s > 0:
        batches = int(budget_s // (step_s * (max_new + 1)))
        short_of_time = batches * BATCH < len(missing)
        missing = missing[: batches * BATCH]
    done = 0
    while done < len(missing):
        progress.report("replay", result.cached + done, len(items), status="the base model answers general prompts")
        size = BATCH if step_s is not None or budget_s is None else FIRST_BATCH if done == 0 else BATCH
        if done > 0 and budget_s is not None and step_s is None:
            per = (time.perf_counter() - started) / done
            affordable = int((budget_s - (time.perf_counter() - started)) / per) if per > 0 else len(missing)
            if affordable <= 0:
                short_of_time = True
                break
            size = min(size, affordable)
        generate(missing[done:done + size])
        done += size
        _write_cache(cache, entries)
    result.seconds = time.perf_counter() - started
    usable = [i for i in items if i.id in entries and entries[i.id][1].text is not None]
    answered = sum(1 for i in items if i.id in entries)
    drift = " The tuned model may drift from the base where the documents say nothing."
    why = ("the base model is too slow to answer general questions within a tenth of the training time here "
           f"({budget_s or 0:.0f} s)" if short_of_time else
           f"only {len(available)} general prompts ship with slowtune" if len(available) < wanted else
           f"{answered - len(usable)} of the base model's answers were empty")
    if len(usable) < MIN_ROWS:
        result.warning = f"Replay was skipped: {why}.{drift}"
        usable = []
    elif len(usable) < wanted:
        result.warning = f"Replay was cut to {len(usable)} of the {wanted} general questions wanted: {why}."
    if result.warning and warn is not None:
        warn(result.warning)
    result.ids = [i.id for i in usable]
    result.conversations = [[{"role": "user", "content": i.question},
                             {"role": "assistant", "content": str(entries[i.id][1].text)}] for i in usable]
    result.finished = [entries[i.id][1].finished for i in usable]
    return result
