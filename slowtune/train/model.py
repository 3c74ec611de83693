"""The model a training run works on: mlx-lm's own model classes, LoRA from mlx-lm's tuner, and a weight
source that reads tensors straight from the model's own safetensors files.

Both engines use the same ``TrainModel``; they differ only in where base weights live. The in-memory engine
evaluates all of them once. The streamed engine keeps zero-size placeholders in the blocks and swaps a
block's real tensors in (lazily loaded by ``mx.load``, read from disk only when evaluated) for as long as
that block computes.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from slowtune.fsutil import atomic_writer
from slowtune.models.architectures import ArchitectureError, check_config, lora_keys
from slowtune.models.catalog import ModelError, read_safetensors_tensors
from slowtune.safetensors import TensorEntry
from slowtune.train import arch
from slowtune.train.config import LoraConfig

LORA_LEAVES = ("lora_a", "lora_b")


class WeightSource:
    """The base model's tensors, read from its own safetensors files (no converted copy)."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        files = sorted(model_dir.glob("model*.safetensors"))
        if not files:
            raise ModelError(f"{model_dir} has no model*.safetensors weight files.")
        self.tensors: dict[str, TensorEntry] = {}  # name -> its file, dtype, shape and absolute byte range
        for file in files:
            self.tensors.update(read_safetensors_tensors(file))

    def names(self, prefix: str) -> list[str]:
        return [n for n in self.tensors if n.startswith(prefix) and "rotary_emb.inv_freq" not in n]

    def nbytes(self, names: list[str]) -> int:
        return sum(self.tensors[n].nbytes for n in names)

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def load(self, names: list[str], stream: Any = None) -> dict[str, Any]:
        """Lazy arrays for ``names``: nothing is read until they are evaluated."""
        import mlx.core as mx

        by_file: dict[Path, list[str]] = {}
        for n in names:
            by_file.setdefault(self.tensors[n].file, []).append(n)
        out = {}
        for file, file_names in by_file.items():
            arrays = mx.load(str(file), stream=stream) if stream is not None else mx.load(str(file))
            for n in file_names:
                out[n] = arrays[n]
        return out

    def drop_from_page_cache(self, names: list[str]) -> None:
        """Ask the OS to forget these tensors' bytes, as a Mac whose memory cannot cache the model would."""
        if not hasattr(os, "posix_fadvise"):
            return
        by_file: dict[Path, list[TensorEntry]] = {}
        for n in names:
            by_file.setdefault(self.tensors[n].file, []).append(self.tensors[n])
        for file, infos in by_file.items():
            fd = os.open(file, os.O_RDONLY)
            try:
                for info in infos:
                    with contextlib.suppress(OSError):
                        os.posix_fadvise(fd, info.start, info.nbytes, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def read_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{model_dir} is not a model folder: config.json is missing.") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path} cannot be read: {exc}") from None


def is_floating(dtype: Any) -> bool:
    import mlx.core as mx

    return mx.issubdtype(dtype, mx.floating)


