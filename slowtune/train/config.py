"""Training configuration: dataclasses with ``help`` metadata.

The presets (the app's Quick / Balanced / Thorough and the CLI's ``--preset``) are in ``slowtune.train.settings``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from slowtune.models.catalog import STREAMED_ARCHITECTURES

# The share of the training rows that are replay (slowtune.train.replay): half. ``slowtune bench learn`` on SmolLM2
# (session 9) kept 0.82 of what the base knew with a half, against 0.77 with a quarter, and knew more of the
# documents too (0.83 against 0.58 of the held-out rephrasings).
DEFAULT_REPLAY = 0.5

__all__ = ["DEFAULT_KEYS", "STREAMED_ARCHITECTURES", "LoraConfig", "StreamConfig", "TrainConfig"]

# The linear layers LoRA adapts by default: attention and MLP projections of the supported architectures.
DEFAULT_KEYS = (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
)


@dataclass
class LoraConfig:
    rank: int = field(default=8, metadata={"help": "rank of the low-rank update"})
    alpha: float = field(default=16.0, metadata={"help": "the update is scaled by alpha / rank"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA input"})
    keys: tuple[str, ...] = field(default=DEFAULT_KEYS, metadata={"help": "linear layers to adapt"})
    num_layers: int = field(default=-1, metadata={"help": "adapt only the top N blocks (-1: all)"})

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclass
class StreamConfig:
    prefetch: bool = field(default=True, metadata={"help": "load the next block while this one computes"})
    keep_turnaround: int = field(
        default=0,
        metadata={"help": "blocks at the top kept loaded from forward into backward (the preflight raises it "
                          "when memory allows)"},
    )
    cold: bool = field(
        default=False,
        metadata={"help": "drop each block's bytes from the page cache after use (measures a cold disk)"},
    )
    cache_limit_mb: int = field(
        default=0, metadata={"help": "MLX buffer cache while streaming, in MB (-1: leave MLX's default)"}
    )
    backward_rows: bool = field(
        default=True,
        metadata={"help": "take each block's gradient one sequence at a time (less memory, a little slower)"},
    )
    head_chunk: int = field(
        default=64, metadata={"help": "sequence positions per cross-entropy chunk (bounds the logits in memory)"}
    )


@dataclass
class TrainConfig:
    model: str = field(default="", metadata={"help": "local model folder or downloaded repo id"})
    data: str = field(default="", metadata={"help": "folder with train.jsonl/valid.jsonl, a .jsonl, or a project"})
    engine: str = field(default="auto", metadata={"help": "auto, memory or streamed"})
    # The "standard" preset's LoRA (slowtune.train.settings.LORA_PRESETS; a test holds the two together).
    lora: LoraConfig = field(default_factory=lambda: LoraConfig(rank=16, alpha=32.0))
    max_seq_len: int = field(default=1024, metadata={"help": "longer conversations are truncated"})
    batch_size: int = field(default=4, metadata={"help": "conversations per micro-batch"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    iters: int = field(default=0, metadata={"help": "optimizer steps (0: derive from epochs)"})
    epochs: float = field(default=3.0, metadata={"help": "passes over the training data when iters is 0"})
    learning_rate: float = field(default=1e-4, metadata={"help": "peak learning rate"})
    warmup: int = field(default=-1, metadata={"help": "warm-up steps (-1: 5% of the run)"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "cosine decay ends at this fraction of the peak"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    seed: int = field(default=0, metadata={"help": "seeds LoRA init, batch order and dropout"})
    val_every: int = field(default=50, metadata={"help": "validation loss every N steps (0: never)"})
    val_batches: int = field(default=-1, metadata={"help": "validation batches per evaluation (-1: all)"})
    save_every: int = field(default=100, metadata={"help": "checkpoint every N steps"})
    compute_dtype: str = field(default="float32", metadata={"help": "float32, bfloat16 or float16"})
    grad_checkpoint: bool = field(default=False, metadata={"help": "in-memory engine: recompute blocks in backward"})
    replay: float = field(
        default=DEFAULT_REPLAY,
        metadata={"help": "share of the training rows that are the base model's own answers to general prompts "
                          "(keeps the model itself; 0: none)"},
    )
    score_every: int = field(
        default=-1,
        metadata={"help": "score knowledge, retention and leakage every N steps (-1: as often as a tenth of the "
                          "training time allows; 0: never)"},
    )
    early_stop: bool = field(default=True, metadata={"help": "stop when knowledge plateaus while retention falls"})
    stream: StreamConfig = field(default_factory=StreamConfig)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["lora"]["keys"] = list(self.lora.keys)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        # A run started before replay and the quality scoring existed continues as it began: without them.
        data.setdefault("replay", 0.0)
        data.setdefault("score_every", 0)
        lora = LoraConfig(**{**data.pop("lora", {})})
        lora.keys = tuple(lora.keys)
        stream = StreamConfig(**data.pop("stream", {}))
        return cls(lora=lora, stream=stream, **data)
