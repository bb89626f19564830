"""Where the CRI emulator meets the fault engine: what a request says about its pod, and carrying out actions.

Every unary RPC goes through :class:`FaultPoint` (see ``grpcserve.Around``): it describes the call to
the engine (:func:`call_info`: the pod's metadata, labels and annotations from the request's sandbox
config, or from the sandbox a container or sandbox id names; the container name; the image), and does
what the engine decides: answer with a status, delay before or after the work, hang until the caller
gives up, do the work and still fail (a partial failure that leaks what was created), or crash the
process (exit, or SIGKILL) so that it must be restarted. Streaming RPCs are not faulted (yet).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from kubeharness.clock import Clock
from kubeharness.emulators.cri.runtime import Runtime
from kubeharness.errors import InjectedFault
from kubeharness.faults import CallInfo, Crash, Delay, Error, FaultEngine, Hang, Partial
from kubeharness.wire.cri import api_pb2 as cri

log = logging.getLogger(__name__)


def _pod(info: dict[str, Any], config: cri.PodSandboxConfig) -> None:
    meta = config.metadata
    info.update(pod_name=meta.name, namespace=meta.namespace, pod_uid=meta.uid,
                labels=dict(config.labels), annotations=dict(config.annotations))


def call_info(rt: Runtime, request: Any) -> CallInfo:
    """What the engine may match on for ``request``: its pod, container and image, as far as known."""
    info: dict[str, Any] = {}
    fields = {f.name for f, _ in request.ListFields()}
    if "config" in fields and isinstance(request.config, cri.PodSandboxConfig):
        _pod(info, request.config)
    if "sandbox_config" in fields:
        _pod(info, request.sandbox_config)
    if "config" in fields and isinstance(request.config, cri.ContainerConfig):
        info.update(container_name=request.config.metadata.name, image=request.config.image.image)
    if "image" in fields and isinstance(request.image, cri.ImageSpec):
        info["image"] = request.image.image
    if "container_id" in fields:
        c = rt.containers.find(request.container_id, strict=False)
        if c is not None:
            info.update(container_name=c.config.metadata.name, image=c.config.image.image)
            sb = rt.sandboxes.find(c.sandbox_id, strict=False)
            if sb is not None:
                _pod(info, sb.config)
    if "pod_sandbox_id" in fields:
        sb = rt.sandboxes.find(request.pod_sandbox_id, strict=False)
        if sb is not None:
            _pod(info, sb.config)
    return CallInfo(**info)


class FaultPoint:
    """Asks the engine about every call and carries out its decision."""

    def __init__(self, engine: FaultEngine, rt: Runtime, clock: Clock, where: str = "cri") -> None:
        self.engine = engine
        self.rt = rt
        self.clock = clock
        self.where = where

    async def __call__(self, method: str, request: Any, work: Callable[[], Awaitable[Any]]) -> Any:
        decision = self.engine.decide(self.where, method, call_info(self.rt, request))
        if decision is None:
            return await work()
        action = decision.action
        if isinstance(action, Error):
            raise InjectedFault(action.code, action.message)
        if isinstance(action, Delay):
            seconds = decision.delay_seconds if decision.delay_seconds is not None else action.seconds
            if action.when == "before":
                await self.clock.sleep(seconds)
                return await work()
            response = await work()
            await self.clock.sleep(seconds)
            return response
        if isinstance(action, Hang):
            await asyncio.Event().wait()  # until the caller gives up and gRPC cancels this handler
        if isinstance(action, Partial):
            await work()
            raise InjectedFault(action.code, action.message)
        if isinstance(action, Crash):
            log.error("fault rule %r: crashing the emulator (%s)", decision.rule, action.how)
            sys.stderr.flush()
            if action.how == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            os._exit(action.exit_code)
        return await work()  # an action that does not apply to CRI calls (validated away by the plan)
