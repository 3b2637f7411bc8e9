"""Data stages: parse the Markdown corpus, normalise Chinese text, annotate terms, split."""
