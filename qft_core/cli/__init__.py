"""The `qft` command. Each command group lives in its own module and none imports another; this one builds the
parser from them and turns a CommandError into one line. `run` and `ui` drive Dagster: qft_pipeline adds them
where it is installed, so that the rest needs only the library (a GPU machine with PyTorch and no Dagster)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from qft_core.cli.data import add_data_commands
from qft_core.cli.errors import CommandError
from qft_core.cli.evaluate import add_evaluate_commands
from qft_core.cli.experts import add_expert_commands
from qft_core.cli.package import add_package_commands
from qft_core.cli.serve import add_serve_commands
from qft_core.cli.train import add_training_commands
from qft_core.config import ConfigError


def _add_pipeline_commands(commands: argparse._SubParsersAction) -> None:
    """`qft run` and `qft ui`, where qft_pipeline is installed beside qft_core."""
    try:
        from qft_pipeline.cli import add_pipeline_commands
    except ModuleNotFoundError as error:
        # Only an absent qft_pipeline means "no pipeline commands"; any other missing module is a fault to see.
        if error.name not in {"qft_pipeline", "qft_pipeline.cli"}:
            raise
        return
    add_pipeline_commands(commands)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qft", description="Fine-tune Qwen3-Thinking on Chinese cryptography Q&A.")
    parser.add_argument("--config", help="YAML config file (default: the embedded CPU defaults)")
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        help="where every stage computes, instead of the config's model.device (auto: CUDA when a GPU is visible)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_data_commands(commands)
    add_training_commands(commands)
    add_evaluate_commands(commands)
    add_expert_commands(commands)
    add_package_commands(commands)
    add_serve_commands(commands)
    _add_pipeline_commands(commands)
    return parser


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse `argv` and run the chosen command's handler; a CommandError or ConfigError becomes one line."""
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except CommandError as error:
        print(f"qft {error.command or args.command}: {error}", file=sys.stderr)
        return error.exit_status
    except ConfigError as error:
        print(f"qft {args.command}: {error}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)
