"""Load test of `qft serve`: simulated clients send chat completions (whole, streamed, streams dropped halfway and
deliberately bad requests) in a loop until a deadline, and every request's outcome is checked and counted.

    uv run python bench/load_server.py --tiny-package --clients 50 --seconds 60    # builds and serves qwen3-tiny
    uv run python bench/load_server.py --package PACKAGE --clients 50 --seconds 60 # serves a package folder
    uv run python bench/load_server.py --url http://127.0.0.1:8000 --clients 50 --seconds 60  # a running server

Each client finishes the request it has in flight when the deadline passes and sends no other, so the run is
bounded: `seconds` plus one request per client. Every request sent ends in exactly one of 2xx, 4xx, 5xx or a
transport error. Good replies are checked against OpenAI's shapes (reasoning_content and content apart), bad
requests against the status and error code they must get. A prober reads /health once a second meanwhile, and
after the run the server's queue must empty (no generation left behind by a client that went away).

Prints a JSON report (latency percentiles, time to first token of streams, requests/s, completion tokens/s,
the status histogram, the machine's load average before and after) and writes it to --report if given.
Asserts nothing itself: tests/reliability/test_server_load.py does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from qft_core.cli.serve import API_KEY_ENV  # noqa: E402
from qft_core.config import ExportConfig, ModelConfig, PathsConfig, QftConfig, load_config  # noqa: E402

TINY_PACKAGE_NAME = "qft-load-tiny"
QUESTIONS = (
    "什么是SM4分组密码？",
    "RSA 的安全性基于什么数学难题？",
    "HMAC 和普通哈希有什么区别？",
    "解释一下 Diffie-Hellman 密钥交换。",
    "为什么 ECB 模式不安全？",
    "SM2 签名和 ECDSA 有哪些不同？",
)
SYSTEM_PROMPT = "你是密码学专家，请先推理再回答。"
# Each client walks this cycle from its own starting point, so every kind is in flight from the first second.
MIX = ("whole", "stream", "bad", "whole", "stream", "abandoned", "whole", "stream", "bad", "stream")
GOOD_KINDS = ("whole", "stream", "abandoned")
FINISH_REASONS = ("stop", "length")
SERVER_START_TIMEOUT = 300.0
HEALTH_PROBE_INTERVAL = 1.0
QUEUE_DRAIN_TIMEOUT = 60.0
MAX_PROBLEMS_REPORTED = 20
JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Target:
    """The server under load and the limits it enforces (which decide what the bad requests look like)."""

    url: str
    api_key: str | None = None
    max_request_bytes: int = ExportConfig().max_request_bytes


@dataclass(frozen=True)
class ServedModelInfo:
    model_id: str
    context_length: int


@dataclass(frozen=True)
class BadRequest:
    """A request the server must refuse with `status` (and, for API errors, `code`)."""

    name: str
    status: int
    code: str | None
    method: str = "POST"
    path: str = "/v1/chat/completions"
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON_HEADERS))


@dataclass
class Outcome:
    """What became of one request: its status (None for a transport error) and what was wrong with the reply."""

    kind: str
    latency: float
    # Seconds from the start of the run to sending the request.
    sent_at: float = 0.0
    status: int | None = None
    transport_error: str | None = None
    first_token: float | None = None
    completion_tokens: int = 0
    problem: str | None = None


def bad_requests(target: Target, info: ServedModelInfo) -> list[BadRequest]:
    """The refusals to provoke: malformed JSON, invalid fields, an unknown model, over-limit token counts, prompt
    and body sizes, the wrong method and (when the server has a key) a wrong key."""
    question = [{"role": "user", "content": QUESTIONS[0]}]

    def body(**fields: Any) -> bytes:
        return json.dumps({"messages": question, "max_tokens": 1, **fields}, ensure_ascii=False).encode()

    requests = [
        BadRequest("invalid_json", 400, "invalid_json", body=b"{not json"),
        BadRequest("wrong_role", 400, "invalid_value", body=body(messages=[{"role": "wizard", "content": "hi"}])),
        BadRequest("max_tokens_exceeded", 400, "max_tokens_exceeded", body=body(max_tokens=10**9)),
        BadRequest("unknown_model", 404, "model_not_found", body=body(model="gpt-4")),
        BadRequest("wrong_method", 405, None, method="GET"),
    ]
    # At least one token per "密钥 ", so more tokens than the context: the server has to tokenize it to tell. Only a
    # small context fits under the body limit this way.
    long_prompt = body(messages=[{"role": "user", "content": "密钥 " * info.context_length}])
    if len(long_prompt) <= target.max_request_bytes:
        requests.append(BadRequest("context_length_exceeded", 400, "context_length_exceeded", body=long_prompt))
    padding = " " * (target.max_request_bytes + 1 - len(body()))
    oversized = body()[:-1] + padding.encode() + b"}"
    requests.append(BadRequest("request_too_large", 413, "request_too_large", body=oversized))
    if target.api_key is not None:
        wrong_key = {**JSON_HEADERS, "Authorization": "Bearer not-the-key"}
        requests.append(BadRequest("wrong_api_key", 401, "invalid_api_key", body=body(), headers=wrong_key))
    return requests



def good_body(rng: random.Random, info: ServedModelInfo, max_tokens: int, *, stream: bool) -> dict[str, Any]:
    """A chat request with a random question and sampling; a short reply, so that the request loop is bounded."""
    messages = [{"role": "user", "content": rng.choice(QUESTIONS)}]
    if rng.random() < 0.3:
        messages.insert(0, {"role": "system", "content": SYSTEM_PROMPT})
    body: dict[str, Any] = {"model": info.model_id, "messages": messages, "max_tokens": rng.randint(1, max_tokens)}
    temperature = rng.choice((0.0, 0.7, 1.0))
    body["temperature"] = temperature
    if temperature > 0:
        body["seed"] = rng.randrange(2**31)
    if rng.random() < 0.2:
        body["stop"] = ["。", "\n\n"]
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


class ReplyProblem(Exception):
    """A 2xx reply that is not what the API promises."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ReplyProblem(message)


