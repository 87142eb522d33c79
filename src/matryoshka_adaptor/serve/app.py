"""An OpenAI-compatible embeddings server that gives any model a working ``dimensions`` parameter.

``POST /v1/embeddings`` takes the OpenAI request (``input`` a string, a list of strings,
or token ids; ``model``, ``dimensions``, ``encoding_format`` float or base64, ``user``),
embeds the texts with the backend (a local sentence-transformers model, or an upstream
OpenAI-compatible API), applies the adaptor, cuts to ``dimensions`` and renormalises.
Without an adaptor it is a plain pass-through (useful as a local upstream, and to test
clients against failures: ``inject_failures`` makes the first calls answer with the
given statuses).

Order of work per request, cheapest first: the key, the body's size (from
``Content-Length``, then while streaming), JSON, fields, every text on its own (valid
Unicode, length in characters, then in tokens), the request's total tokens; only then
does it queue for the model. A client that disconnects is dropped from the queue.

Every error, 404 and 405 included, uses OpenAI's shape ``{"error": {"message", "type",
"param", "code"}}`` with ``code`` a string or null.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from typing import Literal, Union

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..embed.openai_api import approx_tokens
from ..errors import InputError
from .api_error import ApiError
from .batching import MicroBatcher
from .limits import ServerLimits

log = logging.getLogger("matryoshka_adaptor.serve")

__all__ = ["ApiError", "ServerLimits", "create_app"]


class EmbeddingRequest(BaseModel):
    """The request body (for the OpenAPI schema; the endpoint validates by hand for clearer messages)."""

    model_config = ConfigDict(extra="forbid")

    input: Union[StrictStr, list[StrictStr], list[StrictInt], list[list[StrictInt]]]
    model: StrictStr
    dimensions: StrictInt | None = None
    encoding_format: Literal["float", "base64"] = "float"
    user: StrictStr | None = None


FIELDS = frozenset(EmbeddingRequest.model_fields)


try:  # writes float32 rows straight from numpy: ~50x faster than json on 16 x 384 floats
    import orjson
except ImportError:  # pragma: no cover - orjson comes with the `serve` extra
    orjson = None


def _encode_vector(v: np.ndarray, fmt: str):
    if fmt == "base64":  # what the official clients ask for: little-endian float32 bytes
        return base64.b64encode(np.ascontiguousarray(v, dtype="<f4").tobytes()).decode("ascii")
    return v if orjson is not None else v.tolist()


def _json_response(body: dict, headers: dict | None) -> Response:
    # Serialising floats is the server's main Python work besides the model; on the event loop it
    # holds the GIL the model thread needs between torch ops (docs/serving.md, item 5).
    if orjson is not None:
        return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json",
                        headers=headers)
    return JSONResponse(body, headers=headers)


class _ClientGone(Exception):
    """The client disconnected before its vectors were ready: nothing is sent."""


async def _wait_disconnect(receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def create_app(
    embed: Callable[[list[str]], np.ndarray],
    *,
    model_name: str,
    adaptor=None,
    api_key: str | None = None,
    limits: ServerLimits | None = None,
    inject_failures: Sequence[int] = (),
    native_dim: int | None = None,
    count_tokens: Callable[[list[str]], list[int]] | None = None,
    window: int | None = None,
    decode: Callable[[list[int]], str] | None = None,
    vocab_size: int | None = None,
    on_shutdown: Callable | None = None,
    request_timeout_s: float | None = None,
    trim_memory: bool = True,
) -> FastAPI:
    """The ASGI app.

    Parameters
    ----------
    embed : callable
        ``texts -> (n, d)`` vectors; a plain function runs on the batcher's model thread,
        a coroutine function is awaited.
    model_name : str
        The ``model`` clients must send.
    adaptor : MatryoshkaAdaptor, optional
        Fitted adaptor; None serves native vectors (pass-through).
    api_key : str, optional
        Bearer token clients must send, on every route except ``/livez``.
    limits : ServerLimits, optional
    inject_failures : sequence of int
        Answer the first embedding calls with these statuses (testing clients' retries).
    native_dim : int, optional
        The backend's vector length (pass-through mode).
    count_tokens : callable, optional
        ``texts -> token counts`` with the model's tokenizer; default: a byte-based estimate.
    window : int, optional
        Tokens per text the model reads; longer texts are rejected (or cut with
        ``limits.truncate``).
    decode : callable, optional
        Token ids to text with the model's tokenizer; None: token-id input is refused.
    vocab_size : int, optional
        Token ids must be below it.
    on_shutdown : callable, optional
        Called (or awaited) at shutdown.
    request_timeout_s : float, optional
        One deadline for a whole request's embedding, however many backend calls it takes
        (the upstream mode sets it); past it the answer is 503 with ``Retry-After``.
    trim_memory : bool
        Hand the heap pages a model call freed back to the OS after each call (see
        :class:`~matryoshka_adaptor.serve.batching.MicroBatcher`).
    """
    limits = limits or ServerLimits()
    count_tokens = count_tokens or (lambda texts: [approx_tokens(t) for t in texts])
    max_text_tokens = limits.max_text_tokens or window
    batcher = MicroBatcher(embed, max_batch_texts=limits.max_batch_texts, max_batch_tokens=limits.max_batch_tokens,
                           chunk_texts=limits.chunk_texts, window_s=limits.batch_window_ms / 1000,
                           workers=limits.workers, trim_memory=trim_memory)
    failures = list(inject_failures)
    full_dim = adaptor.input_dim_ if adaptor is not None else native_dim
    counters = {"requests": 0, "texts": 0, "tokens": 0, "errors": 0, "disconnected": 0, "started": time.time()}

    @asynccontextmanager
    async def lifespan(_app):
        await batcher.start()
        yield
        await batcher.stop()
        if on_shutdown is not None:
            result = on_shutdown()
            if asyncio.iscoroutine(result):
                await result

    app = FastAPI(title="matryoshka-adaptor", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher = batcher
    app.state.limits = limits

    @app.exception_handler(ApiError)
    async def _api_error(_req, exc: ApiError):
        counters["errors"] += 1
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(req: Request, exc: StarletteHTTPException):
        counters["errors"] += 1
        if exc.status_code == 404:
            err = ApiError(404, f"no such route: {req.method} {req.url.path} (this server has POST /v1/embeddings, "
                                "GET /v1/models, GET /v1/models/{id}, GET /health, GET /livez).", code="not_found")
        elif exc.status_code == 405:
            err = ApiError(405, f"{req.method} is not allowed on {req.url.path}.", code="method_not_allowed",
                           headers=dict(exc.headers or {}))
        else:
            err = ApiError(exc.status_code, str(exc.detail), code=None)
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_req, exc: RequestValidationError):
        counters["errors"] += 1
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        return ApiError(400, f"{'.'.join(str(p) for p in first.get('loc', ()))}: {first.get('msg')}").response()

    @app.exception_handler(Exception)
    async def _unexpected(_req, exc: Exception):
        log.exception("unexpected error")
        return ApiError(500, f"internal error ({type(exc).__name__}); see the server log.", kind="server_error",
                        code="internal_error").response()

    # Connection: close: the body (maybe large) is never read, so the connection cannot be reused.
    _AUTH_HEADERS = {"WWW-Authenticate": "Bearer", "Connection": "close"}

    def _check_auth(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        if not token:
            raise ApiError(401, "You didn't provide an API key. Send it in the Authorization header: "
                                "`Authorization: Bearer <key>`.", code="invalid_api_key",
                           headers=_AUTH_HEADERS)
        if not hmac.compare_digest(token.encode(), api_key.encode()):
            raise ApiError(401, "Incorrect API key provided. Send the server's key as `Authorization: Bearer <key>`.",
                           code="invalid_api_key", headers=_AUTH_HEADERS)

    def _card() -> dict:
        card = {"id": model_name, "object": "model", "created": int(counters["started"]),
                "owned_by": "matryoshka-adaptor"}
        if adaptor is not None:
            card["dimensions"] = {"min": 1, "max": full_dim, "trained": list(adaptor.dims_)}
        return card

    @app.get("/livez", include_in_schema=False)
    async def livez():  # bare liveness probe: open even with a key, says nothing about the server
        return {"status": "ok"}

    @app.get("/health")
    async def health(request: Request):
        _check_auth(request)
        return {"status": "ok", "model": model_name, "adaptor": adaptor is not None, "dim": full_dim,
                "requests": counters["requests"], "texts": counters["texts"], "tokens": counters["tokens"],
                "model_calls": batcher.batches, "errors": counters["errors"],
                "disconnected": counters["disconnected"], "batching": batcher.stats.as_dict(),
                "uptime_s": round(time.time() - counters["started"], 1)}

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request):
        _check_auth(request)
        return JSONResponse(app.openapi())

    @app.get("/v1/models")
    async def models(request: Request):
        _check_auth(request)
        return {"object": "list", "data": [_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model_card(model_id: str, request: Request):
        _check_auth(request)
        if model_id != model_name:
            raise ApiError(404, f"The model {model_id!r} does not exist; this server serves {model_name!r}.",
                           param="model", code="model_not_found")
        return _card()

    async def _read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        too_big = (f"the request body is over this server's limit of {limits.max_body_bytes} bytes "
                   "(--max-body-bytes); split the request.")
        if declared is not None:
            try:
                if int(declared) > limits.max_body_bytes:
                    raise ApiError(413, too_big, code="request_too_large", headers={"Connection": "close"})
            except ValueError:
                raise ApiError(400, "the Content-Length header is not a number.") from None
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_body_bytes:
                raise ApiError(413, too_big, code="request_too_large", headers={"Connection": "close"})
            chunks.append(chunk)
        return b"".join(chunks)

    def _parse(raw: bytes) -> dict:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ApiError(400, f"the request body is not valid UTF-8 (byte {raw[exc.start]:#04x} at offset "
                                f"{exc.start}); send JSON encoded as UTF-8.", code="invalid_json") from None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ApiError(400, f"the request body is not valid JSON ({exc.msg} at line {exc.lineno} column "
                                f"{exc.colno}); send a JSON object with `input` and `model`.",
                           code="invalid_json") from None
        except RecursionError:
            raise ApiError(400, "the request body is nested too deeply to be an embeddings request.",
                           code="invalid_json") from None
        if not isinstance(obj, dict):
            raise ApiError(400, "the request body must be a JSON object with `input` and `model`.",
                           code="invalid_json")
        unknown = sorted(set(obj) - FIELDS)
        if unknown:
            raise ApiError(400, f"Unrecognized request argument supplied: {', '.join(unknown)}. Allowed: "
                                f"{', '.join(sorted(FIELDS))}.", param=unknown[0], code="unknown_parameter")
        return obj

    def _texts_of(obj: dict) -> list[str]:
        value = obj.get("input")
        hint = ("`input` must be a non-empty string, a list of strings, a list of token ids, or a list of "
                "token-id lists.")
        if "input" not in obj:
            raise ApiError(400, "`input` is missing. " + hint, param="input")
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list):
            raise ApiError(400, hint, param="input")
        if not value:
            raise ApiError(400, "`input` is an empty list; send at least one text.", param="input")
        if all(isinstance(t, str) for t in value):
            return value
        if all(isinstance(t, int) and not isinstance(t, bool) for t in value):
            return [_decode(value, 0)]
        if all(isinstance(t, list) for t in value):
            return [_decode(ids, i) for i, ids in enumerate(value)]
        raise ApiError(400, hint + " Do not mix strings and token ids.", param="input")

    def _decode(ids: list, i: int) -> str:
        if decode is None:
            raise ApiError(400, "token-id input needs the model's tokenizer, and this server embeds through an "
                                "upstream API whose tokenizer it does not have; send text.", param="input",
                           code="token_ids_unsupported")
        if not ids:
            raise ApiError(400, f"input[{i}] is an empty token list; every input must have content.", param="input")
        limit = vocab_size or 2**31
        j = next((j for j, t in enumerate(ids) if isinstance(t, bool) or not isinstance(t, int)
                  or not 0 <= t < limit), None)
        if j is not None:
            raise ApiError(400, f"input[{i}][{j}] is {ids[j]!r}, not a token id of this model (integers 0 to "
                                f"{limit - 1}).", param="input")
        return decode(ids)

    @app.post("/v1/embeddings", openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": EmbeddingRequest.model_json_schema()}}}})
    async def embeddings(request: Request):
        _check_auth(request)  # before the body is read: an unauthenticated client costs nothing
        obj = _parse(await _read_body(request))
        model = obj.get("model")
        if not isinstance(model, str):
            raise ApiError(400, "`model` must be a string naming the served model (see GET /v1/models).",
                           param="model")
        if model != model_name:
            raise ApiError(404, f"The model {model!r} does not exist; this server serves {model_name!r}.",
                           param="model", code="model_not_found")
        fmt = obj.get("encoding_format", "float")
        if fmt is None:
            fmt = "float"
        if fmt not in ("float", "base64"):
            raise ApiError(400, "`encoding_format` must be 'float' or 'base64'.", param="encoding_format")
        dim = obj.get("dimensions")
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int)):
            raise ApiError(400, "`dimensions` must be an integer.", param="dimensions")
        if obj.get("user") is not None and not isinstance(obj["user"], str):
            raise ApiError(400, "`user` must be a string.", param="user")
        texts = _texts_of(obj)
        if len(texts) > limits.max_inputs:
            raise ApiError(400, f"{len(texts)} inputs exceed this server's limit of {limits.max_inputs} per request "
                                "(--max-inputs); split the request.", param="input")
        n_chars = 0
        for i, t in enumerate(texts):
            if not t.strip():
                raise ApiError(400, f"input[{i}] is empty; every text must have content.", param="input")
            if len(t) > limits.max_text_chars:
                raise ApiError(400, f"input[{i}] has {len(t)} characters, over this server's limit of "
                                    f"{limits.max_text_chars} (--max-text-chars).", param="input")
            try:
                t.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ApiError(400, f"input[{i}] is not valid Unicode text: a lone surrogate "
                                    f"({t[exc.start]!r}) at character {exc.start}; send well-formed UTF-8 text.",
                               param="input", code="invalid_text") from None
            n_chars += len(t)
        if dim is not None:
            if adaptor is None:
                if full_dim is None or dim != full_dim:
                    raise ApiError(400, f"this server has no adaptor and serves native vectors only; "
                                        f"omit `dimensions`{f' or send {full_dim}' if full_dim else ''}.",
                                   param="dimensions")
            elif not 1 <= dim <= full_dim:
                raise ApiError(400, f"`dimensions` must be between 1 and {full_dim} for this adaptor "
                                    f"(trained Matryoshka dims: {list(adaptor.dims_)}); got {dim}.",
                               param="dimensions")
        # Tokenising a large request takes a while: off the event loop, so small requests keep flowing.
        tokens = count_tokens(texts) if n_chars < 20_000 else await asyncio.to_thread(count_tokens, texts)
        truncated = []
        if max_text_tokens is not None:
            for i, n in enumerate(tokens):
                if n > max_text_tokens:
                    if not limits.truncate:
                        raise ApiError(400, f"input[{i}] is {n} tokens, over this model's limit of {max_text_tokens} "
                                            "tokens per input; shorten it, or start the server with --truncate "
                                            "to cut inputs at the limit.", param="input",
                                       code="context_length_exceeded")
                    truncated.append(i)
                    tokens[i] = max_text_tokens
        total = sum(tokens)
        if total > limits.max_request_tokens:
            raise ApiError(400, f"the request has {total} tokens, over this server's limit of "
                                f"{limits.max_request_tokens} per request (--max-request-tokens); split it.",
                           param="input", code="request_too_large")
        if failures:  # test hook: fail the first calls on purpose
            status = failures.pop(0)
            headers = {"Retry-After": "1"} if status == 429 else None
            raise ApiError(status, f"injected failure ({status}) for testing; {len(failures)} more to come.",
                           kind="injected_error", headers=headers)
        counters["requests"] += 1
        counters["texts"] += len(texts)
        counters["tokens"] += total
        vectors = await _embed_unless_gone(request, texts, tokens)
        if adaptor is not None:
            try:  # numpy path, validated: a NaN or a wrong-length vector from the backend is caught here
                vectors = adaptor.transform(vectors, dim or full_dim)
            except InputError as exc:
                log.error("cannot adapt the backend's vectors: %s", exc)
                raise ApiError(500, f"the backend's vectors do not fit the adaptor: {exc}",
                               kind="server_error", code="internal_error") from None
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        data = [{"object": "embedding", "index": i, "embedding": _encode_vector(v, fmt)}
                for i, v in enumerate(vectors)]
        body = {"object": "list", "data": data, "model": model_name,
                "usage": {"prompt_tokens": total, "total_tokens": total}}
        headers = {"X-Truncated-Inputs": ",".join(map(str, truncated))} if truncated else None
        return _json_response(body, headers)

    async def _embed_unless_gone(request: Request, texts: list[str], tokens: list[int]) -> np.ndarray:
        job = asyncio.ensure_future(batcher.submit(texts, tokens))
        watch = asyncio.ensure_future(_wait_disconnect(request.receive))
        try:
            await asyncio.wait({job, watch}, timeout=request_timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
        if not job.done():
            job.cancel()  # drops its work from the queue
            if watch.done() and not watch.cancelled():  # the client went away
                counters["disconnected"] += 1
                raise _ClientGone()
            raise ApiError(503, f"the embedding backend did not answer within {request_timeout_s:g} s; retry later.",
                           kind="upstream_unavailable", code="timeout", headers={"Retry-After": "1"})
        try:
            return job.result()
        except ApiError:
            raise
        except Exception as exc:  # the local model failed on this request's own texts
            log.exception("embedding failed")
            raise ApiError(500, f"the embedding model failed on this request: {type(exc).__name__}: {exc}",
                           kind="server_error", code="model_error") from None

    @app.exception_handler(_ClientGone)
    async def _gone(_req, _exc):
        return Response(status_code=499)  # nginx's "client closed request"; nobody reads it

    return app
