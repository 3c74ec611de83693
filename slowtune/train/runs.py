"""Run folders: what a training run is on disk, and its row in the project.

A run folder holds what the trainer writes (``run.json``: the configuration, the engine, the planned steps and how
the run ended; ``metrics.jsonl``: one line per step; ``checkpoints/``; the adapter) and what the app adds: the
trainer's output (``train.log``) and, while an app's trainer works on it, ``trainer.pid``. A run's id is its folder's
name, ``YYYYmmdd-HHMMSS-xxxxxx``: the local time it started and six random hex digits (``new_run_id``, read back by
``parse_run_id`` and ``run_id_time``, the one place that reads it).

- ``read_run`` and ``list_runs``: one model of a run (``RunInfo``) for every page, from its folder and, where the
  project has one, its row in the ``runs`` table (the table adds "paused", and the runs trained elsewhere for the
  project).
- ``record_run``: the only writer of that row (the CLI at the end of a run, the app as its trainer starts and ends);
  ``reconcile_runs`` brings the rows in line with folders no job followed to their end.
- ``MetricsTail``: the lines added to ``metrics.jsonl`` since the last look, for a live chart.
- ``trainer_pid`` / ``write_pid``: the pid file, which tells a run an app is training from one trained in a terminal,
  and an interrupted run from either.
- ``write_stage`` / ``read_stage``: what the trainer is doing before its first step (``stage.json``: reading the
  data, loading the model, checking the base model, preparing replay), in the user's words, for the app's run view.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slowtune.fsutil import atomic_write_text
from slowtune.store import DB_NAME, Project, StoreError

__all__ = [
    "ACTIVE_WINDOW_S",
    "METRICS_NAME",
    "PID_NAME",
    "RUN_JSON",
    "STAGE_NAME",
    "MetricsTail",
    "RunInfo",
    "default_run_dir",
    "history_from_records",
    "list_runs",
    "model_name",
    "new_run_dir",
    "new_run_id",
    "overfitting",
    "parse_run_id",
    "read_run",
    "read_stage",
    "reconcile_runs",
    "record_run",
    "run_id_time",
    "run_json",
    "trainer_pid",
    "validation_history",
    "write_pid",
    "write_stage",
]

log = logging.getLogger(__name__)

RUN_JSON = "run.json"
METRICS_NAME = "metrics.jsonl"
PID_NAME = "trainer.pid"
STAGE_NAME = "stage.json"
RUNS_FOLDER = "runs"  # a project's run folders, and slowtune's own for data that is not a project
ACTIVE_WINDOW_S = 120.0  # a run folder written to this recently, by a trainer no app started, is still training
_RUN_ID_TIME_FORMAT = "%Y%m%d-%H%M%S"
_RUN_ID = re.compile(r"^(\d{8}-\d{6})(?:-\w+)?$")


# --- run ids and new run folders ------------------------------------------------------------------------------

def new_run_id() -> str:
    """A new run's id: the local time now and six random hex digits ("20250301-090000-1a2b3c")."""
    return time.strftime(_RUN_ID_TIME_FORMAT + "-") + uuid.uuid4().hex[:6]


def parse_run_id(run_id: str) -> time.struct_time | None:
    """The local time the run named ``run_id`` started, or None for a name ``new_run_id`` did not make."""
    match = _RUN_ID.match(run_id)
    if match is None:
        return None
    try:
        return time.strptime(match.group(1), _RUN_ID_TIME_FORMAT)
    except ValueError:
        return None


def run_id_time(run_id: str) -> float | None:
    """When the run named ``run_id`` started (seconds since the epoch), or None for another kind of name."""
    parsed = parse_run_id(run_id)
    if parsed is None:
        return None
    try:
        return time.mktime(parsed)
    except (OverflowError, ValueError):
        return None


def default_run_dir(data: Path) -> tuple[Path, Path | None]:
    """Where a new run on ``data`` goes (nothing is created yet), and the project to record it in, if the data is
    one: the project's runs/ folder, else slowtune's own."""
    from slowtune import paths

    run_id = new_run_id()
    if (data / DB_NAME).exists():
        return data / RUNS_FOLDER / run_id, data
    return paths.data_dir() / RUNS_FOLDER / run_id, None


def new_run_dir(project_root: Path) -> Path:
    """A new run folder's path under the project; nothing is created yet."""
    return default_run_dir(project_root)[0]


