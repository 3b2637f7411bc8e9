"""Small builders for Dagster metadata: preview tables and images that people read in the UI."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path

import dagster as dg

from qft_core.data.annotate import reasoning_account, rejected_reasoning
from qft_core.evaluate.written_reasoning import WrittenReasoning
from qft_core.model.registry import stand_in_note
from qft_core.records import ThinkingExample

# Each log line is a stored Dagster event, so a corpus with thousands of warnings would flood the run log: the
# log and the UI show the first ones, and the file that keeps them all is named.
SHOWN_WARNINGS = 50


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


def report_warnings(
    context: dg.AssetExecutionContext, warnings: Sequence[str], kept_in: str | Path
) -> dg.MarkdownMetadataValue:
    """Log the first warnings to the run log and return them as a Markdown list for the metadata; `kept_in` is
    the file that holds them all, named when some are left out."""
    shown = list(warnings[:SHOWN_WARNINGS])
    if len(warnings) > SHOWN_WARNINGS:
        shown.append(f"… and {len(warnings) - SHOWN_WARNINGS} more in {kept_in}")
    for warning in shown:
        context.log.warning(warning)
    return dg.MetadataValue.md("\n".join(f"- {warning}" for warning in shown) or "none")


def stand_in_metadata(model_name: str) -> dict[str, str]:
    """`{"stand_in": note}` for an asset whose results come from a random-weight model, else nothing: the note
    then sits beside every number that model produced."""
    note = stand_in_note(model_name)
    return {"stand_in": note} if note else {}


def reasoning_metadata(written: WrittenReasoning, annotated: Sequence[ThinkingExample], writer: str) -> dict:
    """Who wrote every example's reasoning (`reasoning_expert|model|template|none`, adding up to all examples, and
    `reasoning_rejected`), the refused ones with their reasons, and the writer's failures; `writer` names the
    configured one when no model was asked."""
    return {
        "reasoning_writer": written.writer or writer,
        **{f"reasoning_{origin}": count for origin, count in reasoning_account(annotated).items()},
        "reasoning_rejections": markdown_table(rejected_reasoning(annotated)[:SHOWN_WARNINGS] or [{"reason": "none"}]),
        "reasoning_writer_failures": dg.MetadataValue.md("\n".join(f"- {f}" for f in written.failures) or "none"),
    }
