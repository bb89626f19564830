"""A container reached through its Docker engine: files in and out, commands, and byte streams to programs.

What the kind target and the CRI bridge need of a kind node, on the Docker SDK (``docker``): it finds
the container, runs commands in it (``exec_run``) and moves files as tar archives (``put_archive``,
``get_archive``). The SDK is a blocking library; :class:`DockerNode`'s coroutines run its calls in a
worker thread, and its ``*_sync`` methods are for callers that are synchronous by interface.

One thing the SDK has no asyncio form of: the hijacked exec, the two-way byte stream to a program's
stdin and stdout that ``docker exec -i`` uses. :func:`open_stream` creates the exec with the SDK, then
writes the Engine API's ``POST /exec/{id}/start`` request (``Connection: Upgrade``, ``Upgrade: tcp``) by
hand on an asyncio connection to the engine and reads the multiplexed frames itself (an 8-byte header:
the stream, three zero bytes, the payload's length), so that no byte that arrives together with the
response's headers is lost, as it can be when a blocking HTTP client has buffered it. It speaks to
engines on ``unix://`` sockets and plain ``tcp://``; a TLS or ``ssh://`` engine is refused by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import posixpath
import tarfile
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import docker
import docker.errors

DEFAULT_HOST = "unix:///var/run/docker.sock"
TIMEOUT_S = 60  # seconds for one Engine API request
STDOUT, STDERR = 1, 2  # the frame header's stream byte
STDERR_KEEP = 4096  # bytes of a stream's stderr kept for its error message
HEAD_LIMIT = 65536  # bytes of an HTTP response head


class DockerError(Exception):
    """The Docker engine is unreachable, or refused a request, or the container is not there."""


def docker_host() -> str:
    """The engine to use: ``DOCKER_HOST``, as the docker CLI reads it, or the default socket."""
    return os.environ.get("DOCKER_HOST") or DEFAULT_HOST


@dataclass(frozen=True)
class ExecResult:
    code: int
    stdout: bytes
    stderr: bytes


def tar_of(files: dict[str, tuple[bytes, int]]) -> bytes:
    """A tar archive of ``name -> (content, mode)`` (names may hold ``/``; directories are implied)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def files_of(archive: bytes, top: str) -> dict[str, bytes]:
    """The regular files right inside ``top`` of a ``get_archive`` answer, by name."""
    found: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r") as tar:
        for member in tar.getmembers():
            parent, name = posixpath.split(member.name.rstrip("/"))
            if member.isfile() and parent == top:
                extracted = tar.extractfile(member)
                if extracted is not None:
                    found[name] = extracted.read()
    return found


class DockerNode:
    """One container on a Docker engine (``host``: ``unix:///...`` or ``tcp://...``; default :func:`docker_host`)."""

    def __init__(self, container: str, host: str | None = None) -> None:
        self.host = host or docker_host()
        try:
            self.client = docker.DockerClient(base_url=self.host, timeout=TIMEOUT_S)
            self.container = self.client.containers.get(container)
        except docker.errors.NotFound:
            raise DockerError(f"no container {container!r} on the Docker engine at {self.host}") from None
        except docker.errors.DockerException as err:
            raise DockerError(f"the Docker engine at {self.host}: {err}") from None
        self.name = container

    @property
    def hostname(self) -> str:
        """The container's hostname: a kind node's name as its kubelet registers it."""
        return str(self.container.attrs["Config"]["Hostname"])

    @property
    def running(self) -> bool:
        self.container.reload()
        return bool(self.container.attrs["State"]["Running"])

    def exec_sync(self, cmd: list[str]) -> ExecResult:
        try:
            code, output = self.container.exec_run(cmd, demux=True)
        except docker.errors.APIError as error:
            raise DockerError(f"{self.name}: exec {cmd[0]}: {error.explanation or error}") from None
        out, err = output if isinstance(output, tuple) else (None, None)  # demux=True: (stdout, stderr)
        return ExecResult(int(code if code is not None else -1), out if isinstance(out, bytes) else b"",
                          err if isinstance(err, bytes) else b"")

    async def exec(self, cmd: list[str]) -> ExecResult:
        """Run ``cmd`` in the container to its end."""
        return await asyncio.to_thread(self.exec_sync, cmd)

    def put_files_sync(self, folder: str, files: dict[str, tuple[bytes, int]]) -> None:
        try:
            ok = self.container.put_archive(folder, tar_of(files))
        except docker.errors.APIError as error:
            raise DockerError(f"{self.name}: writing into {folder}: {error.explanation or error}") from None
        if not ok:
            raise DockerError(f"{self.name}: writing into {folder}: the engine refused the archive")

    def read_dir_sync(self, folder: str) -> dict[str, bytes]:
        """The regular files right inside ``folder``, by name (none if it does not exist)."""
        try:
            chunks, _ = self.container.get_archive(folder)
            archive = b"".join(chunks)
        except docker.errors.NotFound:
            return {}
        except docker.errors.APIError as error:
            raise DockerError(f"{self.name}: reading {folder}: {error.explanation or error}") from None
        return files_of(archive, posixpath.basename(folder.rstrip("/")))

    def close(self) -> None:
        self.client.close()


