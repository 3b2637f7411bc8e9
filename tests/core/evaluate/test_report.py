"""The evaluation report: hand-made scores of six answers in three categories go through the summary, the
suggestions, report.md, report.json and the charts; the regression check is computed by hand."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import asdict

import pandas as pd
import pytest

from qft_core.config import EvalConfig
from qft_core.data.terms import load_default_dictionary
from qft_core.evaluate.expert_performance import Resampling, performance_report
from qft_core.evaluate.experts import Rating, RubricScore
from qft_core.evaluate.facts import load_default_fact_base
from qft_core.evaluate.generate import GeneratedAnswer
from qft_core.evaluate.misconceptions import load_default_misconceptions
from qft_core.evaluate.report import (
    MAIN_METRICS,
    build_report,
    headline_lines,
    regression_check,
    summarize_set,
    write_report,
    write_score_table,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CONFIG = EvalConfig(bootstrap_samples=200, thinking_budget=64)

# (id, category, reference, base answer, fine-tuned answer)
ITEMS = [
    ("s1", "symmetric", "AES 是一种分组密码。", "不知道。", "AES 是一种分组密码。"),
    ("s2", "symmetric", "SM4 是分组密码。", "不知道。", "SM4 是分组密码。"),
    ("p1", "post_quantum", "格密码可以抵抗量子攻击。", "不知道。", "量子计算机很快。"),
    ("p2", "post_quantum", "格密码基于格上的困难问题。", "不知道。", "这是一个难题。"),
    ("h1", "hash_mac", "SHA-256 是哈希函数。", "不知道。", "MD5 是一种加密算法。"),
    ("h2", "hash_mac", "SHA-256 输出 256 位摘要。", "不知道。", "SHA-256 输出 512 位摘要。"),
]
# Fine-tuned scores per category (the first three main metrics); keypoint coverage is 0.1 everywhere,
# below the base model's 0.5: a regression.
TUNED = {"symmetric": 0.8, "post_quantum": 0.1, "hash_mac": 0.5}
BASE = 0.25
# Teacher-forced answer loss (nats per token, lower is better): 2.0 for the base model everywhere.
TUNED_LOSS = {"symmetric": 1.0, "post_quantum": 2.5, "hash_mac": 1.5}
BASE_LOSS = 2.0


def _answer(item_id: str, category: str, reference: str, text: str, closed: bool) -> GeneratedAnswer:
    return GeneratedAnswer(
        id=item_id, question=f"问题 {item_id}", reference_answer=reference, category=category,
        term_categories=[category], prediction=f"想一想\n</think>\n\n{text}", reasoning="想一想", answer=text,
        token_ids=[1, 2, 3], tokens_generated=3, reasoning_tokens=1, thinking_closed=closed, forced_close=not closed,
        finished=True, latency_s=0.5,
    )


def _scores(value: float, keypoint: float, category: str, loss: float) -> dict[str, float]:
    scores = {"rougeL_char_f1": value, "rougeL_term_f1": value, "term_f1": value, "keypoint_coverage": keypoint,
              "misconceptions": 0.0, "answer_loss": loss, "reasoning_loss": math.nan}
    scores.update({f"term_f1.{name}": (value if name == category else math.nan) for name in TUNED})
    return scores


@pytest.fixture(scope="module")
def generations() -> dict[str, list[GeneratedAnswer]]:
    return {
        "base": [_answer(i, c, r, base, closed=True) for i, c, r, base, _ in ITEMS],
        # Two of six fine-tuned completions closed their reasoning themselves.
        "finetuned": [_answer(i, c, r, tuned, closed=n < 2) for n, (i, c, r, _, tuned) in enumerate(ITEMS)],
    }


@pytest.fixture(scope="module")
def scores() -> dict[str, list[dict[str, float]]]:
    return {
        "base": [_scores(BASE, 0.5, c, BASE_LOSS) for _, c, *_ in ITEMS],
        "finetuned": [_scores(TUNED[c], 0.1, c, TUNED_LOSS[c]) for _, c, *_ in ITEMS],
    }


@pytest.fixture(scope="module")
def summary(generations, scores) -> dict:
    dictionary = load_default_dictionary()
    return summarize_set(
        generations, scores, dictionary=dictionary, misconceptions=load_default_misconceptions(dictionary),
        facts=load_default_fact_base(), config=CONFIG, elapsed_s={"base": 2.0, "finetuned": 3.0},
    )


@pytest.fixture(scope="module")
def report(summary: dict, tmp_path_factory: pytest.TempPathFactory):
    data = build_report(
        {"test": summary}, models={"base": "tiny", "finetuned": "tiny + adapter"}, config=CONFIG,
        reasoning_origins={"expert": 3, "model": 2, "template": 1, "none": 0, "rejected": 1},
    )
    return write_report(data, tmp_path_factory.mktemp("report"))


def test_summary_means_differences_and_categories(summary: dict) -> None:
    tuned_mean = (0.8 + 0.8 + 0.1 + 0.1 + 0.5 + 0.5) / 6
    assert summary["n"] == 6
    assert summary["categories"] == {"hash_mac": 2, "post_quantum": 2, "symmetric": 2}
    assert summary["metrics"]["finetuned"]["rougeL_char_f1"]["mean"] == pytest.approx(tuned_mean)
    assert summary["metrics"]["base"]["rougeL_char_f1"] == {"mean": 0.25, "ci_low": 0.25, "ci_high": 0.25, "n": 6}
    assert summary["difference"]["rougeL_char_f1"]["mean"] == pytest.approx(tuned_mean - BASE)
    assert summary["difference"]["keypoint_coverage"]["mean"] == pytest.approx(-0.4)
    # Paired (fine-tuned − base on each question): 1.0 − 2.0 twice, 2.5 − 2.0 twice, 1.5 − 2.0 twice.
    assert summary["difference"]["answer_loss"]["mean"] == pytest.approx((-1.0 - 1.0 + 0.5 + 0.5 - 0.5 - 0.5) / 6)
    difference = summary["difference"]["answer_loss"]
    assert -1.0 <= difference["ci_low"] < difference["ci_high"] <= 0.5
    assert "reasoning_loss" not in summary["difference"] and "reasoning_loss" not in summary["metrics"]["base"]
    assert summary["per_example"]["finetuned"]["answer_loss"] == [1.0, 1.0, 2.5, 2.5, 1.5, 1.5]
    assert summary["by_category"]["finetuned"]["post_quantum"]["term_f1"]["mean"] == pytest.approx(0.1)
    assert summary["term_f1_by_category"]["finetuned"]["symmetric"]["n"] == 2
    generation = summary["generation"]["finetuned"]
    assert generation["closed_by_model_rate"] == pytest.approx(2 / 6)
    assert generation["closed_by_budget_rate"] == pytest.approx(4 / 6)
    assert generation["degenerate_rate"] == 0.0
    assert generation["tokens_per_second"] == pytest.approx(18 / 3.0)


def test_terms_never_produced_and_misconceptions_stated(summary: dict) -> None:
    never = {term["id"]: term["references"] for term in summary["terms"]["finetuned"]["never_produced"]}
    assert never["lattice_cryptography"] == 2
    assert "aes" not in never and "sha256" not in never
    assert "aes" in {term["id"] for term in summary["terms"]["base"]["never_produced"]}
    (stated,) = summary["misconceptions"]["finetuned"]
    assert (stated["id"], stated["count"], stated["examples"]) == ("md5_is_encryption", 1, ["h1"])
    assert summary["misconceptions"]["base"] == []


def test_suggestions_name_the_weakest_category_missing_terms_and_misconception(report) -> None:
    suggestions = {item["kind"]: item["message"] for item in report.data["suggestions"]}
    assert set(suggestions) == {"regression", "weak_category", "missing_terms", "misconception", "unclosed_thinking"}
    weak = suggestions["weak_category"]
    # Category means over the four main metrics: post_quantum 0.1, hash_mac 0.4, symmetric 0.625.
    named = ["post_quantum (0.100, n=2)", "hash_mac (0.400, n=2)", "symmetric (0.625"]
    positions = [weak.index(text) for text in named]
    assert positions == sorted(positions)
    assert "格密码 (lattice_cryptography, in 2 references)" in suggestions["missing_terms"]
    assert "md5_is_encryption" in suggestions["misconception"]
    assert suggestions["unclosed_thinking"].startswith("67% of completions")
    assert "keypoint_coverage" in suggestions["regression"]


def test_report_files_render_and_reload(report) -> None:
    markdown = report.markdown.read_text(encoding="utf-8")
    assert "| metric | base | fine-tuned | fine-tuned − base |" in markdown
    assert "| rougeL_char_f1 | 0.250 [0.250, 0.250] n=6 | 0.467 [" in markdown
    assert "BCa bootstrap of the mean" in markdown
    assert ("- reasoning of the 6 test questions: 3 by experts, 2 written by a model (origin `model`, kept after "
            "the quality and answer-consistency checks), 1 from the template, 0 none") in markdown
    assert "| post_quantum | 2 | 0.250 → 0.100 | 0.250 → 0.100 | 0.250 → 0.100 | 0.500 → 0.100 |" in markdown
    assert "| 格密码 | lattice_cryptography | post_quantum | 2 |" in markdown
    assert "| answer_loss | 2.000 [2.000, 2.000] n=6 | 1.667 [" in markdown
    assert "answer_loss: teacher-forced loss of the reference" in markdown
    loaded = json.loads(report.json.read_text(encoding="utf-8"))
    assert loaded == report.data
    assert set(loaded) == {"models", "stand_in", "main_metrics", "lower_is_better", "loss_metrics", "primary_set",
                           "settings", "headline", "verdict", "regressions", "suggestions", "sets", "experts",
                           "reasoning_origins"}
    assert loaded["verdict"]["kind"] == "regressed" and loaded["stand_in"] is None
    assert loaded["main_metrics"] == list(MAIN_METRICS)
    assert loaded["loss_metrics"] == ["answer_loss", "reasoning_loss"]
    assert loaded["headline"]["difference.answer_loss"] == pytest.approx(-1 / 3)
    assert loaded["headline"]["finetuned.rougeL_char_f1"] == pytest.approx(2.8 / 6)
    assert loaded["headline"]["difference.keypoint_coverage"] == pytest.approx(-0.4)
    assert [path.name for path in report.charts] == [
        "test_main_metrics.png", "test_by_category.png", "test_term_f1_by_category.png", "test_distributions.png",
    ]
    for chart in report.charts:
        header = chart.read_bytes()[:24]
        assert header[:8] == PNG_MAGIC
        width, height = struct.unpack(">II", header[16:24])
        assert width > 200 and height > 200
        assert f"]({chart.name})" in markdown
    assert report.files == [report.markdown, report.json, *report.charts]


def test_regression_check_lists_metrics_below_base_by_more_than_the_tolerance(report) -> None:
    assert report.data["regressions"] == ["keypoint_coverage: finetuned 0.100 < base 0.500 − 0.020"]
    assert regression_check(report, 0.02) == report.data["regressions"]
    assert regression_check(report, 0.5) == []

    def metric(mean: float) -> dict:
        return {"mean": mean, "ci_low": mean, "ci_high": mean, "n": 3}

    data = {
        "primary_set": "test",
        "main_metrics": ["rougeL_char_f1", "term_f1", "keypoint_coverage"],
        "sets": {"test": {"metrics": {
            "base": {"rougeL_char_f1": metric(0.30), "term_f1": metric(0.50), "keypoint_coverage": metric(0.40)},
            "finetuned": {"rougeL_char_f1": metric(0.25), "term_f1": metric(0.49), "keypoint_coverage": metric(0.60)},
        }}},
    }
    # 0.25 < 0.30 − 0.02; 0.49 is within 0.02 of 0.50; 0.60 is above 0.40.
    assert regression_check(data, 0.02) == ["rougeL_char_f1: finetuned 0.250 < base 0.300 − 0.020"]
    assert regression_check(data, 0.0) == [
        "rougeL_char_f1: finetuned 0.250 < base 0.300 − 0.000", "term_f1: finetuned 0.490 < base 0.500 − 0.000",
    ]


def test_claims_are_checked_against_the_fact_base(summary: dict, report) -> None:
    # Fine-tuned: "AES 是一种分组密码" and "SM4 是分组密码" are right, "SHA-256 输出 512 位摘要" is wrong.
    tuned = summary["fact_check"]["finetuned"]
    assert (tuned["answers_with_claims"], tuned["confirmed"], tuned["contradicted"]) == (3, 2, 1)
    assert tuned["contradictions"] == [{
        "id": "h2", "claim": "512 位", "fact": "sha256 output: stated 512 bits, fact 256 bits (FIPS 180-4 §1, Figure 1)",
    }]
    assert summary["fact_check"]["base"] == {"answers_with_claims": 0, "confirmed": 0, "contradicted": 0,
                                             "contradictions": []}
    markdown = report.markdown.read_text(encoding="utf-8")
    assert "| fine-tuned | 3 | 2 | 1 |" in markdown
    fact = "sha256 output: stated 512 bits, fact 256 bits (FIPS 180-4 §1, Figure 1)"
    assert f"| fine-tuned | h2 | 512 位 | {fact} |" in markdown


def test_more_contradictions_of_the_fact_base_than_the_base_model_is_a_regression() -> None:
    def metric(mean: float) -> dict:
        return {"mean": mean, "ci_low": mean, "ci_high": mean, "n": 3}

    data = {
        "primary_set": "test",
        "main_metrics": ["term_f1"],
        "lower_is_better": ["fact_contradicted"],
        "sets": {"test": {"metrics": {
            "base": {"term_f1": metric(0.5), "fact_contradicted": metric(0.10)},
            "finetuned": {"term_f1": metric(0.5), "fact_contradicted": metric(0.40)},
        }}},
    }
    assert regression_check(data, 0.02) == ["fact_contradicted: finetuned 0.400 > base 0.100 + 0.020"]
    assert regression_check(data, 0.5) == []


def test_regression_check_flags_a_loss_above_base_by_more_than_the_tolerance() -> None:
    def metric(mean: float) -> dict:
        return {"mean": mean, "ci_low": mean, "ci_high": mean, "n": 3}

    data = {
        "primary_set": "test",
        "main_metrics": ["rougeL_char_f1"],
        "lower_is_better": ["answer_loss", "reasoning_loss"],
        "sets": {"test": {"metrics": {
            "base": {"rougeL_char_f1": metric(0.30), "answer_loss": metric(2.00), "reasoning_loss": metric(3.00)},
            "finetuned": {"rougeL_char_f1": metric(0.31), "answer_loss": metric(2.10), "reasoning_loss": metric(2.01)},
        }}},
    }
    # Lower is better: 2.10 > 2.00 + 0.02 is a regression, 2.01 < 3.00 an improvement.
    assert regression_check(data, 0.02) == ["answer_loss: finetuned 2.100 > base 2.000 + 0.020"]
    assert regression_check(data, 0.2) == []


def test_summary_refuses_generations_of_different_items(summary: dict) -> None:
    base = [_answer("a", "symmetric", "R", "A", True)]
    tuned = [_answer("b", "symmetric", "R", "A", True)]
    with pytest.raises(ValueError, match="'finetuned' are not of the same items"):
        summarize_set({"base": base, "finetuned": tuned}, {"base": [{}], "finetuned": [{}]},
                      dictionary=load_default_dictionary(), misconceptions=[], facts=load_default_fact_base(),
                      config=CONFIG)


def test_score_table_has_a_row_per_model_and_item_with_every_metric(generations, scores, tmp_path) -> None:
    table = pd.read_parquet(write_score_table(generations, scores, tmp_path / "scores_test.parquet"))

    assert list(table.columns) == ["model", "id", "category", *scores["base"][0]]
    assert list(zip(table["model"], table["id"], strict=True)) == [
        (model, item[0]) for model in ("base", "finetuned") for item in ITEMS
    ]
    assert table.loc[table["model"] == "finetuned", "term_f1"].tolist() == [0.8, 0.8, 0.1, 0.1, 0.5, 0.5]
    # A category's term F1 applies to that category's items only: NaN elsewhere, as in the scores.
    assert table["term_f1.symmetric"].notna().tolist() == [True, True, False, False, False, False] * 2
    means = table.groupby("model")["keypoint_coverage"].mean().to_dict()
    assert means == pytest.approx({"base": 0.5, "finetuned": 0.1})


def _degenerate_report(
    tmp_path, tuned_text: str, stand_in: str | None = None, tuned_value: float = 0.30, tuned_loss: float = BASE_LOSS
):
    """The issue's qwen3-tiny evaluation: every fine-tuned answer is `tuned_text`, yet it matches the references'
    punctuation for a ROUGE-L `tuned_value` (0.30) against the base model's 0.25 on every question; the answer
    loss is the base model's unless `tuned_loss` says otherwise."""
    generations = {
        "base": [_answer(i, c, r, base, closed=True) for i, c, r, base, _ in ITEMS],
        "finetuned": [_answer(i, c, r, tuned_text, closed=False) for i, c, r, _, _ in ITEMS],
    }
    scores = {
        "base": [_scores(BASE, 0.5, c, BASE_LOSS) for _, c, *_ in ITEMS],
        "finetuned": [_scores(tuned_value, 0.5, c, tuned_loss) for _, c, *_ in ITEMS],
    }
    dictionary = load_default_dictionary()
    summary = summarize_set(
        generations, scores, dictionary=dictionary, misconceptions=[], facts=load_default_fact_base(), config=CONFIG
    )
    data = build_report({"test": summary}, models={"base": "tiny", "finetuned": "tiny + adapter"}, config=CONFIG,
                        stand_in=stand_in)
    return write_report(data, tmp_path)


