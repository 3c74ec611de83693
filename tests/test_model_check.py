"""The check made when a model is picked (can it be trained and exported?), and its parameters from its weights."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from model_fixtures import unsupported_copy

from slowtune.models.catalog import ModelError
from slowtune.models.check import alternatives, check_model, format_parameters, parameter_count


def _no_flags(text: str) -> bool:
    return "--" not in text and "Traceback" not in text


def test_a_model_slowtune_trains_and_exports_has_no_problems(tiny_llama: Path, tiny_qwen2: Path) -> None:
    assert check_model(tiny_llama) == []
    assert check_model(tiny_qwen2) == []


def test_another_family_is_named_with_the_families_that_work(tiny_llama: Path, tmp_path: Path) -> None:
    problems = check_model(unsupported_copy(tiny_llama, tmp_path / "falcon", "falcon"))
    assert len(problems) == 1
    assert "“falcon”" in problems[0] and "Llama" in problems[0] and "Qwen2" in problems[0] and _no_flags(problems[0])


def test_a_vision_language_model_is_refused_in_words(tiny_llama: Path, tmp_path: Path) -> None:
    problems = check_model(unsupported_copy(tiny_llama, tmp_path / "vlm", "multimodal"))
    assert len(problems) == 1 and "images" in problems[0] and "270M or 1B" in problems[0]


def test_a_tokenizer_the_export_refuses_is_found_before_training(tiny_llama: Path, tmp_path: Path) -> None:
    folder = tmp_path / "odd"
    shutil.copytree(tiny_llama, folder)
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    tokenizer["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "WhitespaceSplit"}, {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                                      "use_regex": False}]}
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    problems = check_model(folder)
    assert len(problems) == 1
    assert "could not be saved for llama.cpp" in problems[0] and "pre-tokenizer" in problems[0]
    assert "Pick a model" not in problems[0] and _no_flags(problems[0])


def test_a_base_model_without_a_chat_template_is_flagged(tiny_llama: Path, tmp_path: Path) -> None:
    folder = tmp_path / "base"
    shutil.copytree(tiny_llama, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    for name in ("chat_template.jinja", "chat_template.json"):
        (folder / name).unlink(missing_ok=True)
    assert any("no chat template" in p and "Instruct" in p for p in check_model(folder))


def test_an_unreadable_folder_is_a_problem_not_an_exception(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    problems = check_model(tmp_path / "empty")
    assert len(problems) == 1 and "config.json" in problems[0]


def test_alternatives_are_catalog_models_that_work() -> None:
    from slowtune.models import catalog

    names = alternatives()
    assert names and len(names) <= 3
    by_name = {m.name: m for m in catalog.offered()}
    assert all(n in by_name and not by_name[n].gated for n in names)


def test_the_parameter_count_is_read_from_the_weights(tiny_llama: Path, tmp_path: Path) -> None:
    from safetensors import safe_open

    expected = 0
    for file in tiny_llama.glob("*.safetensors"):
        with safe_open(str(file), framework="numpy") as f:
            expected += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118
    assert expected > 0 and parameter_count(tiny_llama) == expected
    # Not the architecture's name, not the files' size: a number a user reads as the catalog's.
    config = json.loads((tiny_llama / "config.json").read_text())
    assert parameter_count(tiny_llama) >= config["vocab_size"] * config["hidden_size"]
    assert format_parameters(134_515_008) == "135 M" and format_parameters(1_543_714_304) == "1.54 B"
    with pytest.raises(ModelError):
        parameter_count(tmp_path)


@pytest.mark.parametrize("available", [8_000_000_000, 1_000])
def test_the_checks_estimates_are_in_words_without_options_or_caveats(tiny_llama: Path, available: int) -> None:
    from slowtune.train.fit import estimate_text
    from slowtune.train.preflight import preflight
    from slowtune.train.settings import TrainSettings

    settings = TrainSettings.from_preset("balanced")
    report = preflight(tiny_llama, settings.config(tiny_llama, tiny_llama), available_bytes=available,
                       disk_gbps=1.0, compute_gflops=1.0)
    assert "--max-seq-len" in report.summary()  # the developer's summary; the app shows estimate_text
    text = estimate_text(report)
    assert "--" not in text and "upper bound" not in text
    assert "In memory: about" in text and "s a step" in text
    assert ("does not fit" in text) == (report.choice is None or available < 10_000)
