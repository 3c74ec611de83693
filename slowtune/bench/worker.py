"""``python -m slowtune.bench.worker SPEC``: one measurement of ``slowtune bench train|export|ingest`` in a fresh
process, so that its peak memory is its own. ``SPEC`` is a JSON object whose ``variant`` picks the work
(``VARIANTS``; the frozen app's entry script, packaging/entry.py, allows exactly these); the result is printed as
the last line of stdout."""

from __future__ import annotations

import json
import sys
from typing import Any

VARIANTS = ("memory_ckpt", "memory", "streamed_warm", "streamed_cold", "loader_cold", "export", "ingest_big")


def run(spec: dict[str, Any]) -> str:
    """The worker's output line for ``spec``."""
    variant = spec["variant"]
    if variant not in VARIANTS:
        raise ValueError(f"unknown bench worker variant {variant!r}; known: {', '.join(VARIANTS)}")
    if variant == "ingest_big":
        from slowtune.bench.ingest import ingest_worker

        return ingest_worker(spec)
    if variant == "export":
        from slowtune.bench.export import export_worker

        return json.dumps(export_worker(spec))
    from slowtune.bench.train import train_worker

    return json.dumps(train_worker(spec))


if __name__ == "__main__":
    print(run(json.loads(sys.argv[1])))