def test_a_gain_made_of_degenerate_answers_is_reported_as_degenerate_not_as_an_improvement(tmp_path) -> None:
    report = _degenerate_report(tmp_path, "，，，，，，，，")

    summary = report.data["sets"]["test"]
    assert summary["degenerate"]["finetuned"] == {
        "count": 6, "n": 6, "reasons": {"repeated": 6}, "examples": {i: "'，' repeated 8 times" for i, *_ in ITEMS},
    }
    assert summary["degenerate"]["base"]["count"] == 0
    assert summary["generation"]["finetuned"]["degenerate_rate"] == 1.0
    # Every paired difference is +0.05 with a point interval, which alone would read as an improvement.
    assert summary["difference"]["rougeL_char_f1"]["ci_low"] == pytest.approx(0.05)
    assert report.data["verdict"] == {
        "kind": "degenerate",
        "message": "DEGENERATE: 6 of 6 fine-tuned answers are degenerate (6 repeated); whatever the metrics credit "
        "them with (a reference's punctuation, say) is not an improvement",
    }
    markdown = report.markdown.read_text(encoding="utf-8")
    assert "**Verdict: DEGENERATE: 6 of 6" in markdown
    assert "| fine-tuned − base (degenerate answers: not an improvement) |" in markdown
    assert "Not judged: the fine-tuned answers are degenerate" in markdown
    assert "None: no main metric" not in markdown


