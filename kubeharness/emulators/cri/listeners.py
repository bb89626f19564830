"""Real sockets for the emulated containers' ``--http-port``, ``--tcp-port`` and ``--grpc-port``, on loopback
pod IPs.

A running container whose behaviour names a port, in a sandbox whose IP is a loopback address (the
default pool ``127.77.0.0/16``, or a CNI plugin handing out 127.x addresses), gets a listening socket
on (pod IP, port), so real HTTP and TCP probes reach it. It answers as ``khelper`` does on containerd:

- HTTP: a request gets ``HTTP/1.0 200 OK`` with ``ok`` while healthy and ``503 Service Unavailable``
  with ``unhealthy`` from ``--unhealthy-after`` on (judged on the emulator's clock; a HEAD gets no
  body), then the connection closes; ``/redirect``, ``/status`` and ``/hang`` answer as
  ``httpanswers`` says. A connection that sends no complete request is closed after 10 s of clock
  time. That limit covers only the reading of the request, in khelper too: once ``/hang`` is read,
  neither closes the connection; the client's close, the container's end or the emulator's stop
  does.
- TCP: a connection is accepted and closed at once.
- gRPC: a ``grpc.health.v1.Health`` server (see ``grpchealth``).

A port that cannot be bound (a second container of the pod on the same port, or anything else holding
it) is what it is for khelper: a line ``khelper: cannot listen on port N: <reason>`` on the container's
stderr, and the container keeps running without that port. Sockets close when the container exits or
is removed, and when the emulator stops; a restarted emulator opens them again for running containers.
Listening uses ``loop.add_reader`` on non-blocking sockets, so opening and closing never await.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import socket
from collections.abc import Callable

from kubeharness.clock import Clock, seconds_to_ns
from kubeharness.emulators.cri import httpanswers
from kubeharness.emulators.cri.grpchealth import HealthServer, bind_error

REQUEST_MAX_BYTES = 4096
IDLE_CLOSE_NS = seconds_to_ns(10)
BACKLOG = 128


def is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def _request_complete(data: bytes) -> bool:
    return b"\r\n\r\n" in data or b"\n\n" in data or len(data) >= REQUEST_MAX_BYTES


class _Listener:
    """One listening socket and the connections it is serving."""

    def __init__(self, sock: socket.socket, http: bool, healthy: Callable[[], bool], clock: Clock) -> None:
        self.sock = sock
        self.http = http
        self.healthy = healthy
        self.clock = clock
        self.loop = asyncio.get_running_loop()
        self.tasks: set[asyncio.Task[None]] = set()  # one per connection being served
        self.hanging = 0  # of which on /hang
        self.loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if not self.http:
                conn.close()
                continue
            conn.setblocking(False)
            task = self.loop.create_task(self._serve(conn))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _serve(self, conn: socket.socket) -> None:
        reader, writer = await asyncio.open_connection(sock=conn)
        timer = self.clock.call_at(self.clock.now_ns() + IDLE_CLOSE_NS, writer.close)
        try:
            data = b""
            while not _request_complete(data):
                chunk = await reader.read(REQUEST_MAX_BYTES - len(data))
                if not chunk:
                    break
                data += chunk
            if data:
                reply = httpanswers.answer(data, self.healthy())
                if reply is None:  # /hang: no answer, and no idle close; the client's EOF ends it
                    timer.cancel()
                    self.hanging += 1
                    try:
                        while await reader.read(REQUEST_MAX_BYTES):
                            pass
                    finally:
                        self.hanging -= 1
                    return
                writer.write(reply)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            timer.cancel()
            writer.close()

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        for task in list(self.tasks):
            task.cancel()


def bind(ip: str, port: int) -> socket.socket:
    """A non-blocking socket listening on (ip, port); raises OSError as bind/listen do."""
    family = socket.AF_INET6 if ipaddress.ip_address(ip).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setblocking(False)
        sock.bind((ip, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


class PortListeners:
    """The listening sockets of every running container, by container id."""

    def __init__(self, clock: Clock, enabled: bool = True) -> None:
        self.clock = clock
        self.enabled = enabled
        self._by_container: dict[str, list[_Listener]] = {}
        self._grpc: dict[str, HealthServer] = {}
        self._stopping: set[asyncio.Task[None]] = set()  # gRPC servers on their way down

    def open(self, container_id: str, ip: str, http_port: int | None, tcp_port: int | None,
             healthy: Callable[[], bool], grpc_port: int | None = None, grpc_service: str | None = None) -> list[str]:
        """Listen on the container's ports (in khelper's order: HTTP, TCP, gRPC); the khelper-style stderr
        lines of ports it could not get."""
        if not self.enabled or not is_loopback(ip) or (http_port is None and tcp_port is None and grpc_port is None):
            return []
        self.close(container_id)
        errors: list[str] = []
        listeners: list[_Listener] = []
        for port, http in ((http_port, True), (tcp_port, False)):
            if port is None:
                continue
            try:
                sock = bind(ip, port)
            except OSError as err:
                errors.append(_cannot_listen(port, err))
                continue
            listeners.append(_Listener(sock, http, healthy, self.clock))
        if listeners:
            self._by_container[container_id] = listeners
        if grpc_port is not None:
            refused = bind_error(ip, grpc_port)
            if refused is None:
                try:
                    server = HealthServer(ip, grpc_port, healthy, grpc_service)
                except (OSError, RuntimeError):  # taken between the probe and gRPC's own bind
                    refused = OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))
                else:
                    server.start()
                    self._grpc[container_id] = server
            if refused is not None:
                errors.append(_cannot_listen(grpc_port, refused))
        return errors

    def close(self, container_id: str) -> None:
        for listener in self._by_container.pop(container_id, []):
            with contextlib.suppress(OSError):
                listener.close()
        server = self._grpc.pop(container_id, None)
        if server is not None:
            task = server.stop()
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)

    def close_all(self) -> None:
        for container_id in list(self._by_container) + list(self._grpc):
            self.close(container_id)

    async def closed(self) -> None:
        """Wait until every gRPC server that was closed has let its port go."""
        while self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)

    def connections_of(self, container_id: str) -> tuple[int, int]:
        """How many HTTP connections a container's listeners serve, and how many of them are on /hang."""
        listeners = self._by_container.get(container_id, [])
        return sum(len(listener.tasks) for listener in listeners), sum(listener.hanging for listener in listeners)

    def ports_of(self, container_id: str) -> list[tuple[str, int]]:
        """Where a container listens (for logs and verbose status)."""
        ports = [listener.sock.getsockname()[:2] for listener in self._by_container.get(container_id, [])]
        server = self._grpc.get(container_id)
        return ports + ([server.address] if server is not None else [])


def _cannot_listen(port: int, err: OSError) -> str:
    reason = os.strerror(err.errno) if err.errno else str(err)
    return f"khelper: cannot listen on port {port}: {reason}"
