"""The `qft` commands that need no Dagster: argument parsing only, the work happens in qft_core's modules."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from tqdm import tqdm

from qft_core.cli_evaluate import add_evaluate_commands
from qft_core.cli_experts import add_expert_commands
from qft_core.cli_package import add_package_commands
from qft_core.config import ConfigError, load_config


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


def progress_bar(
    description: str, unit: str = "file", show_item: bool = False
) -> tuple[Callable[[int, int, object], None], Callable[[], None]]:
    """A terminal progress bar (none when stderr is no terminal) fed by `update(done, total, item)`; with
    `show_item` the item (a stage, say) is shown beside the count. Call `close` when the work ends."""
    bar = tqdm(desc=description, unit=unit, disable=None, file=sys.stderr)

    def update(done: int, total: int, item: object) -> None:
        bar.total = total
        bar.n = done
        if show_item:
            bar.set_postfix_str(str(item), refresh=False)
        bar.refresh()

    return update, bar.close


def _write_json(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, ensure_ascii=False, indent=2), encoding="utf-8")


def cmd_parse(args: argparse.Namespace) -> int:
    from qft_core.data.parse import parse_paths
    from qft_core.records import RecordFileError, ThinkingExample, write_parquet

    config = load_config(args.config, device=args.device)
    missing = [path for path in args.paths if not Path(path).exists()]
    if missing:
        raise CommandError(f"no such file or folder: {', '.join(missing)}")
    update, close = progress_bar("parsing")
    try:
        result = parse_paths([Path(path) for path in args.paths], config.data, progress=update)
    finally:
        close()
    report = result.report()
    if args.report:
        _write_json(Path(args.report), report)
    if not result.examples:
        reasons = sorted({item.reason.split(":")[0] for item in result.quarantined}) or ["no question/answer pairs found"]
        raise CommandError(f"nothing could be parsed from {report['files_read']} file(s): {', '.join(reasons)}")
    try:
        write_parquet(result.examples, ThinkingExample, args.out)
    except RecordFileError as error:
        raise CommandError(str(error)) from None
    print(
        f"parsed {report['parsed']} of {report['pairs_found']} pairs from {report['files_read']} file(s); "
        f"{report['quarantined']} quarantined; {len(result.warnings)} warning(s) → {args.out}"
    )
    for item in result.quarantined[: args.show_quarantine]:
        print(f"  quarantined {item.file}:{item.line}: {item.reason}")
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from qft_core.data.annotate import annotate_examples
    from qft_core.data.split import term_balanced_split
    from qft_core.data.terms import TermDictionary
    from qft_core.records import RecordFileError, ThinkingExample, read_parquet, write_parquet

    config = load_config(args.config, device=args.device)
    if not Path(args.examples).is_file():
        raise CommandError(f"no such parquet file: {args.examples}")
    try:
        examples = read_parquet(args.examples, ThinkingExample)
    except RecordFileError as error:
        raise CommandError(str(error)) from None
    if not examples:
        raise CommandError(f"{args.examples}: holds no examples; nothing to split")
    if any(not example.term_categories for example in examples):
        dictionary = TermDictionary.load(config.paths.resolve(config.paths.term_dictionary))
        examples = annotate_examples(examples, dictionary, config.data)
    result = term_balanced_split(examples, config.split)
    out_dir = Path(args.out_dir)
    for name, split in result.splits().items():
        write_parquet(split, ThinkingExample, out_dir / f"{name}.parquet")
        print(f"{name:<10} {len(split):>6} examples → {out_dir / f'{name}.parquet'}")
    _write_json(out_dir / "split_report.json", result.report)
    for warning in result.report["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def cmd_terms(args: argparse.Namespace) -> int:
    from qft_core.data.terms import TermDictionary

    config = load_config(args.config, device=args.device)
    dictionary = TermDictionary.load(config.paths.resolve(config.paths.term_dictionary))
    text = " ".join(args.text)
    matches = dictionary.find(text)
    if not matches:
        print("no cryptography terms recognised")
        return 0
    for match in matches:
        term = dictionary.get(match.term_id)
        print(f"{match.surface}\t{term.zh} / {term.en}\t{term.category}\tcomplexity {term.complexity}\t[{match.start}:{match.end}]")
    print(f"term complexity: {dictionary.complexity(dictionary.term_ids(text)):.2f}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from qft_core.device import resolve_device
    from qft_core.model.registry import ensure_model_dir, resolve_model
    from qft_core.train.hardware import profile_hardware
    from qft_core.train.plan import plan_for

    config = load_config(args.config, device=args.device)
    if args.nproc:
        config.training.nproc = args.nproc
    profile = profile_hardware()
    # A device the machine lacks is a one-line error before any model is built.
    resolve_device(config.model.device, cuda_available=bool(profile.gpus))
    model_dir = ensure_model_dir(resolve_model(config.model, config.paths))
    print(profile.to_markdown())
    print()
    print(plan_for(config, model_dir, profile).to_markdown())
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from qft_core.train.launch import run_training

    config = load_config(args.config, device=args.device)
    if args.nproc:
        config.training.nproc = args.nproc
    summary = run_training(config, Path(args.splits), Path(args.out), stream=print)
    print(summary.model_dump_json(indent=2))
    return 0


def cmd_export_data(args: argparse.Namespace) -> int:
    from qft_core.data.export import ExportError, export_splits, read_split_files

    try:
        export = export_splits(read_split_files(args.splits_dir), args.format, args.out)
    except ExportError as error:
        raise CommandError(str(error)) from None
    counts = ", ".join(f"{split} {count}" for split, count in export.counts.items())
    print(f"{args.format}: {counts} examples in {export.out_dir} ({', '.join(path.name for path in export.files)})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qft", description="Fine-tune Qwen3-Thinking on Chinese cryptography Q&A.")
    parser.add_argument("--config", help="YAML config file (default: the embedded CPU defaults)")
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        help="where every stage computes, instead of the config's model.device (auto: CUDA when a GPU is visible)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    parse = commands.add_parser("parse", help="parse Markdown thinking data into parquet")
    parse.add_argument("paths", nargs="+", metavar="PATH", help="a .md file or a folder searched recursively")
    parse.add_argument("--out", required=True, help="parquet file, one row per parsed example")
    parse.add_argument("--report", help="JSON report with counts and the quarantined pairs")
    parse.add_argument("--show-quarantine", type=int, default=10, help="quarantined pairs to print (default 10)")
    parse.set_defaults(handler=cmd_parse)

    split = commands.add_parser("split", help="term-balanced train/validation/test splits")
    split.add_argument("examples", metavar="FILE.parquet")
    split.add_argument("--out-dir", required=True)
    split.set_defaults(handler=cmd_split)

    terms = commands.add_parser("terms", help="print the cryptography terms recognised in TEXT")
    terms.add_argument("text", nargs="+")
    terms.set_defaults(handler=cmd_terms)

    export = commands.add_parser(
        "export-data", help="write the splits for other trainers: TRL messages, LLaMA-Factory ShareGPT or Alpaca"
    )
    export.add_argument("splits_dir", metavar="SPLITS_DIR", help="folder with train/validation/test .parquet")
    # No argparse choices: the formats live in qft_core.data.export, whose import (the chat format) is slow here.
    export.add_argument("--format", required=True, metavar="messages|sharegpt|alpaca")
    export.add_argument("--out", required=True, help="folder for <split>.jsonl (and dataset_info.json)")
    export.set_defaults(handler=cmd_export_data)

    plan = commands.add_parser("plan", help="print the hardware profile and the training plan")
    plan.add_argument("--nproc", type=int, help="processes (GPUs) per node")
    plan.set_defaults(handler=cmd_plan)

    train = commands.add_parser("train", help="train the LoRA adapter with torchrun, outside Dagster")
    train.add_argument("--splits", required=True, help="folder with train.parquet and validation.parquet")
    train.add_argument("--out", required=True, help="run folder for checkpoints, metrics and the adapter")
    train.add_argument("--nproc", type=int, help="processes (GPUs) per node")
    train.set_defaults(handler=cmd_train)

    add_evaluate_commands(commands)
    add_expert_commands(commands)
    add_package_commands(commands)
    return parser


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (CommandError, ConfigError) as error:
        print(f"qft {args.command}: {error}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
