"""The server against hostile input: text that is not Unicode (a lone surrogate, which JSON escapes can carry)
is a 400 naming the field, whole or streamed; a client that disconnects while uploading costs one log line."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from qft_core.serve.server import ServerSettings, create_app
from qft_core.serve.served_model import ServedModel
from tests.core.serve.test_serve import MODEL_ID, package_dir, running, served  # noqa: F401 — fixtures



@pytest.fixture(scope="module")
def server_url(served: ServedModel) -> Iterator[str]:  # noqa: F811 — the imported fixture
    with running(create_app(served, ServerSettings(max_request_bytes=100_000, max_tokens_limit=8))) as url:
        yield url


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (rb'{"messages": [{"role": "user", "content": "AES \ud800"}]}', "messages[0].content"),
        (rb'{"messages": [{"role": "system", "content": "\udfff"}, {"role": "user", "content": "hi"}]}',
         "messages[0].content"),
        (rb'{"messages": [{"role": "user", "content": "\ud800"}], "stream": true}', "messages[0].content"),
        (rb'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\udc00x"}]}]}',
         "messages[0].content[0].text"),
        (rb'{"messages": [{"role": "user", "content": "hi"}], "stop": ["\ud83d"]}', "stop[0]"),
        (rb'{"messages": [{"role": "user", "content": "hi"}], "user": "\ud800"}', "user"),
        (rb'{"messages": [{"role": "user", "content": "hi"}], "\ud800": 1}', "\\ud800"),
    ],
    ids=["user", "system", "streamed", "text-part", "stop", "user-field", "key"],
)
def test_a_lone_surrogate_anywhere_is_a_400_naming_the_field(server_url: str, body: bytes, param: str) -> None:
    response = httpx.post(f"{server_url}/v1/chat/completions", content=body, timeout=60,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, "invalid_text", "invalid_request_error")
    assert error["message"].startswith(f"{param}: U+D") and "lone surrogate" in error["message"]


def test_proper_surrogate_pairs_are_text(server_url: str) -> None:
    # "\ud83d\udd10" is one character (🔐), written as a JSON surrogate pair: a normal completion.
    body = rb'{"messages": [{"role": "user", "content": "\ud83d\udd10 AES"}], "max_tokens": 1}'
    response = httpx.post(f"{server_url}/v1/chat/completions", content=body, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 1


def test_a_client_that_disconnects_while_uploading_is_logged_in_one_line(
    server_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # uvicorn's loggers do not propagate to the root logger, where caplog listens.
    uvicorn_logger = logging.getLogger("uvicorn")
    uvicorn_logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO)
    try:
        host, port = server_url.removeprefix("http://").split(":")
        for _ in range(3):
            with socket.create_connection((host, int(port))) as client:
                client.sendall(
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: qft\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 5000\r\n\r\n" + b'{"messages": [{"role": "user", "content": "'
                )
                time.sleep(0.2)  # the server is reading the body
        deadline = time.monotonic() + 30
        while sum("disconnected" in record.getMessage() for record in caplog.records) < 3:
            assert time.monotonic() < deadline, [record.getMessage() for record in caplog.records]
            time.sleep(0.1)
        time.sleep(0.5)  # anything else logged for these connections would be in by now
    finally:
        uvicorn_logger.removeHandler(caplog.handler)
    messages = [record.getMessage() for record in caplog.records]
    assert [message for message in messages if "disconnected" in message] == [
        message for message in messages if message.endswith("disconnected before its request body was complete; "
                                                             "request dropped")
    ]
    assert len(messages) == 3 and all("\n" not in message for message in messages), messages
    assert not any(record.exc_info for record in caplog.records)
    # The server still answers.
    assert httpx.get(f"{server_url}/health", timeout=30).json()["model"] == MODEL_ID
