"""The sampling settings a model folder recommends in its generation_config.json (Qwen3-Thinking-2507 ships
temperature 0.6, top_p 0.95, top_k 20)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

GENERATION_CONFIG_FILE = "generation_config.json"


def recommended_sampling(model_dir: Path) -> dict[str, Any]:
    """{"temperature": 0.0} where the folder's generation config does not sample (or there is none), else its
    temperature, top_p and top_k (those it sets)."""
    path = Path(model_dir) / GENERATION_CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON: {error}") from None
    if not config.get("do_sample", False):
        return {"temperature": 0.0}
    return {key: config[key] for key in ("temperature", "top_p", "top_k") if config.get(key) is not None}
