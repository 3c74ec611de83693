"""What the teacher costs: list prices, the cost of a call and estimates before a run.

Prices are US dollars per million tokens, from ``resources/prices.json`` (public list prices, which go out of
date) with the user's own ``config_dir()/prices.json`` merged over it, so a user can add a model or correct a
price without waiting for a release. A server on the user's machine and the in-process model cost nothing;
callers say so with ``free=True`` (``session.choose`` decides: a server on this computer is free unless the user
priced its model, as they would for a local proxy to a paid service).

A broken user file raises ``CostError`` naming the file and the problem, so the app can show it instead of a
traceback; nothing here ever guesses a price for a model it does not know (the cost is ``None``).
"""

from __future__ import annotations

import functools
import json
import math
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slowtune import paths
from slowtune.fsutil import atomic_write_text
from slowtune.resources import resource_path

PRICES_FILE = "prices.json"
# An OpenRouter model id with this tag (``meta-llama/llama-3.1-8b-instruct:free``) is served at no cost.
FREE_TAG = "free"


class CostError(ValueError):
    """A price table that cannot be used, or a price that cannot be stored; the message is for the user."""


@dataclass(frozen=True)
class Price:
    input: float  # USD per million prompt tokens
    output: float  # USD per million completion tokens
    model: str = ""  # the table entry the price came from
    source: str = "bundled"  # "bundled" (list prices shipped with slowtune), "user", or "free variant"

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1_000_000


def user_prices_file() -> Path:
    """The user's own price table (may not exist)."""
    return paths.config_dir() / PRICES_FILE


# --------------------------------------------------------------------------------------------------------
# Reading the tables


def _number(value: Any, what: str, model: str, origin: str | None) -> float:
    where = f"{origin}: " if origin else ""
    # bool is an int in Python, but "input": true is a mistake, not a price of one dollar.
    if isinstance(value, bool) or not isinstance(value, int | float):
        shown = json.dumps(value, default=repr)
        raise CostError(f'{where}the "{what}" price of "{model}" is not a number ({shown})')
    if not math.isfinite(value):
        raise CostError(f'{where}the "{what}" price of "{model}" is not a finite number ({value})')
    if value < 0:
        raise CostError(f'{where}the "{what}" price of "{model}" is negative ({value})')
    return float(value)


def _parse_table(data: Any, origin: str, source: str) -> dict[str, Price]:
    """``{"models": {name: {"input": x, "output": y}}}`` → prices by lower-cased name, checked."""
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise CostError(
            f'{origin}: expected a JSON object with a "models" object, such as '
            '{"models": {"gpt-4o-mini": {"input": 0.15, "output": 0.6}}}'
        )
    prices: dict[str, Price] = {}
    for name, entry in data["models"].items():
        if not name.strip():
            raise CostError(f"{origin}: a model name is empty")
        if not isinstance(entry, dict):
            raise CostError(
                f'{origin}: the price of "{name}" must be an object such as {{"input": 0.15, "output": 0.6}}'
            )
        for what in ("input", "output"):
            if what not in entry:
                raise CostError(f'{origin}: the price of "{name}" has no "{what}" (USD per million tokens)')
        key = name.strip().lower()
        prices[key] = Price(
            _number(entry["input"], "input", name, origin),
            _number(entry["output"], "output", name, origin),
            key,
            source,
        )
    return prices


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CostError(f"{path} is not UTF-8 text") from None
    except OSError as exc:
        raise CostError(f"{path} cannot be read: {exc.strerror or exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise CostError(f"{path} is not valid JSON: {exc.msg} ({where})") from None


@functools.cache
def bundled_prices() -> dict[str, Price]:
    """The list prices shipped with slowtune (read once)."""
    path = resource_path(PRICES_FILE)
    return _parse_table(_read_json(path), str(path), "bundled")


def bundled_as_of() -> str:
    """When the bundled list prices were taken ("2026-11")."""
    return str(_read_json(resource_path(PRICES_FILE)).get("as_of", "unknown date"))


# The user's table, keyed by what identifies one version of the file. The lock keeps threads of one run from
# parsing it at once; write_user_price clears the cache (an edit within a file system's timestamp
# granularity could otherwise keep the same mtime and size).
_user_cache: dict[tuple[str, int, int], dict[str, Price]] = {}
_user_lock = threading.Lock()


def user_prices() -> dict[str, Price]:
    """The user's own prices ({} without a file); ``CostError`` when the file is broken."""
    path = user_prices_file()
    try:
        stat = path.stat()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise CostError(f"{path} cannot be read: {exc.strerror or exc}") from None
    stamp = (str(path), stat.st_mtime_ns, stat.st_size)
    with _user_lock:
        if stamp not in _user_cache:
            prices = _parse_table(_read_json(path), str(path), "user")
            _user_cache.clear()
            _user_cache[stamp] = prices
        return _user_cache[stamp]


def load_prices() -> dict[str, Price]:
    """Bundled list prices with the user's prices merged over them, by lower-cased model name."""
    return {**bundled_prices(), **user_prices()}


# --------------------------------------------------------------------------------------------------------
# Looking a model up

# Snapshot dates that providers append to a model name: OpenAI "-2024-07-18", Anthropic "-20241022",
# DeepSeek/Mistral "-0324"/"-2411". The snapshot is priced like the model unless the table lists it itself.
_DATE_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{4})$")


