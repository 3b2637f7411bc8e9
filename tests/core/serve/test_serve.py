"""Serving a package over OpenAI's chat-completions API, over real HTTP: replies split into reasoning and answer,
streams that add up to the same reply, the API key, size and token limits, errors in OpenAI's format; requests
queueing for the one model (in order, one at a time, /health free meanwhile, bounded, dropped when their client
leaves); the request parser and the reasoning splitter on their own; and the vLLM command line."""

from __future__ import annotations

import argparse
import json
import shlex
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from transformers import AutoTokenizer

from qft_core.cli import main
from qft_core.cli.serve import add_serve_commands, cmd_serve
from qft_core.config import ModelConfig, PathsConfig, QftConfig
from qft_core.model.chat import split_reasoning
from qft_core.model.registry import ensure_model_dir, resolve_model
from qft_core.package.bundle import build_package
from qft_core.package.layout import PackageError
from qft_core.package.model_card import ModelCardInfo
from qft_core.serve.openai_api import ChatRequest, ReasoningStream, parse_chat_request
from qft_core.serve.served_model import Completion, SamplingParams, ServedModel
from qft_core.serve.server import ServerSettings, create_app
from qft_core.serve.vllm import gpu_serving_lines, sglang_command, vllm_command
from tests.core.serve.uvicorn_thread import running

MODEL_ID = "qft-serve-test"
API_KEY = "s3cret-key"
MAX_TOKENS = 8
MAX_BODY = 4096
QUESTION = [{"role": "user", "content": "SM2"}]


@pytest.fixture(scope="module")
def package_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The project's model cache: qwen3-tiny is built there once (atomically, under a lock) and reused.
    tiny = ensure_model_dir(resolve_model(ModelConfig(name="qwen3-tiny"), PathsConfig()))
    metadata = {"config": QftConfig().model_dump(mode="json"), "data_hash": "test", "metrics": {}}
    out = tmp_path_factory.mktemp("serve") / MODEL_ID
    return build_package(tiny, out, metadata=metadata, model_card=ModelCardInfo(MODEL_ID, "qwen3-tiny"))


@pytest.fixture(scope="module")
def served(package_dir: Path) -> ServedModel:
    return ServedModel.load(package_dir, device="cpu")


@pytest.fixture(scope="module")
def client(served: ServedModel) -> Iterator[httpx.Client]:
    settings = ServerSettings(max_request_bytes=MAX_BODY, max_tokens_limit=MAX_TOKENS)
    with running(create_app(served, settings)) as url, httpx.Client(base_url=url, timeout=60) as http:
        yield http


@pytest.fixture(scope="module")
def keyed_client(served: ServedModel) -> Iterator[httpx.Client]:
    settings = ServerSettings(api_key=API_KEY, max_request_bytes=100_000, max_tokens_limit=MAX_TOKENS)
    with running(create_app(served, settings)) as url, httpx.Client(base_url=url, timeout=60) as http:
        yield http


def chat(client: httpx.Client, **fields) -> httpx.Response:
    return client.post("/v1/chat/completions", json={"model": MODEL_ID, "messages": QUESTION, **fields})


def events(response: httpx.Response) -> list[str]:
    lines = [line for line in response.text.split("\n\n") if line]
    assert all(line.startswith("data: ") for line in lines), lines
    return [line.removeprefix("data: ") for line in lines]


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code
    return error


def served_params(max_tokens: int, **fields):
    return parse_chat_request(
        json.dumps({"messages": QUESTION, "max_tokens": max_tokens, "temperature": 0, **fields}).encode(),
        model_id=MODEL_ID,
        max_tokens_limit=MAX_TOKENS,
        sampling_defaults={},
    ).params


def test_health_reports_the_model(client: httpx.Client) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "model": MODEL_ID, "waiting": 0}


def test_models_lists_the_package_model(client: httpx.Client) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    assert [(model["id"], model["object"], model["max_model_len"]) for model in body["data"]] == [
        (MODEL_ID, "model", 4096)
    ]


