"""A training run: data, engine, AdamW with warm-up and cosine decay, validation, checkpoints, resume.

``run_training(config, run_dir, progress)`` is what the CLI and the GUI call. It writes into ``run_dir``:
- ``adapters.safetensors`` + ``adapter_config.json``: the last adapter, in mlx-lm's layout (a stopped run too);
- ``best/``: the checkpoint an export uses: the best combined score of knowledge, retention and leakage
  (:mod:`slowtune.train.scorer`, scored every K steps), else the lowest validation loss;
- ``checkpoints/``: what ``resume=True`` continues from;
- ``metrics.jsonl``: one line per step, validation and scoring, for the GUI's live chart (a first line at step 0,
  ``"base": true``, holds the base model's scores: it has no loss);
- ``stage.json``: what the trainer does before its first step (``STAGES``), for the app's run view;
- ``run.json``: the configuration, the data report, the engine, replay (:mod:`slowtune.train.replay`: the base
  model's own answers mixed in), the base model's scores and each scoring, warnings (overfitting, lost retention,
  leakage), whether it stopped early, which checkpoint it chose and why, and how the run ended.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slowtune.fsutil import atomic_write_text
from slowtune.progress import Cancelled, Progress, ensure
from slowtune.train import checkpoint as ckpt
from slowtune.train.config import TrainConfig
from slowtune.train.model import TrainModel, save_adapter
from slowtune.train.runs import chosen_checkpoint, overfitting, write_stage
from slowtune.train.runs import validation_history as _validation_history

# What each step reports through the progress protocol (the metrics file has everything).
_SHOWN = ("loss", "val_loss", "tokens_per_s", "eta_s", "epoch", "mlx_peak_gb", "io_blocked_s")

# What the trainer does before its first step, in the user's words (written to the run folder's stage.json).
STAGES = {
    "data": "Reading the training data\u2026",
    "model": "Loading the model\u2026",
    "timing": "Timing one training step to plan the run\u2026",
    "base-check": "Checking the base model's answers before training (knowledge, retention, leakage)\u2026",
    "replay": "Preparing replay: the base model's own answers to general questions\u2026",
    "train": "Training\u2026",
}


class TrainError(RuntimeError):
    """The run cannot start or had to stop; the message says why in the user's terms."""


@dataclass
class RunResult:
    run_dir: Path
    status: str  # done, cancelled
    engine: str
    steps: int
    train_loss: float | None
    val_loss: float | None
    best_val: float | None
    data_report: dict[str, Any] = field(default_factory=dict)


class _Metrics:
    """Append-only metrics log. After a resume, lines past the checkpoint are dropped first."""

    def __init__(self, path: Path, keep_until_step: int | None) -> None:
        self.path = path
        if keep_until_step is not None and path.exists():
            kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and _line_step(line) <= keep_until_step]
            atomic_write_text(path, "".join(line + "\n" for line in kept))
        elif keep_until_step is None and path.exists():
            path.unlink()
        self.handle = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def _line_step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except ValueError:
        return 1 << 62  # a torn last line: drop it


def make_schedule(cfg: TrainConfig, total_steps: int) -> Any:
    import mlx.optimizers as optim

    warmup = cfg.warmup if cfg.warmup >= 0 else max(0, round(0.05 * total_steps))
    warmup = min(warmup, max(total_steps - 1, 0))
    decay = optim.cosine_decay(cfg.learning_rate, max(total_steps - warmup, 1), cfg.learning_rate * cfg.min_lr_ratio)
    if warmup == 0:
        return decay
    return optim.join_schedules([optim.linear_schedule(0.0, cfg.learning_rate, warmup), decay], [warmup])


def _finite(result: Any) -> bool:
    import mlx.core as mx

    if not math.isfinite(result.loss):
        return False
    return all(bool(mx.isfinite(g).all().item()) for g in result.grads.values())


def _peak_memory() -> dict[str, float]:
    import mlx.core as mx
    import psutil

    return {"mlx_peak_gb": mx.get_peak_memory() / 1e9, "rss_gb": psutil.Process().memory_info().rss / 1e9}