def _lookup_names(model: str) -> tuple[list[str], bool]:
    """The names to try, in order, and whether the id carries OpenRouter's ``:free`` tag.

    Exact id; the id without a provider prefix (the part after the last "/": "openai/gpt-4o-mini",
    "accounts/fireworks/models/llama-v3p1-8b-instruct"); then each of those without a date suffix. A
    variant tag (":free", ":nitro") is dropped after the exact id was tried.
    """
    name = model.strip().lower()
    names = [name]
    free = False
    base, _, tag = name.rpartition(":")
    if base and "/" not in tag:
        free = tag == FREE_TAG
        name = base
        names.append(name)
    bare = name.rsplit("/", 1)[-1]
    for candidate in (name, bare, _DATE_SUFFIX.sub("", name), _DATE_SUFFIX.sub("", bare)):
        if candidate and candidate not in names:
            names.append(candidate)
    return names, free


def price_for(model: str) -> Price | None:
    """The price of ``model`` (user prices first, then the bundled list), or None when it is not known.

    ``CostError`` when the user's price file is broken.
    """
    prices = load_prices()
    names, free = _lookup_names(model)
    if names[0] in prices:
        return prices[names[0]]
    if free:
        return Price(0.0, 0.0, names[0], "free variant")
    for name in names[1:]:
        if name in prices:
            return prices[name]
    return None


def user_price_for(model: str) -> Price | None:
    """The user's own price of ``model`` (their ``prices.json`` only), or None. ``CostError``: a broken file."""
    prices = user_prices()
    for name in _lookup_names(model)[0]:
        if name in prices:
            return prices[name]
    return None


def cost_usd(model: str, prompt_tokens: int, completion_tokens: int, *, free: bool = False) -> float | None:
    """Dollars for one call: 0.0 for a free teacher (a local server, the in-process model); None: unknown."""
    _check_tokens(prompt_tokens, completion_tokens)
    if free:
        return 0.0
    price = price_for(model)
    return None if price is None else price.cost(prompt_tokens, completion_tokens)


def _check_tokens(*counts: int) -> None:
    for n in counts:
        if n < 0:
            raise ValueError(f"token counts cannot be negative, got {n}")


def write_user_price(model: str, input: float, output: float) -> Path:
    """Store the price of ``model`` (USD per million tokens) in the user's table, keeping everything else.

    A broken existing file raises ``CostError`` rather than being overwritten: it is the user's work.
    """
    name = model.strip()
    if not name:
        raise CostError("a model name is needed to store its price")
    path = user_prices_file()
    entry = {"input": _number(input, "input", name, None), "output": _number(output, "output", name, None)}
    data: dict[str, Any] = {"models": {}}
    if path.exists():
        data = _read_json(path)
        _parse_table(data, str(path), "user")  # refuse to build on a file that is wrong already
    # One entry per model whatever its spelling: the lookup ignores case.
    models = {k: v for k, v in data["models"].items() if k.strip().lower() != name.lower()}
    models[name] = entry
    data["models"] = models
    with _user_lock:
        atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        _user_cache.clear()
    return path


# --------------------------------------------------------------------------------------------------------
# Estimates before a run


def _tokens(n: int) -> str:
    if n < 1000:
        return str(n)
    if n < 9_950:
        return f"{n / 1000:.1f}".removesuffix(".0") + "k"
    if n < 999_500:
        return f"{round(n / 1000)}k"
    if n < 9_950_000:
        return f"{n / 1_000_000:.1f}".removesuffix(".0") + "M"
    return f"{round(n / 1_000_000):,}M"


def _dollars(amount: float) -> str:
    # "≈ $0.00" would read as free; a cost that rounds to nothing is still a cost.
    return "under $0.01" if 0 < amount < 0.005 else f"≈ ${amount:,.2f}"


@dataclass(frozen=True)
class Estimate:
    model: str
    calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: float | None  # None when the model's price is unknown
    price: Price | None = None
    free: bool = False

    def describe(self) -> str:
        """One line for the user, such as
        "≈ 1,240 calls, 1.9M input + 310k output tokens, ≈ $0.47 at gpt-4o-mini list prices"."""
        size = (
            f"≈ {self.calls:,} call{'' if self.calls == 1 else 's'}, "
            f"{_tokens(self.input_tokens)} input + {_tokens(self.output_tokens)} output tokens"
        )
        if self.free:
            return f"{size}, free: runs on this computer"
        if self.price is None or self.cost_usd is None:
            example = json.dumps({"models": {self.model: {"input": 0.15, "output": 0.6}}})
            return (
                f'{size}; price of model "{self.model}" unknown: add it to {user_prices_file()} as {example} '
                "(US dollars per million tokens)"
            )
        if self.price.source == "free variant":
            return f"{size}, no cost (a free variant of the model)"
        where = (
            f"your prices for {self.price.model}" if self.price.source == "user"
            else f"{self.price.model} list prices"
        )
        return f"{size}, {_dollars(self.cost_usd)} at {where}"


def estimate(
    model: str, calls: int, input_tokens: int, output_tokens: int, *, free: bool = False
) -> Estimate:
    """What a run of ``calls`` calls with these total token counts would cost (``CostError``: broken file)."""
    if calls < 0:
        raise ValueError(f"the number of calls cannot be negative, got {calls}")
    _check_tokens(input_tokens, output_tokens)
    if free:
        return Estimate(model, calls, input_tokens, output_tokens, 0.0, None, True)
    price = price_for(model)
    cost = None if price is None else price.cost(input_tokens, output_tokens)
    return Estimate(model, calls, input_tokens, output_tokens, cost, price)
