"""Each quantized package side by side with the unquantized model it came from: perplexity, evaluation metrics on a
fixed subset, Chinese capability probes, size, load time and generation speed, and the checks that block a package.

The probes report agreement with the unquantized model rather than absolute quality: what quantization must not
change is what the model prefers, whatever that is (a randomly initialised test model prefers nothing sensible).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from qft_core.config import QuantConfig
from qft_core.model.chat import Turn, conversation_messages, generation_prompt_ids, render_messages, split_reasoning
from qft_core.model.registry import torch_dtype
from qft_core.package.merge import weights_bytes
from qft_core.package.probes import (
    LATENCY_QUESTIONS,
    MINIMAL_PAIRS,
    SCRIPT_PAIRS,
    SEGMENTATION_FAMILY,
    TERM_FAMILY,
    MinimalPair,
)
from qft_core.package.quantize import QUANT_METADATA_FILE, QuantizedPackage, load_quantized
from qft_core.records import ThinkingExample

ScoreFn = Callable[[list[str], list[str]], Mapping[str, Any]]
REFERENCE_VARIANT = "unquantized"
ROW_FIELDS = (
    "variant",
    "format",
    "method",
    "bits",
    "weights_mb",
    "size_ratio",
    "load_seconds",
    "perplexity",
    "perplexity_ratio",
    "top1_agreement",
    "probe_accuracy",
    "probe_agreement",
    "term_agreement",
    "segmentation_agreement",
    "script_consistency",
    "script_agreement",
    "latency_seconds",
    "tokens_per_second",
)
METRIC_PREFIX = "metric_"


@dataclass(frozen=True)
class ComparisonSet:
    """What every variant is measured on: chat-formatted test texts (perplexity), and a fixed subset of test
    questions with their reference answers (evaluation metrics, latency)."""

    texts: tuple[str, ...]
    questions: tuple[str, ...]
    references: tuple[str, ...]


def chat_formatted_texts(examples: Sequence[ThinkingExample], tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Examples rendered as the model sees them in training (Qwen3-Thinking-2507 template, reasoning included):
    the test split's for perplexity, the training split's for GPTQ calibration."""
    return [
        render_messages(conversation_messages([Turn(example.question, example.answer, example.reasoning)]), tokenizer)
        for example in examples
    ]


def comparison_set(
    examples: Sequence[ThinkingExample], tokenizer: PreTrainedTokenizerBase, config: QuantConfig
) -> ComparisonSet:
    """The test split as a verification set; examples are taken in id order, so the subset is the same every run."""
    ordered = sorted(examples, key=lambda example: example.id)
    subset = ordered[: config.verify_subset]
    return ComparisonSet(
        texts=tuple(chat_formatted_texts(ordered[: config.verify_texts], tokenizer)),
        questions=tuple(example.question for example in subset),
        references=tuple(example.answer for example in subset),
    )


@dataclass(frozen=True)
class TextScores:
    perplexity: float
    tokens: int
    # Teacher-forced greedy predictions, one tensor per text: what `top1_agreement` compares.
    predictions: tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class ProbeScores:
    # Index of the candidate each minimal pair's model ranks first (0 is the correct one).
    choices: tuple[int, ...]
    # Next-token log-probabilities after each script prompt: simplified and traditional, pair by pair.
    script_log_probs: tuple[torch.Tensor, ...]

    @property
    def accuracy(self) -> float:
        return sum(choice == 0 for choice in self.choices) / len(self.choices)

    @property
    def script_consistency(self) -> float:
        """How alike the next-token distributions of a prompt in simplified and in traditional script are
        (1 - Jensen-Shannon divergence in bits; 1: identical)."""
        pairs = zip(self.script_log_probs[0::2], self.script_log_probs[1::2], strict=True)
        return _mean([1.0 - js_divergence_bits(simplified, traditional) for simplified, traditional in pairs])


@dataclass(frozen=True)
class GenerationScores:
    answers: tuple[str, ...]
    latency_seconds: float
    tokens_per_second: float


