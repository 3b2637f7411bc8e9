"""The packaging chain: a successful qft_main run → one qft_quantize run per format → one qft_deploy run, evaluated
against a real (ephemeral) Dagster instance holding runs of stand-in jobs with the project's job names."""

import dagster as dg
import pytest
import yaml

from qft_pipeline.automation import (
    DEPLOY_SENSOR,
    FORMATS_TAG,
    NOT_QUANTIZED_TAG,
    QUANTIZE_SENSOR,
    QUANTIZED_TAG,
)
from qft_pipeline.definitions import defs
from qft_pipeline.jobs import CLI_TRIGGER, DEPLOY_JOB, FORMAT_TAG, LINEAGE_TAG, QUANTIZE_JOB, TRIGGER_TAG
from tests.pipeline.chain import (
    deploy_job_stand_in,
    failing_main_job_stand_in,
    main_job_stand_in,
    quantize_job_stand_in,
    quantize_requests,
    tick,
    watching,
)

ALL_FORMATS = ["int8", "int4", "gptq"]


@pytest.fixture
def instance():
    with dg.DagsterInstance.ephemeral() as ephemeral:
        yield ephemeral


def _launch(instance: dg.DagsterInstance, request: dg.RunRequest, finish: bool = True) -> dg.DagsterRun:
    """What the daemon does with a quantize request: a run with the request's tags (run to its end, or left queued)."""
    if finish:
        result = quantize_job_stand_in.execute_in_process(instance=instance, tags=request.tags, raise_on_error=False)
        return result.dagster_run
    return instance.create_run_for_job(quantize_job_stand_in, tags=request.tags)


def test_successful_main_run_requests_one_quantize_run_per_format_keyed_by_its_run_id(instance):
    main_run_id, requests = quantize_requests(instance, tags={TRIGGER_TAG: "schedule"})
    assert [request.job_name for request in requests] == [QUANTIZE_JOB] * 3
    assert [request.partition_key for request in requests] == ALL_FORMATS
    assert [request.run_key for request in requests] == [f"{main_run_id}:{fmt}" for fmt in ALL_FORMATS]
    for fmt, request in zip(ALL_FORMATS, requests):
        assert request.tags[TRIGGER_TAG] == "schedule"
        assert request.tags[LINEAGE_TAG] == main_run_id
        assert (request.tags[FORMAT_TAG], request.tags[FORMATS_TAG]) == (fmt, "int8,int4,gptq")
        assert dg.validate_run_config(defs.resolve_job_def(QUANTIZE_JOB), request.run_config) is not None


def test_second_evaluation_requests_nothing_again(instance):
    cursor = watching(instance)
    main_job_stand_in.execute_in_process(instance=instance)
    first = tick(instance, QUANTIZE_SENSOR, cursor)
    second = tick(instance, QUANTIZE_SENSOR, first.cursor)
    assert len(first.run_requests) == 3
    assert second.run_requests == []


def test_corpus_sensor_tags_and_the_config_file_travel_to_the_quantize_runs(instance, tmp_path):
    config_file = tmp_path / "qft.yaml"
    config_file.write_text(yaml.safe_dump({"quant": {"formats": ["int4"]}}), encoding="utf-8")
    run_config = {"resources": {"qft": {"config": {"config_file": str(config_file)}}}}
    tags = {TRIGGER_TAG: "corpus_changed", "qft/corpus_hash": "ab" * 32}
    _, (request,) = quantize_requests(instance, tags=tags, run_config=run_config)
    assert request.partition_key == "int4"
    assert request.run_config == run_config
    assert request.tags["qft/corpus_hash"] == "ab" * 32
    assert request.tags[TRIGGER_TAG] == "corpus_changed"


def test_formats_overridden_in_the_run_config_are_the_ones_quantized(instance):
    run_config = {"resources": {"qft": {"config": {"quant": {"formats": ["gptq", "int8"]}}}}}
    _, requests = quantize_requests(instance, run_config=run_config)
    assert [request.partition_key for request in requests] == ["gptq", "int8"]
    assert {request.tags[FORMATS_TAG] for request in requests} == {"gptq,int8"}


def test_run_launched_by_hand_is_chained_as_manual(instance):
    _, requests = quantize_requests(instance)
    assert {request.tags[TRIGGER_TAG] for request in requests} == {"manual"}


def test_runs_of_qft_run_are_left_to_it(instance):
    cursor = watching(instance)
    main_job_stand_in.execute_in_process(instance=instance, tags={TRIGGER_TAG: CLI_TRIGGER})
    result = tick(instance, QUANTIZE_SENSOR, cursor)
    assert result.run_requests == []
    assert "started by `qft run`" in result.skip_message


