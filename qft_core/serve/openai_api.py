"""OpenAI's chat-completions wire format: requests validated into messages and sampling parameters, and the JSON
bodies of replies, stream chunks and errors, with the reasoning apart from the answer."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from qft_core.model.chat import THINK_CLOSE, THINK_OPEN, split_reasoning
from qft_core.serve.served_model import Completion, SamplingParams, partial_marker_length

ROLES = ("system", "user", "assistant")
MAX_STOP_STRINGS = 4
MAX_TEMPERATURE = 2.0
# torch seeds are 64-bit.
MAX_SEED = 2**63
# Request fields this server cannot honour; silently ignoring them would return something the client did not ask for.
UNSUPPORTED_FIELDS = ("tools", "functions", "tool_choice", "logprobs", "top_logprobs", "logit_bias")


class ApiError(Exception):
    """A request the server refuses, with its HTTP status and OpenAI's error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, error_type=self.error_type, param=self.param, code=self.code)


@dataclass(frozen=True)
class ChatRequest:
    """A validated chat-completions request."""

    messages: list[dict[str, str]]
    params: SamplingParams
    stream: bool
    include_usage: bool


def error_body(
    message: str, *, error_type: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _invalid(param: str, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _message_text(content: Any, param: str) -> str:
    """A message's content: a string, or a list of text parts (joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for index, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise _invalid(f"{param}[{index}]", f"{param}[{index}]: only text parts are supported")
            texts.append(part["text"])
        return "".join(texts)
    raise _invalid(param, f"{param} must be a string or a list of text parts")


def parse_messages(value: Any) -> list[dict[str, str]]:
    """The conversation as the chat template takes it; only the role, the content and an assistant's
    `reasoning_content` are kept."""
    if not isinstance(value, list) or not value:
        raise _invalid("messages", "'messages' is required: a non-empty list of {role, content} objects", "missing")
    messages = []
    for index, message in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _invalid(where, f"{where} must be an object with 'role' and 'content'")
        role = message.get("role")
        if role not in ROLES:
            raise _invalid(f"{where}.role", f"{where}.role is {role!r}; expected one of {', '.join(ROLES)}")
        parsed = {"role": role, "content": _message_text(message.get("content"), f"{where}.content")}
        reasoning = message.get("reasoning_content")
        if role == "assistant" and isinstance(reasoning, str):
            parsed["reasoning_content"] = reasoning
        messages.append(parsed)
    if not any(message["role"] == "user" for message in messages):
        raise _invalid("messages", "'messages' needs at least one message with role 'user'")
    return messages


def _max_tokens(body: dict[str, Any], limit: int) -> int:
    param = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    value = body.get(param)
    if value is None:
        return limit
    if not _is_integer(value) or value < 1:
        raise _invalid(param, f"{param} must be a positive integer, got {value!r}")
    if value > limit:
        raise _invalid(param, f"{param} is {value}, more than this server's limit of {limit}", "max_tokens_exceeded")
    return value


def _stop_strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if (
        not isinstance(stops, list)
        or len(stops) > MAX_STOP_STRINGS
        or not all(isinstance(stop, str) and stop for stop in stops)
    ):
        raise _invalid("stop", f"stop must be a non-empty string or a list of at most {MAX_STOP_STRINGS} of them")
    return tuple(stops)


def _sampling(body: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    values = {**defaults, **{key: body[key] for key in ("temperature", "top_p", "top_k") if body.get(key) is not None}}
    temperature = values.get("temperature", 1.0)
    if not _is_number(temperature) or not 0 <= temperature <= MAX_TEMPERATURE:
        raise _invalid("temperature", f"temperature must be a number from 0 to {MAX_TEMPERATURE}, got {temperature!r}")
    top_p = values.get("top_p", 1.0)
    if not _is_number(top_p) or not 0 < top_p <= 1:
        raise _invalid("top_p", f"top_p must be a number above 0 and at most 1, got {top_p!r}")
    top_k = values.get("top_k", 0)
    if not _is_integer(top_k) or top_k < -1:
        raise _invalid("top_k", f"top_k must be an integer (0 or -1: no limit), got {top_k!r}")
    return {"temperature": float(temperature), "top_p": float(top_p), "top_k": max(top_k, 0)}


def _unencodable_text(body: Any) -> ApiError | None:
    """The refusal of the first string in `body` (keys included) that is not Unicode text (a lone surrogate,
    which JSON's `\\ud800` escapes can carry), naming where it is; None if every string is text. Iterative: a
    body nested as deep as the JSON parser allows must not exhaust the stack here."""
    pending: list[tuple[str, Any]] = [("", body)]
    while pending:
        where, value = pending.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as error:
                character = f"U+{ord(value[error.start]):04X}"
                field = where or "the body"
                message = f"{field}: {character} at offset {error.start} is a lone surrogate, not Unicode text"
                return _invalid(where or "body", message, "invalid_text")
        elif isinstance(value, dict):
            for key, item in reversed(value.items()):
                shown = key.encode("utf-8", "backslashreplace").decode("utf-8")  # a key may be the bad string
                path = f"{where}.{shown}" if where else shown
                pending += [(path, item), (path, key)]
        elif isinstance(value, list):
            pending += [(f"{where}[{index}]", item) for index, item in reversed(list(enumerate(value)))]
    return None


def parse_chat_request(
    raw_body: bytes, *, model_id: str, max_tokens_limit: int, sampling_defaults: dict[str, Any]
) -> ChatRequest:
    """Validate a chat-completions request body; every refusal is an `ApiError` naming the field at fault.

    `model` is only compared with the served model's id: no request field ever names a file.
    """
    try:
        body = json.loads(raw_body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ApiError(400, f"the request body is not valid JSON: {error}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    # Before any field is used: such a string fails wherever it is encoded (tokenizer, logs, the reply).
    refusal = _unencodable_text(body)
    if refusal is not None:
        raise refusal
    model = body.get("model")
    if model is not None and model != model_id:
        raise ApiError(
            404, f"the model {model!r} does not exist; this server serves {model_id!r}", param="model",
            code="model_not_found",
        )
    unsupported = [field for field in UNSUPPORTED_FIELDS if body.get(field)]
    if unsupported:
        raise _invalid(unsupported[0], f"{', '.join(unsupported)}: not supported by this server", "unsupported")
    if body.get("n") not in (None, 1):
        raise _invalid("n", "only n = 1 is supported")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _invalid("stream", "stream must be true or false")
    seed = body.get("seed")
    if seed is not None and not (_is_integer(seed) and 0 <= seed < MAX_SEED):
        raise _invalid("seed", f"seed must be an integer from 0 to {MAX_SEED - 1}, got {seed!r}")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise _invalid("stream_options", "stream_options must be an object")
    params = SamplingParams(
        max_tokens=_max_tokens(body, max_tokens_limit),
        stop=_stop_strings(body.get("stop")),
        seed=seed,
        **_sampling(body, sampling_defaults),
    )
    return ChatRequest(
        messages=parse_messages(body.get("messages")),
        params=params,
        stream=stream,
        include_usage=bool(stream_options.get("include_usage", False)),
    )


def usage_body(completion: Completion) -> dict[str, int]:
    return {
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "total_tokens": completion.total_tokens,
    }


def completion_body(completion_id: str, created: int, model_id: str, completion: Completion) -> dict[str, Any]:
    """A non-streamed reply. The prompt opened `<think>`, so the generated text is reasoning up to `</think>`."""
    reasoning, answer = split_reasoning(THINK_OPEN + completion.text)
    message = {"role": "assistant", "content": answer, "reasoning_content": reasoning}
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model_id,
        "choices": [{"index": 0, "message": message, "finish_reason": completion.finish_reason, "logprobs": None}],
        "usage": usage_body(completion),
    }


def chunk_body(
    completion_id: str, created: int, model_id: str, delta: dict[str, str], finish_reason: str | None = None
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model_id,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
    }


def usage_chunk_body(completion_id: str, created: int, model_id: str, completion: Completion) -> dict[str, Any]:
    """The last chunk when the client asked for `stream_options.include_usage`: no choices, only the usage."""
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model_id,
        "choices": [],
        "usage": usage_body(completion),
    }


def models_body(model_id: str, created: int, context_length: int) -> dict[str, Any]:
    model = {"id": model_id, "object": "model", "created": created, "owned_by": "qft", "max_model_len": context_length}
    return {"object": "list", "data": [model]}


def server_sent_event(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n".encode()


class ReasoningStream:
    """Streamed text pieces as (field, text) deltas: `reasoning_content` until `</think>`, `content` after it.

    Each part is trimmed the way `split_reasoning` trims it, so for a reply with one `</think>` the deltas of a
    field concatenate to exactly what the non-streamed reply carries. A reply with several `</think>` switches
    to `content` at the first, where the non-streamed reply splits at the last.
    """

    def __init__(self) -> None:
        self._field = "reasoning_content"
        self._pending = ""
        self._started = False

    def feed(self, piece: str) -> list[tuple[str, str]]:
        self._pending += piece
        deltas = []
        if self._field == "reasoning_content":
            end = self._pending.find(THINK_CLOSE)
            if end < 0:
                # What may be the start of `</think>` waits for the next piece.
                held = partial_marker_length(self._pending, (THINK_CLOSE,))
                return self._release(self._pending[: len(self._pending) - held])
            deltas += self._emit(self._pending[:end].rstrip())
            self._pending = self._pending[end + len(THINK_CLOSE) :]
            self._field, self._started = "content", False
        return deltas + self._release(self._pending)

    def finish(self) -> list[tuple[str, str]]:
        """The deltas still held back once the reply has ended (a half `</think>` is reasoning after all)."""
        return self._emit(self._pending.rstrip()) if self._field == "reasoning_content" else []

    def _release(self, settled: str) -> list[tuple[str, str]]:
        # Trailing whitespace waits too: it is dropped if the part ends there.
        text = settled.rstrip()
        self._pending = self._pending[len(text) :]
        return self._emit(text)

    def _emit(self, text: str) -> list[tuple[str, str]]:
        if not self._started:
            text = text.lstrip()
        if not text:
            return []
        self._started = True
        return [(self._field, text)]
