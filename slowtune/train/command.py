"""``slowtune train``: arguments and the command-line run (progress bar, Ctrl-C = cancel with a checkpoint)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from slowtune.train.config import DEFAULT_REPLAY, TrainConfig
from slowtune.train.settings import LORA_PRESETS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model folder (Hugging Face or MLX layout) or a downloaded repo id")
    p.add_argument("--data", help="folder with train.jsonl (and valid.jsonl), a .jsonl file, or a project")
    p.add_argument("--engine", choices=("auto", "memory", "streamed"), default="auto",
                   help="auto: in memory when the model fits with margin, else layer-streamed")
    p.add_argument("--out", type=Path, help="run folder (default: a new folder under the project's or slowtune's runs)")
    p.add_argument("--resume", type=Path, metavar="RUN", help="continue the run in this folder from its last checkpoint")
    p.add_argument("--preset", choices=sorted(LORA_PRESETS), default="standard",
                   help="LoRA preset (default: standard)")
    p.add_argument("--rank", type=int, help="LoRA rank (overrides the preset)")
    p.add_argument("--alpha", type=float, help="LoRA alpha; the update is scaled by alpha/rank")
    p.add_argument("--dropout", type=float, help="LoRA dropout")
    p.add_argument("--lora-layers", type=int, help="adapt only the top N blocks (-1: all)")
    p.add_argument("--max-seq-len", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--iters", type=int, default=0, help="optimizer steps (default: from --epochs)")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate")
    p.add_argument("--warmup", type=int, default=-1, help="warm-up steps (default: 5%% of the run)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-every", type=int, default=50)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--compute-dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--grad-checkpoint", action="store_true", help="in-memory engine: recompute blocks in backward")
    p.add_argument("--replay", type=float, default=DEFAULT_REPLAY, metavar="SHARE",
                   help="share of training rows that are the base model's own answers to general prompts, generated "
                        f"on this machine, so the model stays itself ({DEFAULT_REPLAY}; 0: none)")
    p.add_argument("--score-every", type=int, default=-1, metavar="N",
                   help="score knowledge, retention and leakage every N steps and keep the best checkpoint (default: "
                        "as often as a tenth of the training time allows; 0: never, keep the lowest validation loss)")
    p.add_argument("--no-early-stop", action="store_true",
                   help="train every step even when knowledge has plateaued while retention falls")
    p.add_argument("--cold", action="store_true", help="streamed: drop weights from the page cache after use")
    p.add_argument("--no-prefetch", action="store_true", help="streamed: do not read ahead")
    p.add_argument("--dry-run", action="store_true", help="print the fit preflight and stop")
    p.add_argument("--no-export-check", action="store_true",
                   help="train even when the model could not be exported to GGUF afterwards")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def config_from_args(args: argparse.Namespace, model_dir: Path) -> TrainConfig:
    import dataclasses

    lora = dataclasses.replace(LORA_PRESETS[args.preset])
    for attr, value in (("rank", args.rank), ("alpha", args.alpha), ("dropout", args.dropout),
                        ("num_layers", args.lora_layers)):
        if value is not None:
            setattr(lora, attr, value)
    cfg = TrainConfig(
        model=str(model_dir), data=str(Path(args.data).expanduser().resolve()), engine=args.engine, lora=lora,
        max_seq_len=args.max_seq_len, batch_size=args.batch_size, grad_accum=args.grad_accum, iters=args.iters,
        epochs=args.epochs, learning_rate=args.lr, warmup=args.warmup, weight_decay=args.weight_decay,
        seed=args.seed, val_every=args.val_every, save_every=args.save_every, compute_dtype=args.compute_dtype,
        grad_checkpoint=args.grad_checkpoint, replay=args.replay, score_every=args.score_every,
        early_stop=not args.no_early_stop,
    )
    cfg.stream.cold = args.cold
    cfg.stream.prefetch = not args.no_prefetch
    return cfg


def _check(args: argparse.Namespace) -> str | None:
    for name in ("max_seq_len", "batch_size", "grad_accum"):
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be at least 1"
    if args.iters < 0 or args.epochs <= 0:
        return "--iters must be >= 0 and --epochs > 0"
    if not args.lr > 0:
        return "--lr must be positive"
    if args.rank is not None and args.rank < 1:
        return "--rank must be at least 1"
    if args.dropout is not None and not 0 <= args.dropout < 1:
        return "--dropout must be in [0, 1)"
    if args.lora_layers == 0:
        return "--lora-layers must be -1 (all blocks) or a number of top blocks above 0"
    if args.val_every < 0 or args.save_every < 0:
        return "--val-every and --save-every must be 0 (never) or more"
    if not 0 <= args.replay < 1:
        return "--replay must be at least 0 and below 1 (a share of the training rows)"
    if args.score_every < -1:
        return "--score-every must be -1 (automatic), 0 (never) or a number of steps"
    return None


def export_problem(model_dir: Path) -> str | None:
    """Why the trained model could not be exported to GGUF (architecture, RoPE scaling, tokenizer), or None.

    Asked when the model is chosen, so that nobody trains for an hour and is refused at the export. (It asks the
    checks the GGUF export itself makes before writing anything: :func:`slowtune.models.gguf_spec.check_exportable`.)
    """
    from slowtune.models.gguf_spec import ExportError, check_exportable

    try:
        check_exportable(model_dir)
    except ExportError as exc:
        return str(exc)
    return None


def run(args: argparse.Namespace) -> int:
    from slowtune.models.hub import HubError, resolve_model
    from slowtune.progress import Cancelled, Progress, RichProgressBar
    from slowtune.train.model import ModelError
    from slowtune.train.preflight import architecture_problem, preflight
    from slowtune.train.runs import default_run_dir, record_run, run_json
    from slowtune.train.trainer import TrainError, run_training

    def fail(message: str) -> int:
        print(f"slowtune train: {message}", file=sys.stderr)
        return 1

    resume = args.resume is not None
    if resume:
        run_dir = args.resume.expanduser().resolve()
        saved = run_dir / "run.json"
        if not saved.exists():
            return fail(f"{run_dir} is not a training run (no run.json).")
        info = json.loads(saved.read_text())
        cfg = TrainConfig.from_dict(info["config"])
        engine = info["engine"]
        project_root = Path(info["project"]) if info.get("project") else None
        model_dir = Path(cfg.model)
    else:
        if not args.model or not args.data:
            return fail("--model and --data are needed (or --resume RUN).")
        if problem := _check(args):
            return fail(problem)
        try:
            model_dir = resolve_model(args.model)
        except HubError as exc:
            return fail(str(exc))
        data = Path(args.data).expanduser()
        if not data.exists():
            from slowtune.store import DB_NAME, StoreError, resolve_project_path

            try:
                named = resolve_project_path(args.data)  # a project given by name, as `slowtune ingest` takes it
            except StoreError:
                named = None
            if named is None or not (named / DB_NAME).exists():
                return fail(f"the data {data} does not exist (give a folder, a .jsonl file or a project).")
            data = named
            args.data = str(named)
        try:  # a family slowtune does not train, or a vision-language checkpoint: one message, before anything else
            if problem := architecture_problem(model_dir):
                return fail(problem)
        except ModelError as exc:
            return fail(str(exc))
        if not args.no_export_check and (problem := export_problem(model_dir)):
            return fail(f"this model could not be exported to GGUF after training: {problem} "
                        "(--no-export-check trains it anyway)")
        cfg = config_from_args(args, model_dir)
        run_dir, project_root = default_run_dir(data.resolve())
        if project_root is not None:
            from slowtune.dataset import recipe_shortfall
            from slowtune.store import Project

            with Project.open(project_root) as project:
                if shortfall := recipe_shortfall(project):
                    print(f"Warning: {shortfall}", file=sys.stderr)
        if args.out:
            # A run trained on a project's data belongs to that project wherever its folder is (the app puts it
            # under the project's runs/ itself): it is recorded there, and the Export page lists it.
            run_dir = args.out.expanduser().resolve()
        if (run_dir / "run.json").exists():
            return fail(f"{run_dir} already holds a run; continue it with --resume {run_dir}, or choose another --out.")
        try:
            report = preflight(model_dir, cfg, output_dir=run_dir)
        except ModelError as exc:
            return fail(str(exc))
        print(report.summary(), file=sys.stderr)
        if report.choice is None:
            return fail(report.reason)
        if args.dry_run:
            return 0
        engine = report.choice
        cfg.grad_checkpoint = cfg.grad_checkpoint or report.grad_checkpoint
        if engine == "streamed" and report.spare_blocks >= 2:
            # Room to spare: keep the top block from the forward pass for the backward pass (one read less).
            cfg.stream.keep_turnaround = 1

    progress = Progress()

    def on_interrupt(*_: object) -> None:
        # First Ctrl-C: stop after this step and save a checkpoint. A second one: stop now.
        print("\nStopping after this step (Ctrl-C again to stop at once)...", file=sys.stderr)
        progress.cancel()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, on_interrupt)
    result = None
    cancelled_early = False
    try:
        with RichProgressBar() as bar:
            progress.add_listener(bar)
            result = run_training(cfg, run_dir, engine=engine, progress=progress, resume=resume,
                                  project=project_root)
    except (TrainError, ModelError, ValueError) as exc:
        return fail(str(exc))
    except (OSError, RuntimeError, MemoryError) as exc:
        logging.getLogger(__name__).exception("training failed")
        return fail(f"training stopped: {type(exc).__name__}: {exc} (details in the log)")
    except Cancelled:
        # Stopped while reading the data or building the model, before the first step: nothing to keep.
        cancelled_early = True
        print("slowtune train: stopped before the first training step; nothing was trained", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        return fail("interrupted; the last checkpoint is kept (resume with --resume)")
    finally:
        signal.signal(signal.SIGINT, previous)
        if project_root is not None:
            status = result.status if result is not None else "cancelled" if cancelled_early else "failed"
            record_run(project_root, run_dir, status, config=cfg.to_dict(), engine=engine)
    summary = {"run_dir": str(result.run_dir), "status": result.status, "engine": result.engine,
               "steps": result.steps, "train_loss": result.train_loss, "val_loss": result.val_loss,
               "best_val": result.best_val}
    record = run_json(result.run_dir)
    for key in ("chosen", "warnings", "stopped_early", "base_scores", "replay", "scoring_notes"):
        summary[key] = record.get(key)
    summary["scores"] = (record.get("scoring") or [None])[-1]
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for warning in summary["warnings"] or []:
            if warning.get("kind") != "recipe":  # said before training
                print(f"Warning: {warning.get('message')}", file=sys.stderr)
        if summary["stopped_early"]:
            print(f"Stopped early: {summary['stopped_early']}.")
        if summary["chosen"]:
            print(f"Export will use {summary['chosen']['text']}.")
        if result.train_loss is None and result.status == "done":
            print(f"The run had already finished ({result.steps} steps); its adapter is in {result.run_dir}")
        else:
            word = "finished" if result.status == "done" else "stopped (resume with --resume)"
            loss = f"{result.train_loss:.4f}" if result.train_loss is not None else "n/a"
            print(f"Training {word}: {result.steps} steps, loss {loss}, adapter in {result.run_dir}")
    return 0 if result.status == "done" else 130

