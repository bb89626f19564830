"""Real sockets for the emulated containers' ``--http-port`` and ``--tcp-port``, on loopback pod IPs.

A running container whose behaviour names a port, in a sandbox whose IP is a loopback address (the
default pool ``127.77.0.0/16``, or a CNI plugin handing out 127.x addresses), gets a listening socket
on (pod IP, port), so real HTTP and TCP probes reach it. It answers as ``khelper`` does on containerd:

- HTTP: any request (any path) gets ``HTTP/1.0 200 OK`` with ``ok`` while healthy and ``503 Service
  Unavailable`` with ``unhealthy`` from ``--unhealthy-after`` on (judged on the emulator's clock; a
  HEAD gets no body), then the connection closes. A connection that sends no complete request is
  closed after 10 s of clock time.
- TCP: a connection is accepted and closed at once.

A port that cannot be bound (a second container of the pod on the same port, or anything else holding
it) is what it is for khelper: a line ``khelper: cannot listen on port N: <reason>`` on the container's
stderr, and the container keeps running without that port. Sockets close when the container exits or
is removed, and when the emulator stops; a restarted emulator opens them again for running containers.
Listening uses ``loop.add_reader`` on non-blocking sockets, so opening and closing never await.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
from collections.abc import Callable

from kubeharness.clock import Clock, seconds_to_ns

REQUEST_MAX_BYTES = 4096
IDLE_CLOSE_NS = seconds_to_ns(10)
BACKLOG = 128


def is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def http_response(healthy: bool, head: bool) -> bytes:
    status, body = ("200 OK", b"ok\n") if healthy else ("503 Service Unavailable", b"unhealthy\n")
    header = (
        f"HTTP/1.0 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return header if head else header + body


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
        self.tasks: set[asyncio.Task[None]] = set()
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
                writer.write(http_response(self.healthy(), data.startswith(b"HEAD ")))
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

    def open(self, container_id: str, ip: str, http_port: int | None, tcp_port: int | None,
             healthy: Callable[[], bool]) -> list[str]:
        """Listen on the container's ports; the khelper-style stderr lines of ports it could not get."""
        if not self.enabled or not is_loopback(ip) or (http_port is None and tcp_port is None):
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
                reason = os.strerror(err.errno) if err.errno else str(err)
                errors.append(f"khelper: cannot listen on port {port}: {reason}")
                continue
            listeners.append(_Listener(sock, http, healthy, self.clock))
        if listeners:
            self._by_container[container_id] = listeners
        return errors

    def close(self, container_id: str) -> None:
        for listener in self._by_container.pop(container_id, []):
            with contextlib.suppress(OSError):
                listener.close()

    def close_all(self) -> None:
        for container_id in list(self._by_container):
            self.close(container_id)

    def ports_of(self, container_id: str) -> list[tuple[str, int]]:
        """Where a container listens (for logs and verbose status)."""
        return [listener.sock.getsockname()[:2] for listener in self._by_container.get(container_id, [])]
