"""Pod manifests and status readers for the node specs: what every spec writes and reads, in one place.

The containers run khelper (``kubeharness.test/khelper:1``, on the emulator its emulated twin), whose flags
say what a container does (``--exit-after``, ``--exit-code``, ``--http-port``, ``--unhealthy-after``, ...).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kubeharness.conformance.node.target import KHELPER, Pods


def khelper(name: str, *flags: str) -> dict[str, Any]:
    return {"name": name, "image": KHELPER, "command": ["/khelper", *flags]}


def shell(name: str, script: str) -> dict[str, Any]:
    """A container running ``sh -c script`` (khelper's image has busybox's shell and tools)."""
    return {"name": name, "image": KHELPER, "command": ["sh", "-c", script]}


def pod(name: str, *containers: dict[str, Any], restart: str = "Always", grace: int = 2,
        init: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"containers": list(containers), "restartPolicy": restart,
                            "terminationGracePeriodSeconds": grace, **spec}
    if init:
        body["initContainers"] = init
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}, "spec": body}


def status(pods: Pods, full_name: str) -> dict[str, Any]:
    return dict(pods.get(full_name, {}).get("status", {}))


def phase(pods: Pods, full_name: str) -> str:
    return str(status(pods, full_name).get("phase", ""))


def container(pods: Pods, full_name: str, name: str, init: bool = False) -> dict[str, Any]:
    """The status of the container ``name`` (an empty dict until it has one)."""
    key = "initContainerStatuses" if init else "containerStatuses"
    return next((c for c in status(pods, full_name).get(key, []) if c.get("name") == name), {})


def restarts(pods: Pods, full_name: str, name: str, init: bool = False) -> int:
    return int(container(pods, full_name, name, init).get("restartCount", 0))


def state(pods: Pods, full_name: str, name: str, init: bool = False) -> str:
    """``running``, ``waiting`` or ``terminated`` (empty until the container has a status)."""
    return next(iter(container(pods, full_name, name, init).get("state", {})), "")


def reason(pods: Pods, full_name: str, name: str, init: bool = False) -> str:
    """The reason of the container's current state (``CrashLoopBackOff``, ``Completed``, ``Error``, ...)."""
    states: dict[str, dict[str, Any]] = container(pods, full_name, name, init).get("state", {})
    current: dict[str, Any] = next(iter(states.values()), {})
    return str(current.get("reason", ""))


def condition(pods: Pods, full_name: str, kind: str) -> str:
    """The pod condition's status (``True``/``False``), empty when the pod does not have it."""
    return next((str(c.get("status")) for c in status(pods, full_name).get("conditions", []) if c["type"] == kind), "")


def stamp(text: str) -> float:
    """An RFC 3339 time of the status (``2026-01-01T00:00:05Z``) in seconds since the epoch."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
