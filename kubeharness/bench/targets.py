"""The project's performance targets, judged against a run's figures: MET, NOT MET or NOT MEASURED.

A benchmark reports; it never fails because a target was missed. A target stated for 16 clients or
10,000 live pods is NOT MEASURED by a run with other settings (the detail still shows the figure).
A phase with failed calls does not meet its target, whatever its latencies, because its figures
describe a runtime that did not work. The List* target is judged on the calls after the first (kubelet
relists every second, so a runtime's list caches are warm); the first call's latency is shown beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubeharness.bench.cycle import CYCLE_RPCS
from kubeharness.bench.procstat import MiB
from kubeharness.bench.results import BenchResult

SERIAL_P99_MS = 5.0
CYCLES_PER_S = 250.0
TARGET_CLIENTS = 16
LIST_P99_MS = 50.0
TARGET_LIVE_PODS = 10_000
RSS_MIB = 300.0

MET, NOT_MET, NOT_MEASURED = "MET", "NOT MET", "NOT MEASURED"


@dataclass(frozen=True)
class Check:
    target: str
    status: str
    detail: str


def _verdict(ok: bool, failures: int) -> str:
    return MET if ok and failures == 0 else NOT_MET


def _failed_note(failures: int) -> str:
    return f"; {failures} failed calls" if failures else ""


def serial_latency(result: BenchResult) -> Check:
    name = f"p99 of every RPC <= {SERIAL_P99_MS:g} ms serially"
    phase = result.phase("serial")
    if phase is None:
        return Check(name, NOT_MEASURED, "no serial phase")
    summaries = phase.summaries()
    missing = [rpc for rpc in CYCLE_RPCS if rpc not in summaries]
    if missing:
        return Check(name, NOT_MET, "no successful " + ", ".join(missing) + _failed_note(phase.recorder.failure_count))
    worst = max(CYCLE_RPCS, key=lambda rpc: summaries[rpc].p99_ms)
    p99 = summaries[worst].p99_ms
    detail = f"worst: {worst} p99 {p99:.2f} ms" + _failed_note(phase.recorder.failure_count)
    return Check(name, _verdict(p99 <= SERIAL_P99_MS, phase.recorder.failure_count), detail)


def throughput(result: BenchResult) -> Check:
    name = f">= {CYCLES_PER_S:g} pod cycles/s with {TARGET_CLIENTS} concurrent clients"
    phase = result.phase("concurrent")
    if phase is None:
        return Check(name, NOT_MEASURED, "no concurrent phase")
    detail = f"{phase.rate:.1f} cycles/s" + _failed_note(phase.recorder.failure_count)
    if phase.clients != TARGET_CLIENTS:
        return Check(name, NOT_MEASURED, f"{detail} with {phase.clients} clients (run with --concurrency 16)")
    return Check(name, _verdict(phase.rate >= CYCLES_PER_S, phase.recorder.failure_count), detail)


def list_latency(result: BenchResult) -> Check:
    name = f"List* p99 <= {LIST_P99_MS:g} ms with {TARGET_LIVE_PODS:,} live pods"
    live = result.live
    if live is None or not live.lists:
        return Check(name, NOT_MEASURED, "run with --live-pods 10000")
    worst = max(live.lists, key=lambda f: f.summary.p99_ms)
    pods = live.populate.outcome.ok
    first = max(live.lists, key=lambda f: f.first_ms)
    detail = (f"worst: {worst.rpc} p99 {worst.summary.p99_ms:.2f} ms with {pods:,} live pods "
              f"(first call: {first.rpc} {first.first_ms:.1f} ms)")
    if pods < TARGET_LIVE_PODS:
        return Check(name, NOT_MEASURED, f"{detail} (run with --live-pods 10000)")
    return Check(name, _verdict(worst.summary.p99_ms <= LIST_P99_MS, 0), detail)


def memory(result: BenchResult) -> Check:
    name = f"emulator RSS <= {RSS_MIB:g} MiB"
    peak = result.peak_rss_bytes()
    if peak is None:
        return Check(name, NOT_MEASURED, "the runtime's PID is unknown (give --server-pid)")
    label = max(result.memory, key=lambda k: result.memory[k].rss_bytes)
    sampled = result.memory[label].rss_bytes / MiB
    detail = f"peak VmHWM {peak / MiB:.1f} MiB; largest sampled VmRSS {sampled:.1f} MiB ({label})"
    return Check(name, _verdict(peak / MiB <= RSS_MIB, 0), detail)


def evaluate(result: BenchResult) -> list[Check]:
    return [serial_latency(result), throughput(result), list_latency(result), memory(result)]
