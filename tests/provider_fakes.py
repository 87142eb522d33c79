"""Loopback fakes of the Gemini and Cohere embedding APIs, speaking their documented shapes.

Each fake checks requests the way the real service does (key header, field names and
values, batch limits) and answers with the provider's response and error bodies. A
``failures`` list of ``(status, retry_after or None)`` makes the next calls fail first.
Vectors come from ``FakeModel`` keyed by text *and* input type, so a query and a
document embedding of the same text differ, as they do at the real providers.
"""

from __future__ import annotations

import threading
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from fakes import FakeModel

GEMINI_STATUS = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED",
                 500: "INTERNAL", 503: "UNAVAILABLE"}


class _Recorder:
    def __init__(self, failures):
        self.failures = list(failures or [])
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.lock = threading.Lock()

    def next_failure(self):
        with self.lock:
            return self.failures.pop(0) if self.failures else None


def gemini_app(model: FakeModel, *, model_name: str = "gemini-embedding-001", api_key: str = "g-key",
               failures=None) -> FastAPI:
    """``POST /v1beta/models/{model}:batchEmbedContents`` as documented by Google."""
    app = FastAPI()
    rec = _Recorder(failures)
    app.state.recorder = rec

    def error(code: int, message: str, headers=None):
        return JSONResponse({"error": {"code": code, "message": message, "status": GEMINI_STATUS[code]}},
                            status_code=code, headers=headers)

    @app.post("/v1beta/models/{model_action}")
    async def batch_embed(model_action: str, request: Request):
        body = await request.json()
        with rec.lock:
            rec.requests.append(body)
            rec.headers.append(dict(request.headers))
        if "key" in request.query_params:
            return error(400, "the fake refuses keys in the URL")
        key = request.headers.get("x-goog-api-key")
        if key is None:
            return error(403, "Method doesn't allow unregistered callers (callers without established identity). "
                              "Please use API Key or other form of API consumer identity to call this API.")
        if key != api_key:
            return error(400, "API key not valid. Please pass a valid API key.")
        failure = rec.next_failure()
        if failure is not None:
            status, retry_after = failure
            message = {429: "Resource has been exhausted (e.g. check quota).",
                       503: "The model is overloaded. Please try again later."}.get(status, "Internal error encountered.")
            return error(status, message, {"Retry-After": str(retry_after)} if retry_after is not None else None)
        name, _, action = model_action.partition(":")
        if action != "batchEmbedContents" or name != model_name:
            return error(404, f"models/{name} is not found for API version v1beta, or is not supported for {action}.")
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            return error(400, "Invalid JSON payload received. Unknown name or missing \"requests\".")
        if len(requests) > 100:
            return error(400, "* BatchEmbedContentsRequest.requests: at most 100 requests can be in one batch\n")
        out = []
        for i, r in enumerate(requests):
            if r.get("model") != f"models/{model_name}":
                return error(400, f"Model names should start with `models/` and match the URL; got {r.get('model')!r} "
                                  f"in requests[{i}].")
            task = r.get("taskType", "TASK_TYPE_UNSPECIFIED")
            if task not in ("TASK_TYPE_UNSPECIFIED", "RETRIEVAL_QUERY", "RETRIEVAL_DOCUMENT", "SEMANTIC_SIMILARITY",
                            "CLASSIFICATION", "CLUSTERING"):
                return error(400, f"Invalid value at 'requests[{i}].task_type' (type.googleapis.com/"
                                  f"google.ai.generativelanguage.v1beta.TaskType), \"{task}\"")
            text = r["content"]["parts"][0]["text"]
            vec = model([f"{task}|{text}"])[0]
            n = r.get("outputDimensionality")
            out.append({"values": (vec[:n] if n else vec).tolist()})
        return {"embeddings": out}

    return app


def cohere_app(model: FakeModel, *, model_name: str = "embed-v4.0", api_key: str = "co-key",
               failures=None) -> FastAPI:
    """``POST /v2/embed`` as documented by Cohere."""
    app = FastAPI()
    rec = _Recorder(failures)
    app.state.recorder = rec

    def error(code: int, message: str, headers=None):
        return JSONResponse({"id": str(uuid.uuid4()), "message": message}, status_code=code, headers=headers)

    @app.post("/v2/embed")
    async def embed(request: Request):
        body = await request.json()
        with rec.lock:
            rec.requests.append(body)
            rec.headers.append(dict(request.headers))
        if request.headers.get("authorization") != f"Bearer {api_key}":
            return error(401, "invalid api token")
        failure = rec.next_failure()
        if failure is not None:
            status, retry_after = failure
            message = {429: "You are using a Trial key, which is limited to 100 API calls / minute."}.get(
                status, "internal server error, this has been reported to our developers")
            return error(status, message, {"Retry-After": str(retry_after)} if retry_after is not None else None)
        if body.get("model") != model_name:
            return error(404, f"model '{body.get('model')}' not found, make sure the correct model ID was used "
                              "and that you have access to the model.")
        texts = body.get("texts") or []
        if len(texts) > 96:
            return error(400, f"invalid request: total number of texts must be at most 96 - received {len(texts)}")
        input_type = body.get("input_type")
        if input_type not in ("search_query", "search_document", "classification", "clustering"):
            return error(400, "invalid request: valid input_type must be provided with the provided model")
        types = body.get("embedding_types") or ["float"]
        if "float" not in types:
            return error(400, "the fake only serves float embeddings")
        dim = body.get("output_dimension")
        vecs = model([f"{input_type}|{t}" for t in texts])
        floats = [(v[:dim] if dim else v).tolist() for v in vecs]
        return {"id": str(uuid.uuid4()), "embeddings": {"float": floats}, "texts": texts,
                "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": len(texts)}},
                "response_type": "embeddings_by_type"}

    return app
