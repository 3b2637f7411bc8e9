"""A deployment package's model loaded for chat: prompts from the package's own chat template, one generation at a
time, OpenAI-style sampling (temperature, top-p, stop strings) and the reply handed out as it is decoded."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from jinja2 import TemplateError
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from qft_core.config import ModelConfig, PathsConfig
from qft_core.device import resolve_device
from qft_core.model.registry import has_weights, load_model, resolve_model
from qft_core.model.sampling import recommended_sampling
from qft_core.package.layout import (
    CHAT_TEMPLATE_FILE,
    GENERATION_PROMPT_SUFFIX,
    PackageError,
    package_quantization,
    read_package_metadata,
)
from qft_core.package.quantize import (
    QUANT_METADATA_FILE,
    FormatUnavailableError,
    QuantizationError,
    load_quantized,
)

FinishReason = Literal["stop", "length"]
# A conversation every chat template must render; its generation prompt shows whether replies start in <think>.
_PROBE_CONVERSATION = [{"role": "user", "content": "?"}]
# Half a UTF-8 character decodes to this; such text waits for the next token.
_INCOMPLETE_CHARACTER = "\ufffd"


class PromptError(ValueError):
    """Messages that the package's chat template refuses to render."""


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens: temperature 0 is greedy; top_k 0 and top_p 1 keep the whole distribution."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class Completion:
    """The generated text (stop string and end-of-turn token excluded) and what it cost."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def partial_marker_length(text: str, markers: Sequence[str]) -> int:
    """Length of the longest end of `text` that one of `markers` starts with: text the next token may turn
    into a marker."""
    return max(
        (
            length
            for marker in markers
            for length in range(min(len(marker) - 1, len(text)), 0, -1)
            if marker.startswith(text[-length:])
        ),
        default=0,
    )


class _DecodedText:
    """The text of the tokens generated so far, handed out in pieces that are final: never half a character, never
    the start of what may become a stop string."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: Sequence[str]) -> None:
        self._tokenizer = tokenizer
        self._stop = tuple(stop)
        self._latest = ""
        self._handed_out = 0
        self.text = ""
        self.stopped = False

    def update(self, token_ids: list[int]) -> str:
        """The new final text after `token_ids` (all tokens so far); sets `stopped` at a stop string."""
        text = self._tokenizer.decode(token_ids, skip_special_tokens=True)
        if text.endswith(_INCOMPLETE_CHARACTER):
            self._latest = text
            return ""
        return self._settle(text, final=False)

    def flush(self) -> str:
        """Whatever was held back, once generation has ended."""
        return self._settle(self._latest, final=True)

    def _settle(self, text: str, *, final: bool) -> str:
        self._latest = text
        stop_at = min((index for index in (text.find(stop) for stop in self._stop) if index >= 0), default=None)
        if stop_at is not None:
            self.stopped = True
            self.text = text[:stop_at]
            return self._hand_out(stop_at)
        self.text = text
        return self._hand_out(len(text) if final else len(text) - partial_marker_length(text, self._stop))

    def _hand_out(self, end: int) -> str:
        piece = self.text[self._handed_out : end]
        self._handed_out = max(self._handed_out, end)
        return piece



def _sampling_arguments(params: SamplingParams) -> dict[str, Any]:
    if params.temperature == 0:
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    return {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k}


class _ReplyWatcher(StoppingCriteria):
    """Looks at the reply after every generated token: hands out the text that became final, and stops
    generation at a stop string or when the caller cancels."""

    def __init__(
        self,
        prompt_length: int,
        decoded: _DecodedText,
        on_text: Callable[[str], None],
        cancelled: Callable[[], bool],
    ) -> None:
        self._prompt_length = prompt_length
        self.decoded = decoded
        self._on_text = on_text
        self._cancelled = cancelled

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        piece = self.decoded.update(input_ids[0, self._prompt_length :].tolist())
        if piece:
            self._on_text(piece)
        stop = self.decoded.stopped or self._cancelled()
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


def _eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    configured = model.generation_config.eos_token_id if model.generation_config is not None else None
    ids = configured if isinstance(configured, list) else [configured]
    return frozenset(token for token in [*ids, tokenizer.eos_token_id] if token is not None)


