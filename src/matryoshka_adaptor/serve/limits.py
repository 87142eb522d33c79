"""Every limit of ``matryoshka-adaptor serve`` in one typed, validated place.

The command line reads its defaults from :class:`ServerLimits`, the app and the
uvicorn wiring read their settings from it: a limit is defined once. This module
imports nothing beyond the standard library, so ``--help`` works without the
serving extra installed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ..errors import InputError


@dataclass(frozen=True)
class ServerLimits:
    """Limits and timeouts of the embeddings server.

    Parameters
    ----------
    max_inputs : int
        Texts per request (OpenAI's own limit is 2048).
    max_text_chars : int
        Characters per text, checked before tokenising.
    max_text_tokens : int or None
        Tokens per text. None: the local model's window (``max_seq_length``); no
        limit beyond ``max_text_chars`` for an upstream API (its own limit applies).
    truncate : bool
        Cut texts longer than ``max_text_tokens`` instead of rejecting them (the
        response then names the cut inputs in the ``X-Truncated-Inputs`` header).
    max_request_tokens : int
        Tokens per request (all inputs together): the bound on one request's cost.
    max_body_bytes : int
        Bytes of request body, checked from ``Content-Length`` and while streaming,
        before any parsing.
    max_batch_texts : int
        Texts per model call when requests are batched together.
    max_batch_tokens : int
        Tokens per model call: bounds how long one call holds the model, and so the
        wait of a small request behind a large one.
    chunk_texts : int
        Texts a request contributes to a model call per round-robin turn: a large
        request is split across calls and shares each call with other requests.
    batch_window_ms : float
        At most this long a request waits for others to join its model call;
        requests that already waited longer go at once.
    workers : int
        Model calls in flight (1 for a local model, which uses all cores; more for an
        upstream API, which waits on the network).
    max_connections : int
        Open connections; more are closed at once, before reading anything.
    request_read_timeout_s : float
        Seconds a connection has to send a complete request (headers and body) from
        its first byte or from connecting; slower ones are closed.
    keep_alive_timeout_s : float
        Seconds an idle keep-alive connection stays open.
    max_header_bytes : int
        Bytes of request line and headers.
    upstream_timeout_s : float
        One overall deadline per upstream call, retries included.
    upstream_retries : int
        Retries of a retryable upstream failure (429, 5xx, no answer) within the deadline.
    log_repeat_interval_s : float
        A repeated warning (same logger and message) is logged at most once per interval,
        with a count of those suppressed.
    """

    max_inputs: int = 2048
    max_text_chars: int = 32_768
    max_text_tokens: int | None = None
    truncate: bool = False
    max_request_tokens: int = 65_536
    max_body_bytes: int = 8 * 1024 * 1024
    max_batch_texts: int = 256
    max_batch_tokens: int = 4096
    chunk_texts: int = 32
    batch_window_ms: float = 2.0
    workers: int = 1
    max_connections: int = 256
    request_read_timeout_s: float = 30.0
    keep_alive_timeout_s: float = 5.0
    max_header_bytes: int = 16 * 1024
    upstream_timeout_s: float = 30.0
    upstream_retries: int = 2
    log_repeat_interval_s: float = 10.0

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "truncate":
                if not isinstance(value, bool):
                    raise InputError(f"ServerLimits.truncate must be True or False, got {value!r}.")
                continue
            if value is None and f.name == "max_text_tokens":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InputError(f"ServerLimits.{f.name} must be a number, got {value!r}.")
            if f.type in ("int", "int | None") and not isinstance(value, int):
                raise InputError(f"ServerLimits.{f.name} must be an integer, got {value!r}.")
            low = 0 if f.name in ("batch_window_ms", "upstream_retries") else 1e-9
            if value < low:
                raise InputError(f"ServerLimits.{f.name} must be {'>= 0' if low == 0 else '> 0'}, got {value!r} "
                                 f"(--{f.name.removesuffix('_s').replace('_', '-')}).")
        if self.chunk_texts > self.max_batch_texts:
            raise InputError(f"chunk_texts ({self.chunk_texts}) cannot exceed max_batch_texts ({self.max_batch_texts}).")
        if self.max_text_tokens is not None and self.max_text_tokens > self.max_batch_tokens:
            raise InputError(f"max_text_tokens ({self.max_text_tokens}) cannot exceed max_batch_tokens "
                             f"({self.max_batch_tokens}): one text must fit in a model call.")

    def replace(self, **changes) -> ServerLimits:
        """A copy with ``changes`` applied (validated again)."""
        return ServerLimits(**{**asdict(self), **changes})
