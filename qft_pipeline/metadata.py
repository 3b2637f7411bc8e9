"""Small builders for Dagster metadata: preview tables and images that people read in the UI."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path

import dagster as dg


def _cell(value: object, width: int) -> str:
    text = str(value).replace("\n", " ").replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def markdown_table(rows: Sequence[dict], width: int = 60) -> dg.MarkdownMetadataValue:
    """A Markdown table of the rows' keys and values, long cells shortened."""
    if not rows:
        return dg.MetadataValue.md("_(empty)_")
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(column, ""), width) for column in columns) + " |" for row in rows]
    return dg.MetadataValue.md("\n".join(lines))


def image(path: Path, caption: str) -> dg.MarkdownMetadataValue:
    """A PNG embedded in Markdown so the Dagster UI shows the picture itself."""
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return dg.MetadataValue.md(f"![{caption}](data:image/png;base64,{encoded})")
