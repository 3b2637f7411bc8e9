"""Asset groups: data, training (and later evaluation and packaging)."""
