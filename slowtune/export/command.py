"""``slowtune export``: arguments and the command-line run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, metavar="RUN|ADAPTER", help="a training run folder or an adapter folder")
    p.add_argument("--model", type=Path, help="the base model folder (default: the one the adapter was trained on)")
    p.add_argument("--quant", default="Q4_K_M",
                   help="comma-separated GGUF types besides F16: Q8_0, Q6_K, Q5_K_M, Q4_K_M, BF16, F32")
    p.add_argument("--out", type=Path, help="export folder (default: RUN/export)")
    p.add_argument("--name", default="model", help="file name stem (default: model)")
    p.add_argument("--no-base", action="store_true", help="do not export the unmodified base model")
    p.add_argument("--no-ollama", action="store_true", help="do not write an Ollama Modelfile")
    p.add_argument("--lora-only", action="store_true",
                   help="write base-F16.gguf and NAME-lora.gguf (a LoRA GGUF that llama.cpp and Ollama apply on top "
                        "of the base) instead of a fused model; --quant is not used")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    from slowtune.export.fuse import FuseError
    from slowtune.export.gguf_writer import ExportError
    from slowtune.export.pipeline import ExportFailed, export_lora_only, export_run, record_export
    from slowtune.export.quantize import QuantizeError
    from slowtune.export.verify import VerificationError
    from slowtune.progress import Cancelled, Progress, RichProgressBar

    def fail(message: str) -> int:
        print(f"slowtune export: {message}", file=sys.stderr)
        return 1

    if args.lora_only and args.no_base:
        return fail("--lora-only writes the adapter to use on top of the base GGUF, so it always exports the base: "
                    "drop --no-base.")
    run_dir = args.run.expanduser().resolve()
    out = (args.out or run_dir / "export").expanduser().resolve()
    progress = Progress()
    try:
        with RichProgressBar() as bar:
            progress.add_listener(bar)
            if args.lora_only:
                result = export_lora_only(run_dir, out, model=args.model, name=args.name, ollama=not args.no_ollama,
                                          progress=progress)
            else:
                result = export_run(run_dir, out, model=args.model, quants=args.quant.split(","), name=args.name,
                                    with_base=not args.no_base, ollama=not args.no_ollama, progress=progress)
    except (ExportFailed, ExportError, FuseError, QuantizeError, VerificationError) as exc:
        return fail(str(exc))
    except Cancelled as exc:
        print(f"slowtune export: stopped. {exc}".rstrip(), file=sys.stderr)
        return 130
    run_json = run_dir / "run.json"
    if run_json.exists() and (project := json.loads(run_json.read_text()).get("project")):
        record_export(Path(project), run_dir.name, result)
    summary = {"out_dir": str(result.out_dir), "files": {k: str(v) for k, v in result.files.items()},
               "verification": [v.to_dict() for v in result.verifications], "adapter_effect": result.adapter_effect,
               "notes": result.notes, "seconds": round(result.seconds, 1), "step_seconds": result.step_seconds}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for note in result.notes:
            print(f"  {note}")
        print(f"Exported to {result.out_dir}")
    return 0
