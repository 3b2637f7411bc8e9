"""docs/configuration.md, generated from the config classes: every section and key with type, default, limits and
meaning. Regenerate with `uv run python -m qft_core.config_reference --write` after changing config.py."""

from __future__ import annotations

import argparse
import inspect
import re
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from qft_core.config import REPO_ROOT, QftConfig

REFERENCE_FILE = REPO_ROOT / "docs" / "configuration.md"
REGENERATE = "uv run python -m qft_core.config_reference --write"

# Meanings of keys that have neither a Field description nor a comment above them in config.py. A key documented
# there should not be listed here (a test keeps this list to undocumented keys only).
FALLBACK_NOTES: dict[tuple[str, str], str] = {
    ("paths", "corpus_dir"): "Folder searched recursively for the Markdown thinking data (`*.md`).",
    ("paths", "term_dictionary"): "The cryptography term dictionary (YAML: terms, categories, complexity).",
    ("paths", "misconceptions"): "Known cryptography misconceptions that the evaluation detects in answers (YAML).",
    ("paths", "fact_base"): "Cryptographic parameters, with their standards, to check answers' claims against (YAML).",
    ("paths", "artifacts_dir"): "Where runs write their files: `runs/<run id>/<asset>/` per asset and run.",
    ("paths", "model_cache_dir"): "Built tokenizers and model weights, so they are made or fetched once.",
    ("data", "max_thinking_depth"): "Deepest nesting of `<thinking>` blocks accepted; deeper pairs are quarantined.",
    ("data", "generate_missing_thinking"): (
        "Give pairs without expert reasoning one: written by `reasoning.writer` (origin `model`) where it passes the "
        "checks, else the template's (origin `template`)."
    ),
    ("data", "max_quarantine_ratio"): "Blocking check: stop the run when more than this share of pairs is quarantined.",
    ("data", "max_file_bytes"): "Larger Markdown files are not read but quarantined whole (reason `file_too_large`).",
    ("split", "train"): "Share of examples in the training split (train + validation + test = 1).",
    ("split", "validation"): "Share of examples in the validation split.",
    ("split", "test"): "Share of examples in the test split.",
    ("split", "seed"): "Seed of the split: the same examples and seed give the same splits.",
    ("split", "near_duplicate_threshold"): "Jaccard similarity of question n-grams above which two questions are kept in one split.",
    ("split", "ngram"): "Character n-gram length used to compare questions for near-duplicates.",
    ("split", "min_split_size"): "A split smaller than this is reported as too small to measure anything.",
    ("model", "name"): "Registered model name or a local Hugging Face model folder.",
    ("model", "path"): "Local weights for a registered name (instead of the model cache).",
    ("model", "trust_remote_code"): "Allow model code shipped with the weights (only for models that need it).",
    ("model", "max_length"): "Longest example in tokens; longer examples are excluded and reported, never truncated.",
    ("model", "dtype"): "Compute precision; `auto` lets the plan choose: bfloat16 on GPUs that support it, float32 on CPU.",
    ("lora", "r"): "LoRA rank: the size of the low-rank update per adapted matrix.",
    ("lora", "alpha"): (
        "LoRA scaling numerator: updates are scaled by alpha / r; when the planner lowers r to fit memory, "
        "alpha goes down with it, keeping the scale."
    ),
    ("lora", "dropout"): "Dropout on the LoRA input during training.",
    ("lora", "target_modules"): "Projection layers that get a LoRA adapter.",
    ("training", "nproc"): "Processes (one per GPU) on each node; `qft train --nproc N` overrides it.",
    ("training", "nnodes"): "Nodes taking part; above 1, run the same torchrun command on every node.",
    ("training", "master_addr"): "Address of the rendezvous node; must be reachable from every node when nnodes > 1.",
    ("training", "master_port"): "Port of the rendezvous on master_addr.",
    ("training", "max_steps"): "Stop after this many optimizer steps, whatever `epochs` says.",
    ("training", "global_batch_size"): "Sequences per optimizer step, over all processes and accumulation steps.",
    ("training", "micro_batch_size"): "Sequences per forward pass; empty lets the plan pick the largest that fits in memory.",
    ("training", "learning_rate"): "Peak learning rate of the LoRA parameters (AdamW).",
    ("training", "weight_decay"): "AdamW weight decay.",
    ("training", "warmup_ratio"): "Share of the steps spent warming the learning rate up from 0.",
    ("training", "schedule"): "Learning-rate decay after the warm-up.",
    ("training", "max_grad_norm"): "Gradients are clipped to this global norm.",
    ("training", "gradient_checkpointing"): (
        "Recompute activations to save memory: true every decoder layer, false none; empty lets the plan"
        " checkpoint the fewest first layers that fit."
    ),
    ("training", "sharding"): "`ddp` replicates the model on every GPU, `fsdp` shards it; `auto` picks by memory.",
    ("training", "packing"): "Pack several short examples into one row (attention never crosses examples).",
    ("training", "loss_chunk_tokens"): "Compute the loss over this many tokens at a time to bound logits memory; empty: all at once.",
    ("training", "loss_on_reasoning"): "Train on the reasoning tokens as well as the answer.",
    ("training", "mask_empty_thinking"): "No loss on the empty reasoning scaffold of examples without reasoning.",
    ("training", "checkpoint_every"): "Save a resumable checkpoint every this many steps.",
    ("training", "keep_last"): "Checkpoints kept; older ones are deleted.",
    ("training", "eval_every"): "Compute the validation loss every this many steps (and at the end).",
    ("training", "max_restarts"): "Times torchrun restarts failed workers, each resuming from the last checkpoint.",
    ("training", "seed"): "Seed of initialisation, data order and dropout.",
    ("training", "anomaly_spike_factor"): "A step whose gradient norm exceeds this many times the recent median is skipped.",
    ("training", "max_consecutive_anomalies"): "Stop training after this many skipped (anomalous) steps in a row.",
    ("eval", "batch_size"): "Prompts generated together.",
    ("eval", "sampling_seed"): "Seed of sampling when temperature > 0.",
    ("eval", "bootstrap_samples"): "Bootstrap resamples for the confidence intervals of the metrics.",
    ("eval", "confidence_level"): "Coverage of the bootstrap confidence intervals.",
    ("eval", "regression_tolerance"): "A metric may drop this much below the baseline before it counts as a regression.",
    ("quant", "formats"): "Quantized variants to build and check.",
    ("quant", "gptq_bits"): "Bits per weight of the GPTQ variant.",
    ("quant", "gptq_group_size"): "Weights sharing one GPTQ scale; -1: one group per row.",
    ("quant", "calibration_samples"): "Texts used to calibrate GPTQ.",
    ("quant", "max_perplexity_increase"): "Largest relative perplexity increase a quantized variant may show and still ship.",
    ("export", "package_name"): "Name of the deployment package and of the served model.",
    ("export", "host"): "Address `qft serve` listens on.",
    ("export", "port"): "Port `qft serve` (and the printed vLLM command) listens on.",
    ("export", "api_key"): "Bearer key the server requires; prefer $QFT_API_KEY over writing it here.",
    ("export", "max_request_bytes"): "Larger request bodies are refused (HTTP 413).",
    ("export", "max_tokens_limit"): "Upper bound on a request's `max_tokens`.",
    ("export", "vllm_max_model_len"): "`--max-model-len` of the printed vLLM command.",
    ("export", "vllm_tensor_parallel_size"): "`--tensor-parallel-size` of the printed vLLM command (GPUs per replica).",
    ("export", "vllm_gpu_memory_utilization"): "`--gpu-memory-utilization` of the printed vLLM command.",
}


