"""``slowtune bench ...``: speed and memory measured side by side in one run, printed as JSON.

One module per benchmark: ``train`` (streamed against in-memory training), ``export`` (the whole ``slowtune
export`` as a process tree), ``ingest`` (document ingest), ``chat`` (the chat engine against plain
llama-cpp-python), ``gui`` (the app's cold start and event-loop latency), ``teacher`` (generation against the
test server) and ``learn`` (learning quality on the real SmolLM2: knowledge, retention, leakage, the recipe against
plain Q&A). Measurements that need a fresh process run in one: ``python -m slowtune.bench.worker SPEC`` (train,
export, ingest) and ``python -m slowtune.bench.gui ...`` (the window workers); ``memory`` samples what they hold.

The benchmarks sit above every stage and may import any of them; nothing in slowtune imports the benchmarks but the
command line.
"""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    from slowtune.bench import chat, export, gui, ingest, learn, teacher, train

    sub = p.add_subparsers(dest="bench", metavar="BENCH", required=True)
    train.add_arguments(sub.add_parser("train", help="streamed vs in-memory training: step time, memory, disk"))
    ingest.add_arguments(sub.add_parser(
        "ingest", help="document ingest: 1,000 PDF pages, re-ingest, peak memory on 2,000 pages"))
    export.add_arguments(sub.add_parser(
        "export", help="the whole `slowtune export` (fuse, F16, Q4_K_M, verification) as a process tree: peak memory "
        "against the model's size, time, the F16 gate's figures, and a run under a memory cap of 0.35 x the model"))
    chat.add_arguments(sub.add_parser(
        "chat", help="chat-engine decoding speed against plain llama-cpp-python on a >=100M Q8_0 model"))
    gui.add_arguments(sub.add_parser(  # imports Qt only inside its child processes
        "gui", help="app cold start against a bare Qt window; event-loop latency while training"))
    teacher.add_arguments(sub.add_parser(
        "teacher", help="generation against the test server: throughput, faults, kill and resume"))
    learn.add_arguments(sub.add_parser(
        "learn", help="learning quality on the real SmolLM2: knowledge, retention, leakage and open book, the recipe "
        "against plain Q&A (about 45 minutes; --quick: a few)"))


def run(args: argparse.Namespace) -> int:
    from slowtune.bench import chat, export, gui, ingest, learn, teacher, train

    benches = {"train": train.bench_train, "export": export.bench_export, "ingest": ingest.bench_ingest,
               "teacher": teacher.bench_teacher, "chat": chat.bench_chat, "gui": gui.bench_gui,
               "learn": learn.bench_learn}
    result = benches[args.bench](args)
    print(json.dumps(result, indent=2))
    return 0
