"""The CRI bridge: a unix socket here whose every connection is carried to a socket inside a kind node.

Each connection accepted on ``listen`` starts, through the node's Docker engine, a relay program inside
the node (``socat - UNIX-CONNECT:<socket>``, which kind's node image has; any command reading stdin and
writing stdout will do) and copies bytes both ways until either side ends. The bytes are not looked at:
gRPC, HTTP/2 and CRI pass as they are, so any CRI client (the conformance suite with ``--cri-endpoint``,
``kubeharness bench cri``, a kubelet) talks to the node's containerd as if it were local.

    kubeharness kind bridge --node kind-control-plane --listen /tmp/kind-cri.sock
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from kubeharness.kind.layout import CONTAINERD_SOCKET
from kubeharness.kind.transport import DockerError, DockerNode, ExecStream, open_stream

RELAY = ("socat", "-", "UNIX-CONNECT:{socket}")
CHUNK = 65536

log = logging.getLogger(__name__)


class CriBridge:
    """Serves ``listen`` (a path) and carries each connection to ``socket`` in ``node``."""

    def __init__(self, node: DockerNode, listen: Path, socket: str = CONTAINERD_SOCKET,
                 relay: tuple[str, ...] = RELAY) -> None:
        self.node = node
        self.listen = listen
        self.command = [part.format(socket=socket) for part in relay]
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    @property
    def endpoint(self) -> str:
        return f"unix://{self.listen}"

    async def start(self) -> None:
        self.listen.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._accept, path=str(self.listen))

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._pipe(reader, writer))
        self._pipes.add(task)
        task.add_done_callback(self._pipes.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            stream = await open_stream(self.node, self.command)
        except DockerError as err:
            log.warning("CRI bridge: %s", err)
            writer.close()
            return
        up = asyncio.ensure_future(_up(reader, stream))
        try:
            await _down(stream, writer)
        finally:
            up.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await up
            await stream.close()
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            if stream.stderr:
                log.info("CRI bridge: the relay in %s said: %s", self.node.name,
                         stream.stderr.decode(errors="replace").strip())

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        self.listen.unlink(missing_ok=True)


async def _up(reader: asyncio.StreamReader, stream: ExecStream) -> None:
    """The client's bytes to the relay's stdin; its end closes the relay's stdin."""
    try:
        while data := await reader.read(CHUNK):
            await stream.write(data)
    finally:
        stream.close_stdin()


async def _down(stream: ExecStream, writer: asyncio.StreamWriter) -> None:
    """The relay's stdout to the client, until the relay ends."""
    with contextlib.suppress(ConnectionError):
        while data := await stream.read():
            writer.write(data)
            await writer.drain()


async def serve(node: DockerNode, listen: Path, socket: str = CONTAINERD_SOCKET) -> None:
    """``kubeharness kind bridge``: serve until cancelled (SIGINT, SIGTERM)."""
    bridge = CriBridge(node, listen, socket)
    await bridge.start()
    print(bridge.endpoint, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await bridge.stop()
