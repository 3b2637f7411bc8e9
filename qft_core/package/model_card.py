"""The package's model card (`README.md`), in Chinese and English: data, training configuration, metrics,
intended use and limitations, filled from the package metadata."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from qft_core.package.layout import package_quantization
from qft_core.serve.vllm import gpu_serving_lines
from qft_core.model.registry import stand_in_note

DEFAULT_INTENDED_USE_ZH = (
    "教学与学习辅助：用中文解释密码学概念、算法、协议与标准（含 SM2、SM3、SM4 等国密算法），"
    "并在回答前给出可检查的推理过程。"
)
DEFAULT_INTENDED_USE_EN = (
    "Teaching and study aid: explaining cryptographic concepts, algorithms, protocols and standards (including the "
    "Chinese SM2, SM3 and SM4 algorithms) in Chinese, with reasoning that can be checked before the answer."
)
DEFAULT_LIMITATIONS_ZH = (
    "只在中文密码学问答上做过微调与评估，其他领域、其他语言的回答质量未知。",
    "可能给出看似可信却错误的推理或结论；凡涉及安全的判断，须经专家核实后再采用。",
    "不能替代正式的安全审计、密码产品检测或合规评估，也不得用于攻击他人系统。",
    "训练数据规模有限，知识截止于数据整理之时，新的攻击与标准可能未覆盖。",
    "量化版本的精度可能低于全精度版本，请参见上方的评估指标。",
)
DEFAULT_LIMITATIONS_EN = (
    "Fine-tuned and evaluated on Chinese cryptography Q&A only; quality in other domains and languages is unknown.",
    "May produce plausible but wrong reasoning or conclusions; have an expert check any security-relevant judgement "
    "before relying on it.",
    "Not a substitute for a security audit, product certification or compliance assessment; not for attacking "
    "systems.",
    "The training data is small and ends when it was compiled; newer attacks and standards may be missing.",
    "Quantized variants may be less accurate than full precision; see the evaluation metrics above.",
)
# The configuration keys a reader needs to understand the fine-tuning, in the order the card shows them; the whole
# configuration is in qft_metadata.json.
CARD_CONFIG_KEYS = {
    "model": ("name", "max_length", "dtype"),
    "split": ("train", "validation", "test", "seed"),
    "lora": ("r", "alpha", "dropout", "target_modules"),
    "training": (
        "epochs", "max_steps", "global_batch_size", "learning_rate", "weight_decay", "warmup_ratio", "schedule",
        "max_grad_norm", "packing", "loss_on_reasoning", "mask_empty_thinking", "seed",
    ),
}


@dataclass(frozen=True)
class ModelCardInfo:
    """What the card says that the metadata does not: the model's names, purpose and caveats."""

    model_name: str
    base_model: str
    license: str = "apache-2.0"
    data_description_zh: str = "由专家撰写的中文密码学问答，每条附有推理过程（`<thinking>` 标注）。"
    data_description_en: str = "Expert-written Chinese cryptography Q&A, each with its reasoning (`<thinking>` markup)."
    intended_use_zh: str = DEFAULT_INTENDED_USE_ZH
    intended_use_en: str = DEFAULT_INTENDED_USE_EN
    limitations_zh: tuple[str, ...] = DEFAULT_LIMITATIONS_ZH
    limitations_en: tuple[str, ...] = DEFAULT_LIMITATIONS_EN


@dataclass(frozen=True)
class _Labels:
    language: str
    data: str
    data_hash: str
    data_counts: str
    colon: str
    training: str
    full_config: str
    metrics: str
    no_metrics: str
    quantization: str
    not_quantized: str
    intended_use: str
    limitations: str
    serving: str
    key: str
    value: str
    # Who wrote the training data's reasoning, filled from the metadata's data.reasoning_origins.
    reasoning_origins: str


