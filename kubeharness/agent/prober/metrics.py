"""The prober's metrics under kubelet's names, served on ``/metrics/probes`` as kubelet serves them.

``prober_probe_total`` (labels probe_type, result, container, pod, namespace, pod_uid; result is
``successful``, ``failed`` or ``unknown``) and ``prober_probe_duration_seconds`` (probe_type, container, pod,
namespace). A worker's series go when the worker ends, as kubelet deletes them. prometheus_client, in a
registry of their own (kubelet serves them apart from ``/metrics``); why that library, and the ``_created``
series turned off (by importing it): see :mod:`kubeharness.agent.server.metrics`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from kubeharness.agent.server.metrics import DEFAULT_BUCKETS

SUCCESSFUL, FAILED, UNKNOWN = "successful", "failed", "unknown"


class ProbeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.probe_total = Counter("prober_probe_total", "[BETA] Cumulative number of a liveness, readiness or startup "
                                   "probe for a container by result.",
                                   ("probe_type", "result", "container", "pod", "namespace", "pod_uid"),
                                   registry=self.registry)
        self.probe_duration = Histogram("prober_probe_duration_seconds",
                                        "[ALPHA] Duration in seconds for a probe response.",
                                        ("probe_type", "container", "pod", "namespace"), buckets=DEFAULT_BUCKETS,
                                        registry=self.registry)

    def observe(self, kind: str, result: str, container: str, pod: str, namespace: str, pod_uid: str,
                seconds: float) -> None:
        self.probe_total.labels(kind, result, container, pod, namespace, pod_uid).inc()
        self.probe_duration.labels(kind, container, pod, namespace).observe(seconds)

    def forget(self, kind: str, container: str, pod: str, namespace: str, pod_uid: str) -> None:
        for result in (SUCCESSFUL, FAILED, UNKNOWN):
            self.probe_total.remove(kind, result, container, pod, namespace, pod_uid)
        self.probe_duration.remove(kind, container, pod, namespace)
