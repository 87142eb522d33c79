"""Wiring for ``matryoshka-adaptor serve``: pick the backend, build the app, run uvicorn with the limits."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

from ..embed.sources import SentenceTransformerSource, model_short_name
from ..errors import InputError
from .app import create_app
from .limits import ServerLimits


def build_app(*, adaptor: str | Path | None = None, upstream: str | None = None, upstream_model: str | None = None,
              upstream_api_key_env: str = "OPENAI_API_KEY", local_model: str | None = None,
              served_model_name: str | None = None, api_key: str | None = None,
              limits: ServerLimits | None = None, inject_failures=()):
    """(app, served model name) for one backend: ``local_model`` or ``upstream`` + ``upstream_model``.

    ``limits`` holds every limit and timeout (defaults: :class:`ServerLimits`); ``workers``
    is set here from the backend (1 for a local model, 4 for an upstream API) unless
    given as something other than the default.
    """
    limits = limits or ServerLimits()
    if (local_model is None) == (upstream is None):
        raise InputError("give exactly one backend: --local-model NAME_OR_PATH, or --upstream URL with --upstream-model.")
    if upstream is not None and not upstream_model:
        raise InputError("--upstream needs --upstream-model (the model name at the upstream API).")
    est = None
    if adaptor is not None:
        from ..estimator import MatryoshkaAdaptor

        est = MatryoshkaAdaptor.load(adaptor)
    if local_model is not None:
        from .backends import LocalBackend, quiet_tokenizers

        quiet_tokenizers()
        # Loaded now: a bad path fails at start-up, not on the first request.
        model = SentenceTransformerSource(local_model).load_model()
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        native_dim = get_dim()
        if est is not None and native_dim != est.input_dim_:
            raise InputError(f"{local_model} gives {native_dim}-dim vectors but the adaptor expects "
                             f"{est.input_dim_}; fit the adaptor on this model's embeddings.")
        backend = LocalBackend(model)
        if limits.max_text_tokens is not None and backend.window and limits.max_text_tokens > backend.window:
            raise InputError(f"--max-text-tokens {limits.max_text_tokens} is over the model's window of "
                             f"{backend.window} tokens; texts beyond it would be cut silently.")
        name = served_model_name or model_short_name(local_model)
        app = create_app(backend.embed, model_name=name, adaptor=est, api_key=api_key, limits=limits,
                         inject_failures=inject_failures, native_dim=native_dim, count_tokens=backend.count_tokens,
                         window=backend.window, decode=backend.decode, vocab_size=backend.vocab_size)
    else:
        from .backends import UpstreamBackend

        backend = UpstreamBackend(upstream, upstream_model, api_key=os.environ.get(upstream_api_key_env),
                                  timeout_s=limits.upstream_timeout_s, retries=limits.upstream_retries)
        if limits.workers == ServerLimits.workers:
            limits = limits.replace(workers=4)  # upstream calls wait on the network: several in flight
        name = served_model_name or upstream_model
        app = create_app(backend.embed, model_name=name, adaptor=est, api_key=api_key, limits=limits,
                         inject_failures=inject_failures, native_dim=est.input_dim_ if est is not None else None,
                         on_shutdown=backend.aclose, request_timeout_s=limits.upstream_timeout_s)
    app.state.backend = backend
    return app, name


def uvicorn_config(app, limits: ServerLimits, *, host: str = "127.0.0.1", port: int = 8000,
                   log_level: str = "info"):
    """A ``uvicorn.Config`` carrying the connection limits and timeouts of ``limits``."""
    import uvicorn

    from .guard import guarded_h11_protocol, install_repeat_filter

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                            http=guarded_h11_protocol(limits), timeout_keep_alive=limits.keep_alive_timeout_s,
                            h11_max_incomplete_event_size=limits.max_header_bytes,
                            limit_concurrency=limits.max_connections + 16)
    install_repeat_filter(limits.log_repeat_interval_s)  # after uvicorn configured its loggers
    return config


def run_server(app, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    import uvicorn

    limits = getattr(app.state, "limits", None) or ServerLimits()
    uvicorn.Server(uvicorn_config(app, limits, host=host, port=port, log_level=log_level)).run()


class BackgroundServer:
    """Run an app on a free loopback port in a thread (tests, notebooks, the load benchmark).

    ``with BackgroundServer(app) as url: ...`` gives ``http://127.0.0.1:PORT/v1``; the app's
    own limits (``create_app(limits=...)``) set the connection limits and timeouts.
    """

    def __init__(self, app, host: str = "127.0.0.1"):
        import uvicorn

        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}/v1"
        limits = getattr(app.state, "limits", None) or ServerLimits()
        self.server = uvicorn.Server(uvicorn_config(app, limits, host=host, log_level="warning"))
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
