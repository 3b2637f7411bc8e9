"""The terminal progress bar of the long `qft` commands (parse, evaluate)."""

from __future__ import annotations

import sys
from collections.abc import Callable

from tqdm import tqdm


def progress_bar(
    description: str, unit: str = "file", show_item: bool = False
) -> tuple[Callable[[int, int, object], None], Callable[[], None]]:
    """A terminal progress bar (none when stderr is no terminal) fed by `update(done, total, item)`; with
    `show_item` the item (a stage, say) is shown beside the count. Call `close` when the work ends."""
    bar = tqdm(desc=description, unit=unit, disable=None, file=sys.stderr)

    def update(done: int, total: int, item: object) -> None:
        bar.total = total
        bar.n = done
        if show_item:
            bar.set_postfix_str(str(item), refresh=False)
        bar.refresh()

    return update, bar.close
