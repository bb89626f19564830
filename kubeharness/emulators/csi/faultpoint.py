"""Where the CSI emulator meets the fault engine: every RPC passes through here.

A call is described by its volume id and, when kubelet passes pod information in the volume context
(``podInfoOnMount``: ``csi.storage.k8s.io/pod.name``, ``pod.namespace``, ``pod.uid``), by its pod. The
gRPC actions are carried out as for every emulator (:mod:`kubeharness.faults.act`; ``partial`` on
NodeStageVolume or NodePublishVolume leaves the mount made and answers the error, a ``hang`` there is the
"CSI mount hangs" case). A delayed, hung or partial call holds its volume meanwhile, as a driver stuck in
a mount holds its lock: other calls on that volume are ABORTED until it ends. Two actions are CSI's own:
``csi_abnormal`` does the work and reports the volume's condition abnormal, ``csi_not_ready`` makes Probe
answer ready = false.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from kubeharness.clock import Clock
from kubeharness.faults import CallInfo, CsiAbnormal, CsiNotReady, Delay, FaultEngine, Hang, Partial
from kubeharness.faults.act import perform, perform_stream
from kubeharness.wire.csi import csi_pb2 as csi

POD_NAME = "csi.storage.k8s.io/pod.name"
POD_NAMESPACE = "csi.storage.k8s.io/pod.namespace"
POD_UID = "csi.storage.k8s.io/pod.uid"


def call_info(request: Any) -> CallInfo:
    fields = {f.name for f, _ in request.ListFields()}
    context = dict(request.volume_context) if "volume_context" in fields else {}
    volume_id = request.volume_id if "volume_id" in fields else (request.name if "name" in fields else None)
    return CallInfo(pod_name=context.get(POD_NAME), namespace=context.get(POD_NAMESPACE),
                    pod_uid=context.get(POD_UID), volume_id=volume_id)


class CsiFaultPoint:
    """Asks the engine about every call and carries out its decision."""

    def __init__(self, engine: FaultEngine, clock: Clock,
                 hold: Callable[[str], contextlib.AbstractContextManager[None]] | None = None) -> None:
        self.engine = engine
        self.clock = clock
        self.hold = hold  # the volume store's per-volume exclusion: a delayed or hung call keeps its volume

    async def __call__(self, method: str, request: Any, work: Callable[[], Awaitable[Any]]) -> Any:
        if not self.engine.watches(method, "csi"):
            return await work()
        decision = self.engine.decide("csi", method, call_info(request))
        if decision is None:
            return await work()
        action = decision.action
        if isinstance(action, CsiAbnormal):
            response = await work()
            if isinstance(response, csi.NodeGetVolumeStatsResponse):
                response.volume_condition.abnormal = True
                response.volume_condition.message = action.message
            return response
        if isinstance(action, CsiNotReady):
            response = await work()
            if isinstance(response, csi.ProbeResponse):
                response.ready.value = False
            return response
        volume_id = getattr(request, "volume_id", "")
        if self.hold is None or not volume_id or not isinstance(action, Delay | Hang | Partial):
            return await perform(decision, work, self.clock)
        with self.hold(volume_id):  # other calls on this volume meanwhile are ABORTED, as with a stuck mount
            return await perform(decision, work, self.clock)

    def stream(self, method: str, request: Any, open_stream: Callable[[], AsyncIterator[Any]]) -> AsyncIterator[Any]:
        decision = self.engine.decide("csi", method, call_info(request)) if self.engine.watches(method, "csi") else None
        return open_stream() if decision is None else perform_stream(decision, open_stream, self.clock)