def check_usage(usage: Any, max_tokens: int) -> int:
    """The reply's completion tokens, after checking the usage block adds up."""
    _check(isinstance(usage, dict), f"usage is {usage!r}")
    prompt, completion, total = (usage.get(key) for key in ("prompt_tokens", "completion_tokens", "total_tokens"))
    _check(all(isinstance(value, int) for value in (prompt, completion, total)), f"usage not integers: {usage}")
    _check(prompt > 0 and 0 <= completion <= max_tokens, f"usage out of range (max_tokens {max_tokens}): {usage}")
    _check(total == prompt + completion, f"usage does not add up: {usage}")
    return completion


def check_finish(finish_reason: Any, completion_tokens: int, max_tokens: int) -> None:
    _check(finish_reason in FINISH_REASONS, f"finish_reason is {finish_reason!r}")
    _check(finish_reason != "length" or completion_tokens == max_tokens, "finish_reason length before max_tokens")


def check_completion(body: Any, info: ServedModelInfo, max_tokens: int) -> int:
    """A whole reply in OpenAI's shape, reasoning and answer apart; returns its completion tokens."""
    _check(isinstance(body, dict), "the body is not an object")
    _check(str(body.get("id", "")).startswith("chatcmpl-"), f"id is {body.get('id')!r}")
    _check(body.get("object") == "chat.completion", f"object is {body.get('object')!r}")
    _check(body.get("model") == info.model_id and isinstance(body.get("created"), int), "model or created wrong")
    choices = body.get("choices")
    _check(isinstance(choices, list) and len(choices) == 1 and choices[0].get("index") == 0, "not one choice")
    message = choices[0].get("message")
    _check(isinstance(message, dict) and message.get("role") == "assistant", f"message is {message!r}")
    _check(
        isinstance(message.get("content"), str) and isinstance(message.get("reasoning_content"), str),
        f"content and reasoning_content must both be strings: {message!r}",
    )
    completion_tokens = check_usage(body.get("usage"), max_tokens)
    check_finish(choices[0].get("finish_reason"), completion_tokens, max_tokens)
    return completion_tokens


