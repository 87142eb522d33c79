"""An OpenAI-compatible embeddings server that gives any model a working ``dimensions`` parameter.

``POST /v1/embeddings`` takes the OpenAI request (``input`` a string or a list of strings,
``model``, ``dimensions``, ``encoding_format`` float or base64), embeds the texts with
the backend (a local sentence-transformers model, or an upstream OpenAI-compatible API),
applies the adaptor, cuts to ``dimensions`` and renormalises. Without an adaptor it is a
plain pass-through (useful as a local upstream, and to test clients against failures:
``inject_failures`` makes the first calls answer with the given statuses).

Errors use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``, so clients
show the message. Upstream failures become 502 with the upstream status in the message;
the upstream key is never part of a response or a log line.
"""

from __future__ import annotations

import base64
import hmac
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal, Union

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr

from ..embed.openai_api import approx_tokens
from ..errors import InputError, UpstreamError
from .batching import MicroBatcher

log = logging.getLogger("matryoshka_adaptor.serve")


@dataclass
class ServerLimits:
    max_inputs: int = 2048  # texts per request (OpenAI's own limit)
    max_text_chars: int = 32_768  # characters per text
    max_batch_texts: int = 256  # texts per model call when requests are batched together
    batch_window_ms: float = 2.0  # how long a model call waits for more requests to join
    workers: int = 1  # model calls in flight (1 for a local model; more for an upstream API)


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input: Union[StrictStr, list[StrictStr]]
    model: StrictStr
    dimensions: StrictInt | None = None
    encoding_format: Literal["float", "base64"] = "float"
    user: StrictStr | None = None


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | int | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def _encode_vector(v: np.ndarray, fmt: str):
    if fmt == "base64":  # what the official clients ask for: little-endian float32 bytes
        return base64.b64encode(np.ascontiguousarray(v, dtype="<f4").tobytes()).decode("ascii")
    return v.astype(np.float32).tolist()


def create_app(
    embed: Callable[[list[str]], np.ndarray],
    *,
    model_name: str,
    adaptor=None,
    api_key: str | None = None,
    limits: ServerLimits | None = None,
    inject_failures: Sequence[int] = (),
    native_dim: int | None = None,
) -> FastAPI:
    """The ASGI app. ``embed`` maps texts to (n, d) vectors (it runs in a worker thread).

    ``adaptor`` is a fitted ``MatryoshkaAdaptor`` (None: pass-through); ``api_key``, when set,
    is the bearer token clients must send; ``inject_failures`` (e.g. ``[429, 503]``) answers
    the first embedding calls with those statuses, for testing clients' retries.
    """
    limits = limits or ServerLimits()
    batcher = MicroBatcher(embed, max_texts=limits.max_batch_texts, window_s=limits.batch_window_ms / 1000,
                           workers=limits.workers)
    failures = list(inject_failures)
    full_dim = adaptor.input_dim_ if adaptor is not None else native_dim
    counters = {"requests": 0, "texts": 0, "errors": 0, "started": time.time()}

    @asynccontextmanager
    async def lifespan(_app):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="matryoshka-adaptor", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(ApiError)
    async def _api_error(_req, exc: ApiError):
        counters["errors"] += 1
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_req, exc: RequestValidationError):
        counters["errors"] += 1
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = loc[0] if loc else None
        hints = {
            "input": "`input` must be a non-empty string or a list of strings (token arrays are not supported).",
            "model": "`model` must be a string naming the served model (see GET /v1/models).",
            "dimensions": "`dimensions` must be an integer.",
            "encoding_format": "`encoding_format` must be 'float' or 'base64'.",
        }
        message = hints.get(param, f"{'.'.join(loc) or 'body'}: {first.get('msg')}")
        if param is None:
            message = f"the request body must be a JSON object with `input` and `model` ({first.get('msg')})."
        return ApiError(400, message, param=param).response()

    def _check_auth(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        token = header[7:] if header.lower().startswith("bearer ") else ""
        if not token or not hmac.compare_digest(token.encode(), api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send `Authorization: Bearer <key>`.",
                           kind="authentication_error", code="invalid_api_key")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "adaptor": adaptor is not None, "dim": full_dim,
                "requests": counters["requests"], "texts": counters["texts"], "model_calls": batcher.batches,
                "errors": counters["errors"], "uptime_s": round(time.time() - counters["started"], 1)}

    @app.get("/v1/models")
    async def models(request: Request):
        _check_auth(request)
        card = {"id": model_name, "object": "model", "created": int(counters["started"]),
                "owned_by": "matryoshka-adaptor"}
        if adaptor is not None:
            card["dimensions"] = {"min": 1, "max": full_dim, "trained": list(adaptor.dims_)}
        return {"object": "list", "data": [card]}

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest, request: Request):
        _check_auth(request)
        if body.model != model_name:
            raise ApiError(404, f"model {body.model!r} is not served here; this server serves {model_name!r}.",
                           param="model", code="model_not_found")
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        if not texts:
            raise ApiError(400, "`input` is an empty list; send at least one text.", param="input")
        if len(texts) > limits.max_inputs:
            raise ApiError(400, f"{len(texts)} inputs exceed this server's limit of {limits.max_inputs} per request "
                                "(--max-inputs); split the request.", param="input")
        for i, t in enumerate(texts):
            if not t.strip():
                raise ApiError(400, f"input[{i}] is empty; every text must have content.", param="input")
            if len(t) > limits.max_text_chars:
                raise ApiError(400, f"input[{i}] has {len(t)} characters, over this server's limit of "
                                    f"{limits.max_text_chars} (--max-text-chars).", param="input")
        dim = body.dimensions
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
        if failures:  # test hook: fail the first calls on purpose
            status = failures.pop(0)
            headers = {"Retry-After": "1"} if status == 429 else None
            raise ApiError(status, f"injected failure ({status}) for testing; {len(failures)} more to come.",
                           kind="injected_error", headers=headers)
        counters["requests"] += 1
        counters["texts"] += len(texts)
        try:
            vectors = await batcher.submit(texts)
        except UpstreamError as exc:
            log.warning("upstream failed: %s", exc)
            status = f"HTTP {exc.status}" if exc.status else "no answer"
            raise ApiError(502, f"the upstream embedding API failed ({status}): {exc}", kind="upstream_error",
                           code=exc.status) from None
        except Exception as exc:  # the local model failed: say so in OpenAI's shape, keep the trace in the log
            log.exception("embedding failed")
            raise ApiError(500, f"the embedding model failed: {type(exc).__name__}: {exc}",
                           kind="server_error") from None
        if adaptor is not None:
            try:  # numpy path, validated: a NaN or a wrong-length vector from the backend is caught here
                vectors = adaptor.transform(vectors, dim or full_dim)
            except InputError as exc:
                log.error("cannot adapt the backend's vectors: %s", exc)
                raise ApiError(500, f"the backend's vectors do not fit the adaptor: {exc}",
                               kind="server_error") from None
        data = [{"object": "embedding", "index": i, "embedding": _encode_vector(v, body.encoding_format)}
                for i, v in enumerate(vectors)]
        tokens = sum(approx_tokens(t) for t in texts)
        return {"object": "list", "data": data, "model": model_name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    return app
