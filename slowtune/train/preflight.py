"""Will it fit? Memory and step-time estimates for each engine, and the engine ``auto`` picks.

The numbers come from the model's own files (tensor shapes and dtypes), the run's settings (sequence length,
batch, LoRA rank and blocks), the memory available now, the disk's measured read speed and a short matmul
probe. They are estimates with a margin, made to decide between engines and to explain a refusal.

A model outside the supported families (``slowtune.models.architectures``), or a multimodal checkpoint, is refused
first, with one message naming its config.json and the families: ``architecture_problem`` says it without reading
any weights. Every supported family runs on both engines.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slowtune import system
from slowtune.models.architectures import ArchitectureError, check_config
from slowtune.train.checkpoint import KEEP
from slowtune.train.config import TrainConfig
from slowtune.train.model import ModelError, WeightSource, read_config

GB = 1e9
_FLOAT_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
MARGIN = 0.8  # use at most this share of the available memory


@dataclass
class EngineEstimate:
    engine: str
    peak_bytes: int
    step_seconds: float
    fits: bool
    detail: dict[str, float] = field(default_factory=dict)


@dataclass
class PreflightReport:
    model: str
    architecture: str
    weight_bytes_on_disk: int
    weight_bytes_in_memory: int
    available_bytes: int
    disk_gbps: float
    compute_gflops: float
    estimates: dict[str, EngineEstimate]
    choice: str | None
    grad_checkpoint: bool
    reason: str
    spare_blocks: int = 0  # blocks that would still fit beside the streamed engine's estimate

    def summary(self) -> str:
        lines = [f"{self.model} ({self.architecture}): weights {self.weight_bytes_in_memory / GB:.2f} GB in memory; "
                 f"{self.available_bytes / GB:.1f} GB available; disk {self.disk_gbps:.2f} GB/s"]
        for e in self.estimates.values():
            mark = "fits" if e.fits else "does not fit"
            lines.append(f"  {e.engine:<12} peak ~{e.peak_bytes / GB:.2f} GB ({mark}), step ~{e.step_seconds:.1f} s "
                         "(at full --max-seq-len: an upper bound)")
        lines.append(f"  -> {self.reason}")
        return "\n".join(lines)


def _in_memory_bytes(info: Any, compute_dtype: str) -> int:
    if info.dtype in ("F32", "F16", "BF16"):
        return info.nbytes // {"F32": 4, "F16": 2, "BF16": 2}[info.dtype] * _FLOAT_BYTES[compute_dtype]
    return info.nbytes  # packed quantised weights stay packed


def measure_compute_gflops() -> float:
    """float32 matmul throughput on MLX's default device, from a ~0.1 s probe."""
    import mlx.core as mx

    a = mx.random.normal((512, 1024))
    b = mx.random.normal((1024, 1024))
    mx.eval(a @ b)
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < 0.1:
        mx.eval(a @ b)
        n += 1
    return 2 * 512 * 1024 * 1024 * n / (time.perf_counter() - start) / 1e9


_disk_cache: dict[int, float] = {}


def measure_disk_gbps(folder: Path) -> float:
    """Read speed of the disk holding ``folder`` (cached per device for this process)."""
    probe_dir = folder if os.access(folder, os.W_OK) else Path.cwd()
    device = probe_dir.stat().st_dev
    if device not in _disk_cache:
        _disk_cache[device] = system.measure_read_speed(probe_dir, size_bytes=64 * 2**20).gb_per_second
    return _disk_cache[device]


def architecture_problem(model_dir: Path) -> str | None:
    """Why slowtune cannot train the model in ``model_dir`` (its architecture, or a vision tower), or None.

    Reads config.json only; raises ModelError when it is missing or unreadable.
    """
    config = read_config(model_dir)
    if not isinstance(config, dict):
        raise ModelError(f"{model_dir / 'config.json'} is not valid: expected a JSON object.")
    try:
        check_config(config, model_dir / "config.json")
    except ArchitectureError as exc:
        return str(exc)
    except (TypeError, ValueError) as exc:
        return f"{model_dir / 'config.json'}: cannot check this model's configuration: {exc}"
    return None


