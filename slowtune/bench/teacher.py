"""``slowtune bench teacher``: generation throughput, fault tolerance and kill/resume against the test server.

Each run uses a fresh temporary SLOWTUNE_HOME and project (the user's providers and projects are not
touched) and the fake OpenAI server in its own process, answering every call after a fixed latency:

- **throughput**: the whole generation pipeline over a synthetic corpus, at the given concurrency, with no
  faults. ``throughput_ratio`` = paid calls per second / (concurrency / latency).
- **faults**: the same with about 10% of calls answered 429 (with retry-after) or 500. ``lost_chunks``
  counts chunks that ended neither done nor generated.
- **kill/resume**: ``slowtune generate`` in a child process is SIGKILLed as call N is about to be sent (the
  test-only hook), then run again. ``repeated_paid_calls`` counts responses the first process had recorded
  that the server was paid for again (must be 0); ``inflight_at_kill`` counts responses the server completed
  for the first process that it never recorded (the calls in flight at the kill).

The figures of each run are printed, with the median of the runs. The test server is a development tool: the
frozen app does not start it, so there this benchmark says it needs a source checkout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from slowtune.selfcmd import module_command, slowtune_command

_WORDS = ["amber", "basalt", "cedar", "delta", "ember", "fjord", "garnet", "harbor", "indigo", "juniper", "kestrel", "lantern", "meadow", "nickel", "orchid", "pewter", "quarry", "russet", "saffron", "thistle", "umber", "violet", "willow", "xenon", "yarrow", "zephyr"]


def _corpus(folder: Path, chunks: int) -> Path:
    """Distinct sentences (so questions do not collapse as duplicates), about 2 chunks per document."""
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for d in range((chunks + 1) // 2):
        paragraphs = []
        for _ in range(2):
            sentences = []
            for _ in range(4):
                a, b, c = (_WORDS[(n * k + d) % len(_WORDS)] for k in (1, 7, 13))
                sentences.append(f"The {a} gauge number {n} reads {n * 37 % 1000} units beside the {b} {c} valve.")
                n += 1
            paragraphs.append(" ".join(sentences))
        (folder / f"site-{d:04d}.md").write_text(f"# Site {d}\n\n" + "\n\n".join(paragraphs) + "\n", encoding="utf-8")
    return folder


def _control(url: str, path: str, payload: Any = None) -> Any:
    base = url.rsplit("/v1", 1)[0]
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(base + path, data=data, method="GET" if data is None else "POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as response:
        return json.loads(response.read() or b"null")


class _Server:
    def __init__(self, latency: float) -> None:
        self.proc = subprocess.Popen(
            module_command("slowtune.testing.fake_openai", "--latency", str(latency), "--no-auth"),
            stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("URL "):
            self.proc.kill()
            raise RuntimeError(f"the test server did not start: {line!r}")
        self.url = line.split(" ", 1)[1].strip()

    def stats(self) -> dict[str, Any]:
        return _control(self.url, "/_control/stats")

    def settled_stats(self, timeout: float = 30.0) -> dict[str, Any]:
        """Stats once no call is in flight (a killed client's calls still finish on the server)."""
        deadline = time.monotonic() + timeout
        stats = self.stats()
        while stats["inflight"] and time.monotonic() < deadline:
            time.sleep(0.05)
            stats = self.stats()
        return stats

    def faults(self, faults: list[dict[str, Any]]) -> None:
        _control(self.url, "/_control/faults", faults)

    def reset(self) -> None:
        _control(self.url, "/_control/reset", {})

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _failing_calls(share: float, horizon: int = 20000) -> tuple[list[int], list[int]]:
    """Deterministic call numbers (about ``share`` of all) answered 429 and 500, alternating."""
    import random

    rng = random.Random(7)
    picked = [n for n in range(1, horizon) if rng.random() < share]
    return picked[::2], picked[1::2]


def _project(home: Path, chunks: int) -> Path:
    from slowtune.documents.library import ingest
    from slowtune.store import Project

    root = home / "projects" / "bench"
    with Project.create(root) as project:
        ingest(project, [_corpus(home / "docs", chunks)], chunk_tokens=80, chunk_overlap=0, workers=1)
    return root


def _generate(root: Path, concurrency: int) -> tuple[Any, float]:
    from slowtune.store import Project
    from slowtune.teacher import prompts, session
    from slowtune.teacher.parse import parse_reply
    from slowtune.teacher.pipeline import GenerateConfig, Generator, load_jobs

    with Project.open(root) as project:
        config = GenerateConfig(recipe="plain", pairs_per_chunk=2, mix={"fact": 0.5, "reasoning": 0.5})
        runner = session.make_runner(project, session.choose("bench", None), concurrency=concurrency, timeout=30)
        runner.backoff = 0.1
        generator = Generator(project, runner, config)
        jobs, _ = load_jobs(project, config)

        async def main() -> Any:
            try:
                # One call outside the timing: the client's lazy imports and first connection are paid once
                # per process, not per call.
                await runner.teacher.complete([{"role": "user", "content": "warm-up"}], schema={}, mode="text",
                                              temperature=0.0, max_tokens=1, timeout=30)
                parse_reply('{"items": []}', prompts.generation_schema())  # imports the validator
                start = time.perf_counter()
                result = await generator.run(jobs)
                return result, time.perf_counter() - start
            finally:
                await runner.teacher.aclose()

        return asyncio.run(main())


def _one_run(run: int, args: argparse.Namespace, server: _Server, work: Path) -> dict[str, Any]:
    from slowtune.fsutil import atomic_writer  # noqa: F401  (keeps imports of the package warm)
    from slowtune.store import Project
    from slowtune.testing.fake_openai import fingerprint

    out: dict[str, Any] = {"run": run}
    ideal = args.concurrency / args.latency

    # 1. throughput, no faults
    server.faults([])
    server.reset()
    home = work / f"run{run}-clean"
    root = _project(home, args.chunks)
    result, seconds = _generate(root, args.concurrency)
    paid = result.calls
    out["throughput"] = {"calls": paid, "seconds": round(seconds, 2), "calls_per_s": round(paid / seconds, 2),
                         "ideal_calls_per_s": ideal, "ratio": round(paid / seconds / ideal, 3),
                         "chunks_done": result.chunks_done, "rows": result.rows_kept}

    # 2. 10% of calls fail with 429 / 500
    rate_limited, errors = _failing_calls(args.fault_share)
    faults = [{"kind": "rate_limit", "calls": rate_limited, "retry_after": args.latency},
              {"kind": "server_error", "calls": errors}]
    server.faults(faults)
    server.reset()
    root = _project(work / f"run{run}-faults", args.chunks)
    result, seconds = _generate(root, args.concurrency)
    with Project.open(root) as project:
        total = project.conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
        done = project.conn.execute("SELECT count(*) FROM generation_chunks WHERE status = 'done'").fetchone()[0]
    stats = server.stats()
    out["faults"] = {"calls": stats["chat_calls"], "failed_calls": stats["by_status"].get("429", 0)
                     + stats["by_status"].get("500", 0), "seconds": round(seconds, 2), "chunks": total,
                     "lost_chunks": total - done, "retries": result.retries}

    # 3. kill at call N, then resume (through the CLI, in child processes)
    server.reset()
    root = _project(work / f"run{run}-kill", args.chunks)
    env = {**os.environ, "SLOWTUNE_HOME": os.environ["SLOWTUNE_HOME"]}
    cmd = [*slowtune_command("generate", str(root)), "--provider", "bench", "--yes", "--json",
           "--concurrency", str(args.concurrency), "--pairs-per-chunk", "2", "--timeout", "30"]
    killed = subprocess.run(cmd, env={**env, "SLOWTUNE_TEST_KILL": f"teacher-call:{args.kill_at}"},
                            capture_output=True, text=True)
    if killed.returncode != -9:
        raise SystemExit(f"slowtune bench teacher: the first process was not killed (exit {killed.returncode}): "
                         f"the run made fewer than --kill-at {args.kill_at} calls; lower --kill-at or raise --chunks")
    with Project.open(root) as project:
        recorded = [fingerprint(json.loads(r[0])) for r in project.conn.execute(
            "SELECT request_json FROM generation_cache")]
    before = server.settled_stats()["paid"]
    server.reset()
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True)
    after = server.settled_stats()["paid"]
    with Project.open(root) as project:
        total = project.conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
        done = project.conn.execute("SELECT count(*) FROM generation_chunks WHERE status = 'done'").fetchone()[0]
    recorded_set = set(recorded)
    unrecorded = [f for f in before if f not in recorded_set]
    out["kill_resume"] = {
        "killed_returncode": killed.returncode, "resumed_returncode": resumed.returncode,
        "kill_at_call": args.kill_at, "recorded_before_kill": len(recorded),
        "paid_before_kill": len(before), "inflight_at_kill": len(unrecorded),
        "repeated_paid_calls": sum(1 for f in after if f in recorded_set),
        "inflight_paid_again": sum(1 for f in after if f in set(unrecorded)),
        "paid_after_resume": len(after), "lost_chunks": total - done,
    }
    if resumed.returncode != 0:
        out["kill_resume"]["error"] = resumed.stderr[-500:]
    return out


