"""evaluate_models end to end: qwen3-tiny and a small LoRA adapter answer three test questions and one gold item;
every promised file is written, the records reload, and the adapter changed what the model says."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from qft_core.config import QftConfig
from qft_core.evaluate.expert_store import ExpertStore
from qft_core.evaluate.experts import EvalOutput, GoldItem, RubricScore
from qft_core.evaluate.generate import GeneratedAnswer
from qft_core.evaluate.report import JUDGED_METRICS
from qft_core.evaluate.run import AdapterNotFound, evaluate_models, expert_performance_section
from qft_core.model.registry import load_model, resolve_model, stand_in_note
from qft_core.records import ThinkingExample, ThinkingStructure, read_jsonl
from tests.core.evaluate.lora import save_random_lora_adapter

EXAMPLES = [
    ("t1", "symmetric", "什么是 AES？", "AES 是一种分组密码，分组长度 128 位。"),
    ("t2", "hash_mac", "SHA-256 的输出有多长？", "SHA-256 输出 256 位的摘要。"),
    ("t3", "post_quantum", "格密码为什么被认为能抵抗量子攻击？", "格上的困难问题目前没有已知的高效量子算法。"),
]


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> QftConfig:
    config = QftConfig()
    config.paths.model_cache_dir = str(tmp_path_factory.mktemp("model-cache"))
    config.eval.thinking_budget = 4
    config.eval.max_new_tokens = 10
    config.eval.batch_size = 2
    config.eval.bootstrap_samples = 50
    config.eval.metric_workers = 1
    return config


@pytest.fixture(scope="module")
def adapter_dir(config: QftConfig, tmp_path_factory: pytest.TempPathFactory):
    """A rank-2 LoRA adapter on the attention projections, with its B matrices drawn large enough to move the
    tiny model's greedy choices (freshly initialised LoRA is the identity)."""
    model = load_model(resolve_model(config.model, config.paths), dtype="float32")
    return save_random_lora_adapter(model, tmp_path_factory.mktemp("adapter"))


def _examples() -> list[ThinkingExample]:
    return [
        ThinkingExample(id=key, question=question, answer=answer, category=category, term_categories=[category],
                        thinking=[ThinkingStructure(text="先想定义。")], source_file="t.md", source_line=1)
        for key, category, question, answer in EXAMPLES
    ]


def _scored_review(path, scores: dict[int, tuple[int, int]]) -> None:
    """Two experts; expert 1 gives the first score of each task, expert 2 the second, on every dimension."""
    with ExpertStore(path) as store:
        store.add_expert("王芳", "wf@example.org")
        store.add_expert("李雷", "ll@example.org")
        store.create_tasks(
            EvalOutput(example_id=f"t{task}", model_id="m", question="q", reference_answer="r", predicted_answer="a")
            for task in scores
        )
        store.assign(2)
        for task, pair in scores.items():
            for expert, value in enumerate(pair, start=1):
                store.record_score(task, expert, RubricScore(value, value, value, value))


def test_the_expert_section_needs_a_database_with_ratings(config, tmp_path) -> None:
    assert expert_performance_section(tmp_path / "missing.sqlite", config.eval) is None
    ExpertStore(tmp_path / "empty.sqlite").close()
    assert expert_performance_section(tmp_path / "empty.sqlite", config.eval) is None
    _scored_review(tmp_path / "scored.sqlite", {1: (4, 5), 2: (3, 4)})
    section = expert_performance_section(tmp_path / "scored.sqlite", config.eval)
    # Expert 2 is one point above expert 1 on both items: the mean signed difference is +1 for 2, −1 for 1.
    assert [(row["name"], row["shared"], row["dimensions"][0]["bias"]["mean"]) for row in section["experts"]] == [
        ("王芳", 2, -1.0), ("李雷", 2, 1.0)
    ]


