"""`qft evaluate` end to end on qwen3-tiny with a small LoRA adapter, and its refusals: unusable inputs give one
line on stderr and exit status 2, before any model is loaded where the files alone show the problem."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from transformers import Qwen3Config, Qwen3ForCausalLM

from qft_core.cli import main
from qft_core.cli.evaluate import EXIT_BAD_INPUT, adapter_mismatches, newest_run
from qft_core.config import ModelConfig, PathsConfig
from qft_core.evaluate.experts import GoldItem
from qft_core.evaluate.report import MAIN_METRICS
from qft_core.model.registry import ensure_model_dir, load_model, resolve_model
from qft_core.records import ThinkingExample, ThinkingStructure, write_jsonl, write_parquet
from tests.core.evaluate.lora import save_random_lora_adapter

EXAMPLES = [
    ("t1", "symmetric", "什么是 AES？", "AES 是一种分组密码，分组长度 128 位。"),
    ("t2", "hash_mac", "SHA-256 的输出有多长？", "SHA-256 输出 256 位的摘要。"),
    ("t3", "post_quantum", "格密码为什么被认为能抵抗量子攻击？", "格上的困难问题目前没有已知的高效量子算法。"),
]
REPORT_KEYS = {"models", "stand_in", "main_metrics", "lower_is_better", "loss_metrics", "primary_set", "settings",
               "headline", "verdict", "regressions", "suggestions", "sets", "experts", "reasoning_origins"}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="module")
def config_file(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "qft.yaml"
    path.write_text(
        f"paths:\n  model_cache_dir: {cache_dir}\n  artifacts_dir: {tmp_path_factory.mktemp('artifacts')}\n"
        "eval:\n  max_new_tokens: 10\n  thinking_budget: 4\n  batch_size: 2\n  bootstrap_samples: 50\n"
        "  metric_workers: 1\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="module")
def tiny_dir(cache_dir: Path) -> Path:
    return ensure_model_dir(resolve_model(ModelConfig(name="qwen3-tiny"), PathsConfig(model_cache_dir=str(cache_dir))))




@pytest.fixture(scope="module")
def adapter_dir(cache_dir: Path, tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = resolve_model(ModelConfig(name="qwen3-tiny"), PathsConfig(model_cache_dir=str(cache_dir)))
    return save_random_lora_adapter(load_model(spec, dtype="float32"), tmp_path_factory.mktemp("adapter"))


@pytest.fixture(scope="module")
def foreign_adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An adapter of a smaller Qwen3: hidden size 64, two query heads and one key/value head of 32."""
    small = Qwen3Config(vocab_size=1000, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                        num_key_value_heads=1, head_dim=32, intermediate_size=128)
    return save_random_lora_adapter(Qwen3ForCausalLM(small), tmp_path_factory.mktemp("foreign-adapter"))


def _examples(count: int = len(EXAMPLES)) -> list[ThinkingExample]:
    return [
        ThinkingExample(id=key, question=question, answer=answer, category=category, term_categories=[category],
                        thinking=[ThinkingStructure(text="先想定义。")], source_file="t.md", source_line=1)
        for key, category, question, answer in EXAMPLES[:count]
    ]


def _splits(folder: Path, count: int = len(EXAMPLES)) -> Path:
    write_parquet(_examples(count), ThinkingExample, folder / "test.parquet")
    return folder


