"""How a `qft` command fails: one line on stderr and an exit status, never a traceback."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable

Handler = Callable[[argparse.Namespace], int]


class CommandError(Exception):
    """A user-facing failure: printed as `qft <command>: <message>`, exit status 1 unless told otherwise.
    `command` names a subcommand more precisely than the parser's first word (`experts tasks create`)."""

    def __init__(self, message: str, *, command: str | None = None, exit_status: int = 1) -> None:
        super().__init__(message)
        self.command = command
        self.exit_status = exit_status


def reported(
    *errors: type[Exception], command: str | None = None, exit_status: int = 1
) -> Callable[[Handler], Handler]:
    """A handler whose `errors` (the library's own, whose messages name the file or key at fault) reach the user
    as a CommandError."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def reporting(args: argparse.Namespace) -> int:
            try:
                return handler(args)
            except errors as error:
                raise CommandError(str(error), command=command, exit_status=exit_status) from None

        return reporting

    return decorate
