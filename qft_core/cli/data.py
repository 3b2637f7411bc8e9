"""The `qft parse`, `split`, `terms` and `export-data` commands: from Markdown to splits and other trainers'
formats. Argument parsing only; the work is in `qft_core.data`."""

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
    """Add `parse`, `split`, `terms` and `export-data` to the subparsers of the main `qft` parser."""
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