_ZH = _Labels(
    language="中文",
    data="训练数据",
    data_hash="数据哈希",
    data_counts="数据统计",
    colon="：",
    training="训练配置",
    full_config="完整配置见 `qft_metadata.json`。",
    metrics="评估指标",
    no_metrics="（本包未附评估指标）",
    quantization="量化",
    not_quantized="未量化（safetensors 全精度权重）。",
    intended_use="预期用途",
    limitations="局限性",
    serving="部署",
    key="项",
    value="值",
    reasoning_origins=(
        "推理来源：专家撰写 {expert} 条，模型生成 {model} 条（通过质量与答案一致性检查，数据中标为 `model`），"
        "模板生成 {template} 条，无推理 {none} 条。"
    ),
)
_EN = _Labels(
    language="English",
    data="Training data",
    data_hash="Data hash",
    data_counts="Data statistics",
    colon=": ",
    training="Training configuration",
    full_config="The full configuration is in `qft_metadata.json`.",
    metrics="Evaluation metrics",
    no_metrics="(no evaluation metrics were packaged)",
    quantization="Quantization",
    not_quantized="Not quantized (full-precision safetensors weights).",
    intended_use="Intended use",
    limitations="Limitations",
    serving="Serving",
    key="key",
    value="value",
    reasoning_origins=(
        "Reasoning: {expert} written by experts, {model} written by a model (kept after the quality and "
        "answer-consistency checks; marked `model` in the data), {template} from the template, {none} without."
    ),
)


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys (`lora.r`), the way the card's tables list them."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _cell(value: Any) -> str:
    if value is None:
        text = "—"
    elif isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, list | tuple):
        text = ", ".join(str(item) for item in value)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(values: Mapping[str, Any], labels: _Labels) -> str:
    rows = [f"| {labels.key} | {labels.value} |", "|---|---|"]
    rows += [f"| `{key}` | {_cell(value)} |" for key, value in flatten(values).items()]
    return "\n".join(rows)


def _training_config(metadata: Mapping[str, Any]) -> dict[str, Any]:
    config = metadata.get("config") or {}
    return {
        f"{section}.{key}": config[section][key]
        for section, keys in CARD_CONFIG_KEYS.items()
        for key in keys
        if key in (config.get(section) or {})
    }


def _section(
    labels: _Labels,
    metadata: Mapping[str, Any],
    description: str,
    intended_use: str,
    limitations: tuple[str, ...],
    package_name: str,
) -> str:
    parts = [f"## {labels.language}", "", f"### {labels.data}", "", description, ""]
    parts += [f"{labels.data_hash}{labels.colon}`{metadata.get('data_hash', '—')}`", ""]
    if metadata.get("data"):
        origins = metadata["data"].get("reasoning_origins")
        parts += [labels.reasoning_origins.format(**origins), ""] if origins else []
        parts += [f"{labels.data_counts}{labels.colon}", "", _table(metadata["data"], labels), ""]
    parts += [f"### {labels.training}", ""]
    training = _training_config(metadata)
    if training:
        parts += [_table(training, labels), ""]
    parts += [labels.full_config, ""]
    parts += [f"### {labels.metrics}", ""]
    parts += [_table(metadata["metrics"], labels) if metadata.get("metrics") else labels.no_metrics, ""]
    quantization = metadata.get("quantization")
    parts += [f"### {labels.quantization}", ""]
    parts += [_table(quantization, labels) if quantization else labels.not_quantized, ""]
    parts += [f"### {labels.intended_use}", "", intended_use, ""]
    parts += [f"### {labels.limitations}", "", *(f"- {item}" for item in limitations), ""]
    parts += [
        f"### {labels.serving}",
        "",
        "```bash",
        f"qft package verify {package_name}",
        f"qft serve {package_name}",
        *gpu_serving_lines(package_name, package_quantization(dict(metadata))),
        "```",
        "",
    ]
    return "\n".join(parts)


def render_model_card(info: ModelCardInfo, metadata: Mapping[str, Any]) -> str:
    """The card as Markdown with Hugging Face front matter: a Chinese section, then the same in English."""
    front_matter = {
        "language": ["zh", "en"],
        "license": info.license,
        "base_model": info.base_model,
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["qwen3", "lora", "reasoning", "cryptography", "chinese", "qft"],
    }
    header = [
        "---",
        yaml.safe_dump(front_matter, allow_unicode=True, sort_keys=False).rstrip(),
        "---",
        "",
        f"# {info.model_name}",
        "",
        f"基于 `{info.base_model}` 的 LoRA 微调模型（已合并），面向中文密码学问答，先推理后作答。",
        f"A LoRA fine-tune (merged) of `{info.base_model}` for Chinese cryptography Q&A that reasons before answering.",
        "",
    ]
    stand_in = stand_in_note(info.base_model)
    if stand_in:
        header += [
            f"> **替身模型：`{info.base_model}` 的权重是随机的，只用来检验流程能否跑通；它的回答没有意义，"
            "指标也不反映微调质量。**",
            f"> **{stand_in}**",
            "",
        ]
    zh = _section(
        _ZH, metadata, info.data_description_zh, info.intended_use_zh, info.limitations_zh, info.model_name
    )
    en = _section(
        _EN, metadata, info.data_description_en, info.intended_use_en, info.limitations_en, info.model_name
    )
    return "\n".join(header) + "\n" + zh + "\n" + en
