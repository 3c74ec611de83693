"""``slowtune provider``: add, list, test, probe and remove teacher providers.

Keys are never taken from the command line: argv is visible to every process on the machine (``ps``) and
lands in shell history. They are typed at a hidden prompt, or piped in with ``--key-stdin``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="provider_command", metavar="ACTION", required=True)

    add = sub.add_parser("add", help="add (or with --replace, change) a provider",
                         description="Add a teacher provider. The key is asked for at a hidden prompt, or read "
                         "from standard input with --key-stdin, and stored in the keychain.")
    add.add_argument("id", help="a short name of your choice: lowercase letters, digits, '-' and '_'")
    add.add_argument("--preset", required=True, help="which service (see `slowtune provider presets`)")
    add.add_argument("--base-url", help="the OpenAI-compatible base URL (required for the custom preset)")
    add.add_argument("--model", help="default model name (for the gguf preset: the path of the .gguf file)")
    keys = add.add_mutually_exclusive_group()
    keys.add_argument("--key-stdin", action="store_true", help="read the key from the first line of stdin")
    keys.add_argument("--no-key", action="store_true", help="do not ask for a key")
    add.add_argument("--replace", action="store_true", help="replace a provider with the same id")

    ls = sub.add_parser("list", help="the configured providers (keys are never shown)")
    ls.add_argument("--json", action="store_true")

    test = sub.add_parser("test", help="check that a provider answers, accepts the key and has the model")
    test.add_argument("id")
    test.add_argument("--model", help="the model to look for (default: the provider's default model)")
    test.add_argument("--json", action="store_true")

    probe = sub.add_parser("probe", help="structured-output mode and context length of a model (cached)")
    probe.add_argument("id")
    probe.add_argument("--model", help="the model to probe (default: the provider's default model)")
    probe.add_argument("--refresh", action="store_true", help="probe again even if a recent result is cached")
    probe.add_argument("--json", action="store_true")

    rm = sub.add_parser("remove", help="remove a provider and its stored key")
    rm.add_argument("id")

    presets = sub.add_parser("presets", help="the services slowtune knows")
    presets.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    handlers = {"add": _add, "list": _list, "test": _test, "probe": _probe, "remove": _remove,
                "presets": _presets}
    return handlers[args.provider_command](args)


def _fail(message: str) -> int:
    print(f"slowtune provider: {message}", file=sys.stderr)
    return 1


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _read_key(args: argparse.Namespace, preset: Any, has_saved_key: bool) -> str | None:
    """The key the user gives, or None. Never from argv."""
    if args.key_stdin:
        return sys.stdin.readline().strip() or None
    if args.no_key or preset.id == "gguf" or not sys.stdin.isatty():
        return None
    if not preset.needs_key and preset.id != "custom":
        return None
    import getpass

    if has_saved_key:
        prompt = "API key (input hidden; leave empty to keep the saved key): "
    elif preset.needs_key:
        prompt = f"API key for {preset.name} (input hidden; get one at {preset.key_hint}): "
    else:
        prompt = "API key (input hidden; leave empty if the server needs none): "
    return getpass.getpass(prompt).strip() or None


def _add(args: argparse.Namespace) -> int:
    from slowtune import secrets
    from slowtune.teacher import providers as pv

    try:
        # Check what can be checked before asking for a key, so nobody types a key for a doomed command.
        pv.validate_id(args.id)
        preset = pv.get_preset(args.preset)
        if args.base_url:
            pv.validate_base_url(args.base_url)
        if not args.replace and any(p.id == args.id for p in pv.list_providers()):
            return _fail(f"a provider {args.id!r} exists already; add --replace to change it.")
    except pv.ProviderError as exc:
        return _fail(str(exc))
    key_name = secrets.provider_key_name(args.id)
    has_saved_key = args.replace and secrets.secret_source(key_name) == "keychain"
    key = _read_key(args, preset, has_saved_key)

    try:
        provider = pv.add_provider(args.id, args.preset, base_url=args.base_url, model=args.model, key=key,
                                   replace=args.replace)
    except pv.KeyNotStoredError as exc:
        return _fail(f"{exc} To use it without a keychain, add it without a key and set {exc.env_var} in the "
                     f"environment of each run (for example `export {exc.env_var}=...` in the shell that runs "
                     "slowtune).")
    except pv.ProviderError as exc:
        return _fail(str(exc))

    print(f"Provider {provider.id!r} saved ({preset.name}).")
    where = pv.destination(provider)
    if pv.is_remote(provider):
        print(f"Document text will be sent to {where}.")
    else:
        print(f"Document text stays on {where}.")
    status = pv.key_status(provider)
    env_var = secrets.env_var_for(key_name)
    if key:
        print("Key stored in the keychain.")
    elif status == "keychain":
        print("The key saved earlier is kept (keychain).")
    elif status == "environment":
        print(f"No key stored; the key comes from {env_var}.")
    elif provider.needs_key:
        print(f"No key stored. Give one with `slowtune provider add {provider.id} --preset {provider.preset} "
              f"--replace --key-stdin`, or set {env_var} for each run.")
    elif status == "optional":
        print("No key stored (optional: the server says whether it wants one).")
    else:
        print("No key needed.")
    return 0


def _provider_row(provider: Any) -> dict[str, Any]:
    from slowtune import secrets
    from slowtune.teacher import providers as pv

    status = pv.key_status(provider)
    masked = None
    if status in ("keychain", "environment"):
        value = pv.api_key(provider)
        masked = secrets.mask(value) if value else None
    return {
        "id": provider.id,
        "preset": provider.preset,
        "base_url": provider.base_url,
        "destination": pv.destination(provider),
        "remote": pv.is_remote(provider),
        "default_model": provider.default_model,
        "key": status,
        "key_masked": masked,
        "added_at": provider.added_at,
    }


def _list(args: argparse.Namespace) -> int:
    from slowtune.teacher import providers as pv

    rows = [_provider_row(p) for p in pv.list_providers()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("No providers yet. Add one with `slowtune provider add ID --preset PRESET` "
              "(see `slowtune provider presets`).")
        return 0
    table = [
        [r["id"], r["preset"], r["destination"], r["default_model"] or "-",
         r["key"] + (f" ({r['key_masked']})" if r["key_masked"] else "")]
        for r in rows
    ]
    _print_table(["ID", "PRESET", "SENDS TO", "MODEL", "KEY"], table)
    return 0


def _test(args: argparse.Namespace) -> int:
    from slowtune.teacher import providers as pv

    try:
        provider = pv.get_provider(args.id)
        check = pv.check_provider(provider, args.model)
    except pv.ProviderError as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps({"id": provider.id, **dataclasses.asdict(check)}, indent=2))
    else:
        print(check.message)
    return 0 if check.ok else 1


def _probe(args: argparse.Namespace) -> int:
    from slowtune.teacher import probe as pr
    from slowtune.teacher import providers as pv

    try:
        provider = pv.get_provider(args.id)
        model = args.model or provider.default_model
        if not model:
            return _fail(f"provider {provider.id!r} has no default model; give one with --model NAME.")
        started = time.time()
        caps = pr.get_capabilities(provider, model, refresh=args.refresh)
    except (pv.ProviderError, pr.ProbeError) as exc:
        return _fail(str(exc))
    cached = caps.probed_at < started
    if args.json:
        print(json.dumps({"id": provider.id, "model": model, **dataclasses.asdict(caps), "cached": cached},
                         indent=2))
        return 0
    length = f"{caps.context_length:,} tokens" if caps.context_length else "unknown"
    print(f"model              {model}")
    print(f"structured output  {caps.structured}")
    print(f"context length     {length}")
    if cached:
        age_h = (time.time() - caps.probed_at) / 3600
        print(f"(cached result from {age_h:.0f} h ago; --refresh probes again)")
    return 0


def _remove(args: argparse.Namespace) -> int:
    from slowtune.teacher import providers as pv

    try:
        removed_key = pv.remove_provider(args.id)
    except pv.ProviderError as exc:
        return _fail(str(exc))
    print(f"Provider {args.id!r} removed" + (" with its stored key." if removed_key else "."))
    return 0


def _presets(args: argparse.Namespace) -> int:
    from slowtune.teacher.providers import PRESETS

    if args.json:
        print(json.dumps([dataclasses.asdict(p) for p in PRESETS.values()], indent=2))
        return 0
    rows = [
        [p.id, p.name, p.base_url or ("(your URL)" if p.id == "custom" else "(no URL: a .gguf file)"),
         "yes" if p.needs_key else ("optional" if p.id == "custom" else "no"), p.key_hint]
        for p in PRESETS.values()
    ]
    _print_table(["PRESET", "NAME", "BASE URL", "KEY", "WHERE TO GET A KEY"], rows)
    return 0