def test_the_same_gain_from_real_answers_is_an_improvement(tmp_path) -> None:
    report = _degenerate_report(tmp_path, "AES 是一种分组密码。")

    assert report.data["verdict"]["kind"] == "improved"
    assert report.data["verdict"]["message"].startswith("improved on rougeL_char_f1, rougeL_term_f1, term_f1: the 95%")


def test_a_lower_answer_loss_alone_is_an_improvement(tmp_path) -> None:
    # Same overlap scores as the base model; the reference answer's loss drops from 2.0 to 1.5 on every question.
    report = _degenerate_report(tmp_path, "AES 是一种分组密码。", tuned_value=BASE, tuned_loss=1.5)

    assert report.data["sets"]["test"]["difference"]["answer_loss"]["ci_high"] == pytest.approx(-0.5)
    assert report.data["regressions"] == []
    assert report.data["verdict"] == {
        "kind": "improved",
        "message": "improved on answer_loss: the 95% interval of the paired difference lies above 0 (below 0 for a "
        "loss)",
    }


def test_a_stand_in_model_is_named_at_the_top_of_the_report(tmp_path) -> None:
    note = "STAND-IN MODEL: 'qwen3-tiny' has random weights."
    markdown = _degenerate_report(tmp_path, "，，，", stand_in=note).markdown.read_text(encoding="utf-8")

    assert markdown.splitlines()[2] == f"> **{note}**"


