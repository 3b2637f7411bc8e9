"""The `qft` commands that drive Dagster (`run`, `ui`), which `qft_core.cli` adds where this package imports.
Dagster is imported only when one of them runs: the other commands need none, and start seconds sooner."""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import signal
import sys
import time
from typing import TextIO

from qft_core.cli.errors import CommandError, Handler
from qft_core.config import REPO_ROOT

# The exit status of a `qft run` stopped by Ctrl-C: 128 + SIGINT, what a shell reports for a command it stopped.
INTERRUPTED = 128 + signal.SIGINT


def _needs_dagster(handler: Handler) -> Handler:
    """A handler that says in one line, not a traceback, that it needs Dagster where Dagster cannot be imported."""

    @functools.wraps(handler)
    def checked(args: argparse.Namespace) -> int:
        try:
            import dagster  # noqa: F401
        except ImportError as error:
            raise CommandError(
                f"needs Dagster, which this Python cannot import ({error}); install the project with its "
                "dependencies (`uv sync`). The other commands work without it."
            ) from None
        return handler(args)

    return checked


@_needs_dagster
def cmd_run(args: argparse.Namespace) -> int:
    from qft_pipeline.console import output_to_file
    from qft_pipeline.instance import dagster_home_path, project_dagster_home

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
        except CommandError as error:
            if error.exit_status == INTERRUPTED:
                raise CommandError(f"{error}; library output: {log_file}", exit_status=INTERRUPTED) from None
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
    try:
        # Imported here, inside the redirection: these imports are where torch, torchao and Dagster print their
        # import-time warnings.
        from qft_pipeline.runner import SelectionError, materialize_graph

        try:
            return materialize_graph(
                config_file=args.config, selection=args.select, device=args.device, console=console
            )
        except SelectionError as error:
            raise CommandError(str(error)) from None
    except KeyboardInterrupt:
        raise CommandError(
            "interrupted (Ctrl-C); the next `qft run` marks the unfinished run failed and goes on from there (a "
            "training resumes from its newest checkpoint)",
            exit_status=INTERRUPTED,
        ) from None


@_needs_dagster
def cmd_ui(args: argparse.Namespace) -> int:
    from qft_pipeline.instance import project_dagster_home

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


def add_pipeline_commands(commands: argparse._SubParsersAction) -> None:
    """Add `run` and `ui` to the subparsers of the main `qft` parser (the hook `qft_core.cli` looks for)."""
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
