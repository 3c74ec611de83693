"""Reading the teacher's JSON: repair what can be repaired, validate, and say what was wrong.

Models wrap JSON in code fences, add a sentence before it, or stop mid-object when they hit their token
limit. ``parse_reply`` strips the wrapping, repairs broken JSON with ``json_repair``, and validates the
result against the task's schema. A truncated reply loses its last item (it was cut off, so even a
repaired version of it is unreliable); items that break the schema are dropped one by one with a reason,
so one bad item does not cost the whole reply.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from typing import Any

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)


@dataclass
class Parsed:
    data: dict[str, Any] | None
    problem: str | None = None  # why the reply cannot be used at all (then data is None)
    dropped: list[str] = field(default_factory=list)  # why individual items were dropped
    repaired: bool = False


def _json_text(content: str) -> str:
    fenced = _FENCE.search(content)
    if fenced:
        return fenced.group(1).strip()
    stripped = content.strip()
    if stripped.startswith("["):
        return stripped
    start = content.find("{")
    return content[start:].strip() if start >= 0 else stripped


def _load(text: str) -> tuple[Any, bool]:
    try:
        return json.loads(text), False
    except json.JSONDecodeError:
        pass
    import json_repair

    repaired = json_repair.loads(text)
    return repaired, True


def _list_keys(schema: dict[str, Any]) -> list[str]:
    # Every task schema is an object of lists of items: one (most tasks), or several (``facts``: the facts, then
    # the near misses). The first is the reply's substance; a later one a truncated reply never reached is empty.
    return list(schema["required"])


def _errors(validator: Any, value: Any) -> list[str]:
    return [f"{'/'.join(str(p) for p in e.absolute_path) or 'reply'}: {e.message[:120]}"
            for e in validator.iter_errors(value)]


@functools.lru_cache(maxsize=16)
def _validator(item_schema_json: str) -> Any:
    import jsonschema

    return jsonschema.Draft202012Validator(json.loads(item_schema_json))


def parse_reply(content: str, schema: dict[str, Any], *, finish_reason: str | None = None) -> Parsed:
    """The reply's data, with invalid items dropped; or ``data=None`` and the reason it is unusable."""
    if not content or not content.strip():
        return Parsed(None, "the reply was empty")
    text = _json_text(content)
    if "{" not in text and not text.startswith("["):
        return Parsed(None, f"the reply was not JSON (it began: {content.strip()[:60]!r})")
    try:
        data, repaired = _load(text)
    except Exception:  # json_repair is defensive, but never let a parser bug end the run
        return Parsed(None, "the reply was not valid JSON and could not be repaired")
    if not isinstance(data, dict):
        return Parsed(None, "the reply was not a JSON object")
    keys = _list_keys(schema)
    if not isinstance(data.get(keys[0]), list):
        return Parsed(None, f"the reply has no {keys[0]!r} list (keys: {', '.join(sorted(data)) or 'none'})")
    truncated = finish_reason == "length"
    lists: dict[str, list[Any]] = {}
    dropped: list[str] = []
    for key in keys:
        items = data.get(key)
        if not isinstance(items, list):
            if not truncated:
                return Parsed(None, f"the reply has no {key!r} list (keys: {', '.join(sorted(data)) or 'none'})")
            items = []  # cut off before it began
        lists[key] = items
    if truncated:
        # Cut off mid-item: even repaired, the last item written is incomplete (it is in the last list begun).
        last = next((k for k in reversed(keys) if lists[k]), None)
        if last is not None:
            lists[last] = lists[last][:-1]
    kept_lists: dict[str, list[Any]] = {}
    for key in keys:
        validator = _validator(json.dumps(schema["properties"][key]["items"], sort_keys=True))
        kept = []
        for i, item in enumerate(lists[key]):
            errors = _errors(validator, item)
            if errors:
                where = f"item {i}" if len(keys) == 1 else f"{key} item {i}"
                dropped.append(f"{where}: {errors[0]}")
            else:
                kept.append(item)
        kept_lists[key] = kept
    if not kept_lists[keys[0]]:
        if truncated:
            return Parsed(None, "the reply was cut off before its first complete item (token limit)")
        if dropped:
            return Parsed(None, f"no item matched the schema ({dropped[0]})")
    return Parsed(kept_lists, dropped=dropped, repaired=repaired or truncated)