def test_headline_lines_show_the_verdict_both_models_and_the_paired_difference() -> None:
    def estimate(mean: float, low: float, high: float) -> dict:
        return {"mean": mean, "ci_low": low, "ci_high": high, "n": 2}

    data = {
        "primary_set": "test",
        "main_metrics": ["term_f1"],
        "settings": {"confidence_level": 0.9},
        "regressions": [],
        "stand_in": "STAND-IN MODEL: random weights.",
        "verdict": {"kind": "no_clear_difference", "message": "no clear difference"},
        "sets": {
            "test": {"n": 2, "metrics": {"base": {"term_f1": estimate(0.25, 0.0, 0.5)},
                                         "finetuned": {"term_f1": estimate(0.5, 0.5, 0.5)}},
                     "difference": {"term_f1": estimate(0.25, -0.5, 0.5)}},
        },
    }
    assert headline_lines(data) == [
        "STAND-IN MODEL: random weights.",
        "verdict: no clear difference",
        "test set, n = 2: mean [90% interval]",
        "metric   base                          fine-tuned                    fine-tuned − base",
        "term_f1  0.250 [0.000, 0.500] n=2      0.500 [0.500, 0.500] n=2      +0.250 [-0.500, +0.500] n=2",
        "regressions: none",
    ]


