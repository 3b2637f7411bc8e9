import dagster as dg
import pytest

from qft_core.data.corpus import scan_corpus
from qft_pipeline.definitions import defs
from qft_pipeline.jobs import MAIN_JOB, TRIGGER_TAG
from qft_pipeline.resources import QftSettings
from qft_pipeline.sensors import CORPUS_SENSOR, corpus_change_sensor
from tests.pipeline.chain import quantize_requests
from tests.pipeline.conftest import write_corpus

# The project's graph, job and resources with only this sensor (whether or not definitions.py wires one).
DEFINITIONS = dg.Definitions(
    assets=defs.assets,
    asset_checks=defs.asset_checks,
    jobs=defs.jobs,
    resources=defs.resources,
    sensors=[corpus_change_sensor()],
)


@pytest.fixture
def tick(project):
    """Evaluate one sensor tick against the project's config, starting from the given cursor."""
    sensor = DEFINITIONS.resolve_sensor_def(CORPUS_SENSOR)
    resources = {"qft": QftSettings(config_file=project["config_file"])}

    def evaluate(cursor: str | None):
        return sensor.evaluate_tick(dg.build_sensor_context(cursor=cursor, resources=resources, definitions=DEFINITIONS))

    return evaluate


def _only_run_key(result) -> str:
    (request,) = result.run_requests
    assert dg.validate_run_config(DEFINITIONS.resolve_job_def(MAIN_JOB), request.run_config) is not None
    assert request.job_name in (None, MAIN_JOB)
    return request.run_key


def test_first_tick_requests_a_run_keyed_by_the_corpus_hash(project, tick):
    write_corpus(project["corpus"], pairs=8)
    assert DEFINITIONS.resolve_sensor_def(CORPUS_SENSOR).job_name == MAIN_JOB
    result = tick(None)
    content_hash = scan_corpus(project["corpus"]).content_hash
    assert _only_run_key(result) == content_hash
    assert result.cursor == content_hash
    assert result.run_requests[0].tags["qft/corpus_files"] == "4"


def test_corpus_run_is_quantized_under_the_corpus_trigger_and_hash(project, tick):
    write_corpus(project["corpus"], pairs=8)
    (request,) = tick(None).run_requests
    with dg.DagsterInstance.ephemeral() as instance:
        _, requests = quantize_requests(instance, tags=request.tags, run_config=request.run_config)
    assert len(requests) == 3
    for quantize in requests:
        assert quantize.tags[TRIGGER_TAG] == "corpus_changed"
        assert quantize.tags["qft/corpus_hash"] == scan_corpus(project["corpus"]).content_hash


def test_unchanged_corpus_is_skipped_without_a_run(project, tick):
    write_corpus(project["corpus"], pairs=8)
    first = tick(None)
    second = tick(first.cursor)
    assert second.run_requests == []
    assert "corpus unchanged" in second.skip_message
    assert second.cursor in (None, first.cursor)


def test_edited_file_requests_a_run_under_the_new_hash(project, tick):
    write_corpus(project["corpus"], pairs=8)
    first = tick(None)
    part = project["corpus"] / "part1.md"
    part.write_text(part.read_text(encoding="utf-8") + "\n### Q: 新问题？\n### A: 新答案。\n", encoding="utf-8")
    second = tick(first.cursor)
    new_hash = scan_corpus(project["corpus"]).content_hash
    assert new_hash != first.cursor
    assert _only_run_key(second) == new_hash
    assert second.cursor == new_hash


def test_added_file_requests_a_run_under_the_new_hash(project, tick):
    write_corpus(project["corpus"], pairs=8)
    first = tick(None)
    (project["corpus"] / "nested").mkdir()
    (project["corpus"] / "nested" / "extra.md").write_text("### Q: 什么是 SM3？\n### A: 国密哈希算法。\n", encoding="utf-8")
    second = tick(first.cursor)
    assert _only_run_key(second) == scan_corpus(project["corpus"]).content_hash != first.cursor


def test_non_markdown_files_do_not_trigger_a_run(project, tick):
    write_corpus(project["corpus"], pairs=8)
    first = tick(None)
    (project["corpus"] / "notes.txt").write_text("not part of the corpus", encoding="utf-8")
    assert tick(first.cursor).run_requests == []


def test_missing_corpus_folder_is_skipped_with_its_path(project, tick):
    result = tick(None)
    assert result.run_requests == []
    assert str(project["corpus"]) in result.skip_message
    assert result.cursor is None


def test_empty_corpus_folder_is_skipped(project, tick):
    project["corpus"].mkdir()
    result = tick(None)
    assert result.run_requests == []
    assert result.skip_message == f"no Markdown files under {project['corpus']}"
