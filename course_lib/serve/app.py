"""Serve a model of the course over HTTP: FastAPI + uvicorn, and an OpenAI-compatible API.

    python -m course_lib.serve --model runs                 # the persona adapter notebook 02 trained
    python -m course_lib.serve --model runs/quantize/gguf   # notebook 04's GGUF file, run by llama.cpp
    python -m course_lib.serve --model smollm2-135m --port 8001     # (command line: __main__.py)

Endpoints: ``POST /generate`` (prompt or chat messages), ``POST /generate/stream`` (server-sent
events), ``GET /health``, ``GET /model``, and ``POST /v1/chat/completions`` + ``GET /v1/models``
so that the official ``openai`` client (and the tools built on it) talk to your model unchanged
(``openai_chat.py`` says which of OpenAI's request fields are honoured, ignored or refused).
``POST /feedback`` stores what users thought of an answer (a thumbs up/down, or the better of two
answers) for notebook 06 to learn from; ``GET /feedback/summary`` counts it (``feedback.py``).

The model is chosen when the server starts, never by a request: a request naming another model
gets a 404, and a ``/generate`` or ``/feedback`` body with unknown fields (a path, say) gets a 422.
"""

from __future__ import annotations

import asyncio
import json
import math
import queue
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from course_lib.native import NativeCrash
from course_lib.serve import feedback
from course_lib.serve.engine import Batcher, GenRequest, GenResult, cut_at_stop
from course_lib.serve.openai_chat import ChatBody, Sampling, Unsupported
from course_lib.serve.safety import SafetyFilter, client_verdict


@dataclass
class ServeConfig:
    """Limits that keep one client from taking the server down; every one is a command-line flag."""

    max_new_tokens: int = 256  # cap on what a request may ask for
    max_prompt_tokens: int = 1024  # longer prompts are refused with 422
    timeout_s: float = 300.0  # a request waiting longer (queue + generation) gets 504
    max_batch: int = 8  # requests answered by one forward pass
    batch_wait_ms: float = 5.0  # how long the batcher waits for company before starting a batch
    max_queue: int = 256  # beyond this the server answers 503 instead of queueing forever
    safety: str = "default"  # "default" (the shipped filter), "off", or a JSON file of rules
    name: str = ""  # the model id clients see (default: derived from --model)
    feedback_file: str = ""  # where POST /feedback appends (default: <run dir>/feedback/feedback.jsonl)
    warm_up: int = 1  # 1: time one full batch at start, so a request that cannot be answered in time gets 503 at
    #                   once; 0: start sooner (a full batch of 96 takes seconds), no such refusal before a full batch


# --------------------------------------------------------------------------- request bodies


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str = Field(pattern="^(system|user|assistant)$")
    content: str


class GenerateBody(Sampling):
    """``/generate``: a prompt (one user turn) or a whole chat. Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")
    prompt: str | None = Field(None, min_length=1)
    messages: list[Message] | None = Field(None, min_length=1)
    max_new_tokens: int = Field(64, ge=1)

    @model_validator(mode="after")
    def one_input(self):
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        return self

    def chat(self) -> list[dict]:
        return [{"role": "user", "content": self.prompt}] if self.prompt else [m.model_dump() for m in self.messages]


# --------------------------------------------------------------------------- the app


class RequestError(Exception):
    """A request the server refuses, with the HTTP status, one readable sentence and, for a busy
    server, how many seconds to wait before trying again (the ``Retry-After`` header)."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", retry_after: int | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.retry_after = status, message, kind, retry_after


def _error(status: int, message: str, kind: str, retry_after: int | None = None):
    from fastapi.responses import JSONResponse

    # OpenAI's error shape, which its client turns into a readable exception; its client also reads
    # Retry-After when it retries a 503 by itself.
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status,
                        headers=headers)


def _readable(errors) -> str:
    """Pydantic's error list as one sentence: 'max_new_tokens: Input should be greater than or equal to 1'."""
    parts = []
    for e in errors:
        if e.get("type") == "json_invalid":  # FastAPI's loc is then ("body", character index): say it in words
            reason = e.get("ctx", {}).get("error", "JSON decode error")
            parts.append(f"the body is not valid JSON ({reason} at character {e['loc'][-1]})")
            continue
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
        parts.append(f"{where or 'body'}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)


def _chat_ids(engine, chat: list[dict]) -> list[int]:
    return list(engine.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True,
                                                     return_dict=True)["input_ids"])


