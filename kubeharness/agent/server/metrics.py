"""The agent's metrics, in Prometheus' text format, under kubelet's names where kubelet has them.

Counters, gauges and histograms with labels, kept in memory and rendered by :meth:`Registry.render` for
``/metrics``. Kubelet's names used here: ``kubelet_running_pods``, ``kubelet_running_containers``
(label ``container_state``), ``kubelet_pod_start_duration_seconds``, ``kubelet_pleg_relist_duration_seconds``,
``kubelet_runtime_operations_total`` and ``kubelet_runtime_operations_errors_total`` (label
``operation_type``), ``kubelet_runtime_operations_duration_seconds``, ``kubelet_started_pods_total``,
``kubelet_started_containers_total``, ``kubelet_restarted_pods_total``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

# kubelet's buckets for operation and relist durations (seconds)
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
POD_START_BUCKETS = (0.5, 1, 2, 3, 4, 5, 6, 8, 10, 20, 30, 45, 60, 120, 180, 240, 300, 360, 480, 600, 900,
                     1200, 1800, 2700, 3600)

Labels = tuple[tuple[str, str], ...]


def _labels(names: Sequence[str], values: Sequence[str]) -> Labels:
    if len(names) != len(values):
        raise ValueError(f"expected labels {list(names)}, got {len(values)} values")
    return tuple(zip(names, values, strict=True))


def _fmt_labels(labels: Labels, extra: tuple[tuple[str, str], ...] = ()) -> str:
    pairs = (*labels, *extra)
    if not pairs:
        return ""
    body = ",".join(f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"' for k, v in pairs)
    return "{" + body + "}"


def _fmt_value(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Metric:
    kind = ""

    def render(self) -> list[str]:
        raise NotImplementedError

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.label_names = tuple(label_names)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, label_names)
        self.values: dict[Labels, float] = {}

    def inc(self, *label_values: str, by: float = 1.0) -> None:
        key = _labels(self.label_names, label_values)
        self.values[key] = self.values.get(key, 0.0) + by

    def remove(self, *label_values: str) -> None:
        """Drop one series (a worker that ended)."""
        self.values.pop(_labels(self.label_names, label_values), None)

    def render(self) -> list[str]:
        samples = (f"{self.name}{_fmt_labels(k)} {_fmt_value(v)}" for k, v in sorted(self.values.items()))
        return [*self.header(), *samples]


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, *label_values: str) -> None:
        self.values[_labels(self.label_names, label_values)] = value


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = (),
                 buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        super().__init__(name, help_text, label_names)
        self.buckets = tuple(sorted(buckets))
        self.series: dict[Labels, tuple[list[int], list[float]]] = {}  # labels -> (bucket counts, [sum, count])

    def observe(self, value: float, *label_values: str) -> None:
        key = _labels(self.label_names, label_values)
        counts, totals = self.series.setdefault(key, ([0] * len(self.buckets), [0.0, 0.0]))
        index = bisect.bisect_left(self.buckets, value)
        for i in range(index, len(self.buckets)):
            counts[i] += 1
        totals[0] += value
        totals[1] += 1

    def remove(self, *label_values: str) -> None:
        self.series.pop(_labels(self.label_names, label_values), None)

    def render(self) -> list[str]:
        lines = self.header()
        for key, (counts, (total, count)) in sorted(self.series.items()):
            for bound, n in zip(self.buckets, counts, strict=True):
                lines.append(f"{self.name}_bucket{_fmt_labels(key, (('le', _fmt_value(bound)),))} {n}")
            lines.append(f"{self.name}_bucket{_fmt_labels(key, (('le', '+Inf'),))} {int(count)}")
            lines.append(f"{self.name}_sum{_fmt_labels(key)} {_fmt_value(total)}")
            lines.append(f"{self.name}_count{_fmt_labels(key)} {int(count)}")
        return lines


class Registry:
    """Every metric of one agent."""

    def __init__(self) -> None:
        self.running_pods = Gauge("kubelet_running_pods", "Number of pods that have a running pod sandbox")
        self.running_containers = Gauge("kubelet_running_containers", "Number of containers currently running",
                                        ("container_state",))
        self.pod_start = Histogram("kubelet_pod_start_duration_seconds",
                                   "Duration in seconds from the agent seeing a pod to its containers running",
                                   buckets=POD_START_BUCKETS)
        self.pleg_relist = Histogram("kubelet_pleg_relist_duration_seconds", "Duration in seconds for relisting pods")
        self.operations = Counter("kubelet_runtime_operations_total", "Cumulative number of runtime operations",
                                  ("operation_type",))
        self.operation_errors = Counter("kubelet_runtime_operations_errors_total",
                                        "Cumulative number of runtime operation errors", ("operation_type",))
        self.operation_duration = Histogram("kubelet_runtime_operations_duration_seconds",
                                            "Duration in seconds of runtime operations", ("operation_type",))
        self.started_pods = Counter("kubelet_started_pods_total", "Cumulative number of pods started")
        self.started_containers = Counter("kubelet_started_containers_total",
                                          "Cumulative number of containers started", ("container_type",))
        self.restarted_pods = Counter("kubelet_restarted_pods_total",
                                      "Number of pods restarted (their sandbox recreated)", ("static",))

    def metrics(self) -> list[_Metric]:
        return [m for m in vars(self).values() if isinstance(m, _Metric)]

    def render(self) -> str:
        lines: list[str] = []
        for metric in self.metrics():
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"
