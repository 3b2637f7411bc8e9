"""The full `qft` command: qft_core's commands plus those that drive Dagster (`run`, `ui`)."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import TextIO

from qft_core import cli as core_cli
from qft_core.config import REPO_ROOT
from qft_pipeline.instance import dagster_home_path, project_dagster_home


def cmd_run(args: argparse.Namespace) -> int:
    from qft_pipeline.console import output_to_file

    if args.verbose:
        outcome = _materialize(args, console=sys.stderr)
        log_file = None
    else:
        # The instance's folder is made only once the selection is known to be good (the run makes it).
        log_file = dagster_home_path() / "logs" / f"qft-run-{time.strftime('%Y%m%d-%H%M%S')}.log"
        made = [folder for folder in (dagster_home_path(), log_file.parent) if not folder.exists()]
        try:
            with output_to_file(log_file) as console:
                outcome = _materialize(args, console)
        except core_cli.CommandError:
            # A bad --select runs nothing and leaves no trace: not even the log of the imports, nor the folders
            # made for it (removed only while empty, so a concurrent run's files are safe).
            log_file.unlink(missing_ok=True)
            for folder in reversed(made):
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise
    from qft_pipeline.summary import summary_lines

    print()
    for run_id in outcome.abandoned:
        print(f"run {run_id} was left STARTED by a qft run that ended without finishing it: marked failed")
    for asset, path in outcome.artifacts.items():
        print(f"{asset:<28} {path}")
    print()
    print("\n".join(summary_lines(outcome.metadata, outcome.stages)))
    print()
    runs = ", ".join(outcome.run_ids)
    print(f"runs {runs} {'succeeded' if outcome.success else 'FAILED'} (Dagster home: {project_dagster_home()})")
    if log_file is not None:
        print(f"library output (warnings, banners, INFO): {log_file}")
    for failure in outcome.failures:
        print(f"  failed: {failure}", file=sys.stderr)
    return 0 if outcome.success else 1


def _materialize(args: argparse.Namespace, console: TextIO):
    console.write("qft run: loading torch, transformers and the Dagster definitions…\n")
    # Imported here, inside the redirection: these imports are where torch, torchao and Dagster print their
    # import-time warnings.
    from qft_pipeline.runner import SelectionError, materialize_graph

    try:
        return materialize_graph(config_file=args.config, selection=args.select, device=args.device, console=console)
    except SelectionError as error:
        raise core_cli.CommandError(str(error)) from None


def cmd_ui(args: argparse.Namespace) -> int:
    os.environ.setdefault("DAGSTER_HOME", str(project_dagster_home()))
    # The project's workspace, wherever DAGSTER_HOME points.
    workspace = REPO_ROOT / "workspace.yaml"
    command = ["dagster", "dev", "-w", str(workspace), "--host", args.host, "--port", str(args.port)]
    # `dagster dev` maps SIGTERM onto its SIGINT handler; a shell starts background jobs with SIGINT ignored, and
    # an ignored signal stays ignored across exec, so both signals would be ignored. Restored, either one stops
    # dagster dev, which then shuts its webserver and daemon down.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.execvp(command[0], command)


def build_parser() -> argparse.ArgumentParser:
    parser = core_cli.build_parser()
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    run = commands.add_parser("run", help="materialize the whole asset graph in the project's Dagster instance")
    run.add_argument(
        "--select",
        help="Dagster asset selection over every job, e.g. 'term_balanced_splits', '*lora_checkpoint' or "
        "'quantized_package'",
    )
    run.add_argument(
        "--verbose", action="store_true",
        help="show every library's output on the console instead of keeping it in .dagster_home/logs/",
    )
    run.set_defaults(handler=cmd_run)
    ui = commands.add_parser("ui", help="open the Dagster UI on the project's instance (dagster dev)")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=3000)
    ui.set_defaults(handler=cmd_ui)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return core_cli.run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
