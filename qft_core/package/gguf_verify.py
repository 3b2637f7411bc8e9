"""A GGUF file checked by a reader qft did not write: transformers' GGUF loader (built on gguf-py's reader and
dequantizers) rebuilds the model and tokenizer from the file alone, and must give the merged model's logits within a
stated tolerance and the same greedy tokens on fixed chat prompts.

No runnable llama.cpp ships on PyPI for this machine: llama-cpp-python publishes only a source distribution there,
and llama-cpp-py-sync's CPU wheel needs glibc 2.38 (Debian 12 has 2.36).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from qft_core.model.chat import generation_prompt_ids
from qft_core.model.tokenizer import qwen3_thinking_chat_template
from qft_core.package.gguf import GgufFile, export_gguf, gguf_file_name, ollama_modelfile

VERIFY_QUESTIONS = ("什么是分组密码？", "RSA 的安全性依赖于哪个数学难题？", "Why must an AES-GCM nonce never repeat?")
GREEDY_TOKENS = 8
# Largest logit difference allowed, as a share of the largest reference logit on the same prompts: f16 rounds
# each weight to 11 significant bits, bf16 to 8, q8_0 to 8 bits per block of 32 with an f16 scale. Measured on
# qwen3-tiny: 0.04 %, 0.4 % and 1.0 %.
RELATIVE_TOLERANCE = {"f16": 0.005, "bf16": 0.02, "q8_0": 0.05}


@dataclass(frozen=True)
class GgufCheck:
    """How the GGUF, read back by transformers, compares with the model it was exported from.

    Greedy tokens are compared teacher-forced along the reference's greedy continuation: at each step the GGUF
    model must choose the reference's token. A step where the reference's two best logits lie closer than twice
    the logit error there is `undecided`: a random-weight model has many, and rounding may pick either token; the
    check requires every decided step to agree (a pretrained model's steps are nearly all decided)."""

    gguf_type: str
    prompts: int
    max_abs_logit_diff: float
    max_abs_reference_logit: float
    tolerance: float
    greedy_steps: int
    greedy_agreeing: int
    greedy_undecided_disagreeing: int
    same_prompt_ids: bool
    chat_template_kept: bool

    @property
    def same_greedy_tokens(self) -> bool:
        return self.greedy_agreeing == self.greedy_steps

    @property
    def passed(self) -> bool:
        within = self.max_abs_logit_diff <= self.tolerance * self.max_abs_reference_logit
        decided_agree = self.greedy_agreeing + self.greedy_undecided_disagreeing == self.greedy_steps
        return within and decided_agree and self.same_prompt_ids and self.chat_template_kept

    def to_metadata(self) -> dict[str, Any]:
        return {**asdict(self), "same_greedy_tokens": self.same_greedy_tokens, "passed": self.passed}


@torch.no_grad()
def _logits(model: PreTrainedModel, ids: list[int]) -> torch.Tensor:
    return model(input_ids=torch.tensor([ids])).logits[0].float()


@torch.no_grad()
def _greedy_continuation(model: PreTrainedModel, ids: list[int]) -> list[int]:
    inputs = torch.tensor([ids])
    generated = model.generate(
        inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=GREEDY_TOKENS,
        min_new_tokens=GREEDY_TOKENS, do_sample=False,
    )
    return generated[0, len(ids):].tolist()


def verify_gguf(gguf_path: Path, model_dir: Path, gguf_type: str) -> GgufCheck:
    """Load `gguf_path` with transformers' GGUF loader (model and tokenizer from the file alone) and compare it on
    VERIFY_QUESTIONS, in float32 on the CPU, with the model in `model_dir`: the prompts' token ids, the chat
    template, the logits of every position of prompt + the reference's GREEDY_TOKENS greedy tokens, and the greedy
    choice at each of those steps.

    transformers' qwen3 GGUF config mapping skips `attention.key_length` (llama.cpp reads it) and falls back to
    Qwen3Config's head_dim 128: right for Qwen3-4B, wrong for qwen3-tiny's 32; the reference's head_dim is passed."""
    gguf_path, model_dir = Path(gguf_path), Path(model_dir)
    folder, name = gguf_path.parent, gguf_path.name
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True).eval()
    read_back = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, head_dim=reference.config.head_dim, dtype=torch.float32
    ).eval()
    gguf_tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    tokenizer.chat_template = qwen3_thinking_chat_template()
    max_diff = max_logit = 0.0
    steps = agreeing = undecided = 0
    same_ids = True
    for question in VERIFY_QUESTIONS:
        ids = generation_prompt_ids(question, tokenizer)
        same_ids &= generation_prompt_ids(question, gguf_tokenizer) == ids
        continuation = _greedy_continuation(reference, ids)
        expected, logits = _logits(reference, ids + continuation), _logits(read_back, ids + continuation)
        max_diff = max(max_diff, (logits - expected).abs().max().item())
        max_logit = max(max_logit, expected.abs().max().item())
        # Position p predicts token p + 1: the steps are the positions from the prompt's last token on.
        for position, token in enumerate(continuation, start=len(ids) - 1):
            steps += 1
            if logits[position].argmax().item() == token:
                agreeing += 1
                continue
            top_two = expected[position].topk(2).values
            error = (logits[position] - expected[position]).abs().max().item()
            undecided += int((top_two[0] - top_two[1]).item() < 2 * error)
    return GgufCheck(
        gguf_type=gguf_type,
        prompts=len(VERIFY_QUESTIONS),
        max_abs_logit_diff=max_diff,
        max_abs_reference_logit=max_logit,
        tolerance=RELATIVE_TOLERANCE[gguf_type],
        greedy_steps=steps,
        greedy_agreeing=agreeing,
        greedy_undecided_disagreeing=undecided,
        same_prompt_ids=same_ids,
        chat_template_kept=gguf_tokenizer.chat_template == qwen3_thinking_chat_template(),
    )


def write_gguf_folder(
    model_dir: Path, out_dir: Path, gguf_types: Sequence[str], *, model_name: str, verify: bool = True
) -> list[tuple[GgufFile, GgufCheck | None]]:
    """Export `model_dir` into `out_dir` as `<model_name>-<TYPE>.gguf` for each of `gguf_types`, each with its
    Ollama Modelfile (`<model_name>-<TYPE>.Modelfile`), and check each file with `verify_gguf` unless `verify` is
    false."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for gguf_type in dict.fromkeys(gguf_types):
        name = gguf_file_name(model_name, gguf_type)
        gguf_file = export_gguf(model_dir, out_dir / name, gguf_type, model_name=model_name)
        modelfile = out_dir / f"{gguf_file.path.stem}.Modelfile"
        modelfile.write_text(ollama_modelfile(name, model_dir), encoding="utf-8")
        written.append((gguf_file, verify_gguf(gguf_file.path, model_dir, gguf_type) if verify else None))
    return written
