"""The OpenAI-compatible HTTP server for a deployment package (Starlette on uvicorn): chat completions, whole or
streamed as server-sent events, the model list and a health check, behind an optional API key. Generations queue
for the one model and run one at a time on a worker thread, so the event loop keeps answering."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from qft_core.config import ExportConfig
from qft_core.package.manifest import check_manifest
from qft_core.serve.openai_api import (
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
from qft_core.serve.served_model import Completion, PromptError, SamplingParams, ServedModel

logger = logging.getLogger(__name__)
STREAM_END = "[DONE]"
# Seconds a client refused with 503 is asked to wait before retrying.
BUSY_RETRY_AFTER = 5
# The status of a reply whose client has gone and will never read it (nginx's "client closed request").
CLIENT_CLOSED_REQUEST = 499


@dataclass(frozen=True)
class ServerSettings:
    """What the server enforces on every request."""

    api_key: str | None = None
    max_request_bytes: int = 1_000_000
    max_tokens_limit: int = 2048
    # Generations queued or running for clients still waiting; one more is refused with 503 rather than queued.
    max_waiting_generations: int = 256

    @classmethod
    def from_export_config(cls, config: ExportConfig, *, api_key: str | None = None) -> ServerSettings:
        return cls(
            api_key=api_key or config.api_key,
            max_request_bytes=config.max_request_bytes,
            max_tokens_limit=config.max_tokens_limit,
            max_waiting_generations=config.max_waiting_generations,
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
    headers = {401: {"WWW-Authenticate": "Bearer"}, 503: {"Retry-After": str(BUSY_RETRY_AFTER)}}.get(error.status)
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def _http_error_response(request: Request, error: HTTPException) -> Response:
    code = "not_found" if error.status_code == 404 else None
    message = f"{request.method} {request.url.path}: {error.detail}"
    return JSONResponse(error_body(message, code=code), status_code=error.status_code, headers=error.headers)


def _server_error_response(request: Request, error: Exception) -> Response:
    return JSONResponse(error_body("the server failed to answer this request", error_type="server_error"), 500)


@dataclass(eq=False)
class Generation:
    """One queued generation as the event loop sees it: its result, and the text pieces of a streamed one."""

    prompt_ids: list[int]
    params: SamplingParams
    result: asyncio.Future[Completion]
    # Text pieces in order, then None once the result is settled; only for a streamed generation.
    pieces: asyncio.Queue[str | None] | None
    stop_requested: threading.Event = field(default_factory=threading.Event)
    # Whether it still counts as waiting: a client awaits it and it has not settled.
    counted: bool = True


class GenerationQueue:
    """The model's generations in arrival order, run one at a time on a worker thread: the model cannot run two at
    once, a lock would let waiting requests overtake each other, and the event loop must stay free (for `/health`
    and for reading other requests). At most `max_waiting` generations wait or run; more are refused with 503."""

    def __init__(self, served: ServedModel, max_waiting: int) -> None:
        self._served = served
        self._max_waiting = max_waiting
        self._jobs: queue.SimpleQueue[tuple[asyncio.AbstractEventLoop, Generation] | None] = queue.SimpleQueue()
        # Generations queued or running whose client still waits; read and written on the event loop thread only.
        self.waiting = 0
        self._worker: threading.Thread | None = None

    def submit(self, prompt_ids: list[int], params: SamplingParams, *, stream: bool) -> Generation:
        """Queue a generation; its `result` settles on the calling event loop."""
        if self.waiting >= self._max_waiting:
            raise ApiError(
                503,
                f"the server is busy: {self.waiting} requests are waiting for the model; retry later",
                error_type="server_error",
                code="server_busy",
            )
        loop = asyncio.get_running_loop()
        generation = Generation(prompt_ids, params, loop.create_future(), asyncio.Queue() if stream else None)
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="generation-worker", daemon=True)
            self._worker.start()
        self.waiting += 1
        self._jobs.put((loop, generation))
        return generation

    def cancel(self, generation: Generation) -> None:
        """The client is gone (or has its reply): skip the generation if it has not started, stop it after its
        current token if it has."""
        generation.stop_requested.set()
        self._uncount(generation)

    def close(self) -> None:
        """Let the worker end once the generations already queued are done; a later `submit` starts another (an
        application can be started again)."""
        if self._worker is not None:
            self._jobs.put(None)
            self._worker = None

    def _uncount(self, generation: Generation) -> None:
        if generation.counted:
            generation.counted = False
            self.waiting -= 1

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, generation = job
            outcome: Completion | BaseException | None = None
            if not generation.stop_requested.is_set():
                outcome = self._generate(loop, generation)
            # The loop may be gone when a server stops mid-generation; nobody is left to tell.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._settle, generation, outcome)

    def _generate(self, loop: asyncio.AbstractEventLoop, generation: Generation) -> Completion | BaseException:
        pieces = generation.pieces
        on_text = None if pieces is None else lambda piece: loop.call_soon_threadsafe(pieces.put_nowait, piece)
        try:
            return self._served.generate(
                generation.prompt_ids, generation.params, on_text=on_text, cancelled=generation.stop_requested.is_set
            )
        except Exception as error:  # reported to the client as a server error, logged here
            logger.exception("generation failed")
            return error

    def _settle(self, generation: Generation, outcome: Completion | BaseException | None) -> None:
        self._uncount(generation)
        result = generation.result
        if not result.done():
            if outcome is None:
                result.cancel()
            elif isinstance(outcome, BaseException):
                result.set_exception(outcome)
            else:
                result.set_result(outcome)
        if generation.pieces is not None:
            generation.pieces.put_nowait(None)


class _GenerationStream(StreamingResponse):
    """A streamed reply whose generation is cancelled however the response ends: finished, failed, or cut off by
    the client going away (Starlette then cancels the stream, possibly while the generation is still queued)."""

    def __init__(self, events: AsyncIterator[bytes], generations: GenerationQueue, generation: Generation) -> None:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self._generations = generations
        self._generation = generation

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._generations.cancel(self._generation)


async def _client_gone(receive: Receive) -> None:
    """Returns when the client disconnects; only to be awaited once the request body has been read."""
    while (await receive())["type"] != "http.disconnect":
        pass


class _ChatCompletions:
    """POST /v1/chat/completions."""

    def __init__(self, served: ServedModel, settings: ServerSettings, generations: GenerationQueue) -> None:
        self.served = served
        self.settings = settings
        self.generations = generations

    async def respond(self, request: Request) -> Response:
        _authorize(request, self.settings.api_key)
        try:
            body = await _read_body(request, self.settings.max_request_bytes)
        except ClientDisconnect:
            # Nobody is left to answer; one line is all the log needs (not Starlette's 45-line traceback).
            client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
            logger.info("%s disconnected before its request body was complete; request dropped", client)
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        chat = parse_chat_request(
            body,
            model_id=self.served.model_id,
            max_tokens_limit=self.settings.max_tokens_limit,
            sampling_defaults=self.served.sampling_defaults,
        )
        try:
            # Rendering and tokenizing a long prompt takes a while: not on the event loop.
            prompt_ids = await run_in_threadpool(self.served.prompt_ids, chat.messages)
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
        generation = self.generations.submit(prompt_ids, chat.params, stream=chat.stream)
        if chat.stream:
            events = self._events(chat, generation, completion_id, created)
            return _GenerationStream(events, self.generations, generation)
        completion = await self._completion(request, generation)
        if completion is None:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        return JSONResponse(completion_body(completion_id, created, self.served.model_id, completion))

    async def _completion(self, request: Request, generation: Generation) -> Completion | None:
        """The generation's result, or None if the client went away first (the generation is then dropped, so a
        client that gave up and retried does not cost the model two replies)."""
        gone = asyncio.ensure_future(_client_gone(request.receive))
        try:
            await asyncio.wait({generation.result, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            self.generations.cancel(generation)
        return generation.result.result() if generation.result.done() else None

    async def _events(
        self, chat: ChatRequest, generation: Generation, completion_id: str, created: int
    ) -> AsyncIterator[bytes]:
        """The reply as server-sent events, each piece of text as soon as the worker has decoded it."""

        def chunk(delta: dict[str, str], finish_reason: str | None = None) -> bytes:
            return server_sent_event(chunk_body(completion_id, created, self.served.model_id, delta, finish_reason))

        yield chunk({"role": "assistant", "content": ""})
        reasoning = ReasoningStream()
        while (piece := await generation.pieces.get()) is not None:
            for field_name, text in reasoning.feed(piece):
                yield chunk({field_name: text})
        error = generation.result.exception()
        if error is None:
            completion = generation.result.result()
            for field_name, text in reasoning.finish():
                yield chunk({field_name: text})
            yield chunk({}, completion.finish_reason)
            if chat.include_usage:
                yield server_sent_event(usage_chunk_body(completion_id, created, self.served.model_id, completion))
        else:
            yield server_sent_event(error_body("generation failed", error_type="server_error"))
        yield server_sent_event(STREAM_END)


def create_app(served: ServedModel, settings: ServerSettings) -> Starlette:
    """The ASGI application serving `served`."""
    started = int(time.time())
    generations = GenerationQueue(served, settings.max_waiting_generations)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": served.model_id, "waiting": generations.waiting})

    async def models(request: Request) -> Response:
        _authorize(request, settings.api_key)
        return JSONResponse(models_body(served.model_id, started, served.context_length))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        generations.close()

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", _ChatCompletions(served, settings, generations).respond, methods=["POST"]),
    ]
    handlers = {ApiError: _api_error_response, HTTPException: _http_error_response, Exception: _server_error_response}
    return Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


def serve_package(
    package_dir: Path, settings: ServerSettings, *, host: str, port: int, device: str = "auto"
) -> None:
    """Check the package against its manifest, load its model on `device` (auto, cpu or cuda) and serve it until
    interrupted."""
    check_manifest(package_dir)
    served = ServedModel.load(package_dir, device=device)
    if settings.api_key is None and not _is_loopback(host):
        logger.warning("serving on %s without an API key: anyone who can reach it can use the model", host)
    logger.info(
        "serving %s from %s on %s at http://%s:%d/v1", served.model_id, package_dir, served.model.device, host, port
    )
    config = uvicorn.Config(create_app(served, settings), host=host, port=port, log_level="info")
    # uvicorn shuts down gracefully on Ctrl-C, then raises it again; it is how a server is stopped, not an error.
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run()
