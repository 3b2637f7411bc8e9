"""Data assets: raw Markdown → parsed thinking examples → term-annotated examples → term-balanced splits → the
splits exported for other trainers."""

import json

import dagster as dg

from qft_core.data.annotate import annotate_examples
from qft_core.data.corpus import scan_corpus
from qft_core.data.export import EXPORT_FORMATS, export_splits, read_split_files, without_think_tags
from qft_core.data.parse import parse_paths
from qft_core.data.split import term_balanced_split
from qft_core.data.terms import TermDictionary
from qft_core.records import ThinkingExample, read_parquet, write_parquet
from qft_pipeline.artifacts import run_folder, upstream_path
from qft_pipeline.metadata import markdown_table, report_warnings
from qft_pipeline.resources import QftSettings

GROUP = "data"


def _preview(examples: list[ThinkingExample], limit: int = 8) -> dg.MarkdownMetadataValue:
    return markdown_table(
        [
            {
                "question": example.question,
                "answer": example.answer,
                "thinking": example.thinking_origin,
                "file": f"{example.source_file}:{example.source_line}",
            }
            for example in examples[:limit]
        ],
        width=40,
    )


@dg.asset(group_name=GROUP, kinds={"markdown"})
def raw_thinking_documents(context: dg.AssetExecutionContext, qft: QftSettings) -> dg.MaterializeResult:
    """The Markdown files of the corpus, each with its size and content hash."""
    config = qft.load()
    manifest = scan_corpus(config.paths.resolve(config.paths.corpus_dir))
    path = run_folder(context, config) / "manifest.json"
    path.write_text(json.dumps(manifest.model_dump(mode="json"), ensure_ascii=False, indent=2), encoding="utf-8")
    shown_warnings = report_warnings(context, manifest.warnings, path)
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "files": len(manifest.files),
            "bytes": manifest.total_bytes,
            "content_hash": manifest.content_hash,
            "files_table": markdown_table([entry.model_dump() for entry in manifest.files[:50]]),
            "warnings": shown_warnings,
        },
        data_version=dg.DataVersion(manifest.content_hash),
    )


@dg.asset(group_name=GROUP, deps=[raw_thinking_documents], kinds={"parquet"})
def parsed_thinking_examples(context: dg.AssetExecutionContext, qft: QftSettings) -> dg.MaterializeResult:
    """Question, reasoning tree and answer of every pair; unparseable pairs go to the quarantine report."""
    config = qft.load()
    manifest = json.loads(upstream_path(context, "raw_thinking_documents").read_text(encoding="utf-8"))
    result = parse_paths([manifest["root"]], config.data)
    folder = run_folder(context, config)
    path = write_parquet(result.examples, ThinkingExample, folder / "examples.parquet")
    report = result.report()
    (folder / "quarantine.json").write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
    shown_warnings = report_warnings(context, result.warnings, folder / "quarantine.json")
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "quarantine_report": dg.MetadataValue.path(str(folder / "quarantine.json")),
            "files_read": report["files_read"],
            "pairs_found": report["pairs_found"],
            "parsed": report["parsed"],
            "quarantined": report["quarantined"],
            "warnings": len(result.warnings),
            "warning_list": shown_warnings,
            "preview": _preview(result.examples),
            "quarantine": markdown_table(report["quarantine"][:50]),
        }
    )


@dg.asset(group_name=GROUP, deps=[parsed_thinking_examples], kinds={"parquet", "jieba"})
def term_annotated_examples(context: dg.AssetExecutionContext, qft: QftSettings) -> dg.MaterializeResult:
    """Examples with their cryptography terms, text-quality metrics and (where missing) generated thinking."""
    config = qft.load()
    examples = read_parquet(upstream_path(context, "parsed_thinking_examples"), ThinkingExample)
    dictionary = TermDictionary.load(config.paths.resolve(config.paths.term_dictionary))
    annotated = annotate_examples(examples, dictionary, config.data)
    path = write_parquet(annotated, ThinkingExample, run_folder(context, config) / "examples.parquet")
    categories = sorted({category for example in annotated for category in example.term_categories})
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "examples": len(annotated),
            "distinct_terms": len({term for example in annotated for term in example.terms}),
            "generated_thinking": sum(example.thinking_origin == "generated" for example in annotated),
            "categories": markdown_table(
                [
                    {"category": category, "examples": sum(category in example.term_categories for example in annotated)}
                    for category in categories
                ]
            ),
            "preview": _preview(annotated),
        }
    )


@dg.asset(group_name=GROUP, deps=[term_annotated_examples], kinds={"parquet"})
def term_balanced_splits(context: dg.AssetExecutionContext, qft: QftSettings) -> dg.MaterializeResult:
    """Train / validation / test, stratified over term categories and difficulty, near-duplicates kept together."""
    config = qft.load()
    examples = read_parquet(upstream_path(context, "term_annotated_examples"), ThinkingExample)
    result = term_balanced_split(examples, config.split)
    folder = run_folder(context, config)
    for name, split in result.splits().items():
        write_parquet(split, ThinkingExample, folder / f"{name}.parquet")
    (folder / "split_report.json").write_text(json.dumps(result.report, ensure_ascii=False, indent=2), encoding="utf-8")
    for warning in result.report["warnings"]:
        context.log.warning(warning)
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(folder)),
            **{f"{name}_examples": len(split) for name, split in result.splits().items()},
            "near_duplicate_groups": result.report["near_duplicate_groups"],
            "category_shares": markdown_table(result.category_share_rows()),
            "divergence": dg.MetadataValue.json(result.report["divergence"]),
            "warnings": dg.MetadataValue.md("\n".join(f"- {w}" for w in result.report["warnings"]) or "none"),
        }
    )


@dg.asset(group_name=GROUP, deps=[term_balanced_splits], kinds={"json"})
def dataset_exports(context: dg.AssetExecutionContext, qft: QftSettings) -> dg.MaterializeResult:
    """The splits as other trainers read them, one folder per format: `messages` (TRL, reasoning_content),
    `sharegpt` and `alpaca` (LLaMA-Factory, reasoning in <think>…</think>, with dataset_info.json)."""
    config = qft.load()
    splits, left_out = without_think_tags(read_split_files(upstream_path(context, "term_balanced_splits")))
    for problem in left_out:
        context.log.warning(f"dataset_exports leaves out {problem}")
    folder = run_folder(context, config)
    exports = [export_splits(splits, dataset_format, folder / dataset_format) for dataset_format in EXPORT_FORMATS]
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(folder)),
            **{f"{split}_examples": len(examples) for split, examples in splits.items()},
            "left_out": len(left_out),
            "left_out_examples": dg.MetadataValue.md("\n".join(f"- {problem}" for problem in left_out) or "none"),
            "files": markdown_table(
                [{"format": export.dataset_format, "file": str(path.relative_to(folder))}
                 for export in exports for path in export.files]
            ),
        }
    )
