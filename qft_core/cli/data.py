"""The `qft parse`, `annotate`, `split`, `terms` and `export-data` commands: from Markdown to splits and other
trainers' formats. Argument parsing only; the work is in `qft_core.data` (and, for reasoning a model writes,
`qft_core.evaluate.written_reasoning`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qft_core.cli.errors import CommandError
from qft_core.cli.progress import progress_bar
from qft_core.config import load_config


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


def _read_examples(path: str, action: str) -> list:
    """The examples of a parquet file; `action` says what an empty one leaves undone."""
    from qft_core.records import RecordFileError, ThinkingExample, read_parquet

    if not Path(path).is_file():
        raise CommandError(f"no such parquet file: {path}")
    try:
        examples = read_parquet(path, ThinkingExample)
    except RecordFileError as error:
        raise CommandError(str(error)) from None
    if not examples:
        raise CommandError(f"{path}: holds no examples; nothing to {action}")
    return examples


def cmd_annotate(args: argparse.Namespace) -> int:
    from qft_core.data.annotate import annotate_examples, reasoning_account, rejected_reasoning
    from qft_core.data.terms import TermDictionary
    from qft_core.evaluate.reasoning_writers import WriterSetupError
    from qft_core.evaluate.written_reasoning import write_missing_reasoning
    from qft_core.records import RecordFileError, ThinkingExample, write_parquet

    config = load_config(args.config, device=args.device)
    examples = _read_examples(args.examples, "annotate")
    dictionary = TermDictionary.load(config.paths.resolve(config.paths.term_dictionary))
    update, close = progress_bar("writing reasoning")
    try:
        written = write_missing_reasoning(examples, config, dictionary, progress=update)
    except WriterSetupError as error:
        raise CommandError(str(error)) from None
    finally:
        close()
    annotated = annotate_examples(written.examples, dictionary, config.data)
    try:
        write_parquet(annotated, ThinkingExample, args.out)
    except RecordFileError as error:
        raise CommandError(str(error)) from None
    account = reasoning_account(annotated)
    print(
        f"annotated {len(annotated)} examples → {args.out}; reasoning: {account['expert']} expert, "
        f"{account['model']} model-written (writer: {written.writer or config.reasoning.writer}), "
        f"{account['template']} template, "
        f"{account['none']} none; {account['rejected']} model-written refused (template instead)"
    )
    for row in rejected_reasoning(annotated)[: args.show_rejected]:
        print(f"  refused {row['file']} ({row['id']}): {row['reason']}")
    for failure in written.failures:
        print(f"qft annotate: reasoning writer failed: {failure}; its pairs got the template's reasoning", file=sys.stderr)
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from qft_core.data.annotate import annotate_examples
    from qft_core.data.split import term_balanced_split
    from qft_core.data.terms import TermDictionary
    from qft_core.records import ThinkingExample, write_parquet

    config = load_config(args.config, device=args.device)
    examples = _read_examples(args.examples, "split")
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


def cmd_export_data(args: argparse.Namespace) -> int:
    from qft_core.data.export import ExportError, export_splits, read_split_files

    try:
        export = export_splits(read_split_files(args.splits_dir), args.format, args.out)
    except ExportError as error:
        raise CommandError(str(error)) from None
    counts = ", ".join(f"{split} {count}" for split, count in export.counts.items())
    print(f"{args.format}: {counts} examples in {export.out_dir} ({', '.join(path.name for path in export.files)})")
    return 0


def add_data_commands(commands: argparse._SubParsersAction) -> None:
    """Add `parse`, `annotate`, `split`, `terms` and `export-data` to the subparsers of the main `qft` parser."""
    parse = commands.add_parser("parse", help="parse Markdown thinking data into parquet")
    parse.add_argument("paths", nargs="+", metavar="PATH", help="a .md file or a folder searched recursively")
    parse.add_argument("--out", required=True, help="parquet file, one row per parsed example")
    parse.add_argument("--report", help="JSON report with counts and the quarantined pairs")
    parse.add_argument("--show-quarantine", type=int, default=10, help="quarantined pairs to print (default 10)")
    parse.set_defaults(handler=cmd_parse)

    annotate = commands.add_parser(
        "annotate",
        help="terms, text metrics and reasoning for pairs without it (written by reasoning.writer, else the template)",
    )
    annotate.add_argument("examples", metavar="FILE.parquet", help="parsed examples (`qft parse --out`)")
    annotate.add_argument("--out", required=True, help="parquet file of the annotated examples")
    annotate.add_argument("--show-rejected", type=int, default=10, help="refused reasonings to print (default 10)")
    annotate.set_defaults(handler=cmd_annotate)

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