class StreamChecker:
    """Server-sent events of one streamed reply, checked as they arrive: one id throughout, the role first, text
    deltas of reasoning_content or content, one finish_reason at the end, the usage chunk, then [DONE]."""

    def __init__(self, info: ServedModelInfo, max_tokens: int) -> None:
        self.info = info
        self.max_tokens = max_tokens
        self.chunks = 0
        self.completion_id: str | None = None
        self.finish_reason: str | None = None
        self.completion_tokens: int | None = None
        self.done = False

    def feed(self, line: str) -> bool:
        """Check one line of the body; True when it carried text of the reply."""
        if not line:
            return False
        _check(line.startswith("data: ") and not self.done, f"unexpected line {line[:80]!r}")
        data = line.removeprefix("data: ")
        if data == "[DONE]":
            self.done = True
            return False
        chunk = json.loads(data)
        _check(chunk.get("object") == "chat.completion.chunk", f"chunk object is {chunk.get('object')!r}")
        _check(chunk.get("model") == self.info.model_id, f"chunk model is {chunk.get('model')!r}")
        self.completion_id = self.completion_id or chunk.get("id")
        _check(chunk.get("id") == self.completion_id and self.completion_id.startswith("chatcmpl-"), "chunk ids differ")
        self.chunks += 1
        if not chunk.get("choices"):
            _check(self.finish_reason is not None and self.completion_tokens is None, "usage chunk out of place")
            self.completion_tokens = check_usage(chunk.get("usage"), self.max_tokens)
            return False
        _check(self.finish_reason is None, "a chunk after the finish_reason")
        choice = chunk["choices"][0]
        delta = choice.get("delta")
        if self.chunks == 1:
            _check(delta == {"role": "assistant", "content": ""}, f"first delta is {delta!r}")
            return False
        if choice.get("finish_reason") is not None:
            _check(delta == {}, f"the finishing delta is {delta!r}")
            self.finish_reason = choice["finish_reason"]
            return False
        _check(isinstance(delta, dict) and len(delta) == 1, f"delta is {delta!r}")
        [(field_name, text)] = delta.items()
        _check(field_name in ("reasoning_content", "content") and isinstance(text, str) and text, f"delta is {delta!r}")
        return True

    def finish(self) -> int:
        """The completion tokens of a stream read to its end, after checking it ended as promised."""
        _check(self.done, "the stream ended without [DONE]")
        _check(self.completion_tokens is not None, "no usage chunk")
        check_finish(self.finish_reason, self.completion_tokens, self.max_tokens)
        return self.completion_tokens


def check_error(response: httpx.Response, expected: BadRequest) -> None:
    status = response.status_code
    _check(status == expected.status, f"{expected.name}: got {status}, not {expected.status}")
    error = response.json().get("error")
    _check(
        isinstance(error, dict) and set(error) == {"message", "type", "param", "code"} and bool(error["message"]),
        f"{expected.name}: not an OpenAI error: {response.text[:200]}",
    )
    _check(error["code"] == expected.code, f"{expected.name}: code {error['code']!r}, not {expected.code!r}")


async def send_whole(http: httpx.AsyncClient, body: dict[str, Any], info: ServedModelInfo, outcome: Outcome) -> None:
    response = await http.post("/v1/chat/completions", json=body)
    outcome.status = response.status_code
    _check(response.status_code == 200, f"status {response.status_code}: {response.text[:200]}")
    outcome.completion_tokens = check_completion(response.json(), info, body["max_tokens"])


async def send_stream(
    http: httpx.AsyncClient, body: dict[str, Any], info: ServedModelInfo, outcome: Outcome, began: float, *, drop: bool
) -> None:
    """A streamed request; with `drop`, the client goes away after the first text (or, failing that, at the end)."""
    checker = StreamChecker(info, body["max_tokens"])
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        outcome.status = response.status_code
        if response.status_code != 200:
            await response.aread()
            raise ReplyProblem(f"status {response.status_code}: {response.text[:200]}")
        content_type = response.headers.get("content-type", "")
        _check(content_type.startswith("text/event-stream"), f"content-type is {content_type!r}")
        async for line in response.aiter_lines():
            if checker.feed(line) and outcome.first_token is None:
                outcome.first_token = time.monotonic() - began
                if drop:
                    return
    outcome.completion_tokens = checker.finish()


async def send_bad(http: httpx.AsyncClient, request: BadRequest, outcome: Outcome) -> None:
    response = await http.request(request.method, request.path, content=request.body or None, headers=request.headers)
    outcome.status = response.status_code
    check_error(response, request)


