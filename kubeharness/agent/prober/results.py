"""The prober's results caches, as kubelet's ``prober/results`` manager: one per probe kind.

A cache maps a container id to its current :class:`Result`; :meth:`Results.set` records a result and, only
when it differs from what was cached, puts an :class:`Update` on :attr:`Results.updates`, which the agent
reads to react (a liveness or startup failure syncs the pod, which kills the container; a readiness change
refreshes the pod's status). Workers remove their container's entry when they stop.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass


class Result(enum.Enum):
    """A probe kind's verdict on a container (kubelet's ``results.Result``)."""

    UNKNOWN = "unknown"
    SUCCESS = "success"
    FAILURE = "failure"


@dataclass(frozen=True)
class Update:
    container_id: str
    result: Result
    pod_uid: str


class Results:
    """Container id -> result, with an updates stream that fires on change only."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._cache: dict[str, Result] = {}
        self.updates: asyncio.Queue[Update] = asyncio.Queue()

    def get(self, container_id: str) -> Result | None:
        return self._cache.get(container_id)

    def set(self, container_id: str, result: Result, pod_uid: str) -> None:
        if self._cache.get(container_id) is result:
            return
        self._cache[container_id] = result
        self.updates.put_nowait(Update(container_id, result, pod_uid))

    def remove(self, container_id: str) -> None:
        self._cache.pop(container_id, None)

    def __len__(self) -> int:
        return len(self._cache)
