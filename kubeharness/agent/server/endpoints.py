"""What the agent answers on its read-only port: ``/pods``, ``/healthz``, ``/metrics``, ``/metrics/probes``
(kubelet's) and ``/events`` (kubeharness's own: the events kubelet would send to an API server)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from kubeharness.agent.events import Recorder
from kubeharness.agent.pleg.pleg import Pleg
from kubeharness.agent.pod.model import Pod
from kubeharness.agent.prober.metrics import ProbeMetrics
from kubeharness.agent.server.httpserver import Answer
from kubeharness.agent.server.metrics import Registry

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
PLEG_UNHEALTHY = (b"[-]pleg failed: PLEG is not healthy: the runtime has not answered a relist within 3m0s\n"
                  b"healthz check failed\n")


def pod_list(desired: Mapping[str, Pod], rejected: Mapping[str, tuple[Pod, str, str]],
             statuses: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """A v1 PodList: the admitted pods with their status, then the rejected ones as Failed with the reason."""
    items = []
    for uid, pod in sorted(desired.items(), key=lambda item: item[1].full_name):
        items.append({**pod.raw, "status": statuses.get(uid, {"phase": "Pending"})})
    for pod, reason, message in rejected.values():
        items.append({**pod.raw, "status": {"phase": "Failed", "reason": reason, "message": message}})
    return {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}


def routes(pods: Callable[[], dict[str, Any]], pleg: Pleg, metrics: Registry, probe_metrics: ProbeMetrics,
           recorder: Recorder) -> dict[str, Callable[[], Answer]]:
    def pods_answer() -> Answer:
        return Answer(200, json.dumps(pods()).encode(), "application/json")

    def healthz_answer() -> Answer:
        if pleg.last_relist_ns is not None and not pleg.healthy():
            return Answer(500, PLEG_UNHEALTHY)
        return Answer(200, b"ok")

    return {
        "/pods": pods_answer,
        "/healthz": healthz_answer,
        "/metrics": lambda: Answer(200, metrics.render().encode(), PROMETHEUS_TEXT),
        "/metrics/probes": lambda: Answer(200, probe_metrics.render().encode(), PROMETHEUS_TEXT),
        "/events": lambda: Answer(200, json.dumps(recorder.event_list()).encode(), "application/json"),
    }
