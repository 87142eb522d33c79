"""Shared test helpers: a deterministic fake embedding model that records what it embeds."""

import hashlib
import sys
import threading

import numpy as np


class FakeModel:
    """Text -> a fixed pseudo-random unit vector (by hash); counts every text it is asked to embed."""

    def __init__(self, dim: int = 16, fail_on: str | None = None):
        self.dim, self.fail_on = dim, fail_on
        self.seen: list[str] = []
        self.calls = 0
        self._lock = threading.Lock()

    def vector(self, text: str) -> np.ndarray:
        seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
        v = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
        return v / np.linalg.norm(v)

    def __call__(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            self.calls += 1
            if self.fail_on is not None and self.fail_on in texts:
                raise RuntimeError("the fake model fails on purpose")
            self.seen.extend(texts)
        return np.stack([self.vector(t) for t in texts])


class ScriptedEmbeddingsServer:
    """A local OpenAI-compatible ``POST /v1/embeddings`` whose answers a test scripts.

    ``respond(request_json) -> (status, body)`` builds each answer; ``body`` is sent as JSON
    (or as-is when it is ``bytes``). Bodies follow the API's documented shape
    ``{"object": "list", "data": [{"object": "embedding", "index": i, "embedding": [...]}], "model": ...}``;
    tests break that shape on purpose. ``requests`` records every request body received.
    """

    def __init__(self, respond):
        import http.server
        import json

        self.respond, self.requests = respond, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                outer.requests.append(body)
                status, answer = outer.respond(body)
                data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                if not isinstance(sys.exc_info()[1], ConnectionError):  # a client killed mid-answer (kill tests)
                    super().handle_error(request, client_address)

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self._thread.start()
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()


def embeddings_body(vectors, model: str = "fake") -> dict:
    """An OpenAI embeddings response for ``vectors`` (a list of lists), indices in order."""
    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": list(map(float, v))} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": 1, "total_tokens": 1}}
