"""The agent's metrics for ``/metrics``, under kubelet's names, help texts, labels and buckets, on prometheus_client.

Why prometheus_client: it is the Prometheus project's own Python client, so the exposition (escaping, ordering,
``+Inf``, the text format's content type) is the one every scraper reads, and a metric is one line to declare;
a hand-written registry was ours to keep right. Each agent has its own :class:`CollectorRegistry` (two agents in
one process, as in the tests, do not share counters), rendered with ``prometheus_client.generate_latest``.
Help texts are kubelet's with the stability level component-base puts in front. Numbers render as
prometheus_client writes them (``1.0`` where kubelet's Go client writes ``1``); the values are the same.

Kubelet has no ``_created`` series, so they are turned off (:func:`prometheus_client.disable_created_metrics`, a
process-wide switch read when a metric is declared, hence here at import).

Kubelet's names used here: ``kubelet_running_pods``, ``kubelet_running_containers`` (label ``container_state``),
``kubelet_pod_start_duration_seconds``, ``kubelet_pleg_relist_duration_seconds``,
``kubelet_runtime_operations_total`` and ``kubelet_runtime_operations_errors_total`` (label ``operation_type``),
``kubelet_runtime_operations_duration_seconds``, ``kubelet_started_pods_total``,
``kubelet_started_containers_total``, ``kubelet_restarted_pods_total``.
"""

from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated in prometheus_client

# kubelet's buckets (seconds): component-base's DefBuckets (relist, probe durations), the runtime operations'
# ExponentialBuckets(.005, 2.5, 14) (each bound the one before times 2.5, as Go computes them) and the pod start's
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
RUNTIME_OPERATION_BUCKETS = tuple(0.005 * 2.5**i for i in range(14))
POD_START_BUCKETS = (0.5, 1, 2, 3, 4, 5, 6, 8, 10, 20, 30, 45, 60, 120, 180, 240, 300, 360, 480, 600, 900,
                     1200, 1800, 2700, 3600)
RESTARTED_PODS_HELP = ("[ALPHA] Number of pods that have been restarted because they were deleted and recreated with "
                       "the same UID while the kubelet was watching them (common for static pods, extremely uncommon "
                       "for API pods)")


class Registry:
    """Every ``/metrics`` metric of one agent, declared in its own :attr:`registry`."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.running_pods = Gauge("kubelet_running_pods", "[ALPHA] Number of pods that have a running pod sandbox",
                                  registry=r)
        self.running_containers = Gauge("kubelet_running_containers", "[ALPHA] Number of containers currently running",
                                        ("container_state",), registry=r)
        self.pod_start = Histogram(
            "kubelet_pod_start_duration_seconds",
            "[ALPHA] Duration in seconds from kubelet seeing a pod for the first time to the pod starting to run",
            buckets=POD_START_BUCKETS, registry=r)
        self.pleg_relist = Histogram("kubelet_pleg_relist_duration_seconds",
                                     "[ALPHA] Duration in seconds for relisting pods in PLEG.",
                                     buckets=DEFAULT_BUCKETS, registry=r)
        self.operations = Counter("kubelet_runtime_operations_total",
                                  "[ALPHA] Cumulative number of runtime operations by operation type.",
                                  ("operation_type",), registry=r)
        self.operation_errors = Counter("kubelet_runtime_operations_errors_total",
                                        "[ALPHA] Cumulative number of runtime operation errors by operation type.",
                                        ("operation_type",), registry=r)
        self.operation_duration = Histogram(
            "kubelet_runtime_operations_duration_seconds",
            "[ALPHA] Duration in seconds of runtime operations. Broken down by operation type.",
            ("operation_type",), buckets=RUNTIME_OPERATION_BUCKETS, registry=r)
        self.started_pods = Counter("kubelet_started_pods_total", "[ALPHA] Cumulative number of pods started",
                                    registry=r)
        self.started_containers = Counter("kubelet_started_containers_total",
                                          "[ALPHA] Cumulative number of containers started", ("container_type",),
                                          registry=r)
        self.restarted_pods = Counter("kubelet_restarted_pods_total", RESTARTED_PODS_HELP, ("static",), registry=r)