def preflight(model_dir: Path, cfg: TrainConfig, *, available_bytes: int | None = None,
              disk_gbps: float | None = None, compute_gflops: float | None = None,
              output_dir: Path | None = None, free_disk_bytes: int | None = None) -> PreflightReport:
    """The estimates and the engine choice; ModelError for a folder slowtune cannot train (architecture_problem)."""
    if problem := architecture_problem(model_dir):
        raise ModelError(problem)
    config = read_config(model_dir)
    source = WeightSource(model_dir)
    arch = config.get("model_type", "?")
    L = int(config.get("num_hidden_layers", 0)) or 1
    D = int(config.get("hidden_size", 0))
    inter = int(config.get("intermediate_size", 4 * D))
    heads = int(config.get("num_attention_heads", 1))
    vocab = int(config.get("vocab_size", 0))
    n_lora = L if cfg.lora.num_layers < 0 else min(cfg.lora.num_layers, L)
    B, T, accum = cfg.batch_size, cfg.max_seq_len, cfg.grad_accum
    f = 4  # activations are float32 on these paths

    mem = {n: _in_memory_bytes(i, cfg.compute_dtype) for n, i in source.tensors.items()}
    weights = sum(mem.values())
    blocks = [sum(v for n, v in mem.items() if n.startswith(f"model.layers.{i}.")) for i in range(L)]
    biggest_outer = max((v for n, v in mem.items() if not n.startswith("model.layers.")), default=0)

    # LoRA: rank * (in + out) per adapted linear; AdamW keeps the parameter, two moments and the gradient.
    lora_params = 0
    for i in range(L - n_lora, L):
        for key in cfg.lora.keys:
            info = source.tensors.get(f"model.layers.{i}.{key}.weight")
            if info is not None:
                out_dim, in_dim = info.shape
                if info.dtype == "U32":
                    in_dim = in_dim * 32 // int(config.get("quantization", {}).get("bits", 4))
                lora_params += cfg.lora.rank * (in_dim + out_dim)
    lora_state = lora_params * 4 * 4

    block_activations = B * T * (10 * D + 4 * inter) * f + 2 * B * heads * T * T * f
    boundary = B * T * D * f
    head_activations = 3 * B * min(T, cfg.stream.head_chunk) * vocab * f

    estimates = {
        "memory": weights + n_lora * block_activations + head_activations + lora_state,
        "memory+ckpt": weights + L * boundary + block_activations + head_activations + lora_state,
        "streamed": (3 * max(blocks) + biggest_outer + accum * (n_lora + 1) * boundary + block_activations
                     + head_activations + lora_state),
    }
    if available_bytes is None:
        available_bytes = system.memory().available_bytes
    if compute_gflops is None:
        compute_gflops = measure_compute_gflops()
    if disk_gbps is None:
        disk_gbps = measure_disk_gbps(model_dir)

    # Parameters from shapes: packed 4-bit weights hold 32/bits values per uint32; scales/biases are not weights.
    bits = int(config.get("quantization", {}).get("bits", 4))
    packed = {n.rsplit(".", 1)[0] for n, info in source.tensors.items() if info.dtype == "U32"}
    params = 0
    for name, info in source.tensors.items():
        if name.endswith((".scales", ".biases")) and name.rsplit(".", 1)[0] in packed:
            continue
        n = 1
        for d in info.shape:
            n *= d
        params += n * 32 // bits if info.dtype == "U32" else n
    tokens = B * T * accum
    lora_share = n_lora / L
    forward = 2 * params * tokens
    backward = 2 * forward * lora_share  # input gradients through the LoRA blocks (+ small LoRA weight grads)
    recompute = forward * lora_share
    compute = {"memory": forward + backward, "memory+ckpt": forward + backward + recompute,
               "streamed": forward + backward + recompute}
    # Bytes read from disk per step (the files' own sizes, not the compute dtype's): forward reads every
    # block, backward the LoRA blocks again; embedding and head once each.
    disk = [source.nbytes(source.names(f"model.layers.{i}.")) for i in range(L)]
    streamed_bytes = sum(disk) + sum(disk[L - n_lora:]) + source.total_bytes - sum(disk)
    io_seconds = streamed_bytes / (disk_gbps * GB)

    out: dict[str, EngineEstimate] = {}
    for engine, peak in estimates.items():
        seconds = compute[engine] / (compute_gflops * 1e9)
        if engine == "streamed":
            seconds = max(seconds, io_seconds)  # reads overlap compute: the slower of the two sets the pace
        fits = peak <= MARGIN * available_bytes
        out[engine] = EngineEstimate(engine, int(peak), seconds, fits,
                                     {"io_seconds": io_seconds} if engine == "streamed" else {})

    # On disk: each checkpoint holds the adapter and two AdamW moments; two are kept, plus best and last.
    disk_needed = lora_params * 4 * 3 * (KEEP + 1) + 2 * lora_params * 4 + 50 * 2**20
    if free_disk_bytes is None and output_dir is not None:
        existing = next((p for p in [output_dir, *output_dir.parents] if p.exists()), Path.cwd())
        free_disk_bytes = system.free_disk_bytes(existing)

    choice, ckpt_flag = None, False
    if free_disk_bytes is not None and free_disk_bytes < disk_needed:
        reason = (f"Not enough free disk for the run's checkpoints: ~{disk_needed / GB:.2f} GB needed in "
                  f"{output_dir}, {free_disk_bytes / GB:.2f} GB free.")
        return PreflightReport(str(model_dir), arch, source.total_bytes, weights, available_bytes, disk_gbps,
                               compute_gflops, {}, None, False, reason)
    if cfg.engine in ("memory", "streamed"):
        choice = cfg.engine
        ckpt_flag = cfg.grad_checkpoint
        reason = f"{choice} engine, as asked"
    elif out["memory"].fits:
        choice, reason = "memory", "the model fits in memory with margin: in-memory engine"
    elif out["memory+ckpt"].fits:
        choice, ckpt_flag, reason = "memory", True, "fits in memory with gradient checkpointing"
    elif out["streamed"].fits:
        choice, reason = "streamed", (f"the model needs ~{out['memory+ckpt'].peak_bytes / GB:.1f} GB in memory, "
                                      f"more than the {available_bytes / GB:.1f} GB available: streamed engine")
    else:
        reason = (f"Too large for this Mac: even streamed it needs ~{out['streamed'].peak_bytes / GB:.1f} GB "
                  f"(activations for batch {B} x {T} tokens), and {available_bytes / GB:.1f} GB is available. "
                  "Try a shorter --max-seq-len, a smaller --batch-size, or a quantised (4-bit) model.")
    spare = int((MARGIN * available_bytes - out["streamed"].peak_bytes) // max(max(blocks), 1))
    return PreflightReport(str(model_dir), arch, source.total_bytes, weights, available_bytes, disk_gbps,
                           compute_gflops, out, choice, ckpt_flag, reason, max(spare, 0))