@dataclass
class PreparedData:
    train: list[Any]
    valid: list[Any]
    pad_id: int
    info: dict[str, Any]
    renderer: Any
    conversations: dict[str, list[Any]]


def prepare_data(cfg: TrainConfig, model_dir: Path) -> PreparedData:
    """Encode the conversations with the model's chat template."""
    from mlx_lm.utils import load_tokenizer

    from slowtune.train import data as tdata

    tokenizer = load_tokenizer(model_dir)
    renderer = tdata.ChatRenderer(tokenizer)
    conversations = tdata.load_conversations(Path(cfg.data))
    train, report = tdata.encode_all(renderer, conversations.get("train", []), cfg.max_seq_len)
    valid, _ = tdata.encode_all(renderer, conversations.get("valid", []), cfg.max_seq_len)
    if not train:
        from slowtune.store import DB_NAME

        hint = (" A project's training data is written by the teacher (`slowtune generate`); until then, train on a "
                "folder with train.jsonl.") if (Path(cfg.data) / DB_NAME).exists() else ""
        raise TrainError(f"{cfg.data} has no usable training conversations: {report.summary()}.{hint}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    digest = hashlib.sha256()
    for example in train:
        digest.update(example.tokens.tobytes() + example.mask.tobytes())
    info = {"report": report.as_dict(), "fingerprint": digest.hexdigest(),
            "train_examples": len(train), "valid_examples": len(valid), "date_string": renderer.date_string}
    return PreparedData(train, valid, int(pad or 0), info, renderer, conversations)


def build_engine(cfg: TrainConfig, model_dir: Path, engine: str) -> tuple[TrainModel, Any]:
    from slowtune.train.engines import MemoryEngine, StreamedEngine

    tm = TrainModel(model_dir, cfg.lora, compute_dtype=cfg.compute_dtype, seed=cfg.seed, streamed=engine == "streamed")
    if engine == "streamed":
        return tm, StreamedEngine(tm, cfg.stream)
    return tm, MemoryEngine(tm, grad_checkpoint=cfg.grad_checkpoint, head_chunk=cfg.stream.head_chunk)


def _total_steps(cfg: TrainConfig, rows: int) -> int:
    batches_per_epoch = math.ceil(rows / cfg.batch_size)
    steps_per_epoch = max(1, batches_per_epoch // cfg.grad_accum)
    return cfg.iters or max(1, math.ceil(cfg.epochs * steps_per_epoch))


def quality_warnings(base: Any, last: Any) -> list[dict[str, Any]]:
    """Warnings, in words, when the last scoring lost what the base knew or leaks the data's facts."""
    from slowtune.quality import LEAKAGE_LIMIT, RETENTION_TARGET

    out: list[dict[str, Any]] = []
    if last is None:
        return out
    axes = last.axes
    if axes.retention is not None and axes.retention < RETENTION_TARGET:
        example = (last.examples.get("retention") or [{}])[0]
        said = (f" Asked \u201c{example['question']}\u201d, it now says \u201c{_short(example['answer'])}\u201d."
                if example else "")
        out.append({"kind": "retention", "step": last.step, "value": axes.retention,
                    "message": (f"The model is losing what it knew: at step {last.step} it answers "
                                f"{_share_words(axes.retention)} of the general questions the base model answered "
                                f"right.{said}")})
    base_leak = base.axes.leakage if base is not None and base.axes.leakage is not None else 0.0
    if axes.leakage is not None and axes.leakage > LEAKAGE_LIMIT and axes.leakage > base_leak:
        example = (last.examples.get("leakage") or [{}])[0]
        said = (f" Asked \u201c{example['question']}\u201d, it said \u201c{_short(example['answer'])}\u201d."
                if example else "")
        out.append({"kind": "leakage", "step": last.step, "value": axes.leakage,
                    "message": (f"At step {last.step} the model answers {axes.leakage:.0%} of questions about things "
                                f"the documents do not mention with the documents' names or numbers.{said}")})
    return out


def _share_words(share: float) -> str:
    """A share of questions in words: "none" for 0, else "only 40%" (rounded, never shown as 0% or 100%)."""
    if share <= 0:
        return "none"
    percent = min(99, max(1, round(share * 100)))
    return f"only {percent}%"


def _short(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _timed_step(eng: Any, micro: list[Any]) -> float:
    """Seconds one optimizer step's forward and backward take (the result is thrown away)."""
    started = time.perf_counter()
    eng.loss_and_grads(micro, step=0)
    return time.perf_counter() - started


def run_training(cfg: TrainConfig, run_dir: Path, *, engine: str, progress: Progress | None = None,
                 resume: bool = False, project: Path | None = None) -> RunResult:
    import mlx.core as mx
    import mlx.optimizers as optim

    from slowtune.train import data as tdata
    from slowtune.train import replay as rp
    from slowtune.train import scorer as sc

    progress = ensure(progress)
    run_dir.mkdir(parents=True, exist_ok=True)
    model_dir = Path(cfg.model)
    restored = None
    if resume:
        path = ckpt.latest_checkpoint(run_dir)
        if path is None:
            raise TrainError(f"There is no checkpoint to resume from in {run_dir}.")
        restored = ckpt.load_checkpoint(path)
        # The run continues with the configuration it started with.
        cfg = TrainConfig.from_dict(restored.config)
    if not 0 <= cfg.replay < 1:
        raise TrainError(f"The replay share must be at least 0 and below 1 (a share of the training rows), not "
                         f"{cfg.replay}.")

    if not (model_dir / "config.json").exists():
        raise TrainError(f"The base model {model_dir} is not there any more (no config.json); the run needs it.")
    def stage(key: str) -> None:
        write_stage(run_dir, key, STAGES[key])

    stage("data")
    progress.report("prepare", 0, 3, status="reading data")
    ckpt.test_hook("prepare", 0)
    prepared = prepare_data(cfg, model_dir)
    train, valid, pad_id, data_info = prepared.train, prepared.valid, prepared.pad_id, prepared.info
    before: dict[str, Any] = {}
    if restored is not None:
        before = json.loads((run_dir / "run.json").read_text())
        fingerprint = before.get("data", {}).get("fingerprint")
        if fingerprint and fingerprint != data_info["fingerprint"]:
            raise TrainError(f"The training data in {cfg.data} changed since this run started; resuming would "
                             "not continue the same run. Start a new run instead.")
    progress.check()
    stage("model")
    progress.report("prepare", 1, 3, status=f"building the model ({engine})")
    tm, eng = build_engine(cfg, model_dir, engine)
    progress.check()

    # Replay and scoring both need to know how long a step takes; one step is timed and thrown away.
    warnings: list[dict[str, Any]] = []
    from slowtune.store import DB_NAME

    if project is not None and (project / DB_NAME).exists():
        from slowtune.dataset import recipe_shortfall
        from slowtune.store import Project

        with Project.open(project) as opened:
            if shortfall := recipe_shortfall(opened):
                warnings.append({"kind": "recipe", "step": 0, "message": shortfall})
    items = sc.load_run_items(Path(cfg.data), prepared.conversations) if cfg.score_every != 0 else None
    step_s = 0.0
    if cfg.replay > 0 or (items is not None and cfg.score_every < 0):
        stage("timing")
        probe_batches = tdata.make_batches(train, cfg.batch_size, seed=cfg.seed, epoch=0, pad_id=pad_id)
        step_s = _timed_step(eng, probe_batches[: cfg.grad_accum])
    # The base model's scores first (LoRA off): they also time how fast it answers, which sizes replay.
    scorer = None
    base_scoring = None
    if items is not None:
        scorer = sc.RunScorer(eng, prepared.renderer, items)
        stage("base-check")
        progress.report("prepare", 2, 3, status="scoring the base model")
        base_scoring = scorer.baseline(progress)
    replay_info = None
    resumed_replay = (before.get("replay") or {}).get("ids") if restored is not None else None
    if cfg.replay > 0:
        stage("replay")
    if cfg.replay > 0 and isinstance(resumed_replay, list):
        # A resumed run trains on exactly the rows it started with: the same prompts, from the cache.
        chosen_prompts = [p for p in rp.replay_prompts() if p.id in set(resumed_replay)]
        from slowtune.models.gguf_import import source_gguf

        replay = rp.build_replay(eng, prepared.renderer, len(chosen_prompts), rp.cache_file(Path(cfg.data), model_dir),
                                 budget_s=None, prompts=chosen_prompts, gguf=source_gguf(model_dir), progress=progress)
    elif cfg.replay > 0:
        wanted = rp.replay_rows_wanted(len(train), cfg.replay)
        estimate = step_s * _total_steps(cfg, len(train) + wanted)
        from slowtune.models.gguf_import import source_gguf

        replay = rp.build_replay(eng, prepared.renderer, wanted, rp.cache_file(Path(cfg.data), model_dir),
                                 budget_s=rp.TIME_SHARE * estimate, step_s=scorer.step_s if scorer else None,
                                 gguf=source_gguf(model_dir), progress=progress)
    if cfg.replay > 0:
        train = train + rp.encode_replay(prepared.renderer, replay, cfg.max_seq_len)
        replay_info = replay.to_json()
        if replay.warning:
            warnings.append({"kind": "replay", "step": 0, "message": replay.warning})
    total = _total_steps(cfg, len(train))
    interval = 0
    scoring_notes = (scorer.notes if scorer is not None else items.notes if items is not None
                     else ["Knowledge, retention and leakage were not checked during this run (turned off)."])
    if scorer is not None and base_scoring is not None:
        if not scorer.active:
            scorer = None
        elif isinstance(before.get("score_every"), int) and before["score_every"] > 0:
            interval = before["score_every"]  # a resumed run scores at the steps it would have
        else:
            interval = (cfg.score_every if cfg.score_every > 0
                        else sc.choose_interval(scorer.scoring_estimate(), step_s, total))
    # Without held-out questions about the data, scores cannot tell a trained checkpoint from an untrained one
    # (retention and leakage are best before any training): they only warn, and the validation loss picks.
    by_scores = scorer is not None and bool(scorer.items.knowledge)
    progress.report("prepare", 3, 3, status=f"{len(train)} conversations, {engine} engine")

    optimizer = optim.AdamW(learning_rate=make_schedule(cfg, total), weight_decay=cfg.weight_decay)
    state = ckpt.TrainState()
    if restored is not None:
        tm.set_lora_parameters(restored.lora_params)
        optimizer.state = restored.optimizer_state
        state = restored.state
    optimizer.init(tm.lora_parameters())
    # What a resumed run keeps: the scorings up to its checkpoint, and the best checkpoint kept so far (it may be
    # later than the checkpoint: it stays the one to beat).
    history = [sc.Scoring(step=int(h["step"]), axes=_axes(h), seconds=float(h.get("seconds") or 0.0),
                          examples=h.get("examples") or {})
               for h in before.get("scoring", []) if isinstance(h, dict) and int(h.get("step", 0)) <= state.step]
    if restored is not None and by_scores:
        kept = _json_dict(run_dir / "best" / "adapter_config.json").get("axes")
        if isinstance(kept, dict) and isinstance(kept.get("score"), int | float):
            state.best_score = max(state.best_score or 0.0, float(kept["score"]))
    valid_batches = tdata.make_batches(valid, cfg.batch_size, seed=cfg.seed, epoch=0, pad_id=pad_id) if valid else []
    if cfg.val_batches >= 0:
        valid_batches = valid_batches[: cfg.val_batches]

    if restored is not None and project is None:
        project_text = before.get("project")
        project = Path(project_text) if project_text else None
    summary: dict[str, Any] = {
        "config": cfg.to_dict(), "engine": engine, "data": data_info, "total_steps": total, "status": "running",
        "project": str(project) if project else None, "replay": replay_info,
        "base_scores": base_scoring.to_json() if base_scoring is not None else None,
        "score_every": interval or None, "scoring_notes": scoring_notes, "picked_by": (
            "scores" if by_scores else "validation loss" if valid_batches else "last"),
        "step_s_estimate": round(step_s, 3) or None,
        "scoring_estimate_s": round(scorer.scoring_estimate(), 3) if scorer is not None else None,
        "scoring": [h.to_json() for h in history], "warnings": warnings}
    atomic_write_text(run_dir / "run.json", json.dumps(summary, indent=2, default=str))
    metrics = _Metrics(run_dir / "metrics.jsonl", state.step if restored else None)
    if scorer is not None and base_scoring is not None and restored is None:
        # The base model's scores start the quality chart (step 0: no loss, no training yet).
        metrics.write({"step": 0, "base": True,
                       **{k: v for k, v in base_scoring.axes.to_json().items() if k != "counts"}})
    epoch_batches = tdata.make_batches(train, cfg.batch_size, seed=cfg.seed, epoch=state.epoch, pad_id=pad_id)
    stage("train")

    def save() -> None:
        ckpt.save_checkpoint(run_dir, state, tm.lora_parameters(), optimizer.state, tm.adapter_config(),
                             cfg.to_dict())

    def validate() -> float | None:
        """Mean loss per token over the validation set, a few batches per pass over the weights (a streamed
        engine holds the hidden states of the batches in one pass)."""
        if not valid_batches:
            return None
        group = max(1, cfg.grad_accum)
        weighted, tokens = 0.0, 0
        for i in range(0, len(valid_batches), group):
            loss, n = eng.loss_only(valid_batches[i : i + group])
            weighted += loss * n
            tokens += n
        return weighted / max(tokens, 1)

    def write_summary(**fields: Any) -> None:
        summary.update(fields)
        summary["scoring"] = [h.to_json() for h in history]
        summary["warnings"] = warnings + quality_warnings(base_scoring, history[-1] if history else None)
        if overfit is not None:
            summary["warnings"].append(overfit)
        atomic_write_text(run_dir / "run.json", json.dumps(summary, indent=2, default=str))

    last_loss: float | None = None
    val_loss: float | None = None
    started = time.perf_counter()
    steps_this_session = 0
    status = "done"
    stopped_early: str | None = None
    val_history, losses_since_val = _validation_history(run_dir / "metrics.jsonl") if restored else ([], [])
    overfit: dict[str, Any] | None = overfitting(val_history)
    try:
        while state.step < total:
            micro = []
            while len(micro) < cfg.grad_accum:
                if state.cursor >= len(epoch_batches):
                    state.epoch += 1
                    state.cursor = 0
                    epoch_batches = tdata.make_batches(train, cfg.batch_size, seed=cfg.seed, epoch=state.epoch,
                                                       pad_id=pad_id)
                micro.append(epoch_batches[state.cursor])
                state.cursor += 1
            step_start = time.perf_counter()
            result = eng.loss_and_grads(micro, step=state.step)
            if not _finite(result):
                raise TrainError(
                    f"The loss became {result.loss} at step {state.step + 1}: training stopped. The last good "
                    f"checkpoint is kept in {run_dir / 'checkpoints'}; try a lower learning rate "
                    f"(now {cfg.learning_rate})."
                )
            params = tm.lora_parameters()
            new_params = optimizer.apply_gradients(result.grads, params)
            tm.set_lora_parameters(new_params)
            mx.eval(new_params, optimizer.state)
            state.step += 1
            steps_this_session += 1
            last_loss = result.loss
            losses_since_val.append(result.loss)
            seconds = time.perf_counter() - step_start
            n_tokens = sum(int(sum(b.lengths)) for b in micro)  # real tokens, not padding
            elapsed = time.perf_counter() - started
            eta = elapsed / steps_this_session * (total - state.step)
            record = {"step": state.step, "epoch": state.epoch, "loss": result.loss, "lr": float(optimizer.learning_rate.item()),
                      "tokens_per_s": n_tokens / seconds, "step_s": seconds, "io_blocked_s": result.io_blocked_s,
                      "bytes_read": result.bytes_read, "eta_s": eta, **_peak_memory()}
            if cfg.val_every and (state.step % cfg.val_every == 0 or state.step == total):
                val_loss = validate()
                if val_loss is not None:
                    record["val_loss"] = val_loss
                    val_history.append((state.step, val_loss, sum(losses_since_val) / len(losses_since_val)))
                    losses_since_val = []
                    overfit = overfit or overfitting(val_history)
                    if state.best_val is None or val_loss < state.best_val:
                        state.best_val, state.best_step = val_loss, state.step
                        if not by_scores:  # without scores, the lowest validation loss picks the checkpoint
                            _save_best(run_dir, tm, {"step": state.step, "val_loss": val_loss,
                                                     "chosen_by": f"the lowest validation loss ({val_loss:.3f})"})
            if scorer is not None and (state.step % interval == 0 or state.step == total):
                scored = scorer.score(state.step, progress)
                history.append(scored)
                record.update({k: v for k, v in scored.axes.to_json().items() if k != "counts"})
                combined = scored.axes.combined
                if by_scores and combined is not None and (state.best_score is None or combined > state.best_score):
                    state.best_score, state.best_score_step = combined, state.step
                    _save_best(run_dir, tm, {"step": state.step, "axes": scored.axes.to_json(),
                                             "chosen_by": f"the best combined score ({_axes_text(scored.axes)})"})
                if cfg.early_stop:
                    stopped_early = sc.plateaued_and_forgetting(history)
                write_summary()
            metrics.write(record)
            progress.report("train", state.step, total, **{k: record[k] for k in _SHOWN if k in record})
            if stopped_early:
                break
            if cfg.save_every and state.step % cfg.save_every == 0 and state.step < total:
                save()
            ckpt.test_hook("after-step", state.step)
            progress.check()
    except Cancelled:
        save()
        status = "cancelled"
    except Exception as exc:
        write_summary(status="failed", error=f"{type(exc).__name__}: {exc}", steps=state.step)
        raise
    finally:
        metrics.close()

    if status == "done":
        save()
    # The last adapter is written for a stopped run too: it can be exported as it is (and says nothing was scored).
    save_adapter(run_dir, tm.lora_parameters(), tm.adapter_config(), {"steps": state.step})
    write_summary(status=status, steps=state.step, train_loss=last_loss, val_loss=val_loss, best_val=state.best_val,
                  stopped_early=stopped_early, chosen=chosen_checkpoint(run_dir))
    return RunResult(run_dir, status, engine, state.step, last_loss, val_loss, state.best_val, data_info)


def _save_best(run_dir: Path, tm: TrainModel, meta: dict[str, Any]) -> None:
    """Replace ``best/`` whole: written beside it and renamed into place, so a crash never pairs one checkpoint's
    weights with another's step."""
    import os
    import shutil

    tmp = run_dir / f".best-{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_adapter(tmp, tm.lora_parameters(), tm.adapter_config(), meta)
    best = run_dir / "best"
    old = run_dir / f".best-{os.getpid()}.old"
    if best.exists():
        os.replace(best, old)
    os.replace(tmp, best)
    shutil.rmtree(old, ignore_errors=True)


def _json_dict(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _axes(data: dict[str, Any]) -> Any:
    from slowtune.quality import AxisScores

    return AxisScores(data.get("knowledge"), data.get("retention"), data.get("leakage"), dict(data.get("counts") or {}))


def _axes_text(axes: Any) -> str:
    parts = [f"{name} {value:.2f}" for name, value in (("knowledge", axes.knowledge), ("retention", axes.retention),
                                                       ("leakage", axes.leakage)) if value is not None]
    return ", ".join(parts)