def test_main_run_without_the_merged_model_requests_nothing(instance):
    cursor = watching(instance)
    main_job_stand_in.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("term_balanced_splits")])
    result = tick(instance, QUANTIZE_SENSOR, cursor)
    assert result.run_requests == []
    assert "built no merged model" in result.skip_message


def test_failed_main_run_requests_nothing(instance):
    cursor = watching(instance)
    failing_main_job_stand_in.execute_in_process(instance=instance, raise_on_error=False)
    assert tick(instance, QUANTIZE_SENSOR, cursor).run_requests == []


def test_no_configured_format_requests_the_deploy_run_at_once(instance, tmp_path):
    config_file = tmp_path / "qft.yaml"
    config_file.write_text(yaml.safe_dump({"quant": {"formats": []}}), encoding="utf-8")
    run_config = {"resources": {"qft": {"config": {"config_file": str(config_file)}}}}
    main_run_id, (request,) = quantize_requests(instance, run_config=run_config)
    assert (request.job_name, request.run_key) == (DEPLOY_JOB, f"{main_run_id}:deploy")
    assert request.partition_key is None


def test_deploy_waits_until_every_quantize_run_of_the_lineage_has_finished(instance):
    main_run_id, (int8, int4, gptq) = quantize_requests(instance, tags={TRIGGER_TAG: "schedule"})
    _launch(instance, int8)
    assert "have not all finished" in tick(instance, DEPLOY_SENSOR).skip_message  # int4 and gptq not started
    _launch(instance, int4)
    queued = _launch(instance, gptq, finish=False)
    waiting = tick(instance, DEPLOY_SENSOR)
    assert waiting.run_requests == []
    assert waiting.skip_message == f"quantize runs of lineage {main_run_id} have not all finished"
    instance.report_run_failed(queued, "gptq package not built on this machine: no GPTQ backend")
    (request,) = tick(instance, DEPLOY_SENSOR).run_requests
    assert (request.job_name, request.run_key) == (DEPLOY_JOB, f"{main_run_id}:deploy")
    assert {key: value for key, value in request.tags.items() if key.startswith("qft/")} == {
        TRIGGER_TAG: "schedule",
        LINEAGE_TAG: main_run_id,
        QUANTIZED_TAG: "int8,int4",
        NOT_QUANTIZED_TAG: "gptq",
    }
    assert dg.validate_run_config(defs.resolve_job_def(DEPLOY_JOB), request.run_config) is not None


def test_failed_format_does_not_hold_the_deploy_back(instance):
    main_run_id, requests = quantize_requests(instance)
    assert [_launch(instance, request).status for request in requests] == [
        dg.DagsterRunStatus.SUCCESS,
        dg.DagsterRunStatus.SUCCESS,
        dg.DagsterRunStatus.FAILURE,
    ]
    (request,) = tick(instance, DEPLOY_SENSOR).run_requests
    assert request.tags[NOT_QUANTIZED_TAG] == "gptq"


def test_deploy_is_requested_once_per_lineage(instance):
    main_run_id, requests = quantize_requests(instance)
    for request in requests:
        _launch(instance, request)
    (deploy,) = tick(instance, DEPLOY_SENSOR).run_requests
    deploy_job_stand_in.execute_in_process(instance=instance, tags=deploy.tags, raise_on_error=False)
    again = tick(instance, DEPLOY_SENSOR)
    assert again.run_requests == []
    assert again.skip_message == "no lineage is waiting for its deployment package"


def test_quantize_runs_started_by_hand_never_trigger_a_deploy(instance):
    for fmt in ALL_FORMATS:
        quantize_job_stand_in.execute_in_process(
            instance=instance, tags={FORMAT_TAG: fmt, LINEAGE_TAG: "by-hand"}, raise_on_error=False
        )
    assert tick(instance, DEPLOY_SENSOR).run_requests == []


def test_both_chain_sensors_are_registered_and_running_by_default():
    quantize, deploy = defs.resolve_sensor_def(QUANTIZE_SENSOR), defs.resolve_sensor_def(DEPLOY_SENSOR)
    assert isinstance(quantize, dg.RunStatusSensorDefinition)
    assert {target.job_name for target in quantize.targets} == {QUANTIZE_JOB, DEPLOY_JOB}
    assert deploy.job_name == DEPLOY_JOB
    assert quantize.default_status == deploy.default_status == dg.DefaultSensorStatus.RUNNING
