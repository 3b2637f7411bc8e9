"""The `qft plan` and `qft train` commands: the training plan for this machine, and training outside Dagster.
Argument parsing only; the work is in `qft_core.train`."""

from __future__ import annotations

import argparse
from pathlib import Path

from qft_core.config import load_config


def cmd_plan(args: argparse.Namespace) -> int:
    from qft_core.device import resolve_device
    from qft_core.model.registry import ensure_model_dir, resolve_model
    from qft_core.train.hardware import profile_hardware
    from qft_core.train.plan import plan_for

    config = load_config(args.config, device=args.device)
    if args.nproc:
        config.training.nproc = args.nproc
    profile = profile_hardware()
    # A device the machine lacks is a one-line error before any model is built.
    resolve_device(config.model.device, cuda_available=bool(profile.gpus))
    model_dir = ensure_model_dir(resolve_model(config.model, config.paths))
    print(profile.to_markdown())
    print()
    print(plan_for(config, model_dir, profile).to_markdown())
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from qft_core.train.launch import run_training

    config = load_config(args.config, device=args.device)
    if args.nproc:
        config.training.nproc = args.nproc
    summary = run_training(config, Path(args.splits), Path(args.out), stream=print)
    print(summary.model_dump_json(indent=2))
    return 0


def add_training_commands(commands: argparse._SubParsersAction) -> None:
    """Add `plan` and `train` to the subparsers of the main `qft` parser."""
    plan = commands.add_parser("plan", help="print the hardware profile and the training plan")
    plan.add_argument("--nproc", type=int, help="processes (GPUs) per node")
    plan.set_defaults(handler=cmd_plan)

    train = commands.add_parser("train", help="train the LoRA adapter with torchrun, outside Dagster")
    train.add_argument("--splits", required=True, help="folder with train.parquet and validation.parquet")
    train.add_argument("--out", required=True, help="run folder for checkpoints, metrics and the adapter")
    train.add_argument("--nproc", type=int, help="processes (GPUs) per node")
    train.set_defaults(handler=cmd_train)
