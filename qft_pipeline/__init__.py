"""Dagster definitions that wire qft_core into an asset graph."""
