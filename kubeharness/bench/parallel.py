"""Spreading the concurrent clients over several OS processes (``--client-processes P``).

A Python gRPC client saturates one core long before a fast runtime does, so the concurrent phase can
split its K clients over P processes. Each process gets every P-th cycle and its share of the
clients, connects, waits on a barrier so all start together, runs, and sends back its Recorder and
its own wall-clock bounds. ``perf_counter_ns`` is CLOCK_MONOTONIC, one clock for the whole machine,
so the phase's wall time is last end minus first start across the processes.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kubeharness.bench.client import Recorder, TimedClient
from kubeharness.bench.cycle import pod_cycle
from kubeharness.bench.drive import Outcome, drive
from kubeharness.bench.errors import BenchError
from kubeharness.bench.kubelet import PodPlan
from kubeharness.bench.procstat import own_cpu_s

BARRIER_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class WorkerJob:
    """One client process's share of a phase."""

    endpoint: str
    plan: PodPlan
    phase: str
    indices: Sequence[int]
    clients: int
    timeout_s: float


@dataclass
class WorkerResult:
    """What a client process sends back; ``error`` is set (and the rest empty) if it could not run."""

    recorder: Recorder = field(default_factory=Recorder)
    outcome: Outcome | None = None
    cpu_s: float = 0.0
    error: str = ""


def split(cycles: int, clients: int, processes: int) -> list[tuple[range, int]]:
    """(cycle indices, client count) per process: every P-th cycle, clients shared as evenly as possible."""
    processes = max(1, min(processes, clients))
    shares = []
    for w in range(processes):
        share = clients // processes + (1 if w < clients % processes else 0)
        shares.append((range(w, cycles, processes), share))
    return shares


async def _run_job(job: WorkerJob, barrier: Any) -> WorkerResult:
    recorder = Recorder()
    cpu_before = own_cpu_s()

    async def cycle(client: TimedClient, index: int) -> bool:
        return await pod_cycle(client, job.plan, job.phase, index)

    outcome = await drive(job.endpoint, job.indices, job.clients, cycle, recorder, job.timeout_s,
                          on_ready=lambda: barrier.wait(BARRIER_TIMEOUT_S))
    return WorkerResult(recorder, outcome, own_cpu_s() - cpu_before)


def _worker(job: WorkerJob, barrier: Any, results: Any) -> None:
    """The client process's entry point (module level, so the spawn start method can import it)."""
    try:
        result = asyncio.run(_run_job(job, barrier))
    except BaseException as err:
        barrier.abort()  # release the others instead of letting them wait for the timeout
        result = WorkerResult(error=f"{type(err).__name__}: {err}")
    results.put(result)


def _collect(processes: Sequence[multiprocessing.process.BaseProcess], results: Any) -> list[WorkerResult]:
    collected: list[WorkerResult] = []
    while len(collected) < len(processes):
        try:
            collected.append(results.get(timeout=1.0))
        except queue.Empty:
            if not any(p.is_alive() for p in processes) and results.empty():
                codes = [p.exitcode for p in processes]
                raise BenchError(f"client processes died without reporting (exit codes {codes})") from None
    return collected


def run_processes(jobs: list[WorkerJob]) -> list[WorkerResult]:
    """Run each job in a spawned process and return their results (blocking; call it in a thread)."""
    ctx = multiprocessing.get_context("spawn")  # never fork a process that has gRPC threads
    barrier = ctx.Barrier(len(jobs))
    results = ctx.Queue()
    processes = [ctx.Process(target=_worker, args=(job, barrier, results), daemon=True) for job in jobs]
    for p in processes:
        p.start()
    try:
        collected = _collect(processes, results)
    finally:
        for p in processes:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    errors = [r.error for r in collected if r.error]
    if errors:
        raise BenchError("a client process failed: " + "; ".join(errors))
    return collected