class LoadRun:
    """One load run against `target`: the clients, the health prober and every outcome."""

    def __init__(self, target: Target, info: ServedModelInfo, *, max_tokens: int, seed: int, timeout: float) -> None:
        self.target = target
        self.info = info
        self.max_tokens = max_tokens
        self.seed = seed
        self.timeout = timeout
        self.bad = bad_requests(target, info)
        self.bad_turn = 0
        self.outcomes: list[Outcome] = []
        self.health: list[Outcome] = []
        self.max_waiting = 0
        self.started = time.monotonic()

    def client(self) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.target.api_key}"} if self.target.api_key else {}
        return httpx.AsyncClient(base_url=self.target.url, headers=headers, timeout=self.timeout)

    async def run_client(self, index: int, deadline: float) -> None:
        rng = random.Random(self.seed * 1_000_003 + index)
        async with self.client() as http:
            turn = index
            while time.monotonic() < deadline:
                kind = MIX[turn % len(MIX)]
                turn += 1
                self.outcomes.append(await self.send(http, kind, rng))

    async def send(self, http: httpx.AsyncClient, kind: str, rng: random.Random) -> Outcome:
        began = time.monotonic()
        outcome = Outcome(kind=kind, latency=0.0, sent_at=began - self.started)
        try:
            if kind == "bad":
                # The bad requests take turns across all clients, so each kind is sent early in the run.
                request = self.bad[self.bad_turn % len(self.bad)]
                self.bad_turn += 1
                outcome.kind = f"bad:{request.name}"
                await send_bad(http, request, outcome)
            elif kind == "whole":
                await send_whole(http, good_body(rng, self.info, self.max_tokens, stream=False), self.info, outcome)
            else:
                body = good_body(rng, self.info, self.max_tokens, stream=True)
                await send_stream(http, body, self.info, outcome, began, drop=kind == "abandoned")
        except httpx.TransportError as error:
            outcome.status, outcome.transport_error = None, type(error).__name__
        except (ReplyProblem, ValueError, KeyError, TypeError, AttributeError) as error:
            outcome.problem = f"{outcome.kind}: {type(error).__name__}: {error}"
        outcome.latency = time.monotonic() - began
        return outcome

    async def probe_health(self, stop: asyncio.Event) -> None:
        async with self.client() as http:
            while not stop.is_set():
                began = time.monotonic()
                outcome = Outcome(kind="health", latency=0.0, sent_at=began - self.started)
                try:
                    response = await http.get("/health")
                    outcome.status = response.status_code
                    self.max_waiting = max(self.max_waiting, int(response.json().get("waiting", 0)))
                except httpx.TransportError as error:
                    outcome.transport_error = type(error).__name__
                outcome.latency = time.monotonic() - began
                self.health.append(outcome)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), HEALTH_PROBE_INTERVAL)

    async def waiting_after_drain(self) -> int:
        """Generations still queued or running once every client is done; 0 unless the server lost track of one."""
        async with self.client() as http:
            deadline = time.monotonic() + QUEUE_DRAIN_TIMEOUT
            while True:
                waiting = int((await http.get("/health")).json().get("waiting", 0))
                if waiting == 0 or time.monotonic() > deadline:
                    return waiting
                await asyncio.sleep(0.2)

    async def run(self, clients: int, seconds: float) -> dict[str, Any]:
        load_before = os.getloadavg()
        self.started = time.monotonic()
        stop = asyncio.Event()
        prober = asyncio.create_task(self.probe_health(stop))
        await asyncio.gather(*(self.run_client(index, self.started + seconds) for index in range(clients)))
        wall = time.monotonic() - self.started
        stop.set()
        await prober
        waiting_after = await self.waiting_after_drain()
        return self.report(clients, seconds, wall, load_before, os.getloadavg(), waiting_after)

    def report(
        self,
        clients: int,
        seconds: float,
        wall: float,
        load_before: tuple[float, float, float],
        load_after: tuple[float, float, float],
        waiting_after: int,
    ) -> dict[str, Any]:
        outcomes = self.outcomes
        good = [outcome for outcome in outcomes if outcome.kind in GOOD_KINDS]
        bad = [outcome for outcome in outcomes if outcome.kind.startswith("bad:")]
        ok = [outcome for outcome in good if outcome.status == 200 and outcome.problem is None]
        # Dropped streams never see their usage; replies and tokens/s count the replies read to the end.
        replies = [outcome for outcome in ok if outcome.kind != "abandoned"]
        streams = [outcome.first_token for outcome in good if outcome.first_token is not None]
        tokens = sum(outcome.completion_tokens for outcome in replies)
        problems = [outcome.problem for outcome in outcomes if outcome.problem]
        return {
            "target": self.target.url,
            "model": self.info.model_id,
            "clients": clients,
            "seconds": seconds,
            "wall_s": round(wall, 2),
            "max_tokens": self.max_tokens,
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "load_average_before": [round(value, 2) for value in load_before],
                "load_average_after": [round(value, 2) for value in load_after],
            },
            "requests": status_classes(outcomes),
            "status_histogram": status_histogram(outcomes),
            "transport_errors": dict(Counter(o.transport_error for o in outcomes if o.transport_error)),
            "by_kind": {
                kind: {
                    "sent": len(group),
                    "status": status_histogram(group),
                    "latency_s": percentiles([outcome.latency for outcome in group]),
                }
                for kind, group in sorted(_group_by_kind(outcomes).items())
            },
            "bad_requests": {
                "sent": len(bad),
                "kinds": sorted({outcome.kind.removeprefix("bad:") for outcome in bad}),
                "kinds_defined": sorted(request.name for request in self.bad),
                "unexpected": sum(1 for outcome in bad if outcome.problem),
                "slowest": slowest(bad),
            },
            "good_requests": {"sent": len(good), "ok": len(ok), "malformed": sum(1 for o in good if o.problem)},
            "problems": problems[:MAX_PROBLEMS_REPORTED],
            "latency_s": {
                "all": percentiles([outcome.latency for outcome in outcomes]),
                "whole": percentiles([o.latency for o in outcomes if o.kind == "whole"]),
                "stream": percentiles([o.latency for o in outcomes if o.kind == "stream"]),
                "bad": percentiles([outcome.latency for outcome in bad]),
            },
            "time_to_first_token_s": percentiles(streams),
            "throughput": {
                "requests_per_s": round(len(outcomes) / wall, 2),
                "replies": len(replies),
                "replies_per_s": round(len(replies) / wall, 2),
                "completion_tokens": tokens,
                "completion_tokens_per_s": round(tokens / wall, 2),
            },
            "health": {
                "probes": len(self.health),
                "status_histogram": status_histogram(self.health),
                "latency_s": percentiles([outcome.latency for outcome in self.health]),
                "max_waiting": self.max_waiting,
                "slowest": slowest(self.health),
            },
            "waiting_after_load": waiting_after,
        }


