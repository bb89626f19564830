"""Where the CRI emulator meets the fault engine: every RPC, unary or streaming, passes through here.

:class:`FaultPoint` describes each call to the engine (its pod, container and image, resolving ids from
the runtime's state: see :mod:`kubeharness.faults.cri`) and carries out what the engine decides (see
:mod:`kubeharness.faults.act` for what each action does to a unary call and to a stream).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from kubeharness.clock import Clock
from kubeharness.emulators.cri.runtime import Runtime
from kubeharness.faults import CallInfo, FaultEngine
from kubeharness.faults.act import perform, perform_stream
from kubeharness.faults.cri import call_info as cri_call_info
from kubeharness.wire.cri import api_pb2 as cri


def call_info(rt: Runtime, request: Any) -> CallInfo:
    """What the engine may match on for ``request``, ids resolved from the runtime's state."""

    def sandbox(sandbox_id: str) -> cri.PodSandboxConfig | None:
        sb = rt.sandboxes.find(sandbox_id, strict=False)
        return None if sb is None else sb.config

    def container(container_id: str) -> tuple[str, cri.ContainerConfig] | None:
        c = rt.containers.find(container_id, strict=False)
        return None if c is None else (c.sandbox_id, c.config)

    return cri_call_info(request, sandbox, container)


class FaultPoint:
    """Asks the engine about every call and carries out its decision."""

    def __init__(self, engine: FaultEngine, rt: Runtime, clock: Clock, where: str = "cri") -> None:
        self.engine = engine
        self.rt = rt
        self.clock = clock
        self.where = where

    async def __call__(self, method: str, request: Any, work: Callable[[], Awaitable[Any]]) -> Any:
        if not self.engine.watches(method, self.where):
            return await work()
        decision = self.engine.decide(self.where, method, call_info(self.rt, request))
        if decision is None:
            return await work()
        return await perform(decision, work, self.clock)

    def stream(self, method: str, request: Any, open_stream: Callable[[], AsyncIterator[Any]]) -> AsyncIterator[Any]:
        if not self.engine.watches(method, self.where):
            return open_stream()
        decision = self.engine.decide(self.where, method, call_info(self.rt, request))
        if decision is None:
            return open_stream()
        return perform_stream(decision, open_stream, self.clock)