def bench_teacher(args: argparse.Namespace) -> dict[str, Any]:
    if getattr(sys, "frozen", False):
        raise SystemExit("slowtune bench teacher needs a source checkout: it runs the test server "
                         "(slowtune/testing/fake_openai.py), which the app does not start. Run `uv run slowtune bench "
                         "teacher` in the repository.")
    if args.concurrency < 1 or args.latency <= 0 or args.runs < 1:
        raise SystemExit("slowtune bench teacher: --concurrency, --latency and --runs must be positive")
    work = Path(tempfile.mkdtemp(prefix="slowtune-bench-teacher-"))
    os.environ["SLOWTUNE_HOME"] = str(work / "home")
    server = _Server(args.latency)
    try:
        from slowtune.teacher import providers

        providers.add_provider("bench", "custom", base_url=server.url, model="teacher-small")
        runs = [_one_run(i, args, server, work) for i in range(args.runs)]
    finally:
        server.close()

    def median(section: str, key: str) -> float:
        return statistics.median(r[section][key] for r in runs)

    return {
        "bench": "teacher",
        "latency_s": args.latency,
        "concurrency": args.concurrency,
        "runs": args.runs,
        "calls_per_run": median("throughput", "calls"),
        "throughput_ratio": median("throughput", "ratio"),
        "throughput_target": 0.9,
        "fault_share": args.fault_share,
        "lost_chunks": max(max(r["faults"]["lost_chunks"], r["kill_resume"]["lost_chunks"]) for r in runs),
        "repeated_paid_calls": max(r["kill_resume"]["repeated_paid_calls"] for r in runs),
        "inflight_at_kill": median("kill_resume", "inflight_at_kill"),
        "details": runs,
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--latency", type=float, default=0.2, help="server latency per call in seconds (0.2)")
    p.add_argument("--concurrency", type=int, default=16, help="calls in flight (16)")
    p.add_argument("--chunks", type=int, default=400,
                   help="chunks in the corpus (400: about 1,170 calls; the last calls of a run cannot fill every "
                   "slot, so longer runs measure the steady rate better)")
    p.add_argument("--runs", type=int, default=3, help="runs; medians are reported (3)")
    p.add_argument("--fault-share", type=float, default=0.1, help="share of calls answered 429/500 (0.1)")
    p.add_argument("--kill-at", type=int, default=250, help="call number at which the first process is killed")
