"""What a qft deployment package holds: the names of its own files and its machine-readable metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METADATA_FILE = "qft_metadata.json"
MODEL_CARD_FILE = "README.md"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
# Bump when the layout changes in a way a reader of older packages must know about.
PACKAGE_FORMAT = 1
# How the package's chat template must end a conversation that asks for a reply: the reply starts inside <think>.
GENERATION_PROMPT_SUFFIX = "<|im_start|>assistant\n<think>\n"


class PackageError(RuntimeError):
    """A deployment package that cannot be built, unpacked, loaded or served; the message names the file."""


def read_package_metadata(package_dir: Path) -> dict[str, Any]:
    """The package's `qft_metadata.json` as a dict."""
    path = Path(package_dir) / METADATA_FILE
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PackageError(f"{path}: missing; {package_dir} is not a qft package") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PackageError(f"{path}: cannot read the package metadata: {error}") from None
    if not isinstance(metadata, dict):
        raise PackageError(f"{path}: the package metadata must be a JSON object")
    return metadata


def package_quantization(metadata: dict[str, Any]) -> str | None:
    """The quantization format that package metadata records, or None for full-precision weights."""
    quantization = metadata.get("quantization")
    if not quantization:
        return None
    return str(quantization.get("format") if isinstance(quantization, dict) else quantization)
