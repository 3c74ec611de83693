"""The ``slowtune`` command. With no arguments it opens the app; each subcommand runs one stage headless."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from slowtune import __version__

log = logging.getLogger("slowtune")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2

def _doctor(args: argparse.Namespace) -> int:
    from slowtune import doctor

    report = doctor.collect(measure_disk=not args.no_disk_test, disk_bytes=args.disk_test_mb * 2**20)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(doctor.render(report))
    return EXIT_OK if doctor.healthy(report) else EXIT_ERROR


def _gui(args: argparse.Namespace) -> int:
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or os.environ.get("QT_QPA_PLATFORM")
    ):
        print(
            "slowtune: no display to open the app on (DISPLAY and WAYLAND_DISPLAY are not set).\n"
            "Run it in a desktop session, or use the command line: slowtune --help",
            file=sys.stderr,
        )
        return EXIT_ERROR
    from slowtune.gui.app import run_app

    return run_app(sys.argv[:1])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slowtune",
        description="Turn your documents into a small private model you can chat with offline. "
        "With no command, the app opens.",
    )
    parser.add_argument("--version", action="version", version=f"slowtune {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="print debug logging to stderr")
    parser.add_argument("--self-test", action="store_true",
                        help="check that this install works (documents, MLX, llama.cpp, keychain, the window) and "
                        "exit 0 only when every check passes")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    from slowtune.documents import command as ingest_command

    ingest = sub.add_parser("ingest", help="Add documents (PDF, DOCX, HTML, Markdown, text) to a project",
                            description="Add files and folders to a project: parse, chunk, and report on every file. "
                            "Unchanged files are not read again.")
    ingest_command.add_arguments(ingest)
    ingest.set_defaults(func=ingest_command.run)

    from slowtune.teacher import command as teacher_command
    from slowtune.teacher import provider_command

    provider = sub.add_parser("provider", help="Teacher providers: add, list, test, probe, remove (keys in the keychain)",
                              description="OpenAI-compatible teacher endpoints and local GGUF teachers. API keys "
                              "are stored in the OS keychain, never in files.")
    provider_command.add_arguments(provider)
    provider.set_defaults(func=provider_command.run)

    generate = sub.add_parser("generate", help="Have a teacher model write grounded Q&A from a project's documents",
                              description="For each new chunk: ask the teacher for question/answer items, check "
                              "each evidence quote against the chunk, verify refusals against the whole corpus, "
                              "judge, de-duplicate, and store the rows split by chunk. Resumable: a second run "
                              "pays for nothing the first one received.")
    teacher_command.add_generate_arguments(generate)
    generate.set_defaults(func=teacher_command.run_generate)

    dataset = sub.add_parser("dataset", help="Review the generated dataset: report, list, accept, reject, export",
                             description="The rows the teacher wrote, with why rejected ones were rejected.")
    teacher_command.add_dataset_arguments(dataset)
    dataset.set_defaults(func=teacher_command.run_dataset)

    from slowtune.chat import command as chat_command
    from slowtune.eval import command as eval_command

    chat = sub.add_parser("chat", help="Chat offline with a GGUF model through llama.cpp (side by side with --compare)",
                          description="Chat with a GGUF model, fully offline, with the chat template from the file. "
                          "Ctrl-C stops an answer; Ctrl-D ends the session. --project saves the session.")
    chat_command.add_arguments(chat)
    chat.set_defaults(func=chat_command.run)

    ev = sub.add_parser("eval", help="Score a tuned model against its base on the held-out probes",
                        description="Answer each held-out probe with the tuned GGUF (and the base), score exact match, "
                        "F1, key facts and refusals, optionally have an LLM judge grade them; the report is saved in "
                        "the project.")
    eval_command.add_arguments(ev)
    ev.set_defaults(func=eval_command.run)

    from slowtune.train import command as train_command

    train = sub.add_parser(
        "train",
        help="Train a LoRA adapter with MLX (layer-streamed when the model does not fit)",
        description="Train a LoRA adapter on chat JSONL. The fit preflight picks the engine: in memory when "
        "the model fits, else streamed one block at a time from its own files.",
    )
    train_command.add_arguments(train)
    train.set_defaults(func=train_command.run)

    from slowtune.export import command as export_command

    export = sub.add_parser("export", help="Fuse an adapter, write GGUF, quantise with llama.cpp, and verify",
                            description="Fuse a trained adapter into its base, write GGUF (F16 plus the "
                            "quantisations asked for), verify each file against the trained model, and write an "
                            "Ollama Modelfile.")
    export_command.add_arguments(export)
    export.set_defaults(func=export_command.run)

    from slowtune.models import command as models_command

    models = sub.add_parser("models", help="Base models: the catalog, downloads, local folders, the HF token",
                            description="Recommended base models, downloads into the Hugging Face cache (Ctrl-C "
                            "stops; running it again resumes), and the token for gated models.")
    models_command.add_arguments(models)
    models.set_defaults(func=models_command.run)

    from slowtune import bench

    bench_parser = sub.add_parser("bench", help="Speed and memory benchmarks, printed as JSON",
                                  description="Benchmarks that compare side by side in one run.")
    bench.add_arguments(bench_parser)
    bench_parser.set_defaults(func=bench.run)

    doctor = sub.add_parser(
        "doctor",
        help="Show what this machine offers: MLX device, llama.cpp backends, memory, disk speed, keychain",
        description="Show the environment slowtune runs in. Exits 1 when MLX or llama.cpp does not work.",
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.add_argument("--no-disk-test", action="store_true", help="skip the disk read-speed measurement")
    doctor.add_argument("--disk-test-mb", type=int, default=256, metavar="MB",
                        help="size of the scratch file read to measure disk speed (default 256)")
    doctor.set_defaults(func=_doctor)
    return parser


def command_names() -> list[str]:
    """The subcommands of ``slowtune``, from a freshly built parser (which imports every stage's command module)."""
    parser = build_parser()
    return list(next(a.choices for a in parser._actions if isinstance(getattr(a, "choices", None), dict)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from slowtune.logs import setup_logging

    setup_logging(verbose=args.verbose)
    if args.self_test:
        if args.command is not None:
            parser.error("--self-test takes no command")
        from slowtune import selftest

        return selftest.main(verbose=args.verbose, commands=command_names)
    if args.command is None:
        return _gui(args)
    log.debug("slowtune %s: %s", __version__, args.command)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("slowtune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
