import uuid

from qft_pipeline.instance import project_instance
from qft_pipeline.jobs import CLI_TRIGGER, LINEAGE_TAG, MAIN_JOB, TRIGGER_TAG
from qft_pipeline.runner import materialize_graph
from tests.pipeline.conftest import write_corpus


def test_qft_run_records_its_run_under_a_uuid_tagged_cli(project):
    write_corpus(project["corpus"], pairs=8)
    outcome = materialize_graph(config_file=project["config_file"], selection="raw_thinking_documents")
    assert outcome.success
    assert set(outcome.artifacts) == {"raw_thinking_documents"}
    (run_id,) = outcome.run_ids
    assert str(uuid.UUID(run_id)) == run_id
    run = project_instance().get_run_by_id(run_id)
    assert run.job_name == MAIN_JOB
    assert run.tags[TRIGGER_TAG] == CLI_TRIGGER
    assert LINEAGE_TAG not in run.tags
