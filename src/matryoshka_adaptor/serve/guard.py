"""Connection-level protection for uvicorn: a connection limit, a request read deadline, quiet logs.

uvicorn times out idle keep-alive connections but not a connection that sends nothing,
or sends its headers or body slowly; thousands of those exhaust the file descriptors.
:func:`guarded_h11_protocol` gives uvicorn a protocol class that

* closes a new connection at once when ``max_connections`` are already open (before
  reading from it), and
* closes a connection that has not sent a complete request (headers and body) within
  ``request_read_timeout_s`` of connecting or of its first byte.

:class:`RepeatFilter` logs a repeated warning once per interval with a count of the
lines it held back, so a flood of identical errors cannot fill the disk.
"""

from __future__ import annotations

import logging
import threading
import time

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .limits import ServerLimits

log = logging.getLogger("matryoshka_adaptor.serve")

# Their side has sent a whole request (or gone): no read deadline needed.
_REQUEST_COMPLETE = (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR, h11.MIGHT_SWITCH_PROTOCOL,
                     h11.SWITCHED_PROTOCOL)


def guarded_h11_protocol(limits: ServerLimits) -> type[H11Protocol]:
    """An ``H11Protocol`` subclass enforcing ``limits.max_connections`` and ``limits.request_read_timeout_s``."""

    class GuardedH11Protocol(H11Protocol):
        max_connections = limits.max_connections
        read_timeout_s = limits.request_read_timeout_s
        counts = {"refused": 0, "timed_out": 0}

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._read_timer = None
            self._refused = False

        def connection_made(self, transport) -> None:
            if len(self.connections) >= self.max_connections:
                self._refused = True
                self.transport = transport
                self.counts["refused"] += 1
                log.warning("connection limit (%d) reached: closing new connections", self.max_connections)
                transport.abort()
                return
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            if self._refused:
                return
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            if self._read_timer is None and self.conn.their_state not in _REQUEST_COMPLETE:
                self._arm()  # the next request on a kept-alive connection has started
            super().data_received(data)
            if self.conn.their_state in _REQUEST_COMPLETE:
                self._disarm()

        def _arm(self) -> None:
            self._disarm()
            self._read_timer = self.loop.call_later(self.read_timeout_s, self._read_timed_out)

        def _disarm(self) -> None:
            if self._read_timer is not None:
                self._read_timer.cancel()
                self._read_timer = None

        def _read_timed_out(self) -> None:
            self._read_timer = None
            if self.conn.their_state in _REQUEST_COMPLETE or self.transport.is_closing():
                return
            self.counts["timed_out"] += 1
            log.warning("closing connections that sent no complete request within %g s", self.read_timeout_s)
            self.transport.close()

    return GuardedH11Protocol


class RepeatFilter(logging.Filter):
    """Let a WARNING-or-worse message (same logger, same format string) through once per ``interval_s``.

    The next one let through says how many were held back. INFO and below always pass
    (access lines differ by client and are the operator's choice to turn off).
    """

    def __init__(self, interval_s: float = 10.0):
        super().__init__()
        self.interval_s = interval_s
        self._last: dict[tuple[str, str], tuple[float, int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, str(record.msg))
        now = time.monotonic()
        with self._lock:
            last, held = self._last.get(key, (None, 0))
            if last is not None and now - last < self.interval_s:
                self._last[key] = (last, held + 1)
                return False
            if len(self._last) > 1000:  # bounded: drop the oldest keys
                for k in sorted(self._last, key=lambda k: self._last[k][0])[:500]:
                    del self._last[k]
            self._last[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} ({held} similar lines held back in the last {self.interval_s:g} s)"
        return True


QUIET_LOGGERS = ("uvicorn.error", "uvicorn", "asyncio", "matryoshka_adaptor.serve")


def install_repeat_filter(interval_s: float) -> RepeatFilter:
    """Attach one :class:`RepeatFilter` to the server's loggers (replacing an earlier one)."""
    flt = RepeatFilter(interval_s)
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, RepeatFilter)]:
            logger.removeFilter(old)
        logger.addFilter(flt)
    return flt
