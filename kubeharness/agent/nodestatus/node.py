"""The node as a ``v1`` Node object, served on ``/api/v1/nodes/<node-name>`` of the read-only port (our own
endpoint, at the path the API server would serve it on, while there is no API server; the API-server issue
reports the same object upstream).

- metadata: the name, kubelet's labels ``kubernetes.io/hostname``, ``kubernetes.io/os``, ``kubernetes.io/arch``
  and their ``beta.`` twins; ``creationTimestamp`` when the agent started.
- status.capacity: the stats provider's machine figures (cpu, memory, ephemeral-storage, huge pages) and
  ``pods`` (``maxPods``), as canonical quantities.
- status.allocatable: capacity minus ``systemReserved``, ``kubeReserved`` and the hard eviction thresholds
  (``memory.available`` from memory, ``nodefs.available`` from ephemeral-storage; a percentage of capacity),
  never below zero: kubelet's ``GetNodeAllocatableReservation``.
- status.conditions: MemoryPressure, DiskPressure, PIDPressure (False until the eviction manager says otherwise
  through :meth:`NodeStatus.set_pressure`) and Ready (from the agent's health), with kubelet's reasons and
  messages, the heartbeat at every read and the transition time when the status last changed.
- status.nodeInfo: kernel, OS image, machine and boot ids from the host, ``containerRuntimeVersion`` from the
  runtime's Version (``<name>://<version>``), ``kubeletVersion`` ours (``v<kubeharness version>-kubeharness``).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from kubeharness import __version__
from kubeharness.agent.config.kubelet import AgentConfig, EvictionThreshold
from kubeharness.agent.pod.quantity import format_quantity
from kubeharness.agent.stats.summary import rfc3339
from kubeharness.clock import Clock
from kubeharness.wire.cri import api_pb2 as api

MEMORY_PRESSURE, DISK_PRESSURE, PID_PRESSURE, READY = "MemoryPressure", "DiskPressure", "PIDPressure", "Ready"
PRESSURES = (MEMORY_PRESSURE, DISK_PRESSURE, PID_PRESSURE)
KUBELET_VERSION = f"v{__version__}-kubeharness"
# condition -> ((reason, message) while False, (reason, message) while True), kubelet's texts
PRESSURE_TEXTS = {
    MEMORY_PRESSURE: (("KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                      ("KubeletHasInsufficientMemory", "kubelet has insufficient memory available")),
    DISK_PRESSURE: (("KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                    ("KubeletHasDiskPressure", "kubelet has disk pressure")),
    PID_PRESSURE: (("KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                   ("KubeletHasInsufficientPID", "kubelet has insufficient PID available")),
}
# which resource a hard eviction threshold holds back from allocatable
_EVICTION_RESOURCE = {"memory.available": "memory", "nodefs.available": "ephemeral-storage"}
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}


def eviction_reservation(thresholds: Mapping[str, EvictionThreshold], capacity: Mapping[str, int]) -> dict[str, int]:
    """What the hard thresholds keep back from allocatable (kubelet's ``hardEvictionReservation``)."""
    result = {}
    for signal, resource in _EVICTION_RESOURCE.items():
        threshold = thresholds.get(signal)
        if threshold is None or resource not in capacity:
            continue
        if threshold.quantity is not None:
            result[resource] = threshold.quantity
        elif threshold.percent is not None:
            result[resource] = int(capacity[resource] * threshold.percent / 100)
    return result


def allocatable(capacity: Mapping[str, int], config: AgentConfig) -> dict[str, int]:
    """Capacity minus system-reserved, kube-reserved and the hard eviction thresholds, floored at 0."""
    reserved: dict[str, int] = {}
    for part in (config.system_reserved, config.kube_reserved, eviction_reservation(config.eviction_hard, capacity)):
        for resource, amount in part.items():
            reserved[resource] = reserved.get(resource, 0) + amount
    return {resource: max(0, amount - reserved.get(resource, 0)) for resource, amount in capacity.items()}


def quantities(amounts: Mapping[str, int]) -> dict[str, str]:
    """Amounts as the API's canonical quantities: binary suffixes for bytes, plain counts for pods."""
    return {r: str(v) if r == "pods" else format_quantity(v, r) for r, v in sorted(amounts.items())}


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def os_image() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.partition("=")[2].strip().strip('"')
    return "Unknown"


class NodeStatus:
    """The node's status as kubelet computes it, and the conditions the eviction manager sets."""

    def __init__(self, config: AgentConfig, clock: Clock, capacity: Callable[[], dict[str, int]],
                 not_ready: Callable[[], str | None], version: Callable[[], Awaitable[api.VersionResponse]]) -> None:
        self.config = config
        self.clock = clock
        self.capacity = capacity  # the stats provider's machine figures
        self.not_ready = not_ready  # why the node is not ready, None when it is
        self.version = version
        self.created_ns = clock.now_ns()
        self.pressure: dict[str, bool] = dict.fromkeys(PRESSURES, False)
        self._transitions: dict[str, tuple[bool, int]] = {}  # condition -> (status, since)

    def set_pressure(self, condition: str, on: bool) -> None:
        """The eviction manager's word on MemoryPressure, DiskPressure or PIDPressure."""
        if condition not in self.pressure:
            raise ValueError(f"unknown node condition {condition!r} (one of {', '.join(PRESSURES)})")
        self.pressure[condition] = on

    def _condition(self, kind: str, on: bool, reason: str, message: str, now_ns: int) -> dict[str, str]:
        held = self._transitions.get(kind)
        if held is None or held[0] != on:
            held = self._transitions[kind] = (on, now_ns)
        return {"type": kind, "status": "True" if on else "False", "lastHeartbeatTime": rfc3339(now_ns),
                "lastTransitionTime": rfc3339(held[1]), "reason": reason, "message": message}

    def conditions(self) -> list[dict[str, str]]:
        now = self.clock.now_ns()
        result = []
        for kind in PRESSURES:
            on = self.pressure[kind]
            reason, message = PRESSURE_TEXTS[kind][on]
            result.append(self._condition(kind, on, reason, message, now))
        why = self.not_ready()
        if why is None:
            result.append(self._condition(READY, True, "KubeletReady", "kubelet is posting ready status", now))
        else:
            result.append(self._condition(READY, False, "KubeletNotReady", why, now))
        return result

    async def node(self) -> dict[str, Any]:
        """The v1 Node object."""
        capacity = {**self.capacity(), "pods": self.config.max_pods}
        version = await self.version()
        arch = _ARCH.get(platform.machine(), platform.machine())
        name = self.config.node_name
        labels = {"beta.kubernetes.io/arch": arch, "beta.kubernetes.io/os": "linux", "kubernetes.io/arch": arch,
                  "kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}
        spec: dict[str, Any] = {}
        if self.config.pod_cidr:
            spec = {"podCIDR": self.config.pod_cidr, "podCIDRs": [self.config.pod_cidr]}
        return {
            "kind": "Node", "apiVersion": "v1",
            "metadata": {"name": name, "labels": labels, "creationTimestamp": rfc3339(self.created_ns)},
            "spec": spec,
            "status": {
                "capacity": quantities(capacity),
                "allocatable": quantities(allocatable(capacity, self.config)),
                "conditions": self.conditions(),
                "addresses": [{"type": "Hostname", "address": name}],
                "nodeInfo": {
                    "machineID": _read("/etc/machine-id"), "systemUUID": _read("/sys/class/dmi/id/product_uuid"),
                    "bootID": _read("/proc/sys/kernel/random/boot_id"), "kernelVersion": os.uname().release,
                    "osImage": os_image(),
                    "containerRuntimeVersion": f"{version.runtime_name}://{version.runtime_version}",
                    "kubeletVersion": KUBELET_VERSION, "kubeProxyVersion": "", "operatingSystem": "linux",
                    "architecture": arch,
                },
            },
        }