def _group_by_kind(outcomes: list[Outcome]) -> dict[str, list[Outcome]]:
    groups: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        groups.setdefault(outcome.kind, []).append(outcome)
    return groups


def slowest(outcomes: list[Outcome], count: int = 5) -> list[dict[str, Any]]:
    """The slowest requests, with when they were sent: a slow start and a slow end are different stories."""
    ranked = sorted(outcomes, key=lambda outcome: outcome.latency, reverse=True)[:count]
    return [
        {"kind": o.kind, "sent_at_s": round(o.sent_at, 2), "latency_s": round(o.latency, 3)} for o in ranked
    ]


def status_classes(outcomes: list[Outcome]) -> dict[str, int]:
    """sent = 2xx + 4xx + 5xx + transport_errors (+ other, statuses of no such class)."""
    classes = Counter(
        "transport_errors" if outcome.status is None else f"{outcome.status // 100}xx" for outcome in outcomes
    )
    counts = {"sent": len(outcomes), **{key: classes.pop(key, 0) for key in ("2xx", "4xx", "5xx", "transport_errors")}}
    counts["other"] = sum(classes.values())
    return counts


def status_histogram(outcomes: list[Outcome]) -> dict[str, int]:
    counts = Counter("transport_error" if o.status is None else str(o.status) for o in outcomes)
    return dict(sorted(counts.items()))


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    """Nearest-rank p50/p95/p99 and the maximum, in seconds."""
    ordered = sorted(values)

    def rank(percent: float) -> float | None:
        return round(ordered[max(math.ceil(percent / 100 * len(ordered)) - 1, 0)], 3) if ordered else None

    return {"count": len(ordered), "p50": rank(50), "p95": rank(95), "p99": rank(99), "max": rank(100)}


