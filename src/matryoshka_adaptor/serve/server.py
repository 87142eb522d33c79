"""Wiring for ``matryoshka-adaptor serve``: pick the backend, build the app, run uvicorn."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from ..embed.sources import SentenceTransformerSource, model_short_name
from ..errors import InputError
from .app import ServerLimits, create_app


def build_app(*, adaptor: str | Path | None = None, upstream: str | None = None, upstream_model: str | None = None,
              upstream_api_key_env: str = "OPENAI_API_KEY", local_model: str | None = None,
              served_model_name: str | None = None, api_key: str | None = None, max_inputs: int = 2048,
              max_text_chars: int = 32_768, max_batch_texts: int = 256, batch_window_ms: float = 2.0,
              upstream_retries: int = 2, upstream_timeout: float = 30.0, upstream_cache: str | Path | None = None,
              inject_failures=()):
    """(app, served model name) for one backend: ``local_model`` or ``upstream`` + ``upstream_model``."""
    if (local_model is None) == (upstream is None):
        raise InputError("give exactly one backend: --local-model NAME_OR_PATH, or --upstream URL with --upstream-model.")
    est = None
    if adaptor is not None:
        from ..estimator import MatryoshkaAdaptor

        est = MatryoshkaAdaptor.load(adaptor)
    native_dim = None
    if local_model is not None:
        source = SentenceTransformerSource(local_model)
        model = source.load_model()  # load now: a bad path fails at start-up, not on the first request
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        native_dim = get_dim()
        if est is not None and native_dim != est.input_dim_:
            raise InputError(f"{local_model} gives {native_dim}-dim vectors but the adaptor expects "
                             f"{est.input_dim_}; fit the adaptor on this model's embeddings.")
        name = served_model_name or model_short_name(local_model)
        workers = 1  # one forward pass at a time uses all cores; batching does the rest
    else:
        if not upstream_model:
            raise InputError("--upstream needs --upstream-model (the model name at the upstream API).")
        from ..embed.openai_api import OpenAICompatibleSource

        source = OpenAICompatibleSource(upstream_model, base_url=upstream, api_key_env=upstream_api_key_env,
                                        max_retries=upstream_retries, timeout_s=upstream_timeout,
                                        cache_path=upstream_cache, concurrency=1)
        name = served_model_name or upstream_model
        workers = 4  # upstream calls wait on the network: several in flight

    def embed(texts: list[str]):
        return source.encode(texts, progress=False)

    limits = ServerLimits(max_inputs=max_inputs, max_text_chars=max_text_chars, max_batch_texts=max_batch_texts,
                          batch_window_ms=batch_window_ms, workers=workers)
    app = create_app(embed, model_name=name, adaptor=est, api_key=api_key, limits=limits,
                     inject_failures=inject_failures, native_dim=native_dim)
    return app, name


def run_server(app, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level)


class BackgroundServer:
    """Run an app on a free loopback port in a thread (tests, notebooks, the load benchmark).

    ``with BackgroundServer(app) as url: ...`` gives ``http://127.0.0.1:PORT/v1``.
    """

    def __init__(self, app, host: str = "127.0.0.1"):
        import uvicorn

        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}/v1"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def __enter__(self) -> str:
        import time

        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()
