"""What one benchmark run measured, as plain data: phases, live-pod list figures, memory checkpoints.

The text report and the JSON file are both rendered from these objects, so they always agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kubeharness.bench.client import Recorder
from kubeharness.bench.drive import Outcome
from kubeharness.bench.procstat import MiB, ProcSample
from kubeharness.bench.stats import Summary, rate_per_second, summarize


@dataclass
class PhaseResult:
    """One timed batch of work (pod cycles, or live pods created) and the latency of each RPC in it."""

    name: str
    title: str
    unit: str  # what one work item is: "cycles" or "pods"
    clients: int
    processes: int
    recorder: Recorder
    outcome: Outcome
    server_cpu_s: float | None  # CPU the runtime used during the phase, when its PID is known
    client_cpu_s: float

    @property
    def rate(self) -> float:
        return rate_per_second(self.outcome.ok, self.outcome.wall_ns)

    def summaries(self) -> dict[str, Summary]:
        return {rpc: summarize(samples) for rpc, samples in self.recorder.samples.items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "unit": self.unit,
            "clients": self.clients,
            "client_processes": self.processes,
            "ok": self.outcome.ok,
            "failed": self.outcome.failed,
            "wall_s": self.outcome.wall_ns / 1e9,
            "per_second": self.rate,
            "server_cpu_s": self.server_cpu_s,
            "client_cpu_s": self.client_cpu_s,
            "rpcs": {rpc: s.as_dict() for rpc, s in self.summaries().items()},
            "failures": failures_json(self.recorder),
        }


@dataclass(frozen=True)
class ListFigure:
    """One List RPC repeated serially with the live pods in place."""

    rpc: str
    summary: Summary  # of the repeated calls after the first
    items: int
    first_ms: float  # the first call, timed on its own


@dataclass
class LiveResult:
    """Phase 3: many live pods, then List* latency, then clean-up."""

    requested: int
    populate: PhaseResult
    lists: list[ListFigure]
    cleanup: PhaseResult | None = None  # None when --keep left the pods in place

    def to_json(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "live": self.populate.outcome.ok,
            "populate": self.populate.to_json(),
            "lists": {f.rpc: {**f.summary.as_dict(), "items": f.items, "first_ms": f.first_ms} for f in self.lists},
            "cleanup": self.cleanup.to_json() if self.cleanup else None,
        }


@dataclass
class BenchResult:
    """Everything a run measured."""

    settings: dict[str, Any]
    runtime: dict[str, str]
    phases: list[PhaseResult] = field(default_factory=list)
    live: LiveResult | None = None
    memory: dict[str, ProcSample] = field(default_factory=dict)  # checkpoint -> runtime process sample

    def phase(self, name: str) -> PhaseResult | None:
        return next((p for p in self.phases if p.name == name), None)

    def failure_count(self) -> int:
        phases = [*self.phases, *([self.live.populate] if self.live else [])]
        if self.live and self.live.cleanup:
            phases.append(self.live.cleanup)
        return sum(p.recorder.failure_count for p in phases)

    def peak_rss_bytes(self) -> int | None:
        """The runtime's peak resident memory (VmHWM), which also catches peaks between checkpoints."""
        return max((max(s.rss_bytes, s.hwm_bytes) for s in self.memory.values()), default=None)

    def to_json(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "runtime": self.runtime,
            "phases": {p.name: p.to_json() for p in self.phases},
            "live": self.live.to_json() if self.live else None,
            "memory": {
                label: {"rss_mib": s.rss_bytes / MiB, "hwm_mib": s.hwm_bytes / MiB, "cpu_s": s.cpu_s}
                for label, s in self.memory.items()
            },
        }


def failures_json(recorder: Recorder) -> list[dict[str, Any]]:
    return [
        {"rpc": f.rpc, "code": f.code, "details": f.details, "count": n}
        for f, n in recorder.failures.most_common()
    ]