def test_completion_splits_reasoning_from_answer_and_counts_tokens(
    client: httpx.Client, package_dir: Path, served: ServedModel
) -> None:
    response = chat(client, temperature=0, max_tokens=6)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == MODEL_ID
    choice = body["choices"][0]
    assert set(choice["message"]) == {"role", "content", "reasoning_content"}
    tokenizer = AutoTokenizer.from_pretrained(package_dir)
    prompt = tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    usage = body["usage"]
    assert usage["prompt_tokens"] == len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert 1 <= usage["completion_tokens"] <= 6
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert choice["finish_reason"] == ("length" if usage["completion_tokens"] == 6 else "stop")
    # The prompt opened <think>: what the model wrote before any </think> is reasoning.
    greedy = served.generate(served.prompt_ids(QUESTION), served_params(6)).text
    assert (choice["message"]["reasoning_content"], choice["message"]["content"]) == split_reasoning(
        "<think>" + greedy
    )


def test_stream_deltas_add_up_to_the_greedy_completion(client: httpx.Client) -> None:
    whole = chat(client, temperature=0, max_tokens=MAX_TOKENS).json()

    streamed = chat(client, temperature=0, max_tokens=MAX_TOKENS, stream=True, stream_options={"include_usage": True})

    assert streamed.status_code == 200
    assert streamed.headers["content-type"].startswith("text/event-stream")
    data = events(streamed)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(item) for item in data[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" and chunk["id"] == chunks[0]["id"] for chunk in chunks)
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks if chunk["choices"]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    message = whole["choices"][0]["message"]
    assert "".join(delta.get("reasoning_content", "") for delta in deltas) == message["reasoning_content"]
    assert "".join(delta.get("content", "") for delta in deltas) == message["content"]
    assert len(deltas) > 2, "the reply should arrive in several pieces"
    finishes = [chunk["choices"][0]["finish_reason"] for chunk in chunks if chunk["choices"]]
    assert finishes == [None] * (len(finishes) - 1) + [whole["choices"][0]["finish_reason"]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


def test_stop_string_ends_the_reply_before_it(client: httpx.Client) -> None:
    reasoning = chat(client, temperature=0, max_tokens=MAX_TOKENS).json()["choices"][0]["message"]["reasoning_content"]
    stop = reasoning[len(reasoning) // 2 : len(reasoning) // 2 + 3]

    body = chat(client, temperature=0, max_tokens=MAX_TOKENS, stop=[stop]).json()

    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][0]["message"]["reasoning_content"] == reasoning[: reasoning.find(stop)].strip()
    assert body["usage"]["completion_tokens"] < MAX_TOKENS


def test_sampling_with_a_seed_repeats(client: httpx.Client) -> None:
    first, second = (chat(client, temperature=1.0, top_p=0.9, seed=7, max_tokens=4).json() for _ in range(2))
    assert first["choices"][0]["message"] == second["choices"][0]["message"]


def test_api_key_is_required_when_set(keyed_client: httpx.Client) -> None:
    assert_openai_error(keyed_client.get("/v1/models"), 401, "invalid_api_key")
    wrong = keyed_client.get("/v1/models", headers={"Authorization": "Bearer wrong"})
    assert_openai_error(wrong, 401, "invalid_api_key")
    assert wrong.headers["www-authenticate"] == "Bearer"
    assert_openai_error(chat(keyed_client, max_tokens=1), 401, "invalid_api_key")

    authorized = {"Authorization": f"Bearer {API_KEY}"}
    assert keyed_client.get("/v1/models", headers=authorized).status_code == 200
    reply = keyed_client.post(
        "/v1/chat/completions", headers=authorized, json={"messages": QUESTION, "max_tokens": 1, "temperature": 0}
    )
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 1
    assert keyed_client.get("/health").status_code == 200


def test_oversized_body_is_413(client: httpx.Client) -> None:
    big = [{"role": "user", "content": "密" * MAX_BODY}]
    assert_openai_error(client.post("/v1/chat/completions", json={"messages": big}), 413, "request_too_large")


def test_max_tokens_over_the_limit_is_400(client: httpx.Client) -> None:
    error = assert_openai_error(chat(client, max_tokens=MAX_TOKENS + 1), 400, "max_tokens_exceeded")
    assert error["param"] == "max_tokens"
    assert str(MAX_TOKENS) in error["message"]


def test_prompt_beyond_the_context_is_400(keyed_client: httpx.Client) -> None:
    long_question = [{"role": "user", "content": "密钥" * 4200}]
    response = keyed_client.post(
        "/v1/chat/completions",
        headers={"Authorization": f"Bearer {API_KEY}"},
        json={"messages": long_question, "max_tokens": 1},
    )
    assert_openai_error(response, 400, "context_length_exceeded")


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (b"[" * 3000, 400, None),
        (b'{"model": "qft-serve-test"}', 400, "messages"),
        (b'{"messages": []}', 400, "messages"),
        (b'{"messages": [{"role": "wizard", "content": "hi"}]}', 400, "messages[0].role"),
        (b'{"messages": [{"role": "system", "content": "only a system prompt"}]}', 400, "messages"),
        (b'{"messages": [{"role": "user", "content": 42}]}', 400, "messages[0].content"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 3}', 400, "temperature"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b", "c", "d", "e"]}', 400, "stop"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "n": 2}', 400, "n"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "seed": -1}', 400, "seed"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "model": "gpt-4"}', 404, "model"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "model": "../../etc/passwd"}', 404, "model"),
    ],
    ids=[
        "bad-json", "not-an-object", "deeply-nested", "no-messages", "empty-messages", "wrong-role", "no-user",
        "bad-content", "temperature", "too-many-stops", "n", "seed", "unknown-model", "model-as-path",
    ],
)
def test_bad_requests_get_openai_errors(client: httpx.Client, body: bytes, status: int, param: str | None) -> None:
    response = client.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    error = assert_openai_error(response, status)
    assert error["param"] == param


