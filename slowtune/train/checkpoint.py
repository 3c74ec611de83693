"""Checkpoints: everything a killed run needs to continue exactly where it stopped.

A checkpoint is a folder ``checkpoints/step-NNNNNN/`` holding the adapter (mlx-lm layout), the optimizer
state, and ``state.json`` (step, data cursor, best validation loss, the configuration). It is written under
a temporary name and renamed into place, and only then does ``checkpoints/latest`` name it, so a crash at
any moment leaves the previous checkpoint intact and findable. Batch order and dropout are functions of
(seed, epoch, step), so no random-generator state needs saving.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slowtune.fsutil import atomic_write_text
from slowtune.train.model import save_adapter

LATEST = "latest"
KEEP = 2
_SEP = "::"


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    cursor: int = 0  # micro-batches of this epoch already used
    best_val: float | None = None
    best_step: int | None = None
    best_score: float | None = None  # the best combined quality score (slowtune.train.scorer), and its step
    best_score_step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _flatten_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Arrays for safetensors and scalars for JSON. Parameter names contain dots, so use '::' to join."""
    arrays, scalars = {}, {}
    for key, value in state.items():
        if isinstance(value, dict):
            for sub, array in value.items():
                arrays[f"{key}{_SEP}{sub}"] = array
        elif key == "step":
            scalars["step"] = int(value.item())
        else:
            arrays[key] = value
    return arrays, scalars


def _unflatten_optimizer_state(arrays: dict[str, Any], scalars: dict[str, Any]) -> dict[str, Any]:
    import mlx.core as mx

    state: dict[str, Any] = {"step": mx.array(scalars["step"], dtype=mx.uint64)}
    for key, array in arrays.items():
        if _SEP in key:
            name, sub = key.split(_SEP, 1)
            state.setdefault(name, {})[sub] = array
        else:
            state[key] = array
    return state


def test_hook(point: str, step: int) -> None:
    """Test-only: ``SLOWTUNE_TEST_KILL=<point>:<step>`` SIGKILLs this process there, deterministically;
    ``SLOWTUNE_TEST_INTERRUPT=<point>:<step>`` sends it a SIGINT (a Ctrl-C, or the app's Pause) there."""
    import signal

    if os.environ.get("SLOWTUNE_TEST_KILL") == f"{point}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("SLOWTUNE_TEST_INTERRUPT") == f"{point}:{step}":
        os.kill(os.getpid(), signal.SIGINT)


def save_checkpoint(run_dir: Path, state: TrainState, lora_params: dict[str, Any], optimizer_state: dict[str, Any],
                    adapter_config: dict[str, Any], config: dict[str, Any]) -> Path:
    import mlx.core as mx

    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{state.step:06d}"
    final = root / name
    if _complete(final) and (root / LATEST).exists() and (root / LATEST).read_text().strip() == name:
        return final  # this step is saved already (e.g. a cancel right after a periodic save)
    tmp = root / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_adapter(tmp, lora_params, adapter_config)
    arrays, scalars = _flatten_optimizer_state(optimizer_state)
    mx.save_safetensors(str(tmp / "optimizer.safetensors"), arrays)
    test_hook("mid-checkpoint", state.step)
    atomic_write_text(tmp / "state.json", json.dumps(
        {"state": state.to_dict(), "optimizer": scalars, "config": config}, indent=2))
    if final.exists():
        # Never delete the only copy before the new one is in place: move the old one aside first.
        aside = root / f".{name}.old-{os.getpid()}"
        os.replace(final, aside)
        os.replace(tmp, final)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(tmp, final)
    atomic_write_text(root / LATEST, name + "\n")
    # Keep the newest few; older ones (and leftovers of killed writes) go.
    done = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in done[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    for leftover in [*root.glob(".step-*.tmp-*"), *root.glob(".step-*.old-*")]:
        shutil.rmtree(leftover, ignore_errors=True)
    return final


@dataclass
class Checkpoint:
    path: Path
    state: TrainState
    lora_params: dict[str, Any]
    optimizer_state: dict[str, Any]
    config: dict[str, Any]


def _complete(path: Path) -> bool:
    return all((path / f).exists() for f in ("state.json", "adapters.safetensors", "optimizer.safetensors"))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint ``latest`` names, or (if that one is gone or torn) the newest complete one."""
    root = run_dir / "checkpoints"
    pointer = root / LATEST
    if pointer.exists():
        path = root / pointer.read_text().strip()
        if _complete(path):
            return path
    done = sorted(p for p in root.glob("step-*") if p.is_dir() and _complete(p))
    return done[-1] if done else None


def load_checkpoint(path: Path) -> Checkpoint:
    import mlx.core as mx

    meta = json.loads((path / "state.json").read_text())
    lora = dict(mx.load(str(path / "adapters.safetensors")))
    opt_arrays = dict(mx.load(str(path / "optimizer.safetensors")))
    return Checkpoint(path, TrainState(**meta["state"]), lora,
                      _unflatten_optimizer_state(opt_arrays, meta["optimizer"]), meta["config"])
