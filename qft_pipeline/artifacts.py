"""Where assets write their files: one folder per run and asset, found again through materialization metadata."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from qft_core.config import QftConfig


def run_folder(context: dg.AssetExecutionContext, config: QftConfig) -> Path:
    """A fresh folder for this run's copy of this asset, so concurrent runs never share files."""
    folder = config.paths.resolve(config.paths.artifacts_dir) / "runs" / context.run.run_id / context.asset_key.to_user_string()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def upstream_path(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext, asset: str) -> Path:
    """The `path` an upstream asset recorded: this run's materialization if there is one, else the latest."""
    instance = context.instance
    key = dg.AssetKey(asset)
    this_run = [
        entry
        for entry in instance.all_logs(context.run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
        if entry.asset_materialization and entry.asset_materialization.asset_key == key
    ]
    event = this_run[-1] if this_run else instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        raise dg.Failure(f"asset '{asset}' has never been materialized: materialize it first")
    return Path(event.asset_materialization.metadata["path"].value)
