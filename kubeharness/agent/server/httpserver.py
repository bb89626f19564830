"""The agent's read-only HTTP endpoints, served as kubelet serves them on its read-only and healthz ports.

``/pods`` answers a ``v1`` PodList of the pods the agent runs, with their status; ``/healthz`` answers
``ok`` (200) while the agent is healthy and the reason (500) when it is not (the runtime gone for longer
than the PLEG threshold); ``/metrics`` answers Prometheus text. It is a small HTTP/1.1 server on asyncio
streams (GET and HEAD only, keep-alive, no request bodies): enough for kubelet's clients, curl and
Prometheus, and no dependency.

A server binds exactly the one address it is given, an IP address literal (KubeletConfiguration
``address`` for the read-only port, ``healthzBindAddress`` for healthz): never a host name that could
resolve to several addresses, never "all interfaces" for an empty host. ``0.0.0.0`` or ``::`` are served only
when configured so (kubelet's default ``address`` is ``0.0.0.0``; the read-only port is off unless
``readOnlyPort`` is set), and then the agent logs a warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 16 * 1024


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


Route = Callable[[], Answer]
REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request", 500: "Internal Server Error"}


class HttpServer:
    """Serves ``routes`` (path -> handler) on ``host:port``; port 0 picks a free one (see :attr:`port`)."""

    def __init__(self, host: str, port: int, routes: dict[str, Route]) -> None:
        self.host = host
        self.port = port
        self.routes = routes
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        try:
            address = ipaddress.ip_address(self.host)
        except ValueError:
            raise ValueError(f"HTTP server: {self.host!r} is not an IP address") from None
        if address.is_unspecified:
            log.warning("serving %s on every interface (%s:%d), as configured", ", ".join(self.routes),
                        self.host, self.port)
        self._server = await asyncio.start_server(self._serve, str(address), self.port, limit=MAX_HEADER_BYTES,
                                                  reuse_port=False)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    def _answer(self, method: str, target: str) -> Answer:
        if method not in ("GET", "HEAD"):
            return Answer(405, b"only GET and HEAD\n")
        route = self.routes.get(target.split("?", 1)[0])
        if route is None:
            return Answer(404, b"404 page not found\n")
        try:
            return route()
        except Exception:
            log.exception("internal error serving %s", target)
            return Answer(500, b"internal error; see the agent's log\n")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                parts = lines[0].split(" ")
                if len(parts) != 3:
                    answer, method = Answer(400, b"bad request line\n"), "GET"
                else:
                    method = parts[0]
                    answer = self._answer(method, parts[1])
                headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)}
                close = headers.get("connection", "").lower() == "close" or parts[-1] == "HTTP/1.0"
                writer.write(
                    f"HTTP/1.1 {answer.status} {REASONS.get(answer.status, '')}\r\n"
                    f"Content-Type: {answer.content_type}\r\nContent-Length: {len(answer.body)}\r\n"
                    f"{'Connection: close' + chr(13) + chr(10) if close else ''}\r\n".encode("latin-1"))
                if method != "HEAD":
                    writer.write(answer.body)
                await writer.drain()
                if close:
                    return
        except ConnectionError:
            return
        finally:
            writer.close()
