"""The prober's metrics under kubelet's names, served on ``/metrics/probes`` as kubelet serves them.

``prober_probe_total`` (labels probe_type, result, container, pod, namespace, pod_uid; result is
``successful``, ``failed`` or ``unknown``) and ``prober_probe_duration_seconds`` (probe_type, container, pod,
namespace). A worker's series go when the worker ends, as kubelet deletes them.
"""

from __future__ import annotations

from kubeharness.agent.server.metrics import Counter, Histogram

SUCCESSFUL, FAILED, UNKNOWN = "successful", "failed", "unknown"


class ProbeMetrics:
    def __init__(self) -> None:
        self.probe_total = Counter("prober_probe_total", "Cumulative number of a liveness, readiness or startup "
                                   "probe for a container by result.",
                                   ("probe_type", "result", "container", "pod", "namespace", "pod_uid"))
        self.probe_duration = Histogram("prober_probe_duration_seconds", "Duration in seconds for a probe response.",
                                        ("probe_type", "container", "pod", "namespace"))

    def observe(self, kind: str, result: str, container: str, pod: str, namespace: str, pod_uid: str,
                seconds: float) -> None:
        self.probe_total.inc(kind, result, container, pod, namespace, pod_uid)
        self.probe_duration.observe(seconds, kind, container, pod, namespace)

    def forget(self, kind: str, container: str, pod: str, namespace: str, pod_uid: str) -> None:
        for result in (SUCCESSFUL, FAILED, UNKNOWN):
            self.probe_total.remove(kind, result, container, pod, namespace, pod_uid)
        self.probe_duration.remove(kind, container, pod, namespace)

    def render(self) -> str:
        return "\n".join([*self.probe_total.render(), *self.probe_duration.render()]) + "\n"