def test_evaluate_models_writes_the_report_and_every_generation(config, adapter_dir, tmp_path) -> None:
    _scored_review(tmp_path / "experts.sqlite", {1: (4, 4), 2: (3, 3)})
    gold = GoldItem(example_id="t9", model_id="m", question="什么是数字签名？", reference_answer="用私钥对消息签名。",
                    predicted_answer="签名。", term_categories=["signature"], task_id=4, raters=2,
                    scores={"accuracy": 4.0})
    calls: list[tuple[int, int, str]] = []
    report = evaluate_models(
        config, _examples(), adapter_dir, tmp_path / "eval", gold_items=[gold], expert_db=tmp_path / "experts.sqlite",
        progress=lambda done, total, stage: calls.append((done, total, stage)),
    )
    names = sorted(path.name for path in (tmp_path / "eval").iterdir())
    assert names == sorted([
        "report.md", "report.json", "eval_outputs.jsonl",
        "generations_test_base.jsonl", "generations_test_finetuned.jsonl",
        "generations_gold_base.jsonl", "generations_gold_finetuned.jsonl", "scores_test.parquet", "scores_gold.parquet",
        *(f"{name}_{chart}.png" for name in ("test", "gold")
          for chart in ("main_metrics", "by_category", "term_f1_by_category", "distributions")),
    ])
    assert sorted(path.name for path in report.files) == names
    data = json.loads(report.json.read_text(encoding="utf-8"))
    assert data["primary_set"] == "test"
    # qwen3-tiny has random weights: the report says so before any number, and gives a verdict.
    assert data["stand_in"] == stand_in_note("qwen3-tiny") and data["stand_in"].startswith("STAND-IN MODEL")
    assert report.markdown.read_text(encoding="utf-8").splitlines()[2] == f"> **{data['stand_in']}**"
    assert data["verdict"]["kind"] in {"degenerate", "regressed", "improved", "no_clear_difference"}
    assert (data["sets"]["test"]["n"], data["sets"]["gold"]["n"]) == (3, 1)
    assert set(report.headline) == {f"{model}.{metric}" for model in ("base", "finetuned", "difference")
                                    for metric in JUDGED_METRICS}
    # Teacher-forced losses of every test reference; the adapter changes them.
    losses = {model: data["sets"]["test"]["per_example"][model]["answer_loss"] for model in ("base", "finetuned")}
    assert all(loss > 0 for loss in losses["base"] + losses["finetuned"]) and losses["base"] != losses["finetuned"]
    assert data["sets"]["test"]["metrics"]["base"]["reasoning_loss"]["n"] == 3
    assert [(row["name"], row["shared"]) for row in data["experts"]["experts"]] == [("王芳", 2), ("李雷", 2)]
    assert "## Expert performance" in report.markdown.read_text(encoding="utf-8")
    # Both models were generated on the CPU's plain path, and the report says so with the reason.
    path = data["settings"]["generation_path"]
    assert (path["path"], path["cache"], path["compiled"]) == ("dynamic cache, eager decoding", "dynamic", False)
    assert "torch.compile is used on CUDA only" in path["fallbacks"][0]
    assert f"; dynamic cache, eager decoding ({path['fallbacks'][0]})" in report.markdown.read_text(encoding="utf-8")

    base = read_jsonl(tmp_path / "eval" / "generations_test_base.jsonl", GeneratedAnswer)
    tuned = read_jsonl(tmp_path / "eval" / "generations_test_finetuned.jsonl", GeneratedAnswer)
    assert [answer.id for answer in base] == [answer.id for answer in tuned] == ["t1", "t2", "t3"]
    assert all(len(answer.token_ids) <= 10 for answer in base + tuned)
    assert [answer.token_ids for answer in base] != [answer.token_ids for answer in tuned]
    review = read_jsonl(tmp_path / "eval" / "eval_outputs.jsonl", EvalOutput)
    assert [output.example_id for output in review] == ["t1", "t2", "t3", "gold-4"]
    assert review[0].predicted_answer == tuned[0].answer
    table = pd.read_parquet(tmp_path / "eval" / "scores_test.parquet")
    assert table[["model", "id"]].values.tolist() == [[model, key] for model in ("base", "finetuned")
                                                      for key in ("t1", "t2", "t3")]
    finetuned_f1 = table.loc[table["model"] == "finetuned", "rougeL_char_f1"].tolist()
    assert finetuned_f1 == data["sets"]["test"]["per_example"]["finetuned"]["rougeL_char_f1"]

    # Generation and teacher-forced loss of 2 × 4 items, then scoring of 2 sets; the count only grows and ends
    # at the total.
    assert calls[-1][:2] == (18, 18)
    assert [done for done, _, _ in calls] == sorted(done for done, _, _ in calls)


def test_evaluate_models_needs_an_adapter(config, tmp_path) -> None:
    with pytest.raises(AdapterNotFound, match="adapter_config.json"):
        evaluate_models(config, _examples(), tmp_path, tmp_path / "eval")
