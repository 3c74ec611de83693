"""Fuse a LoRA adapter into its base model, block by block, into a Hugging Face folder.

For each linear the adapter touches, W' = W + scale * (B^T @ A^T) (mlx-lm's LoRA convention: y = xW^T +
scale * (x A) B). MLX 4-bit bases are dequantised first, so the result is a plain floating-point model that
the GGUF writer and llama.cpp's quantiser take. Memory stays bounded: tensors are read lazily from the base's
own safetensors files, one block at a time, and written to shards as they are done. The folder is built
under a temporary name and renamed into place, so an interrupted fuse leaves nothing that looks finished.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slowtune.fsutil import atomic_write_text
from slowtune.progress import Progress, ensure

# A shard is held in memory until written: an eighth of the model (64 MB to 2 GB) keeps the fuse's peak
# memory a small fraction of the model however large it is.
MIN_SHARD, MAX_SHARD = 64 * 2**20, 2 * 10**9
# Files copied from the base folder: tokenizer and generation settings (config.json is rewritten).
COPY_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
              "tokenizer.model", "vocab.json", "merges.txt", "generation_config.json", "chat_template.jinja",
              "chat_template.json")


class FuseError(ValueError):
    """The adapter cannot be fused into this base; the message names both."""


@dataclass(frozen=True)
class Adapter:
    path: Path
    config: dict[str, Any]
    scale: float

    @classmethod
    def read(cls, path: Path) -> Adapter:
        config_file = path / "adapter_config.json"
        if not config_file.exists() or not (path / "adapters.safetensors").exists():
            raise FuseError(f"{path} is not an adapter folder (adapter_config.json and adapters.safetensors "
                            "are needed).")
        config = json.loads(config_file.read_text())
        if config.get("fine_tune_type", "lora") != "lora":
            raise FuseError(f"{path}: only LoRA adapters can be fused (this one is {config['fine_tune_type']!r}).")
        return cls(path, config, float(config["lora_parameters"]["scale"]))


def _dequantize(arrays: dict[str, Any], quant: dict[str, Any], dtype: Any) -> dict[str, Any]:
    """Replace each (weight, scales, biases) triple by the float weight it encodes."""
    import mlx.core as mx

    out = {}
    for name, array in arrays.items():
        if name.endswith((".scales", ".biases")):
            continue
        prefix = name[: -len(".weight")] if name.endswith(".weight") else None
        if prefix is not None and f"{prefix}.scales" in arrays:
            array = mx.dequantize(array, arrays[f"{prefix}.scales"], arrays.get(f"{prefix}.biases"),
                                  group_size=quant["group_size"], bits=quant["bits"], mode=quant.get("mode", "affine"))
        out[name] = array.astype(dtype) if mx.issubdtype(array.dtype, mx.floating) else array
    return out


def check_compatible(base_dir: Path, adapter: Adapter, lora: dict[str, Any], source: Any) -> None:
    """Refuse an adapter trained on another base: shapes and the model type must agree."""
    config = json.loads((base_dir / "config.json").read_text())
    want = adapter.config.get("model_type")
    if want and want != config.get("model_type"):
        raise FuseError(f"The adapter {adapter.path} was trained on a '{want}' model; {base_dir} is "
                        f"'{config.get('model_type')}'.")
    bits = config.get("quantization", {}).get("bits")
    for name, array in lora.items():
        if not name.endswith(".lora_a"):
            continue
        base_name = name[: -len(".lora_a")] + ".weight"
        info = source.tensors.get(base_name)
        b = lora.get(name[: -len(".lora_a")] + ".lora_b")
        if info is None or b is None:
            raise FuseError(f"The adapter {adapter.path} adapts {base_name}, which {base_dir} does not have: it was "
                            "trained on a different base model.")
        out_dim, in_dim = info.shape
        if info.dtype == "U32" and bits:
            in_dim = in_dim * 32 // bits
        if array.shape[0] != in_dim or b.shape[1] != out_dim:
            raise FuseError(
                f"The adapter {adapter.path} does not fit {base_dir}: {base_name} is {out_dim}x{in_dim} in the base, "
                f"the adapter expects {b.shape[1]}x{array.shape[0]}. It was trained on a different base model.")


def fuse(base_dir: Path, adapter_dir: Path | None, out_dir: Path, *, dtype: str | None = None,
         progress: Progress | None = None) -> Path:
    """Write base (+ adapter, when given) as a float Hugging Face folder at ``out_dir``.

    ``dtype``: float32, float16 or bfloat16 for the output; default: the base's float dtype (float16 for a
    quantised base). With ``adapter_dir=None`` this exports the unmodified base the same way.
    """
    import mlx.core as mx

    from slowtune.train.model import WeightSource, read_config

    progress = ensure(progress)
    base_dir, out_dir = Path(base_dir), Path(out_dir)
    config = read_config(base_dir)
    source = WeightSource(base_dir)
    quant = config.get("quantization")
    if dtype is None:
        dtype = "float16" if quant else _base_float_dtype(source)
    target = getattr(mx, dtype)

    adapter = Adapter.read(Path(adapter_dir)) if adapter_dir is not None else None
    lora: dict[str, Any] = dict(mx.load(str(adapter.path / "adapters.safetensors"))) if adapter else {}
    if adapter:
        check_compatible(base_dir, adapter, lora, source)

    needed = sum(_float_bytes(info, quant, dtype) for info in source.tensors.values())
    shard_limit = min(MAX_SHARD, max(MIN_SHARD, needed // 8))
    free = shutil.disk_usage(out_dir.parent if out_dir.parent.exists() else Path.cwd()).free
    if free < needed * 1.05:
        raise FuseError(f"Not enough free disk in {out_dir.parent}: the fused model needs ~{needed / 1e9:.2f} GB, "
                        f"{free / 1e9:.2f} GB is free.")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        groups = [source.names(f"model.layers.{i}.") for i in range(int(config["num_hidden_layers"]))]
        in_blocks = {n for g in groups for n in g}
        groups.append([n for n in source.names("") if n not in in_blocks])
        weight_map: dict[str, str] = {}
        shard: dict[str, Any] = {}
        shard_bytes, shard_index = 0, 0
        files: list[tuple[str, int]] = []  # (shard name, bytes): not the arrays, which must be freed

        def flush() -> None:
            nonlocal shard, shard_bytes, shard_index
            if not shard:
                return
            shard_index += 1
            name = f"model-{shard_index:05d}.safetensors"
            mx.save_safetensors(str(tmp / name), shard, metadata={"format": "pt"})
            files.append((name, sum(a.nbytes for a in shard.values())))
            for key in shard:
                weight_map[key] = name
            shard, shard_bytes = {}, 0

        fused_count = 0
        for done, names in enumerate(groups):
            progress.check()
            arrays = source.load(names)
            if quant:
                arrays = _dequantize(arrays, quant, mx.float32)
            for name in list(arrays):
                prefix = name[: -len(".weight")] if name.endswith(".weight") else None
                a = lora.get(f"{prefix}.lora_a") if prefix else None
                if a is not None:
                    b = lora[f"{prefix}.lora_b"]
                    w = arrays[name].astype(mx.float32)
                    arrays[name] = w + (adapter.scale * (b.T @ a.T)).astype(mx.float32)
                    fused_count += 1
                if mx.issubdtype(arrays[name].dtype, mx.floating):
                    arrays[name] = arrays[name].astype(target)
            mx.eval(list(arrays.values()))
            for name, array in arrays.items():
                shard[name] = array
                shard_bytes += array.nbytes
            if shard_bytes >= shard_limit:
                flush()
            progress.report("fuse", done + 1, len(groups))
        flush()
        if adapter and fused_count != len([k for k in lora if k.endswith(".lora_a")]):
            raise FuseError(f"Only {fused_count} of the adapter's layers were found in {base_dir}.")

        # Name shards like the Hugging Face convention once their count is known.
        total = len(files)
        index = {"metadata": {"total_size": sum(size for _, size in files)}, "weight_map": {}}
        for i, (name, _) in enumerate(files, start=1):
            final = f"model-{i:05d}-of-{total:05d}.safetensors" if total > 1 else "model.safetensors"
            os.replace(tmp / name, tmp / final)
            for key, value in weight_map.items():
                if value == name:
                    index["weight_map"][key] = final
        if total > 1:
            atomic_write_text(tmp / "model.safetensors.index.json", json.dumps(index, indent=2))

        new_config = {k: v for k, v in config.items() if k not in ("quantization", "quantization_config")}
        new_config["torch_dtype"] = dtype
        atomic_write_text(tmp / "config.json", json.dumps(new_config, indent=2))
        for file in COPY_FILES:
            if (base_dir / file).exists():
                shutil.copy2(base_dir / file, tmp / file)
        if adapter:
            atomic_write_text(tmp / "slowtune_fuse.json", json.dumps(
                {"base": str(base_dir), "adapter": str(adapter.path), "fused_layers": fused_count}, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _base_float_dtype(source: Any) -> str:
    kinds = {info.dtype for info in source.tensors.values()}
    for code, name in (("BF16", "bfloat16"), ("F16", "float16"), ("F32", "float32")):
        if code in kinds:
            return name
    return "float16"


def _float_bytes(info: Any, quant: dict[str, Any] | None, dtype: str) -> int:
    size = 4 if dtype == "float32" else 2
    n = 1
    for d in info.shape:
        n *= d
    if info.dtype == "U32" and quant:
        n = n * 32 // quant["bits"]
    elif info.dtype not in ("F32", "F16", "BF16"):
        return info.nbytes
    return n * size
