"""The chain of jobs, written once in jobs.CHAIN: what comes after each stage, with and without formats."""

from qft_pipeline.jobs import CHAIN, DEPLOY_JOB, MAIN_JOB, QUANTIZE_JOB, following


def test_the_chain_is_main_then_one_quantize_run_per_format_then_deploy() -> None:
    assert [(stage.name, stage.partitions(["int8", "gptq"])) for stage in CHAIN] == [
        (MAIN_JOB, [None]),
        (QUANTIZE_JOB, ["int8", "gptq"]),
        (DEPLOY_JOB, [None]),
    ]


def test_with_no_format_the_main_job_is_followed_by_the_deploy_job() -> None:
    assert following(MAIN_JOB, ["int8"]).name == QUANTIZE_JOB
    assert following(MAIN_JOB, []).name == DEPLOY_JOB
    assert following(QUANTIZE_JOB, ["int8"]).name == DEPLOY_JOB
    assert following(DEPLOY_JOB, ["int8"]) is None
