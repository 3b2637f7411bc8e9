import argparse
import json
from pathlib import Path

import pytest

from qft_core.cli import run
from qft_core.cli.experts import add_expert_commands
from qft_core.evaluate.expert_store import ExpertStore, load_gold_set
from qft_core.evaluate.experts import EvalOutput, read_eval_outputs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qft")
    parser.add_argument("--config")
    add_expert_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def qft(*argv: str) -> int:
    return run(build_parser(), list(argv))


def write_outputs(path: Path, count: int) -> Path:
    lines = [
        EvalOutput(
            example_id=f"ex{index}",
            model_id="qwen3-tiny-lora",
            question=f"HMAC 为什么需要两次哈希？（{index}）",
            reference_answer="防止长度扩展攻击。",
            predicted_reasoning="内外两层哈希。",
            predicted_answer="为了抵抗长度扩展攻击",
            category="hash_mac",
        ).model_dump_json()
        for index in range(count)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_review_round_trip_from_experts_to_exported_gold_set(tmp_path: Path, capsys) -> None:
    db = str(tmp_path / "experts.sqlite")
    outputs = write_outputs(tmp_path / "outputs.jsonl", 3)
    specialities = ["--speciality", "symmetric,hash_mac"]
    assert qft("experts", "add", "王芳", "--email", "wf@example.org", *specialities, "--db", db) == 0
    assert qft("experts", "add", "李雷", "--email", "ll@example.org", "--role", "reviewer", "--db", db) == 0
    assert qft("experts", "add", "韩梅", "--email", "hm@example.org", "--role", "admin", "--db", db) == 0
    assert qft("experts", "tasks", "create", "--from", str(outputs), "--db", db) == 0
    assert qft("experts", "tasks", "create", "--from", str(outputs), "--db", db) == 0
    assert qft("experts", "tasks", "assign", "--per-item", "2", "--db", db) == 0
    output = capsys.readouterr().out
    assert "expert 1: 王芳 <wf@example.org>, annotator, hash_mac, symmetric" in output
    assert "created 3 task(s)" in output and "created 0 task(s)" in output and "3 already present" in output
    assert "made 6 new assignment(s)" in output

    for task, (first, second) in {1: (5, 4), 2: (5, 5), 3: (2, 5)}.items():
        for expert, value in ((1, first), (2, second)):
            scores = ["--accuracy", str(value), "--completeness", "4", "--reasoning", "4", "--language", "5"]
            assert qft("experts", "score", str(task), "--expert", str(expert), *scores, "--db", db) == 0
    scored = capsys.readouterr().out.splitlines()
    assert scored[-1] == "task 3, expert 2: accuracy 5, completeness 4, reasoning 4, language 5"

    assert qft("experts", "list", "--db", db) == 0
    listing = capsys.readouterr().out.splitlines()
    assert [line.split()[4:6] for line in listing[1:]] == [["3", "3"], ["3", "3"], ["0", "0"]]

    assert qft("experts", "tasks", "list", "--expert", "2", "--db", db) == 0
    assert capsys.readouterr().out.count("1* 2*") == 3

    assert qft("experts", "agreement", "--db", db) == 0
    agreement = capsys.readouterr().out
    assert agreement.splitlines()[1].split()[:2] == ["accuracy", "3"]
    assert "flagged for adjudication: 1 of 3 scored task(s)" in agreement
    assert "task 3: accuracy ±3" in agreement

    assert qft("experts", "gold", "--min-raters", "2", "--min-score", "4", "--db", db) == 0
    assert "gold set version 1: 2 item(s)" in capsys.readouterr().out
    out = tmp_path / "gold.jsonl"
    assert qft("experts", "export", "--version", "1", "--out", str(out), "--db", db) == 0
    assert "wrote 2 item(s) of gold set version 1" in capsys.readouterr().out
    exported = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [item["task_id"] for item in exported] == [1, 2]
    assert exported == [item.model_dump(mode="json") for item in load_gold_set(db)]


OTHER_SCORES = ["--completeness", "3", "--reasoning", "3", "--language", "3"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["score", "1", "--expert", "1", "--accuracy", "6", *OTHER_SCORES],
         "qft experts score: accuracy must be an integer from 1 to 5, got 6"),
        (["score", "1", "--expert", "1", "--accuracy", "0", *OTHER_SCORES],
         "qft experts score: accuracy must be an integer from 1 to 5, got 0"),
        (["score", "9", "--expert", "1", "--accuracy", "3", *OTHER_SCORES], "qft experts score: no task with id 9"),
        (["add", "张三", "--email", "zs@example.org", "--speciality", "magic"],
         "qft experts add: unknown speciality magic"),
        (["tasks", "assign", "--per-item", "3"], "qft experts tasks assign: 3 experts per item needs at least 3"),
        (["tasks", "create", "--from", "missing.jsonl"], "qft experts tasks create: missing.jsonl: cannot read"),
        (["gold", "--min-raters", "2"], "qft experts gold: no task meets the bar"),
        (["export", "--out", "gold.jsonl"], "qft experts export: "),
    ],
)
def test_errors_are_one_line_and_exit_status_one(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    db = tmp_path / "experts.sqlite"
    with ExpertStore(db) as store:
        store.add_expert("专家", "e@example.org")
        store.create_tasks(read_eval_outputs(write_outputs(tmp_path / "outputs.jsonl", 1)))
        store.assign(1)
    assert qft("experts", *argv, "--db", str(db)) == 1
    error = capsys.readouterr().err
    assert error.startswith(message) and error.count("\n") == 1


def test_default_database_lives_in_the_configured_artifacts_dir(tmp_path: Path, capsys) -> None:
    config = tmp_path / "qft.yaml"
    config.write_text(f"paths:\n  artifacts_dir: {tmp_path / 'artifacts'}\n", encoding="utf-8")
    assert qft("--config", str(config), "experts", "add", "王芳", "--email", "wf@example.org") == 0
    with ExpertStore(tmp_path / "artifacts" / "experts.sqlite") as store:
        assert [expert.name for expert in store.experts()] == ["王芳"]


@pytest.mark.parametrize(
    "command",
    [[], ["add"], ["list"], ["tasks"], ["tasks", "create"], ["tasks", "assign"], ["tasks", "list"], ["score"],
     ["agreement"], ["performance"], ["gold"], ["export"]],
)
def test_every_command_has_help_with_a_db_option_on_each_action(command: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        qft("experts", *command, "--help")
    assert exit_.value.code == 0
    usage = capsys.readouterr().out
    assert usage.startswith(f"usage: qft experts {' '.join(command)}".rstrip())
    assert ("--db" in usage) == (command not in ([], ["tasks"]))


def test_performance_prints_the_tables_and_json_and_says_when_nothing_is_scored(tmp_path: Path, capsys) -> None:
    db = tmp_path / "experts.sqlite"
    with ExpertStore(db) as store:
        store.add_expert("王芳", "wf@example.org")
        store.add_expert("李雷", "ll@example.org")
        store.create_tasks(read_eval_outputs(write_outputs(tmp_path / "outputs.jsonl", 5)))
        store.assign(2)
    assert qft("experts", "performance", "--db", str(db)) == 1
    assert capsys.readouterr().err == "qft experts performance: no ratings yet: score tasks with `qft experts score`\n"

    # 李雷 gives one point more accuracy than 王芳 on every item; the other dimensions agree.
    for task in range(1, 6):
        for expert, accuracy in ((1, 3), (2, 4)):
            scores = ["--accuracy", str(accuracy), "--completeness", "4", "--reasoning", str(1 + task % 5),
                      "--language", "4"]
            assert qft("experts", "score", str(task), "--expert", str(expert), *scores, "--db", str(db)) == 0
    capsys.readouterr()
    assert qft("experts", "performance", "--db", str(db)) == 0
    lines = capsys.readouterr().out.splitlines()
    agreement = lines.index("Agreement with the other experts' median (leave-one-out)")
    assert lines[agreement + 2].split()[:4] == ["王芳", "(1)", "5", "5"]
    assert lines[agreement + 2].endswith("accuracy")
    assert "note: 0 gold-set version(s): drift needs two" in lines

    assert qft("experts", "performance", "--json", "--db", str(db)) == 0
    data = json.loads(capsys.readouterr().out)
    second = data["experts"][1]
    assert (second["name"], second["shared"]) == ("李雷", 5)
    assert [(d["dimension"], d["bias"]["mean"], d["biased"]) for d in second["dimensions"]] == [
        ("accuracy", 1.0, True), ("completeness", 0.0, False), ("reasoning", 0.0, False), ("language", 0.0, False)
    ]
    assert second["dimensions"][2]["weighted_kappa"] == 1.0
