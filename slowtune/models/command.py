"""``slowtune models``: the catalog, downloads (with progress, Ctrl-C to cancel, resume on the next run),
a description of a local folder or downloaded repo, and the Hugging Face token in the keychain."""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="recommended base models")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--memory", type=float, metavar="GB",
                    help="say where each model trains on a Mac with this much memory (default: this one)")
    dl = sub.add_parser("download", help="download a model into the Hugging Face cache (resumes)")
    dl.add_argument("repo", help="a repo id such as Qwen/Qwen2.5-0.5B-Instruct")
    dl.add_argument("--revision", help="branch, tag or commit (default: main)")
    info = sub.add_parser("info", help="describe a model folder or a downloaded repo")
    info.add_argument("model", help="a folder or a downloaded repo id")
    info.add_argument("--json", action="store_true")
    imp = sub.add_parser("import", help="import a GGUF file or an Ollama model as a trainable base",
                         description="Dequantise a GGUF (LM Studio, llama.cpp, or an Ollama model as ollama:NAME[:TAG]) "
                         "into a folder slowtune trains, then check its tokenizer and logits against llama.cpp.")
    imp.add_argument("source", help="FILE.gguf, or ollama:NAME[:TAG] for a model Ollama has installed")
    imp.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                     help="weights of the imported folder (default: float16 on a Mac, float32 elsewhere)")
    imp.add_argument("--chat-template", metavar="chatml|FILE",
                     help="the chat template, when the GGUF has none (or to replace its own)")
    imp.add_argument("--name", help="folder name under the imported models (default: from the file)")
    imp.add_argument("--replace", action="store_true", help="write over an earlier import of the same name")
    imp.add_argument("--json", action="store_true")
    tok = sub.add_parser("hf-token", help="save the Hugging Face token (for gated models) in the keychain")
    tok.add_argument("--delete", action="store_true", help="remove the saved token")


def run(args: argparse.Namespace) -> int:
    return {"list": _list, "download": _download, "info": _info, "import": _import,
            "hf-token": _hf_token}[args.models_command](args)


def _fail(message: str) -> int:
    print(f"slowtune models: {message}", file=sys.stderr)
    return 1


def _list(args: argparse.Namespace) -> int:
    from slowtune import system
    from slowtune.models.catalog import needs_streaming, offered, placement
    from slowtune.models.gguf_import import imported_models

    if args.memory is not None and not args.memory > 0:
        return _fail("--memory must be a number of gigabytes above 0")
    memory = int(args.memory * 1e9) if args.memory else system.memory().total_bytes
    models = offered()  # only the supported families (all of the catalog)
    imported = imported_models()
    if args.json:
        print(json.dumps([dataclasses.asdict(m) | {"memory_bytes": memory, "needs_streaming": needs_streaming(m, memory),
                                                   "on_this_mac": placement(m, memory)} for m in models], indent=2))
        return 0
    from rich.console import Console
    from rich.table import Column, Table

    mac = f"{memory / 1e9:.0f} GB Mac" if args.memory else f"this Mac ({memory / 1e9:.0f} GB)"
    table = Table("params", "download", "licence", "arch", "context", f"on {mac}", "notes")
    table.columns.insert(0, Column("model", no_wrap=True))
    for m in models:
        notes = ", ".join(filter(None, ["gated" if m.gated else "", f"{m.quantization_bits}-bit MLX"
                                        if m.quantization_bits else "", "" if m.chat_template else "no chat template"]))
        table.add_row(m.repo_id, f"{m.params_b:g}B", f"~{m.download_gb:g} GB", m.licence, m.architecture,
                      f"{m.context_length:,}", placement(m, memory), notes)
    console = Console()
    if not console.is_terminal:
        console = Console(width=180)  # piped: no terminal width to respect; keep rows whole
    console.print(table)
    console.print(f"On a {memory / 1e9:.0f} GB Mac: \"streamed\" models are more than half its memory (or too much to "
                  "train in memory), so training reads them from disk one block at a time, which is slower; \"too "
                  "large\" ones do not fit even so. Estimates from the catalog's figures: the check before training "
                  "reads the model's own files. --memory GB shows another Mac.")
    if imported:
        mine = Table(Column("name", no_wrap=True), "architecture", "dtype", "top-1 vs llama.cpp",
                     Column("folder", overflow="fold"), Column("imported from", overflow="fold"))
        for m in imported:
            source = (m.origin.get("ollama") and f"ollama:{m.origin['ollama']}") or m.source
            mine.add_row(m.folder.name, m.architecture, m.dtype,
                         "-" if m.top1_agreement is None else f"{m.top1_agreement:.1%}", str(m.folder), source)
        console.print("Imported models (train with --model FOLDER):")
        console.print(mine)
    return 0


