"""Write a trained LoRA adapter (mlx-lm's layout) as a LoRA GGUF that llama.cpp applies on top of the base GGUF.

The adapter GGUF holds only the low-rank factors, so it is a few MB where a fused model is GBs; llama.cpp
(`llama-cli -m base-F16.gguf --lora model-lora.gguf`) and Ollama (an ``ADAPTER`` line in the Modelfile) add
it to the base model's weights while they run.

The facts it relies on are llama.cpp's (llama-adapter.cpp, convert_lora_to_gguf.py):
- metadata: ``general.type = "adapter"``, ``adapter.type = "lora"``, ``adapter.lora.alpha`` and
  ``general.architecture`` equal to the base GGUF's (llama.cpp refuses an adapter of another arch);
- tensors: the base tensor's GGUF name + ``.lora_a`` / ``.lora_b`` (``blk.0.attn_q.weight.lora_a``), with
  lora_a of ggml shape [in, r] (numpy (r, in)) and lora_b of ggml shape [r, out] (numpy (out, r));
- llama.cpp computes ``y = W x + (alpha / r) * B (A x)``, r being lora_b's ne[0].

mlx-lm computes ``y = x W^T + scale * (x @ lora_a) @ lora_b`` with lora_a of shape (in, r) and lora_b of
shape (r, out). So the GGUF gets ``lora_a.T`` and ``lora_b.T``, and ``alpha = scale * r`` so that alpha / r is
the training scale. For llama-family models the base GGUF's q/k rows are permuted (see
``gguf_writer._rope_permutation``): the adapter's update to those rows must be permuted the same way, which is
a permutation of lora_b's rows (the output dimension); lora_a is untouched. Phi-3 adapts its fused matrices
(``qkv_proj`` -> ``attn_qkv``, ``gate_up_proj`` -> ``ffn_up``), whose layout the base GGUF keeps as it is. Only
linear layers are adapted, so nothing else the base GGUF changes (Gemma's norm weights plus one) concerns the
adapter.

Only the base model's config.json is read (the same settings the base GGUF was written from), so the base
folder may also be an MLX 4-bit one; the base GGUF itself must be written from the dequantised base.

Only the standard library and numpy are imported at module level; `gguf` is imported when a file is written.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slowtune.export.gguf_writer import (
    SUPPORTED_ARCHITECTURES,
    ExportError,
    _matrix_shapes,
    _read_safetensors_header,
    _rope_permutation,
    _temporary_sibling,
    finish_gguf_writer,
)
from slowtune.models.gguf_spec import read_hparams, read_json
from slowtune.progress import ensure

if TYPE_CHECKING:
    from slowtune.progress import Progress

__all__ = ["LoraTensor", "lora_readme_section", "plan_lora_gguf", "write_lora_gguf"]

log = logging.getLogger(__name__)

_ADAPTER_NAME = re.compile(r"^(?P<module>.+)\.(?P<part>lora_a|lora_b)$")


@dataclass(frozen=True)
class LoraTensor:
    """One adapted weight: the base GGUF tensor's name and the factors in llama.cpp's layout (float32)."""

    base_name: str  # e.g. blk.0.attn_q.weight
    hf_name: str  # e.g. model.layers.0.self_attn.q_proj.weight
    lora_a: np.ndarray  # (r, in)
    lora_b: np.ndarray  # (out, r), rows permuted like the base tensor's where llama.cpp needs it


@dataclass(frozen=True)
class LoraPlan:
    gguf_arch: str
    alpha: float
    rank: int
    tensors: list[LoraTensor]


def _as_float32(tensor: Any) -> np.ndarray:
    raw = np.asarray(tensor.open())
    if tensor.dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32)


def _adapter_settings(adapter_dir: Path) -> tuple[dict[str, Any], float]:
    config_path = adapter_dir / "adapter_config.json"
    if not adapter_dir.is_dir():
        raise ExportError(f"{adapter_dir}: adapter folder not found")
    config = read_json(config_path, "the adapter's settings")
    if not (adapter_dir / "adapters.safetensors").is_file():
        raise ExportError(f"{adapter_dir}: adapters.safetensors is missing (the adapter's weights)")
    kind = config.get("fine_tune_type", "lora")
    if kind != "lora":
        raise ExportError(f"{config_path}: only LoRA adapters can be written as a LoRA GGUF (this one is {kind!r})")
    params = config.get("lora_parameters")
    scale = params.get("scale") if isinstance(params, dict) else None
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale):
        raise ExportError(f"{config_path}: lora_parameters.scale is missing or not a number")
    return config, float(scale)


def plan_lora_gguf(adapter_dir: Path, base_model_dir: Path) -> LoraPlan:
    """Read and check the adapter against the base's config; the tensors as they will be written.

    Raises ExportError for an adapter that llama.cpp could not apply to the base GGUF faithfully: an
    unsupported base architecture, an adapter trained on another model type or with other shapes, tensors
    the base has no place for, a lora_a without its lora_b.
    """
    import gguf

    adapter_dir, base_model_dir = Path(adapter_dir), Path(base_model_dir)
    adapter_config, scale = _adapter_settings(adapter_dir)
    if not base_model_dir.is_dir():
        raise ExportError(f"{base_model_dir}: base model folder not found")
    config_path = base_model_dir / "config.json"
    base_config = read_json(config_path, "the base model's configuration")
    base_type = base_config.get("model_type")
    if base_type not in SUPPORTED_ARCHITECTURES:
        raise ExportError(
            f"{config_path}: the base model is a {base_type!r} model; a LoRA GGUF can be written only for "
            f"{', '.join(SUPPORTED_ARCHITECTURES)} (the architectures of the GGUF export)"
        )
    adapter_type = adapter_config.get("model_type")
    if adapter_type and adapter_type != base_type:
        raise ExportError(
            f"The adapter {adapter_dir} was trained on a {adapter_type!r} model; the base {base_model_dir} is "
            f"{base_type!r}. Give the base model the adapter was trained on."
        )
    # Only settings are read: a quantised (MLX 4-bit) base has the same shapes once dequantised, which is
    # how its base GGUF is written.
    plain = {k: v for k, v in base_config.items() if k not in ("quantization", "quantization_config")}
    hp = read_hparams(plain, config_path)

    arch_enum = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == hp.gguf_arch)
    name_map = gguf.get_tensor_name_map(arch_enum, hp.n_layers)
    t = gguf.MODEL_TENSOR
    shapes = _matrix_shapes(hp)
    linears = (
        [t.ATTN_QKV, t.ATTN_OUT, t.FFN_UP, t.FFN_DOWN]  # Phi-3's fused q/k/v and gate/up
        if hp.model_type == "phi3"
        else [t.ATTN_Q, t.ATTN_K, t.ATTN_V, t.ATTN_OUT, t.FFN_GATE, t.FFN_UP, t.FFN_DOWN]
    )
    # (out, in) of each linear the adapter may touch
    expected = {kind: shapes[gguf.TENSOR_NAMES[kind].split(".")[-1]] for kind in linears}

    stored = _read_safetensors_header(adapter_dir / "adapters.safetensors")
    pairs: dict[str, dict[str, Any]] = {}
    for name, tensor in stored.items():
        match = _ADAPTER_NAME.match(name)
        if match is None:
            raise ExportError(
                f"{adapter_dir}: adapters.safetensors holds {name}, which is not a LoRA factor (lora_a / lora_b); "
                "only plain LoRA adapters can be written as a LoRA GGUF"
            )
        pairs.setdefault(match["module"], {})[match["part"]] = tensor
    if not pairs:
        raise ExportError(f"{adapter_dir}: adapters.safetensors holds no LoRA tensors")

    tensors: list[LoraTensor] = []
    ranks: set[int] = set()
    for module in sorted(pairs, key=_natural_key):
        parts = pairs[module]
        if set(parts) != {"lora_a", "lora_b"}:
            missing = "lora_b" if "lora_a" in parts else "lora_a"
            raise ExportError(f"{adapter_dir}: {module}.{missing} is missing from adapters.safetensors")
        hf_name = f"{module}.weight"
        found = name_map.get_type_and_name(hf_name, try_suffixes=(".weight",))
        if found is None or found[0] not in expected:
            raise ExportError(
                f"The adapter {adapter_dir} adapts {hf_name}, which the base {base_model_dir} "
                f"({base_type}, {hp.n_layers} layers) has no place for in a LoRA GGUF: it was trained on a "
                "different base model, or adapts a layer llama.cpp cannot take a LoRA for (embeddings, lm_head)"
            )
        kind, gguf_name = found
        a_info, b_info = parts["lora_a"], parts["lora_b"]
        out_dim, in_dim = expected[kind]
        if (len(a_info.shape) != 2 or len(b_info.shape) != 2 or a_info.shape[0] != in_dim
                or b_info.shape[1] != out_dim or a_info.shape[1] != b_info.shape[0]):
            got = (f"lora_a {list(a_info.shape)} and lora_b {list(b_info.shape)}, an update of "
                   f"{b_info.shape[-1]}x{a_info.shape[0]}")
            raise ExportError(
                f"The adapter {adapter_dir} does not fit the base {base_model_dir}: {hf_name} is "
                f"{out_dim}x{in_dim} in the base, the adapter has {got}. It was trained on a different base model."
            )
        rank = int(a_info.shape[1])
        ranks.add(rank)
        lora_a = np.ascontiguousarray(_as_float32(a_info).T)  # (r, in)
        lora_b = _as_float32(b_info).T  # (out, r)
        if hp.permute_qk and kind in (t.ATTN_Q, t.ATTN_K):
            heads = hp.n_heads if kind == t.ATTN_Q else hp.n_kv_heads
            lora_b = lora_b[_rope_permutation(out_dim, heads, hf_name)]
        tensors.append(LoraTensor(gguf_name, hf_name, lora_a, np.ascontiguousarray(lora_b)))
    if len(ranks) != 1:
        # llama.cpp has one alpha per adapter and divides it by each tensor's rank; mlx-lm never mixes ranks.
        raise ExportError(f"{adapter_dir}: the adapter mixes LoRA ranks {sorted(ranks)}; one rank is needed")
    rank = ranks.pop()
    alpha = scale * rank
    if alpha == 0.0:
        # llama.cpp reads alpha 0 as "no alpha" (scale 1): fold the zero scale into lora_b instead.
        tensors = [LoraTensor(x.base_name, x.hf_name, x.lora_a, np.zeros_like(x.lora_b)) for x in tensors]
        alpha = float(rank)
    if any(not (np.isfinite(x.lora_a).all() and np.isfinite(x.lora_b).all()) for x in tensors):
        raise ExportError(f"{adapter_dir}: the adapter holds NaN or infinite values; was training stable?")
    return LoraPlan(hp.gguf_arch, float(alpha), rank, tensors)


def _natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def write_lora_gguf(adapter_dir: Path, base_model_dir: Path, out_path: Path, *,
                    progress: Progress | None = None) -> Path:
    """Write the LoRA adapter in `adapter_dir` (mlx-lm's layout) as a llama.cpp LoRA GGUF at `out_path`.

    `base_model_dir` is the Hugging Face (or MLX) folder of the model the adapter was trained on: the one
    the base GGUF is written from. Tensors are float32 (an adapter is small). The file is written under a
    temporary name beside `out_path` and renamed at the end. `progress` gets ("Writing LoRA GGUF", done,
    total) reports; a cancel request stops between tensors and leaves no file. Returns `out_path`.

    Raises ExportError, naming the adapter and the base, when the adapter does not fit the base.
    """
    import gguf

    out_path = Path(out_path)
    progress = ensure(progress)
    plan = plan_lora_gguf(Path(adapter_dir), Path(base_model_dir))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with _temporary_sibling(out_path) as tmp:
        writer = gguf.GGUFWriter(tmp, plan.gguf_arch, use_temp_file=False)
        try:
            writer.add_type(gguf.GGUFType.ADAPTER)
            writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
            writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, plan.alpha)
            writer.add_name(out_path.stem)
            for x in plan.tensors:
                for suffix, array in ((".lora_a", x.lora_a), (".lora_b", x.lora_b)):
                    writer.add_tensor_info(x.base_name + suffix, array.shape, array.dtype, array.nbytes,
                                           raw_dtype=gguf.GGMLQuantizationType.F32)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            total = 2 * len(plan.tensors)
            progress.report("Writing LoRA GGUF", 0, total, force=True)
            for i, x in enumerate(plan.tensors):
                progress.check()
                writer.write_tensor_data(x.lora_a)
                writer.write_tensor_data(x.lora_b)
                progress.report("Writing LoRA GGUF", 2 * (i + 1), total, tensor=x.base_name)
        except BaseException:
            writer.close()
            raise
        finish_gguf_writer(writer, tmp, out_path)
    log.info("wrote %s (LoRA rank %d, alpha %g, %d adapted weights, %.1f MB)", out_path, plan.rank, plan.alpha,
             len(plan.tensors), out_path.stat().st_size / 1e6)
    return out_path


def lora_readme_section(base_gguf: str, lora_gguf: str, model_name: str) -> str:
    """README text on running the base GGUF with the LoRA GGUF on top (llama.cpp, Ollama)."""
    return "\n".join([
        "# Your tuned model, as a LoRA adapter",
        "",
        "Exported by slowtune. Files:",
        "",
        f"- `{base_gguf}`: the unmodified base model, in GGUF format (F16)",
        f"- `{lora_gguf}`: the LoRA adapter you trained, in llama.cpp's LoRA GGUF format; it only works on top "
        "of this base model",
        "- `Modelfile`: for Ollama (`ollama create`): the base GGUF, the adapter, the chat template and stop strings",
        "",
        "The adapter is applied to the base model's weights while the model runs; the base GGUF may also be "
        "quantised with llama.cpp (`llama-quantize`) and the same adapter used on top.",
        "",
        "## llama.cpp",
        "",
        "```sh",
        f"llama-cli -m {base_gguf} --lora {lora_gguf} -cnv --jinja    # chat in the terminal",
        f"llama-server -m {base_gguf} --lora {lora_gguf} --jinja --port 8080",
        "```",
        "",
        "## Ollama",
        "",
        f"The Modelfile has `FROM ./{base_gguf}` and `ADAPTER ./{lora_gguf}`; keep the files in one folder.",
        "",
        "```sh",
        f"ollama create {model_name} -f Modelfile",
        f"ollama run {model_name}",
        "```",
        "",
    ])
