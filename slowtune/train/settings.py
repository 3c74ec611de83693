"""A run's settings as the app offers them: the presets, ``TrainSettings``, and the data they are applied to.

``PRESETS`` is the one table of presets. Each row is what the app shows (Quick, Balanced, Thorough) and what it
passes to ``slowtune train``; its LoRA part is also the CLI's ``--preset`` (``LORA_PRESETS``: light, standard,
strong), which sets only the adapted layers and the rank. ``TrainSettings`` are the values the wizard shows and
edits: ``cli_args`` turns them into ``slowtune train`` options, and ``config`` into the ``TrainConfig`` the CLI
builds from those options (a test holds the two together).

What a project's accepted rows amount to for training (``DataSummary``) is in ``slowtune.dataset``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slowtune.train.config import DEFAULT_REPLAY, LoraConfig, TrainConfig

__all__ = ["LORA_PRESETS", "PRESETS", "VALIDATIONS_PER_RUN", "Preset", "TrainSettings", "validation_interval"]

VALIDATIONS_PER_RUN = 20


@dataclass(frozen=True)
class Preset:
    title: str
    description: str
    lora: str  # `slowtune train --preset`: the name of ``lora_config`` on the command line
    lora_config: LoraConfig
    epochs: float  # --epochs
    learning_rate: float  # --lr


# What each preset passes to `slowtune train`; the Advanced section shows (and edits) the resulting values:
#   Quick     --preset light     (LoRA rank 8 on the q/v projections of the top 8 blocks)  --epochs 1  --lr 2e-4
#   Balanced  --preset standard  (rank 16 on every projection of every block)              --epochs 3  --lr 1e-4
#   Thorough  --preset strong    (rank 32 on every projection of every block)              --epochs 5  --lr 1e-4
# and for all three --max-seq-len 1024 --batch-size 4. The rank is always passed with --alpha 2*rank, the scale
# (alpha / rank = 2) every preset uses, so changing the rank in Advanced does not also change the update's scale.
PRESETS: dict[str, Preset] = {
    "quick": Preset("Quick", "A first result in minutes: a small adapter on the top blocks and one pass over the "
                    "data. Good for tone and answer format.", "light",
                    # Cheap and quick: attention only, top 8 blocks. Good for style and format.
                    LoraConfig(rank=8, alpha=16.0, keys=("self_attn.q_proj", "self_attn.v_proj"), num_layers=8),
                    1.0, 2e-4),
    "balanced": Preset("Balanced", "Every layer adapted, three passes over the data. Good for teaching the facts "
                       "in your documents.", "standard",
                       # The default: every projection of every block.
                       LoraConfig(rank=16, alpha=32.0), 3.0, 1e-4),
    "thorough": Preset("Thorough", "A larger adapter and five passes: learns more detail and takes about twice as "
                       "long as Balanced.", "strong",
                       # For teaching many new facts: a larger rank.
                       LoraConfig(rank=32, alpha=64.0), 5.0, 1e-4),
}

# `slowtune train --preset NAME`: the LoRA part of each preset, by its command-line name.
LORA_PRESETS: dict[str, LoraConfig] = {preset.lora: preset.lora_config for preset in PRESETS.values()}


def validation_interval(total_steps: int) -> int:
    """Steps between validation passes: enough points for the chart's validation line on a short run, and no
    more than one pass every 50 steps on a long one."""
    return max(1, min(50, math.ceil(total_steps / VALIDATIONS_PER_RUN)))


@dataclass
class TrainSettings:
    """A run's settings as the wizard shows them; ``cli_args`` turns them into ``slowtune train`` options."""

    preset: str = "balanced"  # a PRESETS key, or "custom" when the Advanced values differ from every preset
    lora_preset: str = "standard"  # --preset: which LoRA layers are adapted
    rank: int = 16
    learning_rate: float = 1e-4
    epochs: float = 3.0
    iters: int = 0  # optimizer steps; 0: derived from epochs
    max_seq_len: int = 1024
    lora_layers: int = -1  # -1: every block
    batch_size: int = 4
    val_every: int = -1  # -1: about VALIDATIONS_PER_RUN times a run, whatever its length (``for_conversations``)
    save_every: int = 100
    seed: int = 0
    replay: float = DEFAULT_REPLAY  # share of training rows that are the base model's own answers (slowtune.train.replay)
    score_every: int = -1  # knowledge/retention/leakage every N steps (-1: a tenth of the time; 0: never)
    early_stop: bool = True

    @classmethod
    def from_preset(cls, key: str, **changes: Any) -> TrainSettings:
        preset = PRESETS[key]
        lora = preset.lora_config
        settings = cls(preset=key, lora_preset=preset.lora, rank=lora.rank, learning_rate=preset.learning_rate,
                       epochs=preset.epochs, lora_layers=lora.num_layers)
        for name, value in changes.items():
            setattr(settings, name, value)
        return settings

    def matching_preset(self) -> str | None:
        """The preset these values are, or None (custom)."""
        for key in PRESETS:
            base = TrainSettings.from_preset(key)
            if all(getattr(self, n) == getattr(base, n) for n in
                   ("lora_preset", "rank", "learning_rate", "epochs", "iters", "max_seq_len", "lora_layers",
                    "batch_size")):
                return key
        return None

    def cli_args(self) -> list[str]:
        args = ["--preset", self.lora_preset, "--rank", str(self.rank), "--alpha", f"{2.0 * self.rank:g}",
                "--lr", f"{self.learning_rate:g}", "--max-seq-len", str(self.max_seq_len),
                "--lora-layers", str(self.lora_layers), "--batch-size", str(self.batch_size),
                # -1 ("about 20 times a run") is resolved by for_conversations, which knows the run's length.
                "--val-every", str(self.val_every if self.val_every >= 0 else 50), "--save-every", str(self.save_every), "--seed", str(self.seed),
                "--replay", f"{self.replay:g}", "--score-every", str(self.score_every)]
        if not self.early_stop:
            args.append("--no-early-stop")
        return [*args, "--iters", str(self.iters)] if self.iters else [*args, "--epochs", f"{self.epochs:g}"]

    def config(self, model_dir: Path, data: Path) -> TrainConfig:
        """The TrainConfig the CLI builds from ``cli_args`` (the numbers as those options write them)."""
        lora = dataclasses.replace(LORA_PRESETS[self.lora_preset], rank=self.rank,
                                   alpha=float(f"{2.0 * self.rank:g}"), num_layers=self.lora_layers)
        length: dict[str, Any] = {"iters": self.iters} if self.iters else {"epochs": float(f"{self.epochs:g}")}
        return TrainConfig(
            model=str(model_dir), data=str(Path(data).expanduser().resolve()), lora=lora,
            max_seq_len=self.max_seq_len, batch_size=self.batch_size, learning_rate=float(f"{self.learning_rate:g}"),
            seed=self.seed, val_every=self.val_every if self.val_every >= 0 else 50, save_every=self.save_every,
            replay=float(f"{self.replay:g}"), score_every=self.score_every, early_stop=self.early_stop, **length,
        )

    def total_steps(self, conversations: int) -> int:
        """Optimizer steps of a run over ``conversations`` (the trainer's own rule, gradient accumulation 1)."""
        if self.iters:
            return self.iters
        from slowtune.train.replay import replay_rows_wanted

        rows = conversations + replay_rows_wanted(conversations, self.replay)
        return max(1, math.ceil(self.epochs * max(1, math.ceil(rows / self.batch_size))))

    def for_conversations(self, conversations: int) -> TrainSettings:
        """These settings for a run over ``conversations``: "validate about 20 times a run" made a step count."""
        if self.val_every >= 0:
            return self
        return dataclasses.replace(self, val_every=validation_interval(self.total_steps(conversations)))

    def describe(self) -> str:
        name = PRESETS[self.preset].title if self.preset in PRESETS else "Custom"
        length = f"{self.iters:,} steps" if self.iters else f"{self.epochs:g} epoch{'s' if self.epochs != 1 else ''}"
        layers = "all blocks" if self.lora_layers < 0 else f"top {self.lora_layers} blocks"
        keep = (f", {self.replay:.0%} replay" if self.replay > 0 else ", no replay") + (
            ", best checkpoint by knowledge, retention and leakage" if self.score_every != 0 else "")
        return (f"{name}: rank {self.rank}, learning rate {self.learning_rate:g}, {length}, batch {self.batch_size}, "
                f"up to {self.max_seq_len:,} tokens, {layers}{keep}")