def model_name(path: str | Path) -> str:
    """A model's name as the user knows it: the catalog's name for a downloaded repo, else the folder's name."""
    from slowtune.models import catalog

    for part in Path(path).parts:
        if part.startswith("models--"):
            repo = part.removeprefix("models--").replace("--", "/", 1)
            entry = catalog.find(repo)
            return entry.name if entry else repo
    return Path(path).name or str(path)


# --- reading the folder ----------------------------------------------------------------------------------------

def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def json_object(text: str | None) -> dict[str, Any]:
    """A JSON object's text as a dict; {} for anything else (nothing, damaged, another type)."""
    try:
        data = json.loads(text or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def number_or_none(value: Any) -> float | None:
    """A JSON number as a float; None for anything else (null, a string, a bool)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def run_json(run_dir: Path) -> dict[str, Any]:
    """The run folder's run.json, or {} when there is none (yet) or it cannot be read."""
    return _read_json(run_dir / RUN_JSON) or {}


def _last_record(path: Path) -> dict[str, Any] | None:
    """The last complete line of a metrics file (read from its end)."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - 16384))
            lines = handle.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and "step" in record:
                return record
    return None


def trainer_pid(run_dir: Path) -> int | None:
    """The trainer process still working on ``run_dir`` (from its pid file), or None."""
    import psutil

    data = _read_json(run_dir / PID_NAME)
    if not data:
        return None
    try:
        process = psutil.Process(int(data["pid"]))
        if abs(process.create_time() - float(data["created"])) > 2 or process.status() == psutil.STATUS_ZOMBIE:
            return None  # the number was reused by another process, or the trainer has ended
        return process.pid
    except (psutil.Error, KeyError, TypeError, ValueError):
        return None


def write_pid(run_dir: Path, pid: int) -> None:
    """Say in the run folder that the process ``pid`` (an app's trainer) works on it."""
    import psutil

    try:
        created = psutil.Process(pid).create_time()
    except psutil.Error:
        created = time.time()
    atomic_write_text(run_dir / PID_NAME, json.dumps({"pid": pid, "created": created}))


def write_stage(run_dir: Path, stage: str, text: str) -> None:
    """Say in the run folder what the trainer is doing now (``stage``: a short key; ``text``: the user's words)."""
    atomic_write_text(run_dir / STAGE_NAME, json.dumps({"stage": stage, "text": text, "time": time.time()}))


def read_stage(run_dir: Path) -> dict[str, Any] | None:
    """The trainer's last ``write_stage`` in ``run_dir`` ({"stage", "text", "time"}), or None when there is none or
    it cannot be read."""
    data = _read_json(run_dir / STAGE_NAME)
    if data is None or not isinstance(data.get("stage"), str) or not isinstance(data.get("text"), str):
        return None
    return data


@dataclass
class RunInfo:
    """A training run: its folder's run.json, newest checkpoint and metrics, and its row in the project if any."""

    run_dir: Path
    status: str  # run.json's (running, done, cancelled, failed), else the runs row's, else "unknown"
    model: str  # the base model as the run names it: a folder or a repo id ("?" when nothing says)
    engine: str = ""
    steps: int | None = None  # the steps run.json (or the runs row) records; None while the run trains
    total_steps: int | None = None
    checkpoint_step: int | None = None  # where Resume continues
    train_loss: float | None = None  # the final training loss run.json (or the runs row) records
    val_loss: float | None = None
    best_val: float | None = None
    error: str | None = None  # run.json's, for a failed run
    logged_step: int | None = None  # the last line of metrics.jsonl: its step and training loss
    logged_loss: float | None = None
    started: float = 0.0  # from the run id, else when run.json was written
    created_at: float = 0.0  # when the project recorded the run, else the folder's time
    project: Path | None = None  # the project run.json names
    recorded: str | None = None  # the status in the project's runs table (it knows "paused")
    live_pid: int | None = None  # the trainer an app started, still alive
    elsewhere: bool = False  # no app started it, but it is being written to: `slowtune train` in a terminal
    # Filled in by the export side when it looks at the run: why it cannot be exported ("" when it can, or before
    # anyone looked), and the base model folder its adapter names.
    problem: str = ""
    base_dir: Path | None = None
    # Learning quality (slowtune.train.scorer): what went wrong in words (overfitting, lost retention, leakage,
    # replay skipped), the last scoring, and which checkpoint an export uses and why.
    warnings: list[dict[str, Any]] = field(default_factory=list)
    scores: dict[str, Any] | None = None
    chosen: dict[str, Any] | None = None
    stopped_early: str | None = None
    scored: int = 0  # how many checkpoints the run scored (the base model's scoring before step 1 not counted)

    @property
    def run_id(self) -> str:
        return self.run_dir.name

    @property
    def overfitting(self) -> dict[str, Any] | None:
        """The run's warning that the model memorised (validation loss rose while training loss fell), or None."""
        return next((w for w in self.warnings if w.get("kind") == "overfitting"), None)

    @property
    def checkpoint_words(self) -> str:
        """Which checkpoint an export uses, in a few words for a list ("step 40, the best of 3 scored"): never
        "the best" for the only checkpoint that was scored."""
        chosen = self.chosen or {}
        step = chosen.get("step")
        at = f"step {step:,}" if isinstance(step, int) else ""
        if chosen.get("folder") == "best":
            best = "the only one scored" if self.scored == 1 else \
                f"the best of {self.scored} scored" if self.scored > 1 else "the best one"
            return f"{at}, {best}" if at else best
        return f"{at}, the last one" if at else "the last one"

    @property
    def step(self) -> int:
        """The last step trained: the recorded count, else the metrics file's last step."""
        return self.steps or self.logged_step or 0

    @property
    def loss(self) -> float | None:
        """The last training loss: the recorded one, else the metrics file's last."""
        return self.train_loss if self.train_loss is not None else self.logged_loss

    @property
    def validation_loss(self) -> float | None:
        """The best validation loss, else the last one."""
        return self.best_val if self.best_val is not None else self.val_loss

    @property
    def training(self) -> bool:
        return self.live_pid is not None or self.elsewhere

    @property
    def resumable(self) -> bool:
        return not self.training and self.status != "done" and self.checkpoint_step is not None

    @property
    def exportable(self) -> bool:
        return not self.problem

    @property
    def state(self) -> str:
        """What the user is told: training, finished, paused, cancelled, failed or interrupted."""
        if self.training:
            return "training"
        if self.status == "done":
            return "finished"
        if self.status == "cancelled":
            return "paused" if self.recorded == "paused" else "cancelled"
        if self.status == "failed":
            return "failed"
        return "interrupted"  # run.json still says running and no trainer is alive: a crash, a kill, a power cut

    @property
    def started_text(self) -> str:
        return time.strftime("%d %b %Y %H:%M", time.localtime(self.started))

    @property
    def base_label(self) -> str:
        """A folder's name, or the repo id as it is ("Qwen/Qwen2.5-0.5B-Instruct")."""
        text = self.model.rstrip("/")
        return Path(text).name if Path(text).is_absolute() or text.startswith("~") else text


def overfitting(history: list[tuple[int, float, float | None]], after: int = 2) -> dict[str, Any] | None:
    """Whether validation loss rises while training loss falls: ``history`` is (step, validation loss, mean training
    loss since the previous validation). Flagged when the last validation loss is 10% (and 0.05) above the lowest,
    seen at least ``after`` validations ago (two while the run goes on: one rise may be noise), while the training
    loss went on falling since then."""
    if len(history) < after + 1:
        return None
    low = min(range(len(history)), key=lambda i: history[i][1])
    step, val, _ = history[-1]
    if low > len(history) - 1 - after or val < history[low][1] * 1.1 + 0.05:
        return None
    train_then, train_now = history[low][2], history[-1][2]
    if train_then is None or train_now is None or train_now >= train_then:
        return None
    return {"kind": "overfitting", "step": step, "best_step": history[low][0],
            "message": (f"The model is memorising: validation loss rose from {history[low][1]:.2f} (step "
                        f"{history[low][0]}) to {val:.2f} (step {step}) while training loss fell from {train_then:.2f} "
                        f"to {train_now:.2f}. The best checkpoint is kept.")}


def validation_history(path: Path) -> tuple[list[tuple[int, float, float | None]], list[float]]:
    """(step, validation loss, mean training loss since the one before) from a run's metrics, and the training
    losses since its last validation: what a resumed run needs to go on watching for overfitting."""
    records = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return history_from_records(records)


def history_from_records(records: list[Any]) -> tuple[list[tuple[int, float, float | None]], list[float]]:
    """``validation_history`` of metrics records already read (a live chart's)."""
    history: list[tuple[int, float, float | None]] = []
    losses: list[float] = []
    for record in records:
        if not isinstance(record, dict):
            continue
        if isinstance(record.get("loss"), int | float):
            losses.append(float(record["loss"]))
        if isinstance(record.get("val_loss"), int | float):
            history.append((int(record["step"]), float(record["val_loss"]), sum(losses) / len(losses) if losses else None))
            losses = []
    return history, losses


def chosen_checkpoint(run_dir: Path) -> dict[str, Any]:
    """Which adapter an export of the run uses, and why: ``best/`` when the run kept one, else the last."""
    best = run_dir / "best" / "adapter_config.json"
    if best.exists():
        try:
            meta = json.loads(best.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = {}
        if isinstance(meta, dict) and isinstance(meta.get("step"), int):
            why = meta.get("chosen_by") or (f"the lowest validation loss ({meta['val_loss']:.3f})"
                                            if isinstance(meta.get("val_loss"), int | float) else "the run")
            return {"folder": "best", "step": meta["step"], "why": str(why),
                    "text": f"the checkpoint of step {meta['step']}, chosen by {why}"}
    steps = None
    last = run_dir / "adapter_config.json"
    if last.exists():
        try:
            steps = json.loads(last.read_text(encoding="utf-8")).get("steps")
        except (OSError, ValueError, AttributeError):
            steps = None
    where = f" (step {steps})" if isinstance(steps, int) else ""
    return {"folder": ".", "step": steps, "why": "nothing was scored",
            "text": f"the last checkpoint{where}: nothing was scored during the run"}


def run_config(run_dir: Path) -> dict[str, Any]:
    """The configuration the run's run.json records ({} when there is none)."""
    info = _read_json(run_dir / RUN_JSON) or {}
    return info["config"] if isinstance(info.get("config"), dict) else {}


def train_args(config: dict[str, Any]) -> list[str]:
    """The ``slowtune train`` arguments that train a new run as the run whose run.json ``config`` this is: the
    same model, data and settings (a new run folder). Settings the config does not record are left to the
    defaults."""
    args: list[str] = []

    def add(flag: str, value: Any) -> None:
        if value is not None and value != "":
            args.extend([flag, f"{value:g}" if isinstance(value, float) else str(value)])

    add("--model", config.get("model"))
    add("--data", config.get("data"))
    lora = config.get("lora") if isinstance(config.get("lora"), dict) else {}
    add("--rank", lora.get("rank"))
    add("--alpha", lora.get("alpha"))
    add("--lora-layers", lora.get("num_layers"))
    add("--lr", config.get("learning_rate"))
    if config.get("iters"):
        add("--iters", config.get("iters"))
    else:
        add("--epochs", config.get("epochs"))
    for flag, key in (("--max-seq-len", "max_seq_len"), ("--batch-size", "batch_size"), ("--seed", "seed"),
                      ("--replay", "replay"), ("--score-every", "score_every")):
        add(flag, config.get(key))
    if config.get("early_stop") is False:
        args.append("--no-early-stop")
    return args


def read_run(run_dir: Path, row: Any = None) -> RunInfo | None:
    """The run in ``run_dir``, with its row of the project's runs table when given (a ``sqlite3.Row``); None when
    training never started there (no run.json) and the project has no record of it."""
    from slowtune.train.checkpoint import latest_checkpoint

    info = _read_json(run_dir / RUN_JSON)
    has_json = info is not None
    if info is None:
        if row is None:
            return None
        info = {}
    config = info.get("config") if isinstance(info.get("config"), dict) else {}
    metrics: dict[str, Any] = {}
    if row is not None:
        metrics = json_object(row["metrics_json"])
        config = config or json_object(row["config_json"])
    point = latest_checkpoint(run_dir) if has_json else None
    checkpoint_step = None
    if point is not None:
        state = _read_json(point / "state.json") or {}
        checkpoint_step = int((state.get("state") or {}).get("step", 0))
    last = _last_record(run_dir / METRICS_NAME) or {}
    started = run_id_time(run_dir.name)
    if started is None:
        try:
            started = (run_dir / RUN_JSON).stat().st_mtime
        except OSError:
            started = 0.0
    created = float(row["created_at"]) if row is not None else 0.0
    if not created:
        try:
            created = run_dir.stat().st_mtime
        except OSError:
            created = 0.0
    status = str(info.get("status") or (row["status"] if row is not None else "")
                 or ("running" if has_json else "unknown"))
    steps = info.get("steps", metrics.get("steps"))
    total = info.get("total_steps")
    project = info.get("project")
    live_pid = trainer_pid(run_dir)
    elsewhere = False
    if status == "running" and live_pid is None and not (run_dir / PID_NAME).exists():
        # No app started this trainer (an app leaves its pid file behind): `slowtune train` from a terminal, or a
        # run that crashed. Files written within the last few steps mean it is still working.
        written = max((p.stat().st_mtime for p in (run_dir / METRICS_NAME, run_dir / RUN_JSON) if p.exists()),
                      default=0.0)
        elsewhere = time.time() - written < max(ACTIVE_WINDOW_S, 3 * float(last.get("step_s") or 0))
    warnings = [w for w in info.get("warnings") or [] if isinstance(w, dict) and w.get("message")]
    # A run that ended with its validation loss well above its lowest while its training loss fell memorised,
    # whether or not the trainer said so while it ran (it waits for two validations after the lowest).
    if (status == "done" and not any(w.get("kind") == "overfitting" for w in warnings)
            and (memorised := overfitting(validation_history(run_dir / METRICS_NAME)[0], after=1))):
        warnings.append(memorised)
    return RunInfo(
        run_dir=run_dir, status=status,
        model=str(config.get("model") or (row["base_model"] if row is not None else "") or "?"),
        engine=str(info.get("engine") or (row["engine"] if row is not None else "") or ""),
        steps=steps if isinstance(steps, int) and not isinstance(steps, bool) else None,
        total_steps=int(total) if isinstance(total, int | float) and total else None,
        checkpoint_step=checkpoint_step, train_loss=number_or_none(info.get("train_loss", metrics.get("train_loss"))),
        val_loss=number_or_none(info.get("val_loss")), best_val=number_or_none(info.get("best_val")),
        error=str(info["error"]) if info.get("error") else None,
        logged_step=int(last["step"]) if isinstance(last.get("step"), int | float) else None,
        logged_loss=number_or_none(last.get("loss")), started=started, created_at=created,
        project=Path(project) if isinstance(project, str) and project else None,
        recorded=str(row["status"]) if row is not None else None, live_pid=live_pid, elsewhere=elsewhere,
        warnings=warnings,
        scores=(info.get("scoring") or [None])[-1] if isinstance(info.get("scoring"), list) else None,
        scored=len(info["scoring"]) if isinstance(info.get("scoring"), list) else 0,
        chosen=(info.get("chosen") if isinstance(info.get("chosen"), dict)
                else chosen_checkpoint(run_dir) if status == "done" else None),
        stopped_early=str(info["stopped_early"]) if info.get("stopped_early") else None,
    )


def list_runs(project: Project, *, with_records: bool = False) -> list[RunInfo]:
    """The project's runs, newest first.

    By default the run folders in its runs/ folder, newest started first (the folders are the truth; the runs
    table adds "paused"). ``with_records`` lists, as the Export page does, every run the project records wherever
    its folder is (trained with ``--out`` elsewhere, or gone), and the run folders in runs/ it has no record of
    (trained elsewhere and copied in, or a record lost with a crash), newest recorded first.
    """
    rows = list(project.conn.execute("SELECT * FROM runs"))
    folder = project.root / RUNS_FOLDER
    if not with_records:
        by_id = {row["id"]: row for row in rows}
        runs = []
        if folder.is_dir():
            for run_dir in folder.iterdir():
                if run_dir.is_dir() and (run_dir / RUN_JSON).exists() and \
                        (info := read_run(run_dir, by_id.get(run_dir.name))) is not None:
                    runs.append(info)
        return sorted(runs, key=lambda r: (r.started, r.run_id), reverse=True)
    found: dict[Path, RunInfo] = {}
    for row in rows:
        path = (Path(row["adapter_path"]) if row["adapter_path"] else folder / row["id"]).resolve()
        if (info := read_run(path, row)) is not None:
            found[path] = info
    if folder.is_dir():
        for path in folder.iterdir():
            if path.is_dir() and (path / RUN_JSON).exists() and path.resolve() not in found \
                    and (info := read_run(path.resolve())) is not None:
                found[path.resolve()] = info
    return sorted(found.values(), key=lambda r: (r.created_at, r.run_id), reverse=True)


# --- the project's record --------------------------------------------------------------------------------------

def record_run(project: Project | Path, run_dir: Path, status: str, *, error: str | None = None,
               config: dict[str, Any] | None = None, engine: str | None = None) -> None:
    """Write the run's row in the project's runs table (what the Export page lists); the only writer of the row.

    ``project`` is an open project or its folder. The base model, configuration, engine and figures (steps,
    training and validation loss) are the run folder's run.json's, unless ``config`` and ``engine`` are given (the
    CLI knows them before the trainer writes run.json); a failed run's error is run.json's unless given. The first
    write inserts the row; later ones change its engine, status, figures and error. Never fails the run: a project
    that cannot be written to is logged.
    """
    info = run_json(run_dir)
    if config is None:
        config = info.get("config") if isinstance(info.get("config"), dict) else {}
    if error is None and status == "failed" and info.get("error"):
        error = str(info["error"])
    metrics = {k: info.get(k) for k in ("steps", "train_loss", "val_loss", "best_val")}
    now = time.time()
    values = (run_dir.name, str(config.get("model", "")), str(engine or info.get("engine") or "auto"), status,
              json.dumps(config), json.dumps(metrics), str(run_dir), error, now, now)
    sql = """INSERT INTO runs(id, base_model, engine, status, config_json, metrics_json, adapter_path, error,
                              created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT(id) DO UPDATE SET engine = excluded.engine, status = excluded.status,
                 metrics_json = excluded.metrics_json, error = excluded.error, updated_at = excluded.updated_at"""
    try:
        if isinstance(project, Project):
            project.conn.execute(sql, values)
        else:
            with Project.open(project) as opened:
                opened.conn.execute(sql, values)
    except (sqlite3.Error, StoreError, OSError) as exc:
        log.warning("Could not record run %s in the project: %s", run_dir.name, exc)


def reconcile_runs(project: Project | Path, runs: list[RunInfo]) -> None:
    """Bring the project's runs table in line with the folders of ``runs`` (``list_runs``), where no job could: a
    run trained while the app was closed or quit before its trainer stopped, or one the table never heard of (the
    Export page reads it). Each run's ``recorded`` is updated too."""
    table = {"finished": "done", "paused": "paused", "cancelled": "cancelled", "failed": "failed",
             "interrupted": "failed"}
    for run in runs:
        status = table.get(run.state)
        if status is None or run.recorded == status or (run.recorded == "paused" and status == "cancelled"):
            continue
        if run.recorded in (None, "running", "created") or (status == "done" and run.recorded != "done"):
            error = "interrupted: the trainer stopped without finishing" if run.state == "interrupted" else \
                run.error
            record_run(project, run.run_dir, status, error=error)
            run.recorded = status


# --- following the metrics -------------------------------------------------------------------------------------

class MetricsTail:
    """Reads the lines added to a run's metrics.jsonl since the last call.

    A resumed run rewrites the file (lines after its checkpoint are dropped) under the same name; that shows as a
    new file (another inode) or a shorter one, and ``read`` then starts over and says so (``reset``).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._inode: int | None = None
        self._partial = b""

    def read(self) -> tuple[bool, list[dict[str, Any]]]:
        """(reset, records): reset is True when earlier records are no longer valid (start the chart over)."""
        try:
            stat = self.path.stat()
        except OSError:
            reset = self._offset > 0
            self._offset, self._inode, self._partial = 0, None, b""
            return reset, []
        reset = self._inode is not None and (stat.st_ino != self._inode or stat.st_size < self._offset)
        if reset:
            self._offset, self._partial = 0, b""
        self._inode = stat.st_ino
        if stat.st_size <= self._offset:
            return reset, []
        try:
            with self.path.open("rb") as handle:
                handle.seek(self._offset)
                data = handle.read(stat.st_size - self._offset)
        except OSError:
            return reset, []
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()  # a line still being written
        records = []
        for line in lines:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and isinstance(record.get("step"), int | float):
                    records.append(record)
        return reset, records