def _type_name(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(f"`{value}`" for value in args)
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin in (typing.Union, types.UnionType):
        inner = [arg for arg in args if arg is not type(None)]
        names = " or ".join(_type_name(arg) for arg in inner)
        return f"{names} or empty" if len(inner) < len(args) else names
    return {int: "integer", float: "number", bool: "true/false", str: "text"}.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _yaml_value(value: Any) -> str:
    if value is None:
        return "empty (`null`)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list):
        return "`[" + ", ".join(str(item) for item in value) + "]`"
    return f"`{value}`"


_BOUNDS = (
    (annotated_types.Ge, "ge", "≥"),
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Le, "le", "≤"),
    (annotated_types.Lt, "lt", "<"),
)


def _limits(info: FieldInfo) -> str:
    parts = []
    for constraint in info.metadata:
        for kind, attribute, symbol in _BOUNDS:
            if isinstance(constraint, kind):
                parts.append(f"{symbol} {getattr(constraint, attribute)}")
    return ", ".join(parts)


def _source_comments(section: type[BaseModel]) -> dict[str, str]:
    """The `# …` lines right above each field in config.py: the project writes field meanings there."""
    comments: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(section).splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("#").strip())
            continue
        field = re.match(r"^    (\w+)\s*:", line)
        if field and pending:
            comments[field.group(1)] = " ".join(pending)
        pending = []
    return comments


def explanation(section: str, key: str) -> str:
    """What a key means: its Field description, else the comment above it in config.py, else FALLBACK_NOTES."""
    model = QftConfig.model_fields[section].annotation
    info = model.model_fields[key]
    return info.description or _source_comments(model).get(key) or FALLBACK_NOTES.get((section, key), "")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _section_text(name: str, model: type[BaseModel]) -> list[str]:
    lines = [f"## `{name}`", ""]
    if model.__doc__ and model.__doc__ is not BaseModel.__doc__:
        lines += [" ".join(model.__doc__.split()), ""]
    lines += ["| key | type | default | limits | meaning |", "|---|---|---|---|---|"]
    for key, info in model.model_fields.items():
        cells = (
            f"`{name}.{key}`",
            _type_name(info.annotation),
            _yaml_value(info.get_default(call_default_factory=True)),
            _limits(info),
            explanation(name, key),
        )
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return lines + [""]


def render_reference() -> str:
    """The whole of docs/configuration.md."""
    lines = [
        "# Configuration reference",
        "",
        f"<!-- Generated from qft_core/config.py by `{REGENERATE}`. Do not edit by hand. -->",
        "",
        "Every `qft` command takes `--config FILE.yaml`; `qft run`, `qft ui` and the Dagster resource `qft` read the",
        "same file (`resources: qft: config: config_file:` in a run config, where any key below can also be set",
        "for one run). A file names only what differs from the defaults; unknown keys are errors that name the key.",
        "Relative paths resolve against the project root.",
        "",
        "```yaml",
        "training:",
        "  nproc: 4          # four GPUs on this node",
        "  max_steps: 500",
        "eval:",
        "  max_examples: 200",
        "```",
        "",
        "Sections: " + ", ".join(f"[`{name}`](#{name})" for name in QftConfig.model_fields) + ".",
        "",
    ]
    for name, info in QftConfig.model_fields.items():
        lines += _section_text(name, info.annotation)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qft_core.config_reference", description=__doc__)
    parser.add_argument("--write", action="store_true", help=f"write {REFERENCE_FILE.relative_to(REPO_ROOT)} instead of printing")
    args = parser.parse_args(argv)
    text = render_reference()
    if args.write:
        REFERENCE_FILE.write_text(text, encoding="utf-8")
        print(f"wrote {REFERENCE_FILE}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
