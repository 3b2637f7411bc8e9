"""The `qft evaluate` command: the base model against base + LoRA adapter on a test split, from the shell.
Argument parsing and input checks only; the work is in `qft_core.evaluate.run`. Unusable inputs exit with status 2."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from qft_core.cli.errors import reported
from qft_core.cli.progress import progress_bar
from qft_core.config import ConfigError, PathsConfig, QftConfig, load_config
from qft_core.data.split import SPLIT_NAMES
from qft_core.evaluate.experts import GoldItem
from qft_core.model.peft_files import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from qft_core.records import RecordFileError, ThinkingExample, read_records

if TYPE_CHECKING:
    from qft_core.model.registry import ModelSpec

# Like argparse's own usage errors: the inputs cannot be evaluated, nothing was written.
EXIT_BAD_INPUT = 2
# Where `qft run` leaves its splits and adapter: <artifacts_dir>/runs/<run id>/<asset>/…
SPLITS_ASSET = "term_balanced_splits"
ADAPTER_IN_RUN = "lora_checkpoint/adapter"
# PEFT saves LoRA weights as <prefix><module>.lora_A.weight (rank × in) and <module>.lora_B.weight (out × rank).
PEFT_PREFIX = "base_model.model."
LORA_A, LORA_B = ".lora_A.weight", ".lora_B.weight"
MISMATCHES_SHOWN = 3


class EvaluationInputError(Exception):
    """Inputs `qft evaluate` cannot evaluate: the message names the file or folder and what is wrong."""


def newest_run(paths: PathsConfig, members: list[str]) -> Path:
    """The newest `<artifacts_dir>/runs/<id>` folder that holds every one of `members` (newest by their latest
    modification), so that defaults taken together (test split and adapter) come from one pipeline run."""
    runs = paths.resolve(paths.artifacts_dir) / "runs"
    found = [run for run in runs.glob("*") if all((run / member).is_file() for member in members)]
    if not found:
        raise EvaluationInputError(
            f"no run under {runs} has {' and '.join(members)}: name the examples and the adapter (--adapter DIR)"
        )
    return max(found, key=lambda run: max((run / member).stat().st_mtime for member in members))


def examples_file(source: str | Path, split: str | None) -> Path:
    """The file of examples to evaluate: `source` itself, or `<split>.parquet` (test by default) of the splits
    folder `source`."""
    path = Path(source)
    member = f"{split or 'test'}.parquet"
    if not path.exists():
        raise EvaluationInputError(f"no such file or folder: {path}")
    if path.is_dir():
        if not (path / member).is_file():
            raise EvaluationInputError(f"{path}: no {member} in this folder (a splits folder from `qft split`)")
        return path / member
    if split is not None:
        raise EvaluationInputError(f"--split chooses a file of a splits folder, but {path} is a file")
    return path


def adapter_folder(source: str | Path) -> Path:
    """The PEFT adapter folder: `source`, or its `adapter/` (a `qft train --out` or lora_checkpoint folder)."""
    path = Path(source)
    if not path.is_dir():
        raise EvaluationInputError(f"no such adapter folder: {path}")
    folder = next((where for where in (path, path / "adapter") if (where / ADAPTER_CONFIG).is_file()), None)
    if folder is None:
        raise EvaluationInputError(f"{path}: no {ADAPTER_CONFIG} here or in {path / 'adapter'}: not a PEFT adapter")
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise EvaluationInputError(f"{folder / ADAPTER_WEIGHTS}: missing; adapters are read from safetensors only")
    return folder


def adapter_mismatches(adapter_dir: Path, model_dir: Path, trust_remote_code: bool = False) -> list[str]:
    """Where the adapter's LoRA weights do not fit the base model's layers: a module the model lacks, or input
    and output sizes that differ. Empty: PEFT can load it. Reads only the weights' shapes and builds the model
    on the meta device, so no weights are loaded."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    model_config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code, local_files_only=True)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(model_config, trust_remote_code=trust_remote_code)
    modules = dict(skeleton.named_modules())
    problems = []
    with safe_open(str(adapter_dir / ADAPTER_WEIGHTS), framework="pt") as weights:
        for key in sorted(weights.keys()):
            side = "input" if key.endswith(LORA_A) else "output" if key.endswith(LORA_B) else None
            if side is None:
                continue
            name = key.removeprefix(PEFT_PREFIX).rsplit(".lora_", 1)[0]
            module = modules.get(name)
            if module is None:
                problems.append(f"{name}: the base model has no such layer")
                continue
            if not isinstance(module, torch.nn.Linear):
                continue
            rows, columns = weights.get_slice(key).get_shape()
            adapter_size, model_size = (columns, module.in_features) if side == "input" else (rows, module.out_features)
            if adapter_size != model_size:
                problems.append(f"{name}: adapter {side} size {adapter_size}, model {model_size}")
    return problems


