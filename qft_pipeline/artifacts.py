"""Where assets write their files: one folder per run and asset, found again through materialization metadata."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from qft_core.config import QftConfig


def run_folder(context: dg.AssetExecutionContext, config: QftConfig) -> Path:
    """A fresh folder for this run's copy of this asset, so concurrent runs never share files."""
    folder = config.paths.resolve(config.paths.artifacts_dir) / "runs" / context.run_id / context.asset_key.to_user_string()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def upstream_path(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext, asset: str) -> Path:
    """The `path` an upstream asset recorded: this run's materialization if there is one, else the latest."""
    instance = context.instance
    key = dg.AssetKey(asset)
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key, run_ids=[context.run_id]), limit=1).records
    event = records[0].event_log_entry if records else instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        raise dg.Failure(f"asset '{asset}' has never been materialized: materialize it first")
    return Path(event.asset_materialization.metadata["path"].value)
