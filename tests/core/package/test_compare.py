"""Side-by-side verification: perplexity and probe scores with hand-computed values, comparison rows with every
field, and the degradation check that blocks a package."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from qft_core.config import ModelConfig, PathsConfig, QuantConfig
from qft_core.data.normalize import to_simplified
from qft_core.model.registry import ensure_model_dir, resolve_model
from qft_core.package.probes import (
    MINIMAL_PAIRS,
    SCRIPT_PAIRS,
    SEGMENTATION_FAMILY,
    SEGMENTATION_PAIRS,
    TERM_PAIRS,
    MinimalPair,
)
from qft_core.package.compare import (
    METRIC_PREFIX,
    REFERENCE_VARIANT,
    ROW_FIELDS,
    ComparisonSet,
    check_degradation,
    compare_packages,
    continuation_log_likelihoods,
    evaluate_directory,
    evaluate_model,
    js_divergence_bits,
    probe_choice,
    score_texts,
    comparison_set,
)
from qft_core.records import ThinkingExample, ThinkingStructure

CONFIG = QuantConfig(verify_max_new_tokens=2, verify_max_tokens=64)
VERIFICATION = ComparisonSet(
    texts=(
        (
            "<|im_start|>user\nSM3 的输出长度是多少？<|im_end|>\n<|im_start|>assistant\n<think>\nSM3 是杂凑算法。\n"
            "</think>\n\nSM3 的输出长度为 256 位。<|im_end|>\n"
        ),
    ),
    questions=("什么是分组密码？", "SM2 基于什么困难问题？"),
    references=("分组密码按固定长度的分组加密。", "SM2 基于椭圆曲线离散对数问题。"),
)


class FavouringLM(torch.nn.Module):
    """A language model whose logits are 0 everywhere except `boost` on one token: hand-computable scores."""

    def __init__(self, vocab_size: int, favoured: int = 0, boost: float = 0.0) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.vocab_size, self.favoured, self.boost = vocab_size, favoured, boost

    def forward(self, input_ids, attention_mask=None, logits_to_keep=0, **_):
        kept = input_ids.shape[1] if logits_to_keep == 0 else logits_to_keep
        logits = torch.zeros(input_ids.shape[0], kept, self.vocab_size)
        logits[..., self.favoured] = self.boost
        return SimpleNamespace(logits=logits)


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return ensure_model_dir(resolve_model(ModelConfig(name="qwen3-tiny"), PathsConfig()))


@pytest.fixture(scope="module")
def tokenizer(tiny_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_dir)


def token_count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size(tokenizer):
    vocab = len(tokenizer)
    scores = score_texts(FavouringLM(vocab), tokenizer, VERIFICATION.texts, max_tokens=64)
    assert scores.perplexity == pytest.approx(vocab, rel=1e-5)  # float32 log-softmax
    assert scores.tokens == min(token_count(tokenizer, VERIFICATION.texts[0]), 64) - 1


def test_continuation_log_likelihood_is_summed_over_continuation_tokens_only(tokenizer):
    vocab = len(tokenizer)
    candidates = ["256 位", "一百二十八位的输出"]
    scores = continuation_log_likelihoods(FavouringLM(vocab), tokenizer, "SM3 的输出长度为", candidates)
    expected = [-token_count(tokenizer, candidate) * math.log(vocab) for candidate in candidates]
    assert scores == pytest.approx(expected, rel=1e-6)


def test_probe_choice_is_the_candidate_the_model_finds_likelier(tokenizer):
    favoured = tokenizer("椭圆", add_special_tokens=False)["input_ids"][0]
    pair = MinimalPair(SEGMENTATION_FAMILY, "SM2 基于", correct="整数", wrong=("椭圆",))
    # Equal lengths: with no boost the two candidates would tie, so the boost alone decides.
    assert token_count(tokenizer, pair.correct) == token_count(tokenizer, "椭圆")
    assert probe_choice(FavouringLM(len(tokenizer), favoured, boost=5.0), tokenizer, pair) == 1
    assert probe_choice(FavouringLM(len(tokenizer), favoured, boost=-5.0), tokenizer, pair) == 0


def test_js_divergence_is_in_bits():
    one_hot_a, one_hot_b = torch.tensor([1.0, 0.0]).log(), torch.tensor([0.0, 1.0]).log()
    half = torch.tensor([0.5, 0.5]).log()
    assert js_divergence_bits(one_hot_a, one_hot_a) == 0.0
    assert js_divergence_bits(one_hot_a, one_hot_b) == pytest.approx(1.0)
    # m = (0.75, 0.25): 0.5·log2(1/0.75) + 0.5·(0.5·log2(0.5/0.75) + 0.5·log2(0.5/0.25))
    expected = 0.5 * math.log2(1 / 0.75) + 0.5 * (0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(2))
    assert js_divergence_bits(one_hot_a, half) == pytest.approx(expected)


def test_script_pairs_are_one_prompt_in_two_scripts():
    for pair in SCRIPT_PAIRS:
        assert pair.traditional != pair.simplified
        assert to_simplified(pair.traditional) == pair.simplified


def test_minimal_pairs_differ_only_in_what_they_probe():
    assert len(MINIMAL_PAIRS) == len(TERM_PAIRS) + len(SEGMENTATION_PAIRS)
    for pair in MINIMAL_PAIRS:
        assert pair.wrong and len(set(pair.candidates)) == len(pair.candidates)
    # A segmentation pair reads the same characters with another word boundary: only 的 moves.
    for pair in SEGMENTATION_PAIRS:
        for wrong in pair.wrong:
            assert sorted(wrong) == sorted(pair.correct)


def test_verification_set_renders_test_examples_in_id_order(tokenizer):
    examples = [
        ThinkingExample(
            id=identifier,
            question=f"问题{identifier}",
            answer=f"回答{identifier}",
            source_file="test.md",
            source_line=1,
            thinking=[ThinkingStructure(text=f"推理{identifier}")],
        )
        for identifier in ("c", "a", "b")
    ]
    verification = comparison_set(examples, tokenizer, QuantConfig(verify_texts=3, verify_subset=2))
    assert verification.questions == ("问题a", "问题b")
    assert verification.references == ("回答a", "回答b")
    assert verification.texts[0] == (
        "<|im_start|>user\n问题a<|im_end|>\n<|im_start|>assistant\n<think>\n推理a\n</think>\n\n回答a<|im_end|>\n"
    )
    assert len(verification.texts) == 3


@pytest.fixture(scope="module")
def evaluations(tiny_dir: Path, tokenizer):
    calls = []

    def score_fn(predictions, references):
        calls.append((predictions, references))
        return {"rouge_l": 0.5, "answers": len(predictions), "label": "not a number"}

    reference = evaluate_directory(tiny_dir, VERIFICATION, CONFIG, score_fn=score_fn)
    noisy = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in noisy.named_parameters():
            if name.endswith("proj.weight"):
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.5)
    perturbed = evaluate_model(
        noisy,
        tokenizer,
        VERIFICATION,
        CONFIG,
        variant="noisy",
        quant_format="int4",
        method="gaussian-noise",
        bits=4,
        weights_bytes=reference.weights_bytes // 4,
        score_fn=lambda predictions, references: {"bleu": 0.25},
    )
    return reference, perturbed, calls


def test_score_fn_gets_greedy_answers_to_the_fixed_subset(evaluations):
    reference, _, calls = evaluations
    predictions, references = calls[0]
    assert len(predictions) == len(VERIFICATION.questions) and all(isinstance(text, str) for text in predictions)
    assert references == list(VERIFICATION.references)
    assert reference.metrics == {"rouge_l": 0.5, "answers": 2.0}


def test_compare_packages_rows_have_every_field_and_the_reference_agrees_with_itself(evaluations):
    reference, perturbed, _ = evaluations
    rows = compare_packages(reference, [perturbed])
    metric_fields = {METRIC_PREFIX + name for name in ("answers", "bleu", "rouge_l")}
    assert [set(row) for row in rows] == [set(ROW_FIELDS) | metric_fields] * 2
    reference_row, perturbed_row = rows
    assert reference_row["variant"] == REFERENCE_VARIANT and reference_row["bits"] == 32
    for field in ("size_ratio", "perplexity_ratio", "top1_agreement", "probe_agreement", "script_agreement"):
        assert reference_row[field] == 1.0, field
    assert reference_row["metric_bleu"] is None and perturbed_row["metric_rouge_l"] is None
    assert perturbed_row["size_ratio"] == pytest.approx(0.25, rel=1e-3)
    assert perturbed_row["perplexity_ratio"] == perturbed.text.perplexity / reference.text.perplexity
    assert perturbed_row["top1_agreement"] < 1.0 and perturbed_row["script_agreement"] < 1.0
    assert 0.0 <= perturbed_row["probe_agreement"] <= 1.0
    assert reference_row["tokens_per_second"] > 0 and reference_row["latency_seconds"] > 0
    assert check_degradation(reference_row, CONFIG) == []


def test_check_degradation_flags_rows_over_the_limits(evaluations):
    reference_row = compare_packages(evaluations[0], [])[0]
    config = QuantConfig(max_perplexity_increase=0.25, min_probe_agreement=0.8)
    at_limit = {**reference_row, "variant": "int8", "perplexity_ratio": 1.25}
    assert check_degradation(at_limit, config) == []
    too_perplexed = {**at_limit, "perplexity_ratio": 1.3, "perplexity": 13.0}
    (violation,) = check_degradation(too_perplexed, config)
    assert violation.startswith("int8: perplexity 13 is 30.0% above") and "max_perplexity_increase 25%" in violation
    disagreeing = {**at_limit, "probe_agreement": 0.5}
    assert check_degradation(disagreeing, config) == [
        "int8: probes choose as the unquantized model does in 50% of minimal pairs (quant.min_probe_agreement 80%)"
    ]
    unmeasured = {**at_limit, "perplexity_ratio": float("nan"), "probe_agreement": 0.0}
    assert len(check_degradation(unmeasured, config)) == 2
