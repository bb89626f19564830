"""The agent's read-only HTTP endpoints, served as kubelet serves them on its read-only and healthz ports.

``/pods`` answers a ``v1`` PodList of the pods the agent runs, with their status; ``/healthz`` answers
``ok`` (200) while the agent is healthy and the reason (500) when it is not (the runtime gone for longer
than the PLEG threshold); ``/metrics`` answers Prometheus text. The server is aiohttp's (GET and HEAD; any
other method 405); a route is a plain function returning an :class:`Answer`, or a coroutine function for
answers that must ask someone first (the stats summary asks the runtime).

A server binds exactly the one address it is given, an IP address literal (KubeletConfiguration
``address`` for the read-only port, ``healthzBindAddress`` for healthz): never a host name that could
resolve to several addresses, never "all interfaces" for an empty host. ``0.0.0.0`` or ``::`` are served only
when configured so (kubelet's default ``address`` is ``0.0.0.0``; the read-only port is off unless
``readOnlyPort`` is set), and then the agent logs a warning.
"""

from __future__ import annotations

import inspect
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 16 * 1024


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


Route = Callable[[], Answer] | Callable[[], Awaitable[Answer]]


class HttpServer:
    """Serves ``routes`` (path -> handler) on ``host:port``; port 0 picks a free one (see :attr:`port`)."""

    def __init__(self, host: str, port: int, routes: dict[str, Route]) -> None:
        self.host = host
        self.port = port
        self.routes = routes
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        try:
            address = ipaddress.ip_address(self.host)
        except ValueError:
            raise ValueError(f"HTTP server: {self.host!r} is not an IP address") from None
        if address.is_unspecified:
            log.warning("serving %s on every interface (%s:%d), as configured", ", ".join(self.routes),
                        self.host, self.port)
        app = web.Application(handler_args={"max_field_size": MAX_HEADER_BYTES, "max_line_size": MAX_HEADER_BYTES})
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((str(address), self.port))
        except OSError:
            sock.close()
            await self._runner.cleanup()
            self._runner = None
            raise
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        answer = await self._answer(request.method, request.path)
        response = web.Response(status=answer.status, body=answer.body)
        response.headers["Content-Type"] = answer.content_type
        return response

    async def _answer(self, method: str, path: str) -> Answer:
        if method not in ("GET", "HEAD"):
            return Answer(405, b"only GET and HEAD\n")
        route = self.routes.get(path)
        if route is None:
            return Answer(404, b"404 page not found\n")
        try:
            answer = route()
            if inspect.isawaitable(answer):
                answer = await answer
            assert isinstance(answer, Answer)
            return answer
        except Exception:
            log.exception("internal error serving %s", path)
            return Answer(500, b"internal error; see the agent's log\n")