@dataclass(frozen=True)
class ModelEvaluation:
    """One variant measured on a verification set."""

    variant: str
    format: str | None
    method: str
    bits: int
    weights_bytes: int
    load_seconds: float
    text: TextScores
    probes: ProbeScores
    generation: GenerationScores
    metrics: dict[str, float] = field(default_factory=dict)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def js_divergence_bits(log_p: torch.Tensor, log_q: torch.Tensor) -> float:
    """Jensen-Shannon divergence of two distributions given as log-probabilities, in bits (0 to 1)."""
    p, q = log_p.double().exp(), log_q.double().exp()
    m = (p + q) / 2
    divergence = (
        0.5 * (torch.xlogy(p, p) - torch.xlogy(p, m)).sum() + 0.5 * (torch.xlogy(q, q) - torch.xlogy(q, m)).sum()
    )
    return max(0.0, divergence.item() / math.log(2))


def _device(model: PreTrainedModel) -> torch.device:
    return next(model.parameters()).device


def _token_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@torch.no_grad()
def score_texts(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_tokens: int
) -> TextScores:
    """Perplexity over all predicted tokens of `texts` (each cut to `max_tokens`), and the greedy predictions."""
    total_nll, total_tokens, predictions = 0.0, 0, []
    for text in texts:
        ids = torch.tensor([_token_ids(tokenizer, text)[:max_tokens]], device=_device(model))
        if ids.shape[1] < 2:
            continue
        logits = model(input_ids=ids).logits[0, :-1].float()
        targets = ids[0, 1:]
        total_nll += F.cross_entropy(logits, targets, reduction="sum").item()
        total_tokens += targets.numel()
        predictions.append(logits.argmax(-1).cpu())
    perplexity = math.exp(total_nll / total_tokens) if total_tokens else float("nan")
    return TextScores(perplexity=perplexity, tokens=total_tokens, predictions=tuple(predictions))


def _right_padded(rows: Sequence[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Right padding leaves every real token's position and causal context as they are without padding.
    width = max(len(row) for row in rows)
    ids = torch.tensor([row + [pad_id] * (width - len(row)) for row in rows], device=device)
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows], device=device)
    return ids, mask


@torch.no_grad()
def continuation_log_likelihoods(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, context: str, continuations: Sequence[str]
) -> list[float]:
    """log P(continuation | context) for each continuation, in one batch. Context and continuation are tokenized
    apart, so every candidate is scored after the same context tokens."""
    context_ids = _token_ids(tokenizer, context)
    if not context_ids:
        raise ValueError("a minimal pair needs a non-empty context")
    continuation_ids = [_token_ids(tokenizer, continuation) for continuation in continuations]
    ids, mask = _right_padded(
        [context_ids + tail for tail in continuation_ids], tokenizer.pad_token_id or 0, _device(model)
    )
    # Only the positions that predict continuation tokens need logits (the vocabulary projection dominates).
    kept = ids.shape[1] - len(context_ids) + 1
    log_probs = model(input_ids=ids, attention_mask=mask, logits_to_keep=kept).logits.float().log_softmax(-1)
    return [
        log_probs[row, torch.arange(len(tail)), torch.tensor(tail)].sum().item() if tail else 0.0
        for row, tail in enumerate(continuation_ids)
    ]


def probe_choice(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pair: MinimalPair) -> int:
    """The index of the candidate the model finds most likely (0: the correct one)."""
    scores = continuation_log_likelihoods(model, tokenizer, pair.context, pair.candidates)
    return max(range(len(scores)), key=scores.__getitem__)


@torch.no_grad()
def next_token_log_probs(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]
) -> tuple[torch.Tensor, ...]:
    """The next-token log-probabilities after each prompt."""
    rows = [_token_ids(tokenizer, prompt) for prompt in prompts]
    ids, mask = _right_padded(rows, tokenizer.pad_token_id or 0, _device(model))
    logits = model(input_ids=ids, attention_mask=mask).logits
    return tuple(logits[index, len(row) - 1].float().log_softmax(-1).cpu() for index, row in enumerate(rows))


