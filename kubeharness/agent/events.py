"""The agent's events: what happened to pods and containers, as kubelet records them (v1 Event objects).

Without an API server kubelet sends its events nowhere; the agent keeps the last :data:`MAX_EVENTS` in memory
and serves them as a JSON ``v1`` EventList on ``/events`` of its read-only port (an endpoint of
kubeharness's own: kubelet has none), so that tests and people can read them. Identical events (same
object, type, reason and message) are aggregated as kubelet's recorder does: ``count`` grows and
``lastTimestamp`` moves. The API-server mode sends the same events to the API server.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from kubeharness.agent.status.podstatus import rfc3339
from kubeharness.clock import Clock

MAX_EVENTS = 1000
NORMAL, WARNING = "Normal", "Warning"
# kubelet's reasons (pkg/kubelet/events)
UNHEALTHY, PROBE_WARNING, KILLING = "Unhealthy", "ProbeWarning", "Killing"
FAILED_POST_START_HOOK, FAILED_PRE_STOP_HOOK = "FailedPostStartHook", "FailedPreStopHook"
EXCEEDED_GRACE_PERIOD = "ExceededGracePeriod"
NODE_KIND = "Node"


@dataclass
class Event:
    namespace: str
    pod_name: str
    pod_uid: str
    field_path: str  # "spec.containers{name}", "spec.initContainers{name}" or "" for the pod
    type: str
    reason: str
    message: str
    first_ns: int
    last_ns: int
    count: int = 1
    serial: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    kind: str = "Pod"  # or "Node" for the node's own events (image GC): then name and uid are the node's

    def to_object(self, node: str) -> dict[str, Any]:
        involved: dict[str, Any] = {"kind": self.kind, "namespace": self.namespace, "name": self.pod_name,
                                    "uid": self.pod_uid, "apiVersion": "v1"}
        if self.kind == NODE_KIND:
            del involved["namespace"]  # a cluster-scoped object; its events live in "default"
        if self.field_path:
            involved["fieldPath"] = self.field_path
        return {
            "kind": "Event", "apiVersion": "v1",
            "metadata": {"name": f"{self.pod_name}.{self.serial:016x}", "namespace": self.namespace or "default"},
            "involvedObject": involved, "reason": self.reason, "message": self.message, "type": self.type,
            "count": self.count, "firstTimestamp": rfc3339(self.first_ns), "lastTimestamp": rfc3339(self.last_ns),
            "source": {"component": "kubelet", "host": node},
            "reportingComponent": "kubelet", "reportingInstance": node,
        }


class Recorder:
    """The agent's event recorder: the last :data:`MAX_EVENTS` events, aggregated."""

    def __init__(self, clock: Clock, node: str, limit: int = MAX_EVENTS) -> None:
        self.clock = clock
        self.node = node
        self.limit = limit
        self._events: OrderedDict[tuple[str, str, str, str, str], Event] = OrderedDict()
        self._serial = itertools.count(1)

    def record_node(self, type_: str, reason: str, message: str) -> Event:
        """An event about the node itself (kubelet's nodeRef: kind Node, name and uid the node's name)."""
        return self.record("", self.node, self.node, "", type_, reason, message, kind=NODE_KIND)

    def record(self, namespace: str, pod_name: str, pod_uid: str, field_path: str, type_: str, reason: str,
               message: str, kind: str = "Pod") -> Event:
        key = (pod_uid, field_path, type_, reason, message)
        now = self.clock.now_ns()
        event = self._events.get(key)
        if event is not None:
            event.count += 1
            event.last_ns = now
            self._events.move_to_end(key)
            return event
        event = Event(namespace, pod_name, pod_uid, field_path, type_, reason, message, now, now,
                      serial=next(self._serial), kind=kind)
        self._events[key] = event
        while len(self._events) > self.limit:
            self._events.popitem(last=False)
        return event

    def events(self, pod_uid: str | None = None) -> list[Event]:
        """Oldest first (by their last occurrence)."""
        return [e for e in self._events.values() if pod_uid is None or e.pod_uid == pod_uid]

    def event_list(self) -> dict[str, Any]:
        return {"kind": "EventList", "apiVersion": "v1", "metadata": {},
                "items": [e.to_object(self.node) for e in self._events.values()]}


def container_field_path(name: str, init: bool = False) -> str:
    return f"spec.{'initContainers' if init else 'containers'}{{{name}}}"
