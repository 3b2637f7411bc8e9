"""The OpenAI-compatible HTTP server for a deployment package (Starlette on uvicorn): chat completions, whole or
streamed as server-sent events, the model list and a health check, behind an optional API key."""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from qft_core.config import ExportConfig
from qft_core.package.manifest import check_manifest
from qft_core.package.openai_api import (
    ApiError,
    ChatRequest,
    ReasoningStream,
    chunk_body,
    completion_body,
    error_body,
    models_body,
    parse_chat_request,
    server_sent_event,
    usage_chunk_body,
)
from qft_core.package.served_model import Completion, PromptError, ServedModel

logger = logging.getLogger(__name__)
STREAM_END = "[DONE]"


@dataclass(frozen=True)
class ServerSettings:
    """What the server enforces on every request."""

    api_key: str | None = None
    max_request_bytes: int = 1_000_000
    max_tokens_limit: int = 2048

    @classmethod
    def from_export_config(cls, config: ExportConfig, *, api_key: str | None = None) -> ServerSettings:
        return cls(
            api_key=api_key or config.api_key,
            max_request_bytes=config.max_request_bytes,
            max_tokens_limit=config.max_tokens_limit,
        )


def _authorize(request: Request, api_key: str | None) -> None:
    if api_key is None:
        return
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    # A constant-time comparison: response timing must not tell how much of a guessed key was right.
    if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), api_key.encode()):
        raise ApiError(401, "missing or wrong API key (send 'Authorization: Bearer <key>')", code="invalid_api_key")


async def _read_body(request: Request, limit: int) -> bytes:
    too_large = ApiError(
        413, f"the request body is larger than this server's limit of {limit} bytes", code="request_too_large"
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def _api_error_response(request: Request, error: ApiError) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def _http_error_response(request: Request, error: HTTPException) -> Response:
    code = "not_found" if error.status_code == 404 else None
    message = f"{request.method} {request.url.path}: {error.detail}"
    return JSONResponse(error_body(message, code=code), status_code=error.status_code, headers=error.headers)


def _server_error_response(request: Request, error: Exception) -> Response:
    return JSONResponse(error_body("the server failed to answer this request", error_type="server_error"), 500)


class _ChatCompletions:
    """POST /v1/chat/completions."""

    def __init__(self, served: ServedModel, settings: ServerSettings) -> None:
        self.served = served
        self.settings = settings

    async def respond(self, request: Request) -> Response:
        _authorize(request, self.settings.api_key)
        chat = parse_chat_request(
            await _read_body(request, self.settings.max_request_bytes),
            model_id=self.served.model_id,
            max_tokens_limit=self.settings.max_tokens_limit,
            sampling_defaults=self.served.sampling_defaults,
        )
        try:
            prompt_ids = self.served.prompt_ids(chat.messages)
        except PromptError as error:
            raise ApiError(400, str(error), param="messages") from None
        needed = len(prompt_ids) + chat.params.max_tokens
        if needed > self.served.context_length:
            raise ApiError(
                400,
                f"the prompt ({len(prompt_ids)} tokens) plus max_tokens ({chat.params.max_tokens}) is {needed} tokens, "
                f"more than the model's context of {self.served.context_length}",
                param="messages",
                code="context_length_exceeded",
            )
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if chat.stream:
            events = self._events(chat, prompt_ids, completion_id, created)
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        completion = await run_in_threadpool(self.served.generate, prompt_ids, chat.params)
        return JSONResponse(completion_body(completion_id, created, self.served.model_id, completion))

    async def _events(
        self, chat: ChatRequest, prompt_ids: list[int], completion_id: str, created: int
    ) -> AsyncIterator[bytes]:
        """The reply as server-sent events. Generation runs on a worker thread that hands each piece of text to
        this loop; when the client goes away the worker is told to stop after its current token."""
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str | Completion | BaseException] = asyncio.Queue()
        cancelled = threading.Event()

        def generate() -> None:
            try:
                result: str | Completion | BaseException = self.served.generate(
                    prompt_ids,
                    chat.params,
                    on_text=lambda piece: loop.call_soon_threadsafe(pieces.put_nowait, piece),
                    cancelled=cancelled.is_set,
                )
            except Exception as error:  # reported to the client as an error event, logged here
                logger.exception("generation failed")
                result = error
            loop.call_soon_threadsafe(pieces.put_nowait, result)

        def chunk(delta: dict[str, str], finish_reason: str | None = None) -> bytes:
            return server_sent_event(chunk_body(completion_id, created, self.served.model_id, delta, finish_reason))

        worker = threading.Thread(target=generate, name=f"generate-{completion_id}", daemon=True)
        worker.start()
        try:
            yield chunk({"role": "assistant", "content": ""})
            reasoning = ReasoningStream()
            while True:
                item = await pieces.get()
                if isinstance(item, str):
                    for field, text in reasoning.feed(item):
                        yield chunk({field: text})
                    continue
                if isinstance(item, Completion):
                    for field, text in reasoning.finish():
                        yield chunk({field: text})
                    yield chunk({}, item.finish_reason)
                    if chat.include_usage:
                        yield server_sent_event(usage_chunk_body(completion_id, created, self.served.model_id, item))
                else:
                    yield server_sent_event(error_body("generation failed", error_type="server_error"))
                break
            yield server_sent_event(STREAM_END)
        finally:
            cancelled.set()


def create_app(served: ServedModel, settings: ServerSettings) -> Starlette:
    """The ASGI application serving `served`."""
    started = int(time.time())

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": served.model_id})

    async def models(request: Request) -> Response:
        _authorize(request, settings.api_key)
        return JSONResponse(models_body(served.model_id, started, served.context_length))

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", _ChatCompletions(served, settings).respond, methods=["POST"]),
    ]
    handlers = {ApiError: _api_error_response, HTTPException: _http_error_response, Exception: _server_error_response}
    return Starlette(routes=routes, exception_handlers=handlers)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


def serve_package(package_dir: Path, settings: ServerSettings, *, host: str, port: int) -> None:
    """Check the package against its manifest, load its model and serve it until interrupted."""
    check_manifest(package_dir)
    served = ServedModel.load(package_dir)
    if settings.api_key is None and not _is_loopback(host):
        logger.warning("serving on %s without an API key: anyone who can reach it can use the model", host)
    logger.info("serving %s from %s on http://%s:%d/v1", served.model_id, package_dir, host, port)
    config = uvicorn.Config(create_app(served, settings), host=host, port=port, log_level="info")
    uvicorn.Server(config).run()