def score_probes(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> ProbeScores:
    choices = tuple(probe_choice(model, tokenizer, pair) for pair in MINIMAL_PAIRS)
    prompts = [prompt for pair in SCRIPT_PAIRS for prompt in (pair.simplified, pair.traditional)]
    return ProbeScores(choices=choices, script_log_probs=next_token_log_probs(model, tokenizer, prompts))


@torch.no_grad()
def timed_greedy_answers(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, questions: Sequence[str], max_new_tokens: int
) -> GenerationScores:
    """Greedy answers to `questions`, timed: mean seconds per answer and generated tokens per second."""
    settings = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=model.generation_config.eos_token_id,
        pad_token_id=model.generation_config.pad_token_id or tokenizer.pad_token_id,
    )
    prompts = [
        torch.tensor([generation_prompt_ids(question, tokenizer)], device=_device(model)) for question in questions
    ]
    # One untimed step first: kernels that compile or select themselves on first use would distort the timing.
    model.generate(
        input_ids=prompts[0], generation_config=GenerationConfig(**{**settings.to_dict(), "max_new_tokens": 1})
    )
    answers, seconds, new_tokens = [], 0.0, 0
    for ids in prompts:
        started = time.perf_counter()
        output = model.generate(input_ids=ids, generation_config=settings)
        seconds += time.perf_counter() - started
        generated = output[0, ids.shape[1] :]
        new_tokens += generated.numel()
        answers.append(split_reasoning(tokenizer.decode(generated, skip_special_tokens=False))[1])
    return GenerationScores(
        answers=tuple(answers),
        latency_seconds=seconds / len(prompts),
        tokens_per_second=new_tokens / seconds if seconds > 0 else float("nan"),
    )


def _numeric_metrics(scores: Mapping[str, Any]) -> dict[str, float]:
    return {
        str(name): float(value)
        for name, value in scores.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def evaluate_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    verification: ComparisonSet,
    config: QuantConfig,
    *,
    variant: str,
    quant_format: str | None = None,
    method: str = "",
    bits: int = 0,
    weights_bytes: int = 0,
    load_seconds: float = 0.0,
    score_fn: ScoreFn | None = None,
) -> ModelEvaluation:
    """Measure one loaded model. `score_fn(predictions, references)` (the evaluation module's scorer) gets the
    greedy answers to the verification subset; its numeric results become the `metric_*` fields."""
    questions = verification.questions or LATENCY_QUESTIONS
    generation = timed_greedy_answers(model, tokenizer, questions, config.verify_max_new_tokens)
    metrics = {}
    if score_fn is not None and verification.questions:
        metrics = _numeric_metrics(score_fn(list(generation.answers), list(verification.references)))
    return ModelEvaluation(
        variant=variant,
        format=quant_format,
        method=method,
        bits=bits,
        weights_bytes=weights_bytes,
        load_seconds=load_seconds,
        text=score_texts(model, tokenizer, verification.texts, config.verify_max_tokens),
        probes=score_probes(model, tokenizer),
        generation=generation,
        metrics=metrics,
    )