def create_app(engine, config: ServeConfig | None = None, safety=None):
    """The FastAPI app serving ENGINE. ``safety``: a ``course_lib.serve.safety.SafetyFilter`` (None: from config)."""
    from fastapi import FastAPI

    config = config or ServeConfig()
    safety = safety or load_safety(config.safety)
    batcher = Batcher(engine, config.max_batch, config.batch_wait_ms, config.max_queue)
    try:  # the measured speed sizes the busy answers (503)
        if config.warm_up:
            batcher.warm_up(_chat_ids(engine, [{"role": "user", "content": "Tell me about tomatoes."}]))
    except Exception:  # a runtime that fails here (llama.cpp crashed) fails each request with its
        pass  # own sentence; the server starts anyway, with no estimate (nothing refused early)
    name = config.name or default_name(engine.info)
    started = time.time()

    @asynccontextmanager
    async def lifespan(_app):
        yield
        batcher.close()  # uvicorn's graceful shutdown: finish the batch in flight, then stop the worker

    app = FastAPI(title="course_lib model server", version="1.0", lifespan=lifespan)
    app.state.batcher, app.state.engine, app.state.safety = batcher, engine, safety
    _add_error_handlers(app)
    _add_info_routes(app, engine, batcher, safety, config, name, started)
    _add_generate_routes(app, engine, batcher, safety, config, name)
    _add_chat_route(app, engine, batcher, safety, config, name)
    _add_feedback_route(app, feedback.resolve(config.feedback_file), name)
    return app


def _add_error_handlers(app):
    """Refusals and invalid bodies answer in OpenAI's error shape."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_request: Request, error: RequestValidationError):
        return _error(422, _readable(error.errors()), "invalid_request_error")

    @app.exception_handler(RequestError)
    async def refused(_request: Request, error: RequestError):
        return _error(error.status, error.message, error.kind, error.retry_after)

    @app.exception_handler(Unsupported)  # well-formed, but asks for what this server cannot do (tools, images)
    async def unsupported(_request: Request, error: Unsupported):
        return _error(400, str(error), "invalid_request_error")

    @app.exception_handler(NativeCrash)  # llama.cpp died in its child process: its sentence, the server lives on
    async def crashed(_request: Request, error: NativeCrash):
        return _error(500, str(error), "server_error")


def _add_info_routes(app, engine, batcher: Batcher, safety, config: ServeConfig, name: str, started: float):
    """``GET /health``, ``GET /model`` and OpenAI's ``GET /v1/models``."""

    @app.get("/health")
    def health():
        return {"status": "ok", "queued": batcher.pending(), "uptime_s": round(time.time() - started, 1)}

    @app.get("/model")
    def model_info():
        return {"id": name, "runtime": engine.runtime, **engine.info, "limits": asdict(config),
                "sampling": "greedy only" if engine.runtime != "PyTorch" else "greedy or sampled",
                "batches_served": len(batcher.batches), "mean_batch": _mean(batcher.batches),
                "step_ms": batcher.step_s and round(batcher.step_s * 1000, 2),  # one step of a full batch, measured
                "safety": "on" if safety is not None and getattr(safety, "enabled", True) else "off"}

    @app.get("/v1/models")
    def list_models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": int(started),
                                            "owned_by": "course_lib"}]}


def _add_generate_routes(app, engine, batcher: Batcher, safety, config: ServeConfig, name: str):
    """``POST /generate`` (one JSON answer) and ``POST /generate/stream`` (server-sent events)."""

    @app.post("/generate")
    async def generate(body: GenerateBody):
        request, refusal = _admit(engine, safety, config, body.chat(), _wanted(body, config), body)
        result = refusal or _checked(safety, await _answer(batcher, request, config.timeout_s))
        return {"text": result.text, "finish_reason": result.finish_reason, "model": name,
                "prompt_tokens": len(request.prompt_ids) if request else 0, "completion_tokens": result.completion_tokens,
                "safety": client_verdict(safety, result.blocked_by)}

    @app.post("/generate/stream")
    async def generate_stream(body: GenerateBody):
        from sse_starlette.sse import EventSourceResponse

        request, refusal = _admit(engine, safety, config, body.chat(), _wanted(body, config), body)
        return EventSourceResponse(_plain_events(batcher, safety, request, refusal, config), ping=600)