def test_the_report_shows_expert_performance_when_the_review_has_ratings(summary: dict, tmp_path) -> None:
    ratings = [
        Rating(task, expert, RubricScore(value + (expert == 3), value, value, value))
        for task, value in enumerate((1, 2, 3, 4, 2), start=1) for expert in (1, 2, 3)
    ]
    experts = asdict(performance_report(ratings, names={3: "韩梅"}, resampling=Resampling(samples=200)))
    data = build_report({"test": summary}, models={"base": "tiny", "finetuned": "tiny + adapter"}, config=CONFIG,
                        experts=experts)
    markdown = write_report(data, tmp_path).markdown.read_text(encoding="utf-8")
    section = markdown[markdown.index("## Expert performance"):]
    assert "| 韩梅 (3) | 5 | 5 |" in section
    assert "| 韩梅 (3) | +1.000 [+1.000, +1.000] n=5 * | +0.000 [+0.000, +0.000] n=5 |" in section
    assert "- 0 gold-set version(s): drift needs two" in section
    assert json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))["experts"]["experts"][2]["name"] == "韩梅"


def test_the_report_has_no_expert_section_without_ratings(report) -> None:
    assert report.data["experts"] is None
    assert "## Expert performance" not in report.markdown.read_text(encoding="utf-8")