def test_unknown_path_and_wrong_method_get_openai_errors(client: httpx.Client) -> None:
    assert_openai_error(client.get("/v1/nothing"), 404, "not_found")
    assert_openai_error(client.get("/v1/chat/completions"), 405)


class GatedModel:
    """The tiny package's model holding each piece of text until the test opens `gate` (or the request is
    cancelled): the test decides when a generation moves on, and sees which ran, in which order, how they ended."""

    def __init__(self, served: ServedModel) -> None:
        self._served = served
        self.gate = threading.Event()
        self.started: list[list[int]] = []
        self.completions: list[Completion] = []
        self.running = 0
        self.most_at_once = 0

    def __getattr__(self, name: str):
        return getattr(self._served, name)

    def generate(self, prompt_ids: list[int], params: SamplingParams, *, on_text=None, cancelled=None) -> Completion:
        self.started.append(prompt_ids)
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)

        def held(piece: str) -> None:
            while not self.gate.wait(0.01):
                if cancelled():
                    return
            if on_text is not None:
                on_text(piece)

        try:
            completion = self._served.generate(prompt_ids, params, on_text=held, cancelled=cancelled)
        finally:
            self.running -= 1
        self.completions.append(completion)
        return completion


@pytest.fixture
def gated_server(served: ServedModel, request: pytest.FixtureRequest) -> Iterator[tuple[GatedModel, str]]:
    """A server of a `GatedModel`; `max_waiting_generations` may be given as the fixture's parameter."""
    model = GatedModel(served)
    settings = ServerSettings(max_tokens_limit=64, max_waiting_generations=getattr(request, "param", 256))
    with running(create_app(model, settings)) as url:
        try:
            yield model, url
        finally:
            model.gate.set()


def ask(question: str, max_tokens: int = 4, **fields) -> dict:
    return {"messages": [{"role": "user", "content": question}], "max_tokens": max_tokens, "temperature": 0, **fields}


def post(url: str, body: dict, **options) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=options.pop("timeout", 60), **options)


def waiting(url: str) -> int:
    return httpx.get(f"{url}/health", timeout=30).json()["waiting"]


def until(condition: Callable[[], bool], what: str) -> None:
    """Wait for `condition`: how these tests order their requests (a bound against hanging, not a timing check)."""
    for _ in range(3000):
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"gave up waiting for {what}")


def test_health_answers_while_a_generation_holds_the_model(gated_server: tuple[GatedModel, str]) -> None:
    model, url = gated_server
    with ThreadPoolExecutor(1) as pool:
        reply = pool.submit(post, url, ask("A"))
        until(lambda: model.started, "the generation to start")

        health = httpx.get(f"{url}/health", timeout=5)

        model.gate.set()
        assert reply.result().status_code == 200
    assert health.status_code == 200 and health.json()["waiting"] == 1


def test_queued_generations_run_one_at_a_time_in_arrival_order(
    gated_server: tuple[GatedModel, str], served: ServedModel
) -> None:
    model, url = gated_server
    questions = ["A", "B", "C", "D", "E"]
    with ThreadPoolExecutor(len(questions)) as pool:
        replies = []
        for count, question in enumerate(questions, start=1):
            body = ask(question, stream=count % 2 == 0)
            replies.append(pool.submit(post, url, body))
            until(lambda count=count: waiting(url) == count, f"request {question} to queue")
        model.gate.set()
        statuses = [reply.result().status_code for reply in replies]

    assert statuses == [200] * len(questions)
    assert model.started == [served.prompt_ids([{"role": "user", "content": q}]) for q in questions]
    assert model.most_at_once == 1
    assert waiting(url) == 0


