import io
import subprocess
import sys
import uuid

import dagster as dg

from qft_pipeline.instance import project_instance
from qft_pipeline.jobs import CLI_TRIGGER, LINEAGE_TAG, MAIN_JOB, TRIGGER_TAG
from qft_pipeline.progress import TRAINING_STEP, RunFollower, progress_bar
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


def test_qft_run_shows_its_progress_on_the_console_and_times_each_asset(project):
    write_corpus(project["corpus"], pairs=8)
    console = io.StringIO()
    outcome = materialize_graph(config_file=project["config_file"], selection="raw_thinking_documents", console=console)

    assert "1/1 assets" in console.getvalue() and "| raw_thinking_documents" in console.getvalue()
    (stage,) = outcome.stages
    assert stage.asset == "raw_thinking_documents" and stage.wall_s > 0 and stage.cpu_s > 0
    assert outcome.metadata["raw_thinking_documents"]["path"] == outcome.artifacts["raw_thinking_documents"]


def test_the_follower_shows_the_training_steps_pipes_line_and_the_running_asset():
    @dg.op(name=TRAINING_STEP)
    def training(context):
        context.log.debug("12/60 an evaluation's progress line")
        context.log.debug("step 3/10 (30%) | loss 2.0000 | ETA 7s")
        context.log.debug("not a progress line")

    instance = dg.DagsterInstance.ephemeral()
    result = dg.GraphDefinition(name="follow", node_defs=[training]).to_job().execute_in_process(instance=instance)
    console = io.StringIO()
    with progress_bar(1, console) as bar:
        follower = RunFollower(instance, result.run_id, bar)
        follower.poll()
        assert bar.desc == TRAINING_STEP and bar.postfix == "step 3/10 (30%) | loss 2.0000 | ETA 7s"
    (stage,) = follower.stages
    assert stage.asset == TRAINING_STEP


def test_library_output_goes_to_the_log_file_and_only_the_progress_stream_reaches_the_terminal(tmp_path):
    log_file = tmp_path / "logs" / "run.log"
    # In a process of its own: its file descriptors 1 and 2 are the terminal here, as in `qft run`.
    program = f"""
import subprocess, sys, warnings
from pathlib import Path
from qft_pipeline.console import output_to_file
with output_to_file(Path({str(log_file)!r})) as terminal:
    print("from python")
    warnings.warn("a library warning")
    subprocess.run(["sh", "-c", "echo child out; echo child warning >&2"], check=True)
    terminal.write("progress\\n")
print("after")
"""
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)

    assert (done.stdout, done.stderr) == ("after\n", "progress\n")
    logged = log_file.read_text(encoding="utf-8").splitlines()
    assert logged[0] == "from python" and "UserWarning: a library warning" in logged[1]
    assert logged[-2:] == ["child out", "child warning"]