def _recorded_base(adapter_dir: Path) -> str | None:
    try:
        recorded = json.loads((adapter_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise EvaluationInputError(f"{adapter_dir / ADAPTER_CONFIG}: cannot read: {error}") from None
    return recorded.get("base_model_name_or_path") if isinstance(recorded, dict) else None


def _same_model(recorded: str, names: set[str], model_dir: Path, paths: PathsConfig) -> bool:
    """Whether the adapter's recorded base (a hub id, a registered name or a path as the user gave it, relative
    ones to the project root; adapters of earlier versions hold a resolved folder) is the model evaluated."""
    if recorded in names:
        return True
    path = paths.resolve(recorded)
    return path.is_dir() and path.resolve() == model_dir.resolve()


def _base_model_for(adapter_dir: Path, config: QftConfig) -> ModelSpec:
    """The configured base model, once it is known to be there and to have the layers the adapter adapts."""
    # Imported only now that the input files are known to be there: torch and transformers take seconds to import.
    from qft_core.model.registry import ModelNotAvailableError, UnknownModelError, ensure_model_dir, resolve_model

    try:
        spec = resolve_model(config.model, config.paths)
        model_dir = ensure_model_dir(spec)
    except (UnknownModelError, ModelNotAvailableError) as error:
        raise EvaluationInputError(str(error)) from None
    recorded = _recorded_base(adapter_dir)
    problems = adapter_mismatches(adapter_dir, model_dir, spec.trust_remote_code)
    if problems:
        more = len(problems) - MISMATCHES_SHOWN
        raise EvaluationInputError(
            f"{adapter_dir}: adapter for another base model (trained on {recorded}), not {spec.name}: "
            + "; ".join(problems[:MISMATCHES_SHOWN]) + (f"; and {more} more" if more > 0 else "")
        )
    if recorded and not _same_model(recorded, {spec.name, spec.hub_id} - {None}, model_dir, config.paths):
        print(f"warning: the adapter was trained on {recorded}; its layers fit {spec.name} ({model_dir}), "
              "evaluating it there", file=sys.stderr)
    return spec


# An input problem is one line and exit status 2, never a traceback.
@reported(EvaluationInputError, RecordFileError, ConfigError, exit_status=EXIT_BAD_INPUT)
def cmd_evaluate(args: argparse.Namespace) -> int:
    config = load_config(args.config, device=args.device)
    if args.model and args.model != config.model.name:
        # Another model: model.path pointed the configured name at its weights, not this one's.
        config.model = config.model.model_copy(update={"name": args.model, "path": None})
    if args.limit is not None:
        config.eval.max_examples = args.limit
    # What is not given comes from the newest pipeline run that has it (both from one run when both are missing).
    defaults = {f"{SPLITS_ASSET}/{args.split or 'test'}.parquet": args.examples,
                f"{ADAPTER_IN_RUN}/{ADAPTER_CONFIG}": args.adapter}
    missing = [member for member, given in defaults.items() if given is None]
    run = newest_run(config.paths, missing) if missing else None
    source = examples_file(args.examples or run / SPLITS_ASSET, args.split)
    examples = read_records(source, ThinkingExample, "examples")
    if not examples:
        raise EvaluationInputError(f"{source}: no examples to evaluate")
    gold = read_records(Path(args.gold_set), GoldItem, "gold-set items") if args.gold_set else []
    if args.gold_set and not gold:
        raise EvaluationInputError(f"{args.gold_set}: the gold set has no items")
    adapter_dir = adapter_folder(args.adapter or run / ADAPTER_IN_RUN)
    spec = _base_model_for(adapter_dir, config)

    # Here, not at the top: evaluate.run imports torch.
    from qft_core.evaluate.report import headline_lines
    from qft_core.evaluate.run import evaluate_models

    out_dir = Path(args.out) if args.out else (
        config.paths.resolve(config.paths.artifacts_dir) / "evaluations" / time.strftime("%Y%m%d-%H%M%S"))
    limit = config.eval.max_examples
    counts = f"{min(len(examples), limit or len(examples))} example(s) of {source}"
    if gold:
        counts += f" and {min(len(gold), limit or len(gold))} gold-set item(s)"
    print(f"evaluating {spec.name} and {spec.name} + adapter {adapter_dir} on {counts}")
    update, close = progress_bar("evaluating", unit="step", show_item=True)
    try:
        report = evaluate_models(config, examples, adapter_dir, out_dir, gold_items=gold, progress=update)
    finally:
        close()
    print("\n".join(headline_lines(report.data)))
    print(f"report: {report.markdown} (with report.json, {len(report.charts)} charts and the generations)")
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def add_evaluate_commands(commands: argparse._SubParsersAction) -> None:
    """Add `qft evaluate` to the subparsers of the main `qft` parser."""
    evaluate = commands.add_parser(
        "evaluate",
        help="score the base model and base + adapter on a test split; write the report",
        description="Generate with the base model and with base + LoRA adapter, score both against the references "
        "and write report.md, report.json, the charts and the generations. Exit status 2: unusable inputs.",
    )
    evaluate.add_argument(
        "examples", nargs="?", metavar="SPLITS_DIR|FILE",
        help="a splits folder (its test.parquet) or a .parquet/.jsonl file of examples "
        "(default: the newest term_balanced_splits under the artifacts folder)",
    )
    evaluate.add_argument("--split", choices=SPLIT_NAMES, help="the split of a splits folder to evaluate (default test)")
    evaluate.add_argument("--model", help="base model: registered name or model folder (default: model.name)")
    evaluate.add_argument(
        "--adapter", metavar="DIR",
        help="PEFT adapter folder, or a `qft train --out` folder (default: the newest trained adapter under the "
        "artifacts folder)",
    )
    evaluate.add_argument("--limit", type=_positive, metavar="N", help="evaluate at most N examples per set")
    evaluate.add_argument(
        "--gold-set", metavar="FILE", help="expert gold set (.jsonl/.parquet from `qft experts export`)"
    )
    evaluate.add_argument(
        "--out", metavar="DIR", help="report folder (default: <artifacts_dir>/evaluations/<date-time>)"
    )
    evaluate.set_defaults(handler=cmd_evaluate)