def _add_chat_route(app, engine, batcher: Batcher, safety, config: ServeConfig, name: str):
    """OpenAI's ``POST /v1/chat/completions``, whole or streamed."""

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatBody):
        from sse_starlette.sse import EventSourceResponse

        if body.model != name:
            raise RequestError(404, f"This server serves the model '{name}' only (it never loads a model on "
                                    f"request); you asked for '{body.model}'.", "model_not_found")
        body.refuse_unsupported()
        wanted = body.max_completion_tokens or body.max_tokens or min(256, config.max_new_tokens)
        request, refusal = _admit(engine, safety, config, body.chat(), wanted, body)
        ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if body.stream:
            events = _openai_events(batcher, safety, request, refusal, config, ident, created, name,
                                    body.usage_in_stream())
            return EventSourceResponse(events, ping=600)
        result = refusal or _checked(safety, await _answer(batcher, request, config.timeout_s))
        prompt_tokens = len(request.prompt_ids) if request else 0
        return {"id": ident, "object": "chat.completion", "created": created, "model": name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                             "finish_reason": result.finish_reason}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": result.completion_tokens,
                          "total_tokens": prompt_tokens + result.completion_tokens}}


def _add_feedback_route(app, path: Path, name: str):
    """``POST /feedback`` (one record appended to PATH, answered 201) and ``GET /feedback/summary``.

    Plain ``def`` routes: FastAPI runs them in its thread pool, so the fsync of a write never blocks
    the event loop that streams other clients' answers.
    """

    @app.post("/feedback", status_code=201)
    def give_feedback(body: feedback.Feedback):
        record, stored = feedback.append(path, body, name)
        return {"id": record["id"], "stored": stored}

    @app.get("/feedback/summary")
    def feedback_summary():
        try:
            return {"file": str(path), **feedback.summary(feedback.read(path))}
        except ValueError as error:  # a hand-edited file: its sentence names the line
            raise RequestError(500, str(error), "server_error") from None


def _wanted(body: GenerateBody, config: ServeConfig) -> int:
    """The request's max_new_tokens; when it gives none, the default, lowered to the server's cap."""
    return body.max_new_tokens if "max_new_tokens" in body.model_fields_set else min(64, config.max_new_tokens)


def _mean(values) -> float:
    return round(sum(values) / len(values), 2) if values else 0.0


def default_name(info: dict) -> str:
    """A readable model id: the preset, or the run's base model + method (smollm2-135m-lora)."""
    trained = info.get("trained")
    if trained:
        return f"{trained['model'].split('/')[-1]}-{trained['method']}"
    if info["kind"] == "preset":
        return info["source"].split("/")[-1]
    return f"{Path(info['source']).name or 'model'}-{info['kind']}"


# --------------------------------------------------------------------------- one request


def _admit(engine, safety, config: ServeConfig, chat: list[dict], max_new_tokens: int, body: Sampling):
    """Check limits and the input filter -> (GenRequest, None) or (None, the refusal as a GenResult)."""
    if max_new_tokens > config.max_new_tokens:
        raise RequestError(422, f"max_new_tokens is {max_new_tokens}; this server allows at most "
                                f"{config.max_new_tokens} (--max-new-tokens).")
    if safety is not None:
        for message in chat:
            if message["role"] != "assistant" and not (verdict := safety.check_input(message["content"])).allowed:
                return None, GenResult(safety.refusal, 0, "content_filter", f"input:{verdict.rule}")
    ids = _chat_ids(engine, chat)
    if len(ids) > config.max_prompt_tokens:
        raise RequestError(422, f"the prompt is {len(ids)} tokens; this server accepts at most "
                                f"{config.max_prompt_tokens} (--max-prompt-tokens).")
    return GenRequest(ids, max_new_tokens, body.temperature, body.top_p, body.stops(), body.seed), None


ADMIT_SHARE = 0.8  # a request is refused at once when its estimated wait passes this share of its time-out


async def _answer(batcher: Batcher, request: GenRequest, timeout: float) -> GenResult:
    # An estimate from the measured speed; the margin keeps one slower batch from turning admitted
    # requests into time-outs. Refused now, a client can retry or go elsewhere, instead of waiting `timeout` s.
    wait = batcher.estimate_wait(request.max_new_tokens)
    if wait is not None and wait > ADMIT_SHARE * timeout:
        retry = math.ceil(wait - ADMIT_SHARE * timeout) or 1
        raise RequestError(503, f"the server is busy: this answer would take about {wait:.0f} s, too close to its "
                                f"{timeout:.0f} s time-out (--timeout-s); retry in {retry} s.", "server_busy", retry)
    try:
        future = batcher.submit(request)
    except queue.Full:
        raise RequestError(503, "the server is busy (queue full); retry in a moment.", "server_busy", 1) from None
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
    except asyncio.TimeoutError:
        future.cancel()  # still queued: the batcher skips it
        raise RequestError(504, f"no answer within {timeout:.0f} s (--timeout-s).", "timeout") from None


