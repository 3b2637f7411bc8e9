"""The console of `qft run`: everything the libraries print (warnings, banners, INFO chatter of torch, GPT-QModel,
Dagster, alembic, the training subprocesses) goes to a log file, and only qft's progress line reaches the terminal."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO


@contextmanager
def output_to_file(log_file: Path) -> Iterator[TextIO]:
    """Point file descriptors 1 and 2 (this process and every child it starts) at `log_file`, appended, and
    yield a stream on the terminal's original stderr for the progress line. Both are restored on exit."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    terminal = os.fdopen(os.dup(saved[2]), "w", buffering=1, encoding="utf-8", errors="replace")
    with log_file.open("ab") as log:
        for fd in (1, 2):
            os.dup2(log.fileno(), fd)
    try:
        yield terminal
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        terminal.close()