def load_package_tokenizer(package_dir: Path) -> PreTrainedTokenizerBase:
    """The package's tokenizer with the package's chat template, refused unless that template opens the reply
    with `<think>\\n` (the Qwen3-Thinking-2507 format the model was trained on)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(package_dir, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise PackageError(f"{package_dir}: no loadable tokenizer: {error}") from None
    try:
        prompt = tokenizer.apply_chat_template(_PROBE_CONVERSATION, tokenize=False, add_generation_prompt=True)
    except (TemplateError, ValueError) as error:
        raise PackageError(f"{package_dir / CHAT_TEMPLATE_FILE}: the chat template does not render: {error}") from None
    if not prompt.endswith(GENERATION_PROMPT_SUFFIX):
        raise PackageError(
            f"{package_dir / CHAT_TEMPLATE_FILE}: the generation prompt ends {prompt[-40:]!r}, "
            f"not {GENERATION_PROMPT_SUFFIX!r}; the package's chat template is not Qwen3-Thinking-2507's"
        )
    return tokenizer


def _load_weights(package_dir: Path, device: str) -> PreTrainedModel:
    if (package_dir / QUANT_METADATA_FILE).is_file():
        try:
            return load_quantized(package_dir, device=device)
        except (QuantizationError, FormatUnavailableError) as error:
            raise PackageError(f"{package_dir}: cannot load the quantized weights: {error}") from None
    if not has_weights(package_dir):
        raise PackageError(f"{package_dir}: no config.json with *.safetensors weights")
    spec = resolve_model(ModelConfig(name=str(package_dir)), PathsConfig())
    return load_model(spec, dtype="auto", device=device)


class ServedModel:
    """One model and its tokenizer behind a lock: generations run one after another."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        model_id: str,
        *,
        sampling_defaults: dict[str, Any] | None = None,
        quantization: str | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.sampling_defaults = sampling_defaults or {}
        self.quantization = quantization
        self.context_length = int(getattr(model.config, "max_position_embeddings", 0) or tokenizer.model_max_length)
        self._eos_ids = _eos_token_ids(model, tokenizer)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, package_dir: Path, *, device: str = "auto") -> ServedModel:
        """Load an unpacked package on `device` (auto, cpu or cuda; `qft_core.device`): quantized weights through
        `quantize.load_quantized`, plain ones as safetensors in their own dtype; the model id is the package name."""
        package_dir = Path(package_dir)
        metadata = read_package_metadata(package_dir)
        tokenizer = load_package_tokenizer(package_dir)
        model = _load_weights(package_dir, resolve_device(device))
        return cls(
            model,
            tokenizer,
            str(metadata.get("package_name") or package_dir.name),
            sampling_defaults=recommended_sampling(package_dir),
            quantization=package_quantization(metadata),
        )

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """The token ids that ask the model to reply to `messages`, rendered with the package's chat template."""
        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except TemplateError as error:
            raise PromptError(f"the chat template refuses these messages: {error}") from None
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        on_text: Callable[[str], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> Completion:
        """Generate a reply to `prompt_ids`, passing each final, non-empty piece of text to `on_text` as it is
        decoded.

        Stops at an end-of-turn token, at a stop string (left out of the text), after `max_tokens`, or when
        `cancelled()` turns true. A `seed` reseeds torch's global generator: under the lock, only this
        generation draws from it.
        """
        with self._lock, torch.inference_mode():
            return self._generate(prompt_ids, params, on_text or (lambda _piece: None), cancelled or (lambda: False))

    def _generate(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        on_text: Callable[[str], None],
        cancelled: Callable[[], bool],
    ) -> Completion:
        decoded = _DecodedText(self.tokenizer, params.stop)
        watcher = _ReplyWatcher(len(prompt_ids), decoded, on_text, cancelled)
        if params.seed is not None:
            torch.manual_seed(params.seed)
        inputs = torch.tensor([prompt_ids], device=self.model.device)
        output = self.model.generate(
            input_ids=inputs,
            attention_mask=torch.ones_like(inputs),
            max_new_tokens=params.max_tokens,
            eos_token_id=sorted(self._eos_ids),
            pad_token_id=self.tokenizer.pad_token_id,
            stopping_criteria=StoppingCriteriaList([watcher]),
            **_sampling_arguments(params),
        )
        generated = output[0, len(prompt_ids) :].tolist()
        rest = "" if decoded.stopped else decoded.flush()
        if rest:
            on_text(rest)
        ended = bool(generated) and generated[-1] in self._eos_ids
        finish_reason: FinishReason = "stop" if ended or decoded.stopped else "length"
        return Completion(decoded.text, len(prompt_ids), len(generated), finish_reason)