class TrainModel:
    """A base model with LoRA layers, ready for either engine."""

    def __init__(self, model_dir: Path, lora: LoraConfig, *, compute_dtype: str = "float32", seed: int = 0,
                 streamed: bool = False) -> None:
        import mlx.core as mx
        from mlx.utils import tree_flatten
        from mlx_lm.tuner.utils import linear_to_lora_layers
        from mlx_lm.utils import load_model

        self.model_dir = Path(model_dir)
        self.config = read_config(self.model_dir)
        self.model_type = self.config.get("model_type", "?")
        self.streamed = streamed
        try:
            check_config(self.config, self.model_dir / "config.json")
        except ArchitectureError as exc:
            raise ModelError(str(exc)) from None
        self.compute_dtype = getattr(mx, compute_dtype)
        self.source = WeightSource(self.model_dir)
        try:
            # lazy=True: mx.load only maps the files; nothing is read until a tensor is evaluated.
            model, _ = load_model(self.model_dir, lazy=True)
        except (ValueError, FileNotFoundError, KeyError) as exc:
            raise ModelError(f"mlx-lm cannot build the model in {self.model_dir}: {exc}") from None
        arch.prepare(model, self.config)
        self.model = model
        self.layers = model.layers
        self.num_layers = len(self.layers)
        self.sliding = arch.sliding_layers(self)
        self.quantized = "quantization" in self.config
        if not streamed:
            # mlx-lm's own loading (with its per-architecture renames), in the compute dtype; packed
            # quantised weights are integers and keep their type.
            model.set_dtype(self.compute_dtype)
        model.freeze()
        mx.random.seed(seed)  # LoRA's A matrices are random: the same seed gives the same start
        if lora.num_layers == 0 or lora.rank < 1:
            raise ModelError("LoRA needs at least one block (num_layers -1 for all, or N > 0) and a rank of 1 or more.")
        n = self.num_layers if lora.num_layers < 0 else min(lora.num_layers, self.num_layers)
        self.lora_config = lora
        self.lora_num_layers = n
        self.first_lora_block = self.num_layers - n
        # Fused families (Phi-3) adapt their fused q/k/v and gate/up matrices where others adapt each one.
        self.lora_keys = lora_keys(self.model_type, lora.keys)
        linear_to_lora_layers(
            model, n, {"rank": lora.rank, "scale": lora.scale, "dropout": lora.dropout, "keys": list(self.lora_keys)}
        )
        trainable = dict(tree_flatten(model.trainable_parameters()))
        if not trainable:
            raise ModelError(f"None of the LoRA target layers {list(self.lora_keys)} exist in {self.model_dir}.")
        mx.eval(list(trainable.values()))

        self.block_names = [self.source.names(f"model.layers.{i}.") for i in range(self.num_layers)]
        in_blocks = {n for names in self.block_names for n in names}
        self.outer_names = [n for n in self.source.names("") if n not in in_blocks]
        if self.config.get("tie_word_embeddings") or "lm_head.weight" not in self.source.tensors:
            self.head_names = [n for n in self.outer_names if not n.startswith("lm_head.")]
        else:
            self.head_names = [n for n in self.outer_names if not n.startswith("model.embed_tokens.")]
        self.embed_names = [n for n in self.outer_names if n.startswith("model.embed_tokens.")]

        if streamed:
            # Tensor names in the files -> parameter paths in the model (LoRA wraps a linear as `.linear`).
            self._param_paths = {name for name, _ in tree_flatten(model.parameters())}
            self._path_of = {n: self._param_path(n) for n in self.source.names("")}
            # Placeholders: a block used without its weights fails loudly instead of reading them silently.
            self.release(self.source.names(""))
        else:
            mx.eval(model.parameters())

    def _param_path(self, name: str) -> str:
        if name in self._param_paths:
            return name
        head, leaf = name.rsplit(".", 1)
        wrapped = f"{head}.linear.{leaf}"
        if wrapped in self._param_paths:
            return wrapped
        raise ModelError(f"{self.model_dir}: the tensor {name} does not belong to a '{self.model_type}' model.")

    def cast(self, arrays: dict[str, Any]) -> dict[str, Any]:
        """Float tensors in the compute dtype; packed quantised weights stay as they are."""
        return {n: a.astype(self.compute_dtype) if is_floating(a.dtype) and a.dtype != self.compute_dtype else a
                for n, a in arrays.items()}

    def release(self, names: list[str]) -> None:
        import mlx.core as mx

        empty = mx.zeros((0,), dtype=self.compute_dtype)
        self.model.load_weights([(self._path_of[n], empty) for n in names], strict=False)

    # --- LoRA parameters --------------------------------------------------------------------------------
    def lora_parameters(self) -> dict[str, Any]:
        from mlx.utils import tree_flatten

        return dict(tree_flatten(self.model.trainable_parameters()))

    def set_lora_parameters(self, params: dict[str, Any]) -> None:
        self.model.load_weights(list(params.items()), strict=False)

    def adapter_config(self) -> dict[str, Any]:
        lora = self.lora_config
        return {
            "fine_tune_type": "lora",
            "num_layers": self.lora_num_layers,
            "lora_parameters": {"rank": lora.rank, "scale": lora.scale, "dropout": lora.dropout,
                                "keys": list(self.lora_keys)},
            "base_model": str(self.model_dir),
            "model_type": self.model_type,
        }


def save_adapter(folder: Path, params: dict[str, Any], adapter_config: dict[str, Any],
                 extra_config: dict[str, Any] | None = None) -> None:
    """Write ``adapters.safetensors`` and ``adapter_config.json`` (mlx-lm's layout), each atomically."""
    import mlx.core as mx

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "adapters.safetensors"
    # mx.save_safetensors wants a file name ending in .safetensors: write a sibling, then rename.
    tmp = folder / f".adapters-{os.getpid()}.tmp.safetensors"
    mx.save_safetensors(str(tmp), params, metadata={"format": "mlx"})
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, target)
    with atomic_writer(folder / "adapter_config.json", "w", encoding="utf-8") as f:
        json.dump({**adapter_config, **(extra_config or {})}, f, indent=2)