def _checked(safety, result: GenResult) -> GenResult:
    """The output filter: an answer that fails it is replaced by the refusal."""
    if safety is not None and not (verdict := safety.check_output(result.text)).allowed:
        return GenResult(safety.refusal, result.completion_tokens, "content_filter", f"output:{verdict.rule}")
    return result


async def _pieces(batcher: Batcher, safety, request: GenRequest, config: ServeConfig):
    """Stream REQUEST's answer as (text piece, finish_reason or None); the output filter sees every prefix
    (when it fires, the last pair is ("output:<rule>", "content_filter")).

    Generation runs in a thread (it holds the model's lock, so batches wait); pieces cross to the
    event loop through an asyncio queue. A stop string or a filter hit ends generation early.
    """
    loop, pieces = asyncio.get_running_loop(), asyncio.Queue()
    done = {"stop": False}

    def produce():
        try:
            with batcher.lock:
                for piece in batcher.engine.stream(request, should_stop=lambda: done["stop"]):
                    loop.call_soon_threadsafe(pieces.put_nowait, piece)
                    if done["stop"]:
                        break
        except NativeCrash as crash:  # the stream ends with its sentence (the status, 200, is already sent)
            loop.call_soon_threadsafe(pieces.put_nowait, crash)
        finally:
            loop.call_soon_threadsafe(pieces.put_nowait, None)

    worker = loop.run_in_executor(None, produce)
    text, sent, stopped = "", 0, False
    try:
        while not stopped and (piece := await asyncio.wait_for(pieces.get(), config.timeout_s)) is not None:
            if isinstance(piece, NativeCrash):
                yield str(piece), "error"
                return
            text += piece
            visible, stopped = cut_at_stop(text, request.stop)
            if safety is not None and not (verdict := safety.check_output(visible)).allowed:
                yield f"output:{verdict.rule}", "content_filter"
                return
            if visible[sent:]:
                yield visible[sent:], None
                sent = len(visible)
        full = not stopped and batcher.engine.count_tokens(text) >= request.max_new_tokens
        yield "", "length" if full else "stop"
    finally:
        done["stop"] = True
        await worker


async def _plain_events(batcher, safety, request, refusal, config):
    if refusal:
        yield {"event": "done", "data": json.dumps({"text": refusal.text, "finish_reason": refusal.finish_reason,
                                                    "safety": client_verdict(safety, refusal.blocked_by)})}
        return
    async for piece, reason in _pieces(batcher, safety, request, config):
        if reason is None:
            yield {"data": json.dumps({"text": piece})}
        elif reason == "error":
            yield {"event": "error", "data": json.dumps({"error": {"message": piece, "type": "server_error", "code": 500}})}
        else:
            blocked = piece if reason == "content_filter" else ""  # the done event carries the filter's verdict
            payload = {"finish_reason": reason} | ({"text": safety.refusal} if blocked else {})
            yield {"event": "done", "data": json.dumps(payload | {"safety": client_verdict(safety, blocked)})}


async def _openai_events(batcher, safety, request, refusal, config, ident, created, name, usage=False):
    """OpenAI's chunks; with USAGE (``stream_options.include_usage``) a last chunk with no choices and the counts."""

    def chunk(delta: dict | None, reason=None, **extra) -> dict:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": reason}]
        return {"data": json.dumps({"id": ident, "object": "chat.completion.chunk", "created": created, "model": name,
                                    "choices": choices, **extra})}

    yield chunk({"role": "assistant", "content": ""})
    generated = refusal.completion_tokens if refusal else 0
    if refusal:
        yield chunk({"content": refusal.text}, refusal.finish_reason)
    else:
        text = ""
        async for piece, reason in _pieces(batcher, safety, request, config):
            if reason is None:
                text += piece
                yield chunk({"content": piece})
            elif reason == "error":  # OpenAI's in-stream error, which its client raises as an APIError
                yield {"data": json.dumps({"error": {"message": piece, "type": "server_error", "code": 500}})}
            else:
                yield chunk({"content": safety.refusal} if reason == "content_filter" else {}, reason)
        generated = batcher.engine.count_tokens(text) if text else 0  # the streamed text, tokenized again
    if usage:
        prompt = len(request.prompt_ids) if request else 0
        yield chunk(None, usage={"prompt_tokens": prompt, "completion_tokens": generated,
                                 "total_tokens": prompt + generated})
    yield {"data": "[DONE]"}


def load_safety(setting: str):
    """"off" -> None; "default" -> the shipped rules; anything else -> a JSON file of rules."""
    if setting == "off":
        return None
    return SafetyFilter.from_config(None if setting == "default" else setting)
