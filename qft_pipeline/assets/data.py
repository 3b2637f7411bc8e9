"""Data assets: raw Markdown → parsed thinking examples → term-annotated examples → term-balanced splits → the
splits exported for other trainers."""

import dagster as dg

from qft_core.data.annotate import annotate_examples
from qft_core.data.corpus import CorpusManifest, scan_corpus
from qft_core.data.export import EXPORT_FORMATS, export_splits, without_think_tags
from qft_core.data.parse import CorpusChangedError, ParseResult, parse_manifest
from qft_core.data.split import SplitResult, term_balanced_split
from qft_core.data.terms import TermDictionary
from qft_core.evaluate.reasoning_writers import WriterSetupError
from qft_core.evaluate.written_reasoning import write_missing_reasoning
from qft_core.records import ThinkingExample
from qft_pipeline.artifacts import run_folder
from qft_pipeline.metadata import markdown_table, reasoning_metadata, report_warnings
from qft_pipeline.resources import QftSettings
from qft_pipeline.resources.artifact_io_manager import MANIFEST_FILE, QUARANTINE_REPORT

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
def raw_thinking_documents(context: dg.AssetExecutionContext, qft: QftSettings) -> dg.Output[CorpusManifest]:
    """The Markdown files of the corpus, each with its size and content hash."""
    config = qft.load()
    manifest = scan_corpus(config.paths.resolve(config.paths.corpus_dir))
    shown_warnings = report_warnings(context, manifest.warnings, MANIFEST_FILE)
    return dg.Output(
        manifest,
        metadata={
            "files": len(manifest.files),
            "bytes": manifest.total_bytes,
            "content_hash": manifest.content_hash,
            "files_table": markdown_table([entry.model_dump() for entry in manifest.files[:50]]),
            "warnings": shown_warnings,
        },
        data_version=dg.DataVersion(manifest.content_hash),
    )


@dg.asset(group_name=GROUP, kinds={"parquet"})
def parsed_thinking_examples(
    context: dg.AssetExecutionContext, qft: QftSettings, raw_thinking_documents: CorpusManifest
) -> dg.Output[ParseResult]:
    """Question, reasoning tree and answer of every pair of the manifest's files, exactly as the manifest hashed
    them; unparseable pairs go to the quarantine report."""
    try:
        result = parse_manifest(raw_thinking_documents, qft.load().data)
    except CorpusChangedError as error:
        raise dg.Failure(description=str(error)) from None
    report = result.report()
    shown_warnings = report_warnings(context, result.warnings, QUARANTINE_REPORT)
    return dg.Output(
        result,
        metadata={
            "files_read": report["files_read"],
            "pairs_found": report["pairs_found"],
            "parsed": report["parsed"],
            "quarantined": report["quarantined"],
            "warnings": len(result.warnings),
            "warning_list": shown_warnings,
            "preview": _preview(result.examples),
            "quarantine": markdown_table(report["quarantine"][:50]),
        },
    )


@dg.asset(group_name=GROUP, kinds={"parquet", "jieba"})
def term_annotated_examples(
    context: dg.AssetExecutionContext, qft: QftSettings, parsed_thinking_examples: ParseResult
) -> dg.Output[list[ThinkingExample]]:
    """Examples with their cryptography terms, text-quality metrics and, where the corpus has no reasoning, one
    written by the configured model (kept when it passes the checks) or else by the template."""
    config = qft.load()
    dictionary = TermDictionary.load(config.paths.resolve(config.paths.term_dictionary))
    try:
        written = write_missing_reasoning(
            parsed_thinking_examples.examples, config, dictionary,
            progress=lambda done, total, stage: context.log.debug(f"{done}/{total} {stage}"),
        )
    except WriterSetupError as error:
        raise dg.Failure(description=str(error)) from None
    for failure in written.failures:
        context.log.error(f"reasoning writer failed: {failure}; its pairs get the template's reasoning")
    annotated = annotate_examples(written.examples, dictionary, config.data)
    categories = sorted({category for example in annotated for category in example.term_categories})
    return dg.Output(
        annotated,
        metadata={
            "examples": len(annotated),
            "distinct_terms": len({term for example in annotated for term in example.terms}),
            **reasoning_metadata(written, annotated, config.reasoning.writer),
            "categories": markdown_table(
                [
                    {"category": category, "examples": sum(category in example.term_categories for example in annotated)}
                    for category in categories
                ]
            ),
            "preview": _preview(annotated),
        },
    )


@dg.asset(group_name=GROUP, kinds={"parquet"})
def term_balanced_splits(
    context: dg.AssetExecutionContext, qft: QftSettings, term_annotated_examples: list[ThinkingExample]
) -> dg.Output[SplitResult]:
    """Train / validation / test, stratified over term categories and difficulty, near-duplicates kept together."""
    result = term_balanced_split(term_annotated_examples, qft.load().split)
    for warning in result.report["warnings"]:
        context.log.warning(warning)
    return dg.Output(
        result,
        metadata={
            **{f"{name}_examples": len(split) for name, split in result.splits().items()},
            "near_duplicate_groups": result.report["near_duplicate_groups"],
            "category_shares": markdown_table(result.category_share_rows()),
            "reasoning_origins": markdown_table(
                [{"split": name, **counts} for name, counts in result.report["reasoning_origins"].items()]
            ),
            "divergence": dg.MetadataValue.json(result.report["divergence"]),
            "warnings": dg.MetadataValue.md("\n".join(f"- {w}" for w in result.report["warnings"]) or "none"),
        },
    )


@dg.asset(group_name=GROUP, kinds={"json"})
def dataset_exports(
    context: dg.AssetExecutionContext, qft: QftSettings, term_balanced_splits: SplitResult
) -> dg.MaterializeResult:
    """The splits as other trainers read them, one folder per format: `messages` (TRL, reasoning_content),
    `sharegpt` and `alpaca` (LLaMA-Factory, reasoning in <think>…</think>, with dataset_info.json)."""
    config = qft.load()
    splits, left_out = without_think_tags(term_balanced_splits.splits())
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
