"""The HTTP server's protocol and limits on slow and oversized request heads (``appraise serve``).

uvicorn closes an *idle* keep-alive connection after ``timeout_keep_alive``, but a connection that trickles its
request head (a byte every few seconds) is never closed: hundreds of them hold sockets for as long as they like.
The protocols here are uvicorn's with one more timer: a connection whose request head is not complete ``seconds``
after the connection opened (or after the previous response) is closed. A head larger than
``max_request_head_bytes`` is answered 400 and the connection closed. A slow *body* is the request guard's
(``body_read_timeout_seconds``).

:class:`GuardedHttpTools` (uvicorn's httptools parser, the fast one: what ``bench/service.py`` measures) is the
server's protocol; :class:`GuardedH11` (h11, which caps the head itself: ``h11_max_incomplete_event_size``) where
httptools is not installed. Both read their limits from the settings (the environment), so the uvicorn worker
processes of ``appraise serve --workers N`` find them by import path.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from app.config import get_settings

_BAD_REQUEST = "Invalid HTTP request received."  # uvicorn's answer to a head h11 refuses


class GuardedH11(H11Protocol):
    _head_timer: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self.loop.call_later(get_settings().header_read_timeout_seconds, self._head_overdue)

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


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools comes with uvicorn[standard]
    GuardedHttpTools = None
else:

    class GuardedHttpTools(HttpToolsProtocol):  # type: ignore[no-redef]
        """httptools has no cap on a head: the bytes fed to the parser while a head is being read are counted,
        and fed no further than the cap. Requests in flight are counted too: the head timer closes a connection
        only while no request is being answered (h11's ``IDLE``)."""

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            settings = get_settings()
            self._head_seconds = settings.header_read_timeout_seconds
            self._head_max = settings.max_request_head_bytes
            self._head_timer: asyncio.TimerHandle | None = None
            self._in_head, self._head_bytes = True, 0
            self._heads = self._answered = 0

        def _arm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._head_timer = self.loop.call_later(self._head_seconds, self._head_overdue)

        def _head_overdue(self) -> None:
            self._head_timer = None
            if self._heads == self._answered and not self.transport.is_closing():
                self.transport.close()  # no request being answered, and the next head is still incomplete

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            while data and self.parser is not None and not self.transport.is_closing():
                if not self._in_head:  # a body (or what follows it): the request guard caps bodies
                    super().data_received(data)
                    return
                room = self._head_max - self._head_bytes
                if room <= 0:
                    self.logger.warning("request head over %d bytes", self._head_max)
                    self.send_400_response(_BAD_REQUEST)
                    return
                part, data = data[:room], data[room:]
                self._head_bytes += len(part)
                super().data_received(part)

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._heads += 1
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_head, self._head_bytes = True, 0  # what comes next is the next request's head

        def on_response_complete(self) -> None:
            self._answered += 1
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            super().connection_lost(exc)


def protocol_path() -> str:
    """The import path of the server's HTTP protocol (uvicorn's ``http`` option; ``--http`` of its CLI)."""
    return f"{__name__}:{'GuardedHttpTools' if GuardedHttpTools is not None else 'GuardedH11'}"


def server_limits(settings) -> dict:
    """``uvicorn.run`` options from the settings."""
    return {"http": protocol_path(),
            "timeout_keep_alive": settings.keep_alive_seconds,
            "h11_max_incomplete_event_size": settings.max_request_head_bytes}