@pytest.mark.parametrize("gated_server", [2], indirect=True)
def test_a_full_queue_is_refused_with_503_and_retry_after(gated_server: tuple[GatedModel, str]) -> None:
    model, url = gated_server
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(post, url, ask("A"))
        until(lambda: model.started, "the first generation to start")
        second = pool.submit(post, url, ask("B"))
        until(lambda: waiting(url) == 2, "the second request to queue")

        refused = post(url, ask("C"))

        model.gate.set()
        assert [first.result().status_code, second.result().status_code] == [200, 200]
    assert_openai_error(refused, 503, "server_busy")
    assert refused.headers["retry-after"] == "5"
    assert len(model.started) == 2


def test_a_stream_dropped_mid_reply_stops_its_generation(gated_server: tuple[GatedModel, str]) -> None:
    model, url = gated_server
    body = ask("A", max_tokens=64, stream=True)
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as response:
        first = json.loads(next(response.iter_lines()).removeprefix("data: "))
        until(lambda: model.started, "the generation to start")
    # The client left with the generation held at its first piece; the gate never opens.

    until(lambda: model.completions, "the dropped generation to stop")

    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert model.completions[0].completion_tokens < 64
    assert waiting(url) == 0


def test_requests_whose_clients_left_while_queued_never_run(
    gated_server: tuple[GatedModel, str], served: ServedModel
) -> None:
    model, url = gated_server
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(post, url, ask("A"))
        until(lambda: model.started, "the first generation to start")
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=ask("B", stream=True), timeout=30) as response:
            next(response.iter_lines())  # the role chunk comes at once, before the model is free
        with pytest.raises(httpx.ReadTimeout):
            post(url, ask("C"), timeout=httpx.Timeout(30, read=0.5))
        until(lambda: waiting(url) == 1, "the server to notice both clients left")

        model.gate.set()
        assert held.result().status_code == 200

    until(lambda: waiting(url) == 0, "the queue to empty")
    assert model.started == [served.prompt_ids([{"role": "user", "content": "A"}])]


def parse(body: dict, **sampling_defaults) -> ChatRequest:
    return parse_chat_request(
        json.dumps(body).encode(), model_id=MODEL_ID, max_tokens_limit=8, sampling_defaults=sampling_defaults
    )


def test_request_parser_maps_openai_fields_to_sampling() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "你是密码学专家。"},
            {"role": "user", "content": [{"type": "text", "text": "什么是"}, {"type": "text", "text": "SM4？"}]},
        ],
        "max_completion_tokens": 5,
        "top_p": 0.5,
        "stop": "。",
        "stream": True,
    }
    request = parse(body, temperature=0.6, top_k=20)

    assert request.messages[1] == {"role": "user", "content": "什么是SM4？"}
    params = request.params
    assert (params.max_tokens, params.temperature, params.top_p, params.top_k, params.stop) == (5, 0.6, 0.5, 20, ("。",))
    assert request.stream and not request.include_usage


def test_request_parser_defaults_to_the_token_limit_and_openai_temperature() -> None:
    params = parse({"messages": [{"role": "user", "content": "hi"}]}).params
    assert (params.max_tokens, params.temperature, params.top_p, params.top_k, params.seed) == (8, 1.0, 1.0, 0, None)


REPLIES = [
    "先想一想。\n</think>\n\nSM4 是分组密码。",
    "\n\n推理  \n</think>答案  \n",
    "只有推理，没有结束",
    "</think>\n\n直接回答",
    "尾巴是半个标签 </thi",
    "  ",
]


@pytest.mark.parametrize("reply", REPLIES)
def test_reasoning_stream_matches_split_reasoning_at_every_cut(reply: str) -> None:
    expected = split_reasoning("<think>" + reply)
    for cut in range(len(reply) + 1):
        for pieces in ([reply[:cut], reply[cut:]], list(reply)):
            stream = ReasoningStream()
            deltas = [delta for piece in pieces for delta in stream.feed(piece)] + stream.finish()
            reasoning = "".join(text for field, text in deltas if field == "reasoning_content")
            answer = "".join(text for field, text in deltas if field == "content")
            assert (reasoning, answer) == expected, (reply, cut, deltas)
            assert all(text for _, text in deltas)


