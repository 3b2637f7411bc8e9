"""Retrain when the corpus changes: a sensor keyed by the corpus content hash, so equal content never runs twice."""

from __future__ import annotations

import dagster as dg

from qft_core.data.corpus import CorpusNotFoundError, scan_corpus
from qft_pipeline.jobs import MAIN_JOB, TRIGGER_TAG
from qft_pipeline.resources import QftSettings

CORPUS_SENSOR = "qft_corpus_changed"


def corpus_change_sensor(
    minimum_interval_seconds: int = 60,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
) -> dg.SensorDefinition:
    """Watch `paths.corpus_dir` for new, changed or removed Markdown files and request a `qft_main` run (which
    the packaging chain of automation.py carries on to the deployment package).

    The run key is the corpus content hash (every file's relative path and sha256), so Dagster never starts two
    runs for the same content, not even when a file is edited and later put back; the cursor holds the last hash.
    """

    @dg.sensor(
        name=CORPUS_SENSOR,
        job_name=MAIN_JOB,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description="Run the whole graph when the Markdown corpus changes (keyed by its content hash).",
    )
    def corpus_changed(context: dg.SensorEvaluationContext, qft: QftSettings) -> dg.SensorResult | dg.SkipReason:
        config = qft.load()
        root = config.paths.resolve(config.paths.corpus_dir)
        try:
            manifest = scan_corpus(root)
        except CorpusNotFoundError:
            return dg.SkipReason(f"corpus folder {root} does not exist (paths.corpus_dir)")
        if not manifest.files:
            return dg.SkipReason(f"no Markdown files under {root}")
        content_hash = manifest.content_hash
        if content_hash == context.cursor:
            return dg.SkipReason(f"corpus unchanged: {len(manifest.files)} files, content hash {content_hash[:12]}")
        request = dg.RunRequest(
            run_key=content_hash,
            tags={TRIGGER_TAG: "corpus_changed", "qft/corpus_hash": content_hash, "qft/corpus_files": str(len(manifest.files))},
        )
        return dg.SensorResult(run_requests=[request], cursor=content_hash)

    return corpus_changed
