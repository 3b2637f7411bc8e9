"""Evaluation: generation, metrics, expert review and the report."""