def fake_package(directory: Path, quantization: dict | None) -> Path:
    directory.mkdir()
    metadata = {"package_name": "qft-crypto-zh", "quantization": quantization}
    (directory / "qft_metadata.json").write_text(json.dumps(metadata), encoding="utf-8")
    return directory


def test_vllm_command_serves_the_package_with_the_reasoning_parser(tmp_path: Path) -> None:
    package = fake_package(tmp_path / "pkg", None)

    command = vllm_command(package, max_model_len=8192, port=8001, tensor_parallel_size=2)

    assert command[:3] == ["vllm", "serve", str(package)]
    options = dict(zip(command[3::2], command[4::2], strict=True))
    assert options == {
        "--served-model-name": "qft-crypto-zh",
        "--reasoning-parser": "deepseek_r1",
        "--max-model-len": "8192",
        "--host": "127.0.0.1",
        "--port": "8001",
        "--tensor-parallel-size": "2",
        "--gpu-memory-utilization": "0.9",
        "--load-format": "safetensors",
        "--generation-config": "auto",
    }
    assert vllm_command(package, served_model_name="other")[4] == "other"


def test_sglang_command_serves_the_package_with_the_qwen3_thinking_parser(tmp_path: Path) -> None:
    package = fake_package(tmp_path / "pkg", None)

    command = sglang_command(package, context_length=8192, port=8001, tensor_parallel_size=2)

    assert command[:5] == ["python", "-m", "sglang.launch_server", "--model-path", str(package)]
    options = dict(zip(command[5::2], command[6::2], strict=True))
    assert options == {
        "--served-model-name": "qft-crypto-zh",
        "--reasoning-parser": "qwen3-thinking",
        "--context-length": "8192",
        "--host": "127.0.0.1",
        "--port": "8001",
        "--tp-size": "2",
        "--mem-fraction-static": "0.9",
        "--load-format": "safetensors",
    }


@pytest.mark.parametrize(("build", "engine"), [(vllm_command, "vLLM"), (sglang_command, "SGLang")])
def test_gpu_commands_refuse_formats_the_engines_cannot_load(tmp_path: Path, build, engine) -> None:
    assert "--served-model-name" in build(fake_package(tmp_path / "gptq", {"format": "gptq"}))
    for quantization in ("int4", "int8"):
        with pytest.raises(PackageError, match=f"{quantization} weights load only in `qft serve`; {engine} serves"):
            build(fake_package(tmp_path / quantization, {"format": quantization}))


def test_model_card_lines_name_both_gpu_engines_or_why_there_is_none() -> None:
    assert gpu_serving_lines("pkg", None) == [
        "vllm serve pkg --served-model-name pkg --reasoning-parser deepseek_r1",
        "python -m sglang.launch_server --model-path pkg --served-model-name pkg --reasoning-parser qwen3-thinking",
    ]
    assert gpu_serving_lines("pkg", "gptq") == gpu_serving_lines("pkg", None)
    assert gpu_serving_lines("pkg", "int4") == ["# int4 weights load only in `qft serve`, not in vLLM or SGLang"]


def test_sglang_command_cli_prints_one_shell_line(tmp_path: Path, capsys) -> None:
    package = fake_package(tmp_path / "pkg", None)

    assert main(["package", "sglang-command", str(package)]) == 0

    assert shlex.split(capsys.readouterr().out) == sglang_command(package)


def test_serve_command_parses_host_port_and_key() -> None:
    parser = argparse.ArgumentParser(prog="qft")
    add_serve_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["serve", "pkg", "--host", "0.0.0.0", "--port", "9000", "--api-key", "k"])
    assert (args.handler, args.package, args.host, args.port, args.api_key) == (cmd_serve, "pkg", "0.0.0.0", 9000, "k")


def test_server_settings_take_the_limits_from_the_export_config() -> None:
    export = QftConfig.model_validate(
        {"export": {"max_request_bytes": 500, "max_tokens_limit": 7, "max_waiting_generations": 3}}
    ).export

    settings = ServerSettings.from_export_config(export, api_key="k")

    assert (settings.api_key, settings.max_request_bytes, settings.max_tokens_limit) == ("k", 500, 7)
    assert settings.max_waiting_generations == 3
