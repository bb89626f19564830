"""The container log manager: every ``containerLogMonitorInterval``, one pass over the running containers.

Kubelet's ``containerLogManager``: a pass lists the containers (ListContainers) and takes those RUNNING
(a container that has stopped writes nothing more, so its last file stays as it is); for each, at most
``containerLogMaxWorkers`` at a time, ContainerStatus gives the log path, and the live file is stat'ed:

- missing: ReopenContainerLog makes the runtime create it again (then it is stat'ed again);
- under ``containerLogMaxSize``: nothing to do (a pass never reads a live log);
- at or over it: the siblings are tidied as :mod:`~kubeharness.agent.logs.rotation` plans (leftovers
  removed, files beyond ``maxFiles - 2`` removed oldest first, older rotated files gzip-compressed), the
  live file is renamed to ``<log>.<YYYYMMDD-HHMMSS>`` and ReopenContainerLog is called; if that fails the
  file is renamed back, so the next pass tries again and nothing is lost.

The runtime keeps writing to the renamed file until it reopens, so every line is in the live file, a
rotated file or a ``.gz``. A failure with one container (it went away, a file could not be removed) is
logged and the pass goes on with the others, as kubelet's workers do. ``run`` repeats passes on the
agent's clock, the first at once (kubelet's ``wait.Forever``); a test calls ``rotate_once`` directly.

Differences from kubelet, all of form only: kubelet's workers take container ids from a work queue that
the periodic pass fills, so a pass does not wait for them; ours awaits its containers before sleeping, so
one container is never in two passes at once (kubelet's queue deduplicates for the same effect). The
timestamp is the agent's clock in UTC (kubelet formats its local time, UTC on nodes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Protocol

import grpc

from kubeharness.agent.logs import files
from kubeharness.agent.logs.rotation import LogRotatePolicy, needs_rotation, plan_rotation, rotated_name
from kubeharness.clock import Clock
from kubeharness.wire.cri import api_pb2 as api

log = logging.getLogger(__name__)


class LogRuntime(Protocol):
    """The CRI calls the manager makes (:class:`~kubeharness.agent.runtime.client.RuntimeClient` has them)."""

    async def list_containers(self) -> list[api.Container]: ...

    async def container_status(self, container_id: str) -> api.ContainerStatus: ...

    async def reopen_container_log(self, container_id: str) -> None: ...


class ContainerLogManager:
    """Rotates the logs of running containers under one policy."""

    def __init__(self, runtime: LogRuntime, clock: Clock, policy: LogRotatePolicy, *, max_workers: int = 1,
                 monitor_interval_s: float = 10.0,
                 compress: Callable[[str], Awaitable[str]] | None = None) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers}")
        self.runtime = runtime
        self.clock = clock
        self.policy = policy
        self.max_workers = max_workers
        self.monitor_interval_s = monitor_interval_s
        self._compress = compress or _compress_in_thread
        self._lock = asyncio.Lock()  # a pass and a clean do not overlap (kubelet's mutex)

    @property
    def busy(self) -> bool:
        """A pass (or a clean) is under way: files may be between their rename and the runtime's reopen."""
        return self._lock.locked()

    async def run(self) -> None:
        """Rotate every ``monitor_interval_s`` until cancelled; nothing at all when rotation is off."""
        if not self.policy.enabled:
            log.info("container log rotation is off (containerLogMaxSize is negative)")
            return
        log.info("container log rotation: %d workers every %.0f s, max size %d bytes, %d files",
                 self.max_workers, self.monitor_interval_s, self.policy.max_size_bytes, self.policy.max_files)
        while True:
            try:
                await self.rotate_once()
            except grpc.aio.AioRpcError as err:
                log.warning("failed to rotate container logs: failed to list containers: %s: %s",
                            err.code().name, err.details())
            await self.clock.sleep(self.monitor_interval_s)

    async def rotate_once(self) -> None:
        """One pass over the running containers; a failing ListContainers raises its AioRpcError."""
        if not self.policy.enabled:
            return
        async with self._lock:
            running = [c.id for c in await self.runtime.list_containers()
                       if c.state == api.ContainerState.CONTAINER_RUNNING]
            if not running:
                return
            queue = iter(running)

            async def worker() -> None:
                for container_id in queue:
                    await self.process_container(container_id)

            await asyncio.gather(*(worker() for _ in range(min(self.max_workers, len(running)))))

    async def process_container(self, container_id: str) -> None:
        """Rotate one container's log if it needs it; failures are logged, never raised."""
        try:
            status = await self.runtime.container_status(container_id)
        except grpc.aio.AioRpcError as err:
            log.warning("log rotation: failed to get the status of container %s: %s: %s", container_id,
                        err.code().name, err.details())
            return
        path = status.log_path
        try:
            size = await self._stat_or_reopen(container_id, path)
            if size is None or not needs_rotation(size, self.policy):
                return
            await self.rotate_log(container_id, path)
        except (OSError, grpc.aio.AioRpcError) as err:
            log.warning("log rotation: container %s, log %r: %s", container_id, path, _describe(err))

    async def _stat_or_reopen(self, container_id: str, path: str) -> int | None:
        """The live log's size; a missing one is reopened first (None when it is still not there)."""
        try:
            return os.stat(path).st_size
        except FileNotFoundError:
            pass
        try:
            await self.runtime.reopen_container_log(container_id)
        except grpc.aio.AioRpcError as err:
            log.warning("log rotation: container %s: its log %r does not exist and reopening it failed: %s",
                        container_id, path, _describe(err))
            return None
        try:
            return os.stat(path).st_size
        except OSError as err:
            log.warning("log rotation: container %s: cannot stat its log %r after reopening it: %s",
                        container_id, path, _describe(err))
            return None

    async def rotate_log(self, container_id: str, path: str) -> str:
        """Tidy the siblings, rename the live log and have the runtime reopen it; the rotated file's name."""
        plan = plan_rotation(files.siblings(path), self.policy)
        for name in (*plan.unused, *plan.excess):
            os.remove(name)
        for name in plan.compress:
            await self._compress(name)
        rotated = rotated_name(path, self.clock.now_ns())
        os.rename(path, rotated)
        try:
            await self.runtime.reopen_container_log(container_id)
        except grpc.aio.AioRpcError:
            # renamed back, so the next pass rotates it again; a failed rename back loses the original name
            try:
                os.rename(rotated, path)
            except OSError as err:
                log.error("log rotation: container %s: cannot rename %r back to %r: %s", container_id, rotated,
                          path, _describe(err))
            raise
        return rotated

    async def clean(self, container_id: str) -> None:
        """Remove every log file of a container, live and rotated (kubelet's Clean, for container GC);
        nothing when rotation is off (kubelet's stub manager). NOT_FOUND and other call failures raise."""
        if not self.policy.enabled:
            return
        async with self._lock:
            status = await self.runtime.container_status(container_id)
            if not status.log_path:
                return
            for name in files.glob_all(status.log_path):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(name)


async def _compress_in_thread(name: str) -> str:
    """Compress in a worker thread (the loop keeps serving); a cancelled pass still lets it finish, so that
    no half-written ``.tmp`` is left behind by a stopping agent."""
    job = asyncio.ensure_future(asyncio.to_thread(files.compress, name))
    try:
        return await asyncio.shield(job)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await job
        raise


def _describe(err: BaseException) -> str:
    if isinstance(err, grpc.aio.AioRpcError):
        return f"{err.code().name}: {err.details()}"
    if isinstance(err, OSError) and err.strerror:
        return f"{err.strerror}: {err.filename}" if err.filename else err.strerror
    return str(err)