def _import(args: argparse.Namespace) -> int:
    from pathlib import Path

    from slowtune.models import gguf_import as gi
    from slowtune.progress import Cancelled, Progress, RichProgressBar

    origin: dict[str, str] = {}
    try:
        if args.source.startswith("ollama:"):
            found = gi.resolve_ollama(args.source.removeprefix("ollama:"))
            source, origin = found.gguf, {"ollama": found.name}
            name = args.name or found.name.replace(":", "-").replace("/", "-")
        else:
            source, name = Path(args.source), args.name
        progress = Progress()
        previous = signal.signal(signal.SIGINT, lambda *_: progress.cancel())
        try:
            with RichProgressBar() as bar:
                progress.add_listener(bar)
                result = gi.import_gguf(source, dtype=args.dtype, chat_template=args.chat_template, name=name,
                                        replace=args.replace, progress=progress, origin=origin)
        finally:
            signal.signal(signal.SIGINT, previous)
    except Cancelled:
        print("Import stopped; nothing was written.", file=sys.stderr)
        return 130
    except gi.ImportError_ as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(f"Imported {result.source}\n  into {result.folder} ({result.architecture}, {result.dtype}, "
          f"{result.parameters / 1e6:.0f}M parameters, {result.seconds:.1f} s)")
    print(f"  tokenizer: {result.tokenizer_strings} test strings, "
          f"{'all tokenized as llama.cpp does' if result.tokens_equal else 'MISMATCHES'}")
    print(f"  logits: the same next token as llama.cpp at {result.top1_agreement:.1%} of {result.positions} positions "
          f"({result.top1_agreement_confident:.1%} of the {result.positions - result.set_aside} that are not near-ties; "
          f"largest difference {result.max_logit_error:.2%} of the logit scale)")
    print(f"Train it: slowtune train --model {result.folder} --data PROJECT")
    return 0


def _download(args: argparse.Namespace) -> int:
    from slowtune.models.hub import HubError, download
    from slowtune.progress import Cancelled, Progress, RichProgressBar

    progress = Progress()
    previous = signal.signal(signal.SIGINT, lambda *_: progress.cancel())
    try:
        with RichProgressBar() as bar:
            progress.add_listener(bar)
            path = download(args.repo, revision=args.revision, progress=progress)
    except Cancelled:
        print("Download stopped; run the same command again to resume.", file=sys.stderr)
        return 130
    except HubError as exc:
        return _fail(str(exc))
    finally:
        signal.signal(signal.SIGINT, previous)
    print(path)
    return 0


def _info(args: argparse.Namespace) -> int:
    from slowtune.models.catalog import ModelError, describe_local
    from slowtune.models.hub import HubError, resolve_model

    try:
        local = describe_local(resolve_model(args.model))
    except (HubError, ModelError) as exc:
        return _fail(str(exc))
    data = dataclasses.asdict(local)
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    else:
        for key, value in data.items():
            if key == "problem":
                continue  # said once, below
            if key == "weight_bytes":
                value = f"{value / 1e9:.2f} GB"
            elif isinstance(value, (list, tuple)):
                value = ", ".join(map(str, value))
            elif isinstance(value, dict):
                value = ", ".join(f"{k} {v}" for k, v in value.items())
            elif value is None:
                value = "-"
            print(f"{key:<20}{value}")
    # A folder slowtune cannot train (another family, a vision-language checkpoint) is described, then refused.
    return _fail(local.problem) if local.problem else 0


def _hf_token(args: argparse.Namespace) -> int:
    import getpass

    from slowtune import secrets

    if args.delete:
        removed = secrets.delete_secret(secrets.HUGGINGFACE)
        print("Token removed." if removed else "No token was saved.")
        return 0
    token = getpass.getpass("Hugging Face token (input hidden): ") if sys.stdin.isatty() else sys.stdin.readline()
    try:
        secrets.set_secret(secrets.HUGGINGFACE, token)
    except secrets.SecretsError as exc:
        return _fail(str(exc))
    print(f"Token saved in the keychain ({secrets.mask(token.strip())}).")
    return 0



