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
    dl = sub.add_parser("download", help="download a model into the Hugging Face cache (resumes)")
    dl.add_argument("repo", help="a repo id such as Qwen/Qwen2.5-0.5B-Instruct")
    dl.add_argument("--revision", help="branch, tag or commit (default: main)")
    info = sub.add_parser("info", help="describe a model folder or a downloaded repo")
    info.add_argument("model", help="a folder or a downloaded repo id")
    info.add_argument("--json", action="store_true")
    tok = sub.add_parser("hf-token", help="save the Hugging Face token (for gated models) in the keychain")
    tok.add_argument("--delete", action="store_true", help="remove the saved token")


def run(args: argparse.Namespace) -> int:
    return {"list": _list, "download": _download, "info": _info, "hf-token": _hf_token}[args.models_command](args)


def _fail(message: str) -> int:
    print(f"slowtune models: {message}", file=sys.stderr)
    return 1


def _list(args: argparse.Namespace) -> int:
    from slowtune.models.catalog import CATALOG

    if args.json:
        print(json.dumps([dataclasses.asdict(m) for m in CATALOG], indent=2))
        return 0
    from rich.console import Console
    from rich.table import Column, Table

    table = Table("params", "download", "licence", "arch", "context", "streamed", "notes")
    table.columns.insert(0, Column("model", no_wrap=True))
    for m in CATALOG:
        notes = ", ".join(filter(None, ["gated" if m.gated else "", f"{m.quantization_bits}-bit MLX"
                                        if m.quantization_bits else "", "" if m.chat_template else "no chat template"]))
        table.add_row(m.repo_id, f"{m.params_b:g}B", f"~{m.download_gb:g} GB", m.licence, m.architecture,
                      f"{m.context_length:,}", "yes" if m.streamed else "no", notes)
    console = Console()
    if not console.is_terminal:
        console = Console(width=180)  # piped: no terminal width to respect; keep rows whole
    console.print(table)
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
        return 0
    for key, value in data.items():
        if key == "weight_bytes":
            value = f"{value / 1e9:.2f} GB"
        elif isinstance(value, (list, tuple)):
            value = ", ".join(map(str, value))
        elif isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        elif value is None:
            value = "-"
        print(f"{key:<20}{value}")
    return 0


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



