"""The presets and a run's settings (slowtune.train.settings): one table for the app and the CLI, and the settings
build the same TrainConfig as `slowtune train` does from the options they pass."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from slowtune.train import command
from slowtune.train.config import TrainConfig
from slowtune.train.settings import LORA_PRESETS, PRESETS, TrainSettings, validation_interval


def test_presets_map_onto_the_cli_and_advanced_values_override(tiny_llama: Path, tmp_path: Path) -> None:
    for key, preset in PRESETS.items():
        settings = TrainSettings.from_preset(key)
        assert settings.matching_preset() == key
        cfg = settings.config(tiny_llama, tmp_path)  # what `slowtune train` builds from these options
        lora = LORA_PRESETS[preset.lora]
        assert (cfg.lora.rank, cfg.lora.keys, cfg.lora.num_layers) == (lora.rank, lora.keys, lora.num_layers)
        assert cfg.epochs == preset.epochs and cfg.learning_rate == preset.learning_rate and cfg.iters == 0
        assert cfg.lora.scale == 2.0
    quick, thorough = TrainSettings.from_preset("quick"), TrainSettings.from_preset("thorough")
    assert quick.config(tiny_llama, tmp_path).lora.keys == ("self_attn.q_proj", "self_attn.v_proj")
    assert thorough.rank > TrainSettings.from_preset("balanced").rank > quick.rank
    assert thorough.epochs > quick.epochs
    custom = TrainSettings.from_preset("balanced", rank=48, iters=7, max_seq_len=256, lora_layers=2,
                                       learning_rate=3e-5)
    assert custom.matching_preset() is None
    cfg = custom.config(tiny_llama, tmp_path)
    assert (cfg.lora.rank, cfg.lora.scale, cfg.iters, cfg.max_seq_len, cfg.lora.num_layers, cfg.learning_rate) == \
        (48, 2.0, 7, 256, 2, 3e-5)
    assert custom.total_steps(1000) == 7
    # 3 epochs x 5 batches: 10 conversations and, with replay half of the rows, 10 of the base model's own
    assert TrainSettings.from_preset("balanced", batch_size=4).total_steps(10) == 15
    assert TrainSettings.from_preset("balanced", batch_size=4, replay=0).total_steps(10) == 9


def _cli_config(settings: TrainSettings, model: Path, data: Path) -> TrainConfig:
    parser = argparse.ArgumentParser(add_help=False)
    command.add_arguments(parser)
    args = parser.parse_args(["--model", str(model), "--data", str(data), *settings.cli_args()])
    return command.config_from_args(args, model)


@pytest.mark.parametrize("settings", [
    *(TrainSettings.from_preset(key) for key in PRESETS),
    TrainSettings.from_preset("balanced", rank=48, iters=7, max_seq_len=256, lora_layers=2, learning_rate=3e-5),
    TrainSettings.from_preset("quick", learning_rate=1.23456789e-4, epochs=2.345678901, batch_size=1, seed=7,
                              val_every=3, save_every=0),
    TrainSettings.from_preset("thorough", rank=5, lora_layers=-1, iters=1),
    TrainSettings.from_preset("balanced", replay=0.4, score_every=7, early_stop=False),
    TrainSettings.from_preset("balanced", replay=0, score_every=0),
])
def test_the_config_is_the_one_the_cli_builds_from_the_options(settings: TrainSettings, tmp_path: Path) -> None:
    model = tmp_path / "model"
    assert settings.config(model, tmp_path / "data") == _cli_config(settings, model, tmp_path / "data")


def test_one_preset_table_for_the_app_and_the_cli() -> None:
    assert set(LORA_PRESETS) == {"light", "standard", "strong"}  # `slowtune train --preset`, as before
    assert [p.lora for p in PRESETS.values()] == ["light", "standard", "strong"]
    assert TrainConfig().lora == LORA_PRESETS["standard"]  # a config's default is the standard preset
    assert TrainConfig().lora is not TrainConfig().lora


def test_validation_runs_about_twenty_times_whatever_the_run_length() -> None:
    assert validation_interval(6) == 1
    assert validation_interval(100) == 5
    assert validation_interval(10_000) == 50  # never more often than the CLI's default on long runs
    assert TrainSettings.from_preset("quick").val_every == -1
    settings = TrainSettings.from_preset("quick", iters=100)
    assert settings.for_conversations(3).val_every == 5
    assert TrainSettings.from_preset("quick", val_every=7).for_conversations(3).val_every == 7