def _refusal(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("qft evaluate: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.slow
def test_evaluate_writes_the_report_and_prints_the_main_metrics(config_file, adapter_dir, tmp_path, capsys) -> None:
    gold = GoldItem(example_id="t9", model_id="m", question="什么是数字签名？", reference_answer="用私钥对消息签名。",
                    predicted_answer="签名。", term_categories=["signature"], task_id=4, raters=2,
                    scores={"accuracy": 4.0})
    gold_file = write_jsonl([gold], tmp_path / "gold.jsonl")
    out = tmp_path / "eval"
    code = main(["--config", str(config_file), "evaluate", str(_splits(tmp_path / "splits")), "--adapter",
                 str(adapter_dir), "--limit", "2", "--gold-set", str(gold_file), "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0

    assert {"report.md", "report.json", "eval_outputs.jsonl", "test_main_metrics.png", "gold_main_metrics.png",
            "generations_test_base.jsonl", "generations_test_finetuned.jsonl"} <= {path.name for path in out.iterdir()}
    data = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert set(data) == REPORT_KEYS
    assert (data["primary_set"], data["sets"]["test"]["n"], data["sets"]["gold"]["n"]) == ("test", 2, 1)
    assert [sample["id"] for sample in data["sets"]["test"]["samples"]] == ["t1", "t2"]
    assert (data["settings"]["max_new_tokens"], data["settings"]["thinking_budget"]) == (10, 4)

    assert "on 2 example(s) of " in printed and "and 1 gold-set item(s)" in printed
    assert "test set, n = 2: mean [95% interval]" in printed
    # qwen3-tiny: the random-weight note comes first, then the verdict.
    assert printed.index("STAND-IN MODEL: 'qwen3-tiny' has random weights") < printed.index("verdict: ")
    for metric in MAIN_METRICS:
        assert f"\n{metric} " in printed
    assert "gold set, n = 1: see the report" in printed
    assert f"report: {out / 'report.md'}" in printed


def test_adapter_mismatches_name_each_layer_that_does_not_fit(tiny_dir, adapter_dir, foreign_adapter_dir) -> None:
    assert adapter_mismatches(adapter_dir, tiny_dir) == []
    # qwen3-tiny: hidden 128, 4 query heads and 2 key/value heads of 32: q 128→128, v 128→64, o 128→128.
    layer = "model.layers.0.self_attn"
    assert adapter_mismatches(foreign_adapter_dir, tiny_dir) == [
        f"{layer}.o_proj: adapter input size 64, model 128",
        f"{layer}.o_proj: adapter output size 64, model 128",
        f"{layer}.q_proj: adapter input size 64, model 128",
        f"{layer}.q_proj: adapter output size 64, model 128",
        f"{layer}.v_proj: adapter input size 64, model 128",
        f"{layer}.v_proj: adapter output size 32, model 64",
    ]


def test_adapter_of_another_base_model_exits_2(config_file, foreign_adapter_dir, tmp_path, capsys) -> None:
    code = main(["--config", str(config_file), "evaluate", str(_splits(tmp_path)), "--adapter",
                 str(foreign_adapter_dir), "--out", str(tmp_path / "eval")])
    assert code == EXIT_BAD_INPUT
    message = _refusal(capsys)
    assert f"{foreign_adapter_dir}: adapter for another base model" in message and "not qwen3-tiny" in message
    assert "o_proj: adapter input size 64, model 128" in message and "; and 3 more" in message
    assert not (tmp_path / "eval").exists()


def test_missing_examples_folder_exits_2(config_file, adapter_dir, tmp_path, capsys) -> None:
    code = main(["--config", str(config_file), "evaluate", str(tmp_path / "absent"), "--adapter", str(adapter_dir)])
    assert code == EXIT_BAD_INPUT
    assert _refusal(capsys) == f"qft evaluate: no such file or folder: {tmp_path / 'absent'}"


def test_splits_folder_without_the_split_exits_2(config_file, adapter_dir, tmp_path, capsys) -> None:
    code = main(["--config", str(config_file), "evaluate", str(_splits(tmp_path)), "--split", "validation",
                 "--adapter", str(adapter_dir)])
    assert code == EXIT_BAD_INPUT
    assert "no validation.parquet in this folder" in _refusal(capsys)


def test_empty_test_split_exits_2(config_file, adapter_dir, tmp_path, capsys) -> None:
    code = main(["--config", str(config_file), "evaluate", str(_splits(tmp_path, count=0)), "--adapter",
                 str(adapter_dir)])
    assert code == EXIT_BAD_INPUT
    assert _refusal(capsys) == f"qft evaluate: {tmp_path / 'test.parquet'}: no examples to evaluate"


def test_folder_without_an_adapter_exits_2(config_file, tmp_path, capsys) -> None:
    code = main(["--config", str(config_file), "evaluate", str(_splits(tmp_path)), "--adapter", str(tmp_path)])
    assert code == EXIT_BAD_INPUT
    assert "no adapter_config.json here or in" in _refusal(capsys)


def test_file_that_is_not_examples_exits_2(config_file, adapter_dir, tmp_path, capsys) -> None:
    path = tmp_path / "notes.jsonl"
    path.write_text('{"question": "什么是 AES？"}\n', encoding="utf-8")
    code = main(["--config", str(config_file), "evaluate", str(path), "--adapter", str(adapter_dir)])
    assert code == EXIT_BAD_INPUT
    assert _refusal(capsys) == f"qft evaluate: {path}: not a file of examples: 'id': Field required"


def test_defaults_come_from_the_newest_run_that_has_both_split_and_adapter(tmp_path) -> None:
    members = ["term_balanced_splits/test.parquet", "lora_checkpoint/adapter/adapter_config.json"]
    runs = tmp_path / "runs"
    for run, present, age in (("complete-old", members, 300), ("complete-new", members, 200),
                              ("splits-only-newest", members[:1], 100)):
        for member in present:
            (runs / run / member).parent.mkdir(parents=True, exist_ok=True)
            (runs / run / member).write_text("x", encoding="utf-8")
            os.utime(runs / run / member, (1_000_000 - age, 1_000_000 - age))
    paths = PathsConfig(artifacts_dir=str(tmp_path))
    assert newest_run(paths, members).name == "complete-new"
    assert newest_run(paths, members[:1]).name == "splits-only-newest"
