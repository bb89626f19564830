"""An emulated container's ``--grpc-port``: a real ``grpc.health.v1.Health`` server on its pod IP.

One ``grpc.aio`` server per container, answering exactly as ``khelper`` does on containerd:

- ``Check`` for the service ``""`` or the ``--grpc-service`` name: SERVING while healthy, NOT_SERVING
  from ``--unhealthy-after`` on, judged on the emulator's clock when the call arrives;
- ``Check`` for any other name: NOT_FOUND "unknown service" (grpc-go's reference servicer's words);
- a request that does not parse: INTERNAL "grpc: error unmarshalling request";
- ``Watch`` and every other method: UNIMPLEMENTED "Method not found!" (only Check is registered).

grpcio-health-checking's ``HealthServicer`` is not used as the servicer: its status is pushed by
``set()`` calls rather than read from a clock, its NOT_FOUND carries no message and it implements
``Watch``. Its messages (``health_pb2``) are what go on the wire. Requests are parsed in the handler,
so a malformed one gets INTERNAL with the message above rather than grpc's own exception text.

Requests above 16 KiB get RESOURCE_EXHAUSTED, as in khelper. ``grpc.so_reuseport`` is off, so a port
another socket holds cannot be shared, as with khelper's plain ``bind()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Callable

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2

SERVICE = "grpc.health.v1.Health"
MESSAGE_MAX_BYTES = 16 * 1024  # khelper's GRPC_MESSAGE_MAX
UNKNOWN_SERVICE = "unknown service"
BAD_REQUEST = "grpc: error unmarshalling request"


class HealthServer:
    """A health server for one container; ``start()`` after binding, ``stop()`` when the container ends."""

    def __init__(self, ip: str, port: int, healthy: Callable[[], bool], service: str | None) -> None:
        self.healthy = healthy
        self.known = {"", service} if service is not None else {""}
        self.server = grpc.aio.server(
            options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", MESSAGE_MAX_BYTES)]
        )
        check = grpc.unary_unary_rpc_method_handler(self._check)  # raw bytes in, bytes out
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Check": check}),))
        host = f"[{ip}]" if ipaddress.ip_address(ip).version == 6 else ip
        self.address = (ip, port)
        if self.server.add_insecure_port(f"{host}:{port}") != port:
            raise OSError(f"cannot bind {host}:{port}")
        self._starting: asyncio.Task[None] | None = None
        self._stopping: asyncio.Task[None] | None = None

    async def _check(self, raw: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        try:
            request = health_pb2.HealthCheckRequest.FromString(raw)
        except DecodeError:
            await context.abort(grpc.StatusCode.INTERNAL, BAD_REQUEST)
        if request.service not in self.known:
            await context.abort(grpc.StatusCode.NOT_FOUND, UNKNOWN_SERVICE)
        response = health_pb2.HealthCheckResponse
        serving = response.SERVING if self.healthy() else response.NOT_SERVING
        encoded: bytes = response(status=serving).SerializeToString()
        return encoded

    def start(self) -> None:
        """Start serving (in a task: the port is bound already, so early clients wait in its backlog)."""
        self._starting = asyncio.get_running_loop().create_task(self.server.start())

    def stop(self) -> asyncio.Task[None]:
        """Stop at once (calls in flight are cancelled); the task ends when the port is free again."""
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._stop())
        return self._stopping

    async def _stop(self) -> None:
        if self._starting is not None:
            with contextlib.suppress(Exception):
                await self._starting
        await self.server.stop(None)


def bind_error(ip: str, port: int) -> OSError | None:
    """What ``bind()`` says about (ip, port) right now, as khelper would hear it; None when it is free.

    gRPC reports a failed bind without its reason, so a plain socket with the same options
    (SO_REUSEADDR, no SO_REUSEPORT) tries first and is closed again."""
    family = socket.AF_INET6 if ipaddress.ip_address(ip).version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((ip, port))
            probe.listen(1)
        except OSError as err:
            return err
    return None


async def stop_all(servers: list[HealthServer]) -> None:
    for server in servers:
        with contextlib.suppress(Exception):
            await server.stop()