class ExecStream:
    """A program's stdin (:meth:`write`, :meth:`close_stdin`) and stdout (:meth:`read`) in a container;
    its stderr is kept (the last :data:`STDERR_KEEP` bytes) for error messages."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.stderr = b""

    async def read(self) -> bytes:
        """The next bytes of stdout; ``b""`` once the program's output has ended."""
        while True:
            try:
                head = await self._reader.readexactly(8)
                payload = await self._reader.readexactly(int.from_bytes(head[4:8], "big"))
            except (asyncio.IncompleteReadError, ConnectionError):
                return b""
            if head[0] == STDERR:
                self.stderr = (self.stderr + payload)[-STDERR_KEEP:]
            elif payload:
                return payload

    async def write(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    def close_stdin(self) -> None:
        if self._writer.can_write_eof() and not self._writer.is_closing():
            with contextlib.suppress(OSError):
                self._writer.write_eof()

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


async def _connect(host: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    url = urlparse(host)
    if url.scheme == "unix":
        return await asyncio.open_unix_connection(url.path, limit=HEAD_LIMIT)
    if url.scheme == "tcp" and not os.environ.get("DOCKER_TLS_VERIFY"):
        return await asyncio.open_connection(url.hostname, url.port or 2375, limit=HEAD_LIMIT)
    raise DockerError(f"a stream to a program needs a unix:// or a plain tcp:// Docker engine, not {host}")


async def open_stream(node: DockerNode, cmd: list[str]) -> ExecStream:
    """Start ``cmd`` in the node's container with its stdin and stdout connected to the returned stream."""
    try:
        created: dict[str, Any] = await asyncio.to_thread(
            node.client.api.exec_create, node.container.id, cmd, stdin=True, stdout=True, stderr=True, tty=False)
    except docker.errors.APIError as error:
        raise DockerError(f"{node.name}: exec {cmd[0]}: {error.explanation or error}") from None
    try:
        reader, writer = await _connect(node.host)
    except OSError as err:
        raise DockerError(f"the Docker engine at {node.host}: {err.strerror or err}") from None
    body = json.dumps({"Detach": False, "Tty": False}).encode()
    version = node.client.api.api_version
    writer.write(f"POST /v{version}/exec/{created['Id']}/start HTTP/1.1\r\nHost: docker\r\n"
                 f"Content-Type: application/json\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    try:
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError) as err:
        writer.close()
        raise DockerError(f"{node.name}: exec {cmd[0]}: no answer from the engine ({err})") from None
    status = head.split(b"\r\n", 1)[0].decode("latin-1")
    if status.split(" ")[1:2] not in (["101"], ["200"]):
        rest = await reader.read(2000)
        writer.close()
        raise DockerError(f"{node.name}: exec {cmd[0]}: {status}: {rest.decode(errors='replace').strip()}")
    return ExecStream(reader, writer)