async def served_model_info(target: Target) -> ServedModelInfo:
    headers = {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}
    async with httpx.AsyncClient(base_url=target.url, headers=headers, timeout=30) as http:
        response = await http.get("/v1/models")
        response.raise_for_status()
        model = response.json()["data"][0]
    return ServedModelInfo(model["id"], int(model["max_model_len"]))


async def run_load(
    target: Target, *, clients: int, seconds: float, max_tokens: int = 16, seed: int = 0, timeout: float = 600.0
) -> dict[str, Any]:
    """Load `target` with `clients` clients for `seconds` and report what happened (see the module docstring)."""
    info = await served_model_info(target)
    run = LoadRun(target, info, max_tokens=max_tokens, seed=seed, timeout=timeout)
    return await run.run(clients, seconds)


def build_tiny_package(out_dir: Path) -> Path:
    """A deployment package of qwen3-tiny (built in the project's model cache once, random weights) in `out_dir`."""
    from qft_core.model.registry import ensure_model_dir, resolve_model
    from qft_core.package.bundle import build_package
    from qft_core.package.model_card import ModelCardInfo

    tiny = ensure_model_dir(resolve_model(ModelConfig(name="qwen3-tiny"), PathsConfig()))
    metadata = {"config": QftConfig().model_dump(mode="json"), "data_hash": "load-test", "metrics": {}}
    card = ModelCardInfo(TINY_PACKAGE_NAME, "qwen3-tiny")
    return build_package(tiny, Path(out_dir) / TINY_PACKAGE_NAME, metadata=metadata, model_card=card)


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serving(
    package_dir: Path, log_path: Path, *, config: Path | None = None, api_key: str | None = None
) -> Iterator[str]:
    """`qft serve package_dir` in its own process on a free loopback port, until the block ends; yields its URL.
    The server's output goes to `log_path` (a pipe nobody reads would stall it once full)."""
    port = free_loopback_port()
    options = ["--config", str(config)] if config else []
    command = [sys.executable, "-m", "qft_core.cli", *options, "serve", str(package_dir)]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    environment = {key: value for key, value in os.environ.items() if key != API_KEY_ENV}
    if api_key:
        environment[API_KEY_ENV] = api_key
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment, cwd=REPO_ROOT)
    try:
        _wait_until_healthy(url, server, log_path)
        yield url
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _wait_until_healthy(url: str, server: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"qft serve exited with status {server.returncode}; its log: {log_path}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"qft serve did not answer /health within {SERVER_START_TIMEOUT:.0f} s; its log: {log_path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000")
    where.add_argument("--package", type=Path, help="package folder to serve with `qft serve` for the run")
    where.add_argument("--tiny-package", action="store_true", help="build a qwen3-tiny package and serve it")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--max-tokens", type=int, default=16, help="largest max_tokens of a good request")
    parser.add_argument("--api-key", help=f"key the server requires (a started server gets it; default ${API_KEY_ENV})")
    parser.add_argument("--config", type=Path, help="qft config of a started server (its export limits apply)")
    parser.add_argument("--max-request-bytes", type=int, help="body limit of the --url server (default: export's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one request may take")
    parser.add_argument("--report", type=Path, help="also write the JSON report here")
    args = parser.parse_args(argv)

    api_key = args.api_key or os.environ.get(API_KEY_ENV)
    export = load_config(args.config).export

    def load(url: str) -> dict[str, Any]:
        target = Target(url, api_key, args.max_request_bytes or export.max_request_bytes)
        return asyncio.run(
            run_load(target, clients=args.clients, seconds=args.seconds, max_tokens=args.max_tokens,
                     seed=args.seed, timeout=args.timeout)
        )

    with tempfile.TemporaryDirectory(prefix="qft-load-") as scratch:
        if args.url:
            report = load(args.url)
        else:
            package = build_tiny_package(Path(scratch)) if args.tiny_package else args.package
            log_path = Path(scratch) / "server.log"
            with serving(package, log_path, config=args.config, api_key=api_key) as url:
                report = load(url)
    text = json.dumps(report, indent=2, ensure_ascii=False)
    print(text)
    if args.report:
        args.report.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
