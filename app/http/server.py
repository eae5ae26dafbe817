"""The HTTP server's limits on slow and oversized request heads (``appraise serve``).

uvicorn closes an *idle* keep-alive connection after ``timeout_keep_alive``, but a connection that trickles its
request head (a byte every few seconds) is never closed: hundreds of them hold sockets for as long as they like.
:func:`head_timeout_protocol` is uvicorn's h11 protocol with one more timer: a connection whose request head is
not complete ``seconds`` after the connection opened (or after the previous response) is closed. h11 also refuses
a head larger than ``h11_max_incomplete_event_size`` (``max_request_head_bytes``). A slow *body* is the request guard's
(``body_read_timeout_seconds``).
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


def head_timeout_protocol(seconds: float) -> type[asyncio.Protocol]:
    class HeadTimeoutH11(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._head_timer = self.loop.call_later(seconds, self._head_overdue)

        def _head_overdue(self) -> None:
            self._head_timer = None
            if self.conn.their_state == h11.IDLE and not self.transport.is_closing():
                self.transport.close()  # the head is still incomplete: drop the connection

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            super().connection_lost(exc)

    return HeadTimeoutH11


def server_limits(settings) -> dict:
    """``uvicorn.run`` options from the settings."""
    return {"http": head_timeout_protocol(settings.header_read_timeout_seconds),
            "timeout_keep_alive": settings.keep_alive_seconds,
            "h11_max_incomplete_event_size": settings.max_request_head_bytes}
