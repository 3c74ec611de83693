"""Teacher cost: the bundled list prices, the user's own prices, lookups and estimates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slowtune import paths
from slowtune.resources import resource_path
from slowtune.teacher import cost
from slowtune.teacher.cost import (
    CostError,
    Price,
    cost_usd,
    estimate,
    price_for,
    user_prices_file,
    write_user_price,
)


def _write_user(data: object) -> Path:
    path = paths.config_dir() / "prices.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------------
# The bundled table


def test_bundled_table_is_read_through_the_resources_helper() -> None:
    data = json.loads(resource_path("prices.json").read_text(encoding="utf-8"))
    assert data["as_of"] == cost.bundled_as_of() == "2026-11"
    assert "list prices" in data["note"] and "out of date" in data["note"]
    prices = cost.bundled_prices()
    assert len(prices) == len(data["models"]) > 40
    assert all(p.source == "bundled" and p.input >= 0 and p.output >= 0 for p in prices.values())
    assert all(name == name.lower() for name in prices)


@pytest.mark.parametrize(
    "model",
    [
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
        "gpt-5",
        "gpt-5-mini",
        "gpt-5-nano",
        "o4-mini",
        # OpenRouter, Together, Fireworks and Groq spellings of Llama 3.x 8B/70B, Qwen 2.5/3, Mixtral, DeepSeek V3.
        "meta-llama/llama-3.1-8b-instruct",
        "meta-llama/llama-3.3-70b-instruct",
        "qwen/qwen-2.5-72b-instruct",
        "qwen/qwen3-32b",
        "mistralai/mixtral-8x7b-instruct",
        "deepseek/deepseek-chat",
        "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo",
        "meta-llama/Llama-3.3-70B-Instruct-Turbo",
        "Qwen/Qwen2.5-72B-Instruct-Turbo",
        "mistralai/Mixtral-8x7B-Instruct-v0.1",
        "deepseek-ai/DeepSeek-V3",
        "accounts/fireworks/models/llama-v3p1-8b-instruct",
        "accounts/fireworks/models/llama-v3p1-70b-instruct",
        "accounts/fireworks/models/qwen2p5-72b-instruct",
        "accounts/fireworks/models/deepseek-v3",
        "accounts/fireworks/models/mixtral-8x7b-instruct",
        "accounts/fireworks/models/qwen3-235b-a22b",
        "llama-3.1-8b-instant",
        "llama-3.3-70b-versatile",
    ],
)
def test_known_models_have_a_price(model: str) -> None:
    price = price_for(model)
    assert price is not None and price.source == "bundled"
    assert price.output > 0


def test_list_prices_of_openai_models() -> None:
    assert price_for("gpt-4o-mini") == Price(0.15, 0.6, "gpt-4o-mini", "bundled")
    assert price_for("gpt-4o") == Price(2.5, 10.0, "gpt-4o", "bundled")


# --------------------------------------------------------------------------------------------------------
# Lookup rules


def test_lookup_is_case_insensitive() -> None:
    assert price_for("GPT-4o-Mini") == price_for("gpt-4o-mini")
    assert price_for("  gpt-4o-mini ") == price_for("gpt-4o-mini")


def test_lookup_strips_a_provider_prefix() -> None:
    assert price_for("openai/gpt-4o-mini") == price_for("gpt-4o-mini")
    assert price_for("accounts/fireworks/models/llama-v3p1-8b-instruct") == price_for(
        "llama-v3p1-8b-instruct"
    )


def test_exact_id_wins_over_the_stripped_name() -> None:
    # Together's Llama and OpenRouter's are priced differently, and neither is the bare name.
    together = price_for("meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo")
    openrouter = price_for("meta-llama/llama-3.1-8b-instruct")
    assert together is not None and openrouter is not None and together != openrouter
    assert together.model == "meta-llama/meta-llama-3.1-8b-instruct-turbo"


def test_lookup_drops_date_suffixes() -> None:
    base = price_for("gpt-4o-mini")
    assert price_for("gpt-4o-mini-2024-07-18") == base
    assert price_for("openai/gpt-4o-mini-2024-07-18") == base
    assert price_for("gpt-4.1-2025-04-14") == price_for("gpt-4.1")
    assert price_for("anthropic/claude-3.5-haiku-20241022") == price_for("claude-3.5-haiku")
    # A dated snapshot listed with its own price keeps it.
    snapshot = price_for("gpt-4o-2024-05-13")
    assert snapshot is not None and snapshot.input == 5.0 and snapshot != price_for("gpt-4o")


def test_openrouter_variant_tags() -> None:
    free = price_for("meta-llama/llama-3.1-8b-instruct:free")
    assert free is not None and (free.input, free.output, free.source) == (0.0, 0.0, "free variant")
    assert price_for("meta-llama/llama-3.1-8b-instruct:nitro") == price_for(
        "meta-llama/llama-3.1-8b-instruct"
    )


def test_unknown_model_has_no_price() -> None:
    assert price_for("my-own-model") is None
    assert price_for("someone/gpt-4o-mini-but-not-really") is None
    assert cost_usd("my-own-model", 1000, 1000) is None


# --------------------------------------------------------------------------------------------------------
# The user's prices


def test_user_prices_are_merged_over_the_bundled_table(slowtune_home: Path) -> None:
    path = _write_user(
        {"models": {"GPT-4o-mini": {"input": 0.1, "output": 0.2}, "my-model": {"input": 1, "output": 2}}}
    )
    assert path == user_prices_file() and path.is_relative_to(slowtune_home)
    assert price_for("gpt-4o-mini") == Price(0.1, 0.2, "gpt-4o-mini", "user")
    assert price_for("openrouter/my-model") == Price(1.0, 2.0, "my-model", "user")
    assert price_for("gpt-4o") == Price(2.5, 10.0, "gpt-4o", "bundled")  # untouched


def test_user_prices_follow_edits_of_the_file() -> None:
    _write_user({"models": {"my-model": {"input": 1, "output": 2}}})
    assert price_for("my-model").input == 1.0  # type: ignore[union-attr]
    _write_user({"models": {"my-model": {"input": 3.5, "output": 2}, "other": {"input": 0, "output": 0}}})
    assert price_for("my-model").input == 3.5  # type: ignore[union-attr]
    user_prices_file().unlink()
    assert price_for("my-model") is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            "{not json",
            "is not valid JSON: Expecting property name enclosed in double quotes (line 1, column 2)",
        ),
        ("[]", 'expected a JSON object with a "models" object'),
        ({"prices": {}}, 'expected a JSON object with a "models" object'),
        ({"models": []}, 'expected a JSON object with a "models" object'),
        ({"models": {"m": 0.5}}, 'the price of "m" must be an object such as {"input": 0.15, "output": 0.6}'),
        ({"models": {"m": {"input": 0.5}}}, 'the price of "m" has no "output" (USD per million tokens)'),
        (
            {"models": {"m": {"input": "0.5", "output": 1}}},
            'the "input" price of "m" is not a number ("0.5")',
        ),
        (
            {"models": {"m": {"input": 0.5, "output": None}}},
            'the "output" price of "m" is not a number (null)',
        ),
        ({"models": {"m": {"input": True, "output": 1}}}, 'the "input" price of "m" is not a number (true)'),
        ({"models": {"m": {"input": -0.5, "output": 1}}}, 'the "input" price of "m" is negative (-0.5)'),
        (
            '{"models": {"m": {"input": NaN, "output": 1}}}',
            'the "input" price of "m" is not a finite number (nan)',
        ),
        ({"models": {" ": {"input": 1, "output": 1}}}, "a model name is empty"),
    ],
)
def test_broken_user_file_names_the_file_and_the_problem(content: object, message: str) -> None:
    path = _write_user(content)
    with pytest.raises(CostError) as info:
        price_for("gpt-4o-mini")
    assert str(info.value).startswith(str(path))
    assert message in str(info.value)
    # Every entry point reports it the same way.
    with pytest.raises(CostError, match=r"prices\.json"):
        cost_usd("gpt-4o-mini", 10, 10)
    with pytest.raises(CostError, match=r"prices\.json"):
        estimate("gpt-4o-mini", 1, 10, 10)


def test_user_file_that_is_not_utf8() -> None:
    path = paths.config_dir() / "prices.json"
    path.write_bytes(b'{"models": {"caf\xe9": {"input": 1, "output": 1}}}')
    with pytest.raises(CostError, match=r"prices\.json is not UTF-8 text"):
        price_for("x")


def test_free_calls_never_read_a_broken_file() -> None:
    _write_user("{")
    assert cost_usd("anything", 100, 100, free=True) == 0.0
    assert estimate("anything", 3, 100, 100, free=True).cost_usd == 0.0


def test_write_user_price_creates_and_updates_the_file(slowtune_home: Path) -> None:
    path = write_user_price("My-Model", 1.5, 3)
    assert path == user_prices_file() and path.is_relative_to(slowtune_home)
    assert json.loads(path.read_text()) == {"models": {"My-Model": {"input": 1.5, "output": 3.0}}}
    assert price_for("my-model") == Price(1.5, 3.0, "my-model", "user")
    # A second model is added; the first model, written in another case, is replaced rather than doubled.
    write_user_price("other", 0, 0)
    write_user_price("my-model", 2, 4)
    assert json.loads(path.read_text())["models"] == {
        "other": {"input": 0.0, "output": 0.0},
        "my-model": {"input": 2.0, "output": 4.0},
    }
    assert price_for("MY-MODEL") == Price(2.0, 4.0, "my-model", "user")
    assert [p.name for p in path.parent.iterdir()] == ["prices.json"]  # no temporary file left behind


def test_write_user_price_keeps_what_else_the_file_holds() -> None:
    _write_user({"comment": "mine", "models": {"a": {"input": 1, "output": 1, "provider": "x"}}})
    write_user_price("b", 2, 2)
    data = json.loads(user_prices_file().read_text())
    assert data["comment"] == "mine"
    assert data["models"]["a"] == {"input": 1, "output": 1, "provider": "x"}


def test_write_user_price_refuses_a_broken_file() -> None:
    path = _write_user({"models": {"a": {"input": "cheap", "output": 1}}})
    before = path.read_text()
    with pytest.raises(CostError, match='the "input" price of "a" is not a number'):
        write_user_price("b", 1, 1)
    assert path.read_text() == before


@pytest.mark.parametrize(
    ("model", "inp", "out", "message"),
    [
        ("m", -1, 1, 'the "input" price of "m" is negative (-1)'),
        ("m", 1, float("inf"), 'the "output" price of "m" is not a finite number (inf)'),
        ("m", "1", 1, 'the "input" price of "m" is not a number ("1")'),
        ("  ", 1, 1, "a model name is needed to store its price"),
    ],
)
def test_write_user_price_rejects_bad_prices(model: str, inp: object, out: object, message: str) -> None:
    with pytest.raises(CostError) as info:
        write_user_price(model, inp, out)  # type: ignore[arg-type]
    assert str(info.value) == message
    assert not user_prices_file().exists()


# --------------------------------------------------------------------------------------------------------
# Cost of a call


def test_cost_of_a_call() -> None:
    # 1M prompt tokens at $0.15 plus 1M completion tokens at $0.60.
    assert cost_usd("gpt-4o-mini", 1_000_000, 1_000_000) == pytest.approx(0.75)
    assert cost_usd("gpt-4o-mini", 2000, 500) == pytest.approx((2000 * 0.15 + 500 * 0.6) / 1e6)
    assert cost_usd("gpt-4o-mini", 0, 0) == 0.0


def test_free_teachers_cost_nothing() -> None:
    assert cost_usd("gpt-4o-mini", 10_000, 10_000, free=True) == 0.0
    assert cost_usd("llama3.1:8b", 10_000, 10_000, free=True) == 0.0


def test_negative_token_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        cost_usd("gpt-4o-mini", -1, 0)


# --------------------------------------------------------------------------------------------------------
# Estimates


def test_estimate_with_list_prices() -> None:
    est = estimate("gpt-4o-mini", 1240, 1_900_000, 310_000)
    assert est.cost_usd == pytest.approx(1.9 * 0.15 + 0.31 * 0.6)
    assert est.price is not None and est.price.model == "gpt-4o-mini"
    assert (
        est.describe() == "≈ 1,240 calls, 1.9M input + 310k output tokens, ≈ $0.47 at gpt-4o-mini list prices"
    )


def test_estimate_names_the_entry_used() -> None:
    est = estimate("openai/gpt-4o-mini-2024-07-18", 10, 5000, 1000)
    assert est.describe().endswith("at gpt-4o-mini list prices")
    assert est.describe().startswith("≈ 10 calls, 5k input + 1k output tokens, ")


def test_estimate_with_user_prices() -> None:
    write_user_price("my-model", 10, 20)
    est = estimate("my-model", 2, 100_000, 50_000)
    assert est.cost_usd == pytest.approx(2.0)
    assert est.describe() == "≈ 2 calls, 100k input + 50k output tokens, ≈ $2.00 at your prices for my-model"


def test_estimate_with_unknown_price() -> None:
    est = estimate("mystery-model", 1, 900, 100)
    assert est.cost_usd is None and est.price is None
    text = est.describe()
    assert text.startswith(
        '≈ 1 call, 900 input + 100 output tokens; price of model "mystery-model" unknown: '
    )
    assert f"add it to {user_prices_file()}" in text
    assert '{"models": {"mystery-model": {"input": 0.15, "output": 0.6}}}' in text


def test_estimate_for_free_teachers() -> None:
    est = estimate("llama3.1:8b", 50, 20_000, 5_000, free=True)
    assert est.cost_usd == 0.0
    assert est.describe() == "≈ 50 calls, 20k input + 5k output tokens, free: runs on this computer"
    free_variant = estimate("meta-llama/llama-3.1-8b-instruct:free", 1, 1000, 1000)
    assert free_variant.cost_usd == 0.0
    assert free_variant.describe().endswith("no cost (a free variant of the model)")


def test_estimate_formats_small_and_large_amounts() -> None:
    assert (
        estimate("gpt-4o-mini", 1, 1000, 100).describe().endswith(", under $0.01 at gpt-4o-mini list prices")
    )
    big = estimate("gpt-4o", 123_456, 1_234_567_890, 98_765_432)
    assert big.describe() == (
        "≈ 123,456 calls, 1,235M input + 99M output tokens, ≈ $4,074.07 at gpt-4o list prices"
    )


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0"),
        (999, "999"),
        (1000, "1k"),
        (1540, "1.5k"),
        (9_949, "9.9k"),
        (9_950, "10k"),
        (310_000, "310k"),
        (999_499, "999k"),
        (999_500, "1M"),
        (1_900_000, "1.9M"),
        (12_600_000, "13M"),
    ],
)
def test_token_counts_read_naturally(n: int, text: str) -> None:
    assert cost._tokens(n) == text


def test_estimate_rejects_negative_counts() -> None:
    with pytest.raises(ValueError, match="calls"):
        estimate("gpt-4o-mini", -1, 0, 0)
    with pytest.raises(ValueError, match="token"):
        estimate("gpt-4o-mini", 1, -5, 0)