def evaluate_directory(
    model_dir: Path,
    verification: ComparisonSet,
    config: QuantConfig,
    *,
    score_fn: ScoreFn | None = None,
    device: str = "cpu",
) -> ModelEvaluation:
    """Load and measure a quantized package (it has `qft_quantization.json`) or the unquantized merged model."""
    model_dir = Path(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
    started = time.perf_counter()
    if (model_dir / QUANT_METADATA_FILE).is_file():
        package = QuantizedPackage.read(model_dir)
        model = load_quantized(model_dir, device=device, gptq_kernel=config.gptq_kernel)
        identity = {
            "variant": package.format,
            "quant_format": package.format,
            "method": package.method,
            "bits": package.bits,
        }
    else:
        model = (
            AutoModelForCausalLM.from_pretrained(
                model_dir,
                dtype=torch_dtype("auto", device, model_dir),
                use_safetensors=True,
                local_files_only=True,
                trust_remote_code=False,
            )
            .to(device)
            .eval()
        )
        bits = torch.finfo(next(model.parameters()).dtype).bits
        identity = {"variant": REFERENCE_VARIANT, "quant_format": None, "method": "merged", "bits": bits}
    load_seconds = time.perf_counter() - started
    return evaluate_model(
        model,
        tokenizer,
        verification,
        config,
        **identity,
        weights_bytes=weights_bytes(model_dir),
        load_seconds=load_seconds,
        score_fn=score_fn,
    )


def _same_choice_share(
    choices: Sequence[int], reference: Sequence[int], families: Sequence[str], family: str | None
) -> float:
    picked = [a == b for a, b, name in zip(choices, reference, families, strict=True) if family in (None, name)]
    return _mean([float(same) for same in picked])


def _top1_agreement(predictions: Sequence[torch.Tensor], reference: Sequence[torch.Tensor]) -> float:
    same = sum(int((a == b).sum()) for a, b in zip(predictions, reference, strict=True))
    total = sum(a.numel() for a in reference)
    return same / total if total else float("nan")


def _ratio(value: float, reference: float) -> float:
    return value / reference if reference else float("nan")


def comparison_row(
    evaluation: ModelEvaluation, reference: ModelEvaluation, metric_names: Sequence[str]
) -> dict[str, Any]:
    """One row of the comparison table: `evaluation` measured against `reference` (the unquantized model)."""
    families = [pair.family for pair in MINIMAL_PAIRS]
    choices, reference_choices = evaluation.probes.choices, reference.probes.choices
    script_agreement = _mean(
        [
            1.0 - js_divergence_bits(log_probs, reference_log_probs)
            for log_probs, reference_log_probs in zip(
                evaluation.probes.script_log_probs, reference.probes.script_log_probs, strict=True
            )
        ]
    )
    row = {
        "variant": evaluation.variant,
        "format": evaluation.format,
        "method": evaluation.method,
        "bits": evaluation.bits,
        "weights_mb": round(evaluation.weights_bytes / 2**20, 2),
        "size_ratio": _ratio(evaluation.weights_bytes, reference.weights_bytes),
        "load_seconds": round(evaluation.load_seconds, 3),
        "perplexity": evaluation.text.perplexity,
        "perplexity_ratio": _ratio(evaluation.text.perplexity, reference.text.perplexity),
        "top1_agreement": _top1_agreement(evaluation.text.predictions, reference.text.predictions),
        "probe_accuracy": evaluation.probes.accuracy,
        "probe_agreement": _same_choice_share(choices, reference_choices, families, None),
        "term_agreement": _same_choice_share(choices, reference_choices, families, TERM_FAMILY),
        "segmentation_agreement": _same_choice_share(choices, reference_choices, families, SEGMENTATION_FAMILY),
        "script_consistency": evaluation.probes.script_consistency,
        "script_agreement": script_agreement,
        "latency_seconds": round(evaluation.generation.latency_seconds, 4),
        "tokens_per_second": round(evaluation.generation.tokens_per_second, 2),
    }
    for name in metric_names:
        row[METRIC_PREFIX + name] = evaluation.metrics.get(name)
    return row


def compare_packages(reference: ModelEvaluation, packages: Sequence[ModelEvaluation]) -> list[dict[str, Any]]:
    """Rows for the metadata table: the unquantized model first (ratios 1, agreements 1), then each package.
    Every row has the fields of `ROW_FIELDS` and one `metric_<name>` per metric any variant reported."""
    evaluations = [reference, *packages]
    metric_names = sorted({name for evaluation in evaluations for name in evaluation.metrics})
    return [comparison_row(evaluation, reference, metric_names) for evaluation in evaluations]


def check_degradation(row: Mapping[str, Any], config: QuantConfig) -> list[str]:
    """Why a package must not ship, one sentence per violated limit (an empty list: it may ship)."""
    violations = []
    ratio = row["perplexity_ratio"]
    limit = 1.0 + config.max_perplexity_increase
    if not (isinstance(ratio, int | float) and math.isfinite(ratio)):
        violations.append(f"{row['variant']}: perplexity could not be measured (ratio {ratio})")
    elif ratio > limit:
        violations.append(
            f"{row['variant']}: perplexity {row['perplexity']:.4g} is {ratio - 1:.1%} above the unquantized model's "
            f"(quant.max_perplexity_increase {config.max_perplexity_increase:.0%})"
        )
    agreement = row["probe_agreement"]
    if not agreement >= config.min_probe_agreement:
        violations.append(
            f"{row['variant']}: probes choose as the unquantized model does in {agreement:.0%} of minimal pairs "
            f"(quant.min_probe_agreement {config.min_probe_agreement:.0%})"
        )
    return violations
