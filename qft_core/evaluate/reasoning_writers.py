"""Who writes reasoning for pairs without it: the model being fine-tuned (loaded and prompted with evaluation's own
generation code) or an OpenAI-compatible endpoint (`/v1/chat/completions` over stdlib HTTP). They live beside
evaluation because they generate with a model; the data stage cannot import one."""

from __future__ import annotations

import http.client
import json
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from qft_core.config import EvalConfig, QftConfig
from qft_core.device import resolve_device
from qft_core.evaluate.generate import EvalItem, generate_answers
from qft_core.evaluate.thinking_quality import split_generation
from qft_core.model.registry import load_model, load_tokenizer, resolve_model

Progress = Callable[[int, int, str], None]

# Characters of an error reply's body quoted in a failure.
_BODY_QUOTED = 200


@dataclass(frozen=True)
class WriteFailed:
    """No reasoning came back for one prompt; `message` names the endpoint or model and says why."""

    message: str


class ReasoningWriter(Protocol):
    """Writes one reply per prompt, in prompt order; a prompt that got none has a WriteFailed in its place."""

    name: str

    def write(self, prompts: Sequence[str], progress: Progress | None = None) -> list[str | WriteFailed]: ...


class WriterSetupError(ValueError):
    """A writer that cannot start (its API key's variable unset); the message names the config key."""


class EndpointWriter:
    """An OpenAI-compatible chat-completions endpoint, `concurrency` requests at a time. The reply's `content` is
    the reasoning (a `<think>` block some servers leave in it is dropped). An endpoint that refuses the connection
    or cannot be resolved is not asked again: every prompt not yet sent fails with the same message."""

    def __init__(
        self, base_url: str, model: str, *, api_key: str | None = None, timeout_s: float = 120.0,
        concurrency: int = 4, max_tokens: int = 2048, temperature: float = 0.0,
    ) -> None:
        self.url = f"{base_url.rstrip('/')}/chat/completions"
        self.model = model
        self.name = f"{model} at {base_url}"
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout_s = timeout_s
        self._concurrency = concurrency
        self._max_tokens = max_tokens
        self._temperature = temperature
        self._unreachable: WriteFailed | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: QftConfig, environ: Mapping[str, str] = os.environ) -> EndpointWriter:
        reasoning = config.reasoning
        api_key = None
        if reasoning.api_key_env:
            api_key = environ.get(reasoning.api_key_env)
            if not api_key:
                raise WriterSetupError(
                    f"reasoning.api_key_env names {reasoning.api_key_env}, which is not set in the environment: "
                    "export the endpoint's API key there, or empty the key for an endpoint that needs none"
                )
        return cls(
            reasoning.endpoint_url, reasoning.endpoint_model, api_key=api_key, timeout_s=reasoning.timeout_s,
            concurrency=reasoning.concurrency, max_tokens=reasoning.max_new_tokens,
            temperature=reasoning.temperature,
        )

    def write(self, prompts: Sequence[str], progress: Progress | None = None) -> list[str | WriteFailed]:
        done = 0

        def one(prompt: str) -> str | WriteFailed:
            nonlocal done
            reply = self._unreachable or self._ask(prompt)
            with self._lock:
                done += 1
                if progress is not None:
                    progress(done, len(prompts), "writing reasoning")
            return reply

        with ThreadPoolExecutor(max_workers=self._concurrency) as pool:
            return list(pool.map(one, prompts))

    def _ask(self, prompt: str) -> str | WriteFailed:
        body = json.dumps({
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": self._max_tokens,
            "temperature": self._temperature,
        }).encode()
        request = urllib.request.Request(self.url, data=body, headers=self._headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
                reply = json.loads(response.read())
        except urllib.error.HTTPError as error:
            text = error.read().decode("utf-8", "replace")[:_BODY_QUOTED]
            return WriteFailed(f"{self.url}: HTTP {error.code} {error.reason}: {text}")
        except urllib.error.URLError as error:
            if isinstance(error.reason, TimeoutError):
                return WriteFailed(f"{self.url}: no reply within {self._timeout_s:g} s")
            with self._lock:
                self._unreachable = self._unreachable or WriteFailed(f"{self.url}: cannot connect ({error.reason})")
            return self._unreachable
        except TimeoutError:
            return WriteFailed(f"{self.url}: no reply within {self._timeout_s:g} s")
        except (OSError, http.client.HTTPException) as error:
            # The connection broke mid-reply (reset, closed early): this request failed, the endpoint may recover.
            return WriteFailed(f"{self.url}: the connection broke ({error})")
        except json.JSONDecodeError as error:
            return WriteFailed(f"{self.url}: the reply is not JSON ({error})")
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            return WriteFailed(f"{self.url}: the reply is not a chat completion (no choices[0].message.content)")
        return split_generation(content or "").answer


class ModelWriter:
    """The model of `model.name` (before fine-tuning) writes the reasoning as its reply, after thinking for at most
    `reasoning.thinking_budget` tokens; its own thinking is dropped. Loaded on the first call."""

    def __init__(self, config: QftConfig) -> None:
        self._config = config
        self._spec = resolve_model(config.model, config.paths)
        self.name = self._spec.name

    def write(self, prompts: Sequence[str], progress: Progress | None = None) -> list[str | WriteFailed]:
        reasoning = self._config.reasoning
        generation = EvalConfig(
            max_new_tokens=reasoning.max_new_tokens, thinking_budget=reasoning.thinking_budget,
            batch_size=reasoning.batch_size, temperature=reasoning.temperature, max_examples=None,
        )
        tokenizer = load_tokenizer(self._spec)
        model = load_model(
            self._spec, dtype=self._config.model.dtype, device=resolve_device(self._config.model.device)
        )
        items = [EvalItem(id=str(index), question=prompt, reference_answer="") for index, prompt in enumerate(prompts)]
        answers = generate_answers(model, tokenizer, items, generation, progress=progress, label="writing reasoning")
        return [answer.answer for answer in answers]


def reasoning_writer(config: QftConfig) -> ReasoningWriter | None:
    """The writer `reasoning.writer` names; None for the template, which needs no model."""
    if config.reasoning.writer == "endpoint":
        return EndpointWriter.from_config(config)
    if config.reasoning.writer == "model":
        return ModelWriter(config)
    return None
