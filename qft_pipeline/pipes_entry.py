"""torchrun entry under Dagster Pipes: rank 0 streams the engine's progress into the Dagster run.

    python -m torch.distributed.run … -m qft_pipeline.pipes_entry --job RUN/job.json

Every other rank runs the plain engine; only rank 0 opens Pipes, so the run log gets one voice.
"""

import os
import sys
from typing import Any

from dagster_pipes import PipesContext, open_dagster_pipes

from qft_core.train import engine
from qft_core.train.metrics_log import ProgressTracker

# One info line per this many optimizer steps keeps the Dagster run log readable on long runs; the other steps'
# lines go out at debug level, for `qft run`'s live progress line.
LOG_EVERY_STEPS = 5


class PipesReporter:
    """The engine's Reporter, speaking to Dagster through an open Pipes context."""

    def __init__(self, pipes: PipesContext) -> None:
        self.pipes = pipes
        self.progress = ProgressTracker(every=1)

    def log(self, message: str) -> None:
        self.pipes.log.info(message)

    def metrics(self, step_record: dict[str, Any]) -> None:
        line = self.progress.update(step_record)
        if line is None:
            return
        step = step_record.get("step", 0)
        notable = (
            "event" in step_record
            or step_record.get("skipped")
            or step % LOG_EVERY_STEPS == 0
            or step == self.progress.total_steps
        )
        log = self.pipes.log.info if notable else self.pipes.log.debug
        log(line)

    def summary(self, summary: dict[str, Any]) -> None:
        self.pipes.report_custom_message({"training_summary": summary})


def main(argv: list[str] | None = None) -> int:
    if os.environ.get("RANK", "0") != "0":
        return engine.main(argv)
    with open_dagster_pipes() as pipes:
        return engine.main(argv, reporter=PipesReporter(pipes))


if __name__ == "__main__":
    sys.exit(main())
