"""The benchmark's plain-text report: one table per phase, list figures, memory, targets.

Each function returns lines, so the report can be printed as the run goes and tested without I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from kubeharness.bench.client import Recorder
from kubeharness.bench.cycle import CYCLE_RPCS
from kubeharness.bench.procstat import MiB, ProcSample
from kubeharness.bench.results import ListFigure, LiveResult, PhaseResult
from kubeharness.bench.stats import Summary
from kubeharness.bench.targets import Check

MAX_FAILURE_KINDS = 10
INDENT = "  "


def ordered_rpcs(rpcs: Iterable[str]) -> list[str]:
    """The cycle's RPCs in cycle order, then any others alphabetically."""
    present = set(rpcs)
    return [r for r in CYCLE_RPCS if r in present] + sorted(present - set(CYCLE_RPCS))


def rpc_table(summaries: Mapping[str, Summary]) -> list[str]:
    lines = [f"{INDENT}{'RPC':<20} {'count':>7} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}"]
    for rpc in ordered_rpcs(summaries):
        s = summaries[rpc]
        lines.append(f"{INDENT}{rpc:<20} {s.count:>7} {s.p50_ms:>9.3f} {s.p99_ms:>9.3f} {s.max_ms:>9.3f}")
    return lines


def list_table(figures: Iterable[ListFigure]) -> list[str]:
    lines = [f"{INDENT}{'RPC':<20} {'count':>7} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9} {'items':>8} {'first ms':>9}"]
    for f in figures:
        s = f.summary
        lines.append(f"{INDENT}{f.rpc:<20} {s.count:>7} {s.p50_ms:>9.3f} {s.p99_ms:>9.3f} {s.max_ms:>9.3f} "
                     f"{f.items:>8} {f.first_ms:>9.3f}")
    return lines


def failure_lines(recorder: Recorder) -> list[str]:
    if not recorder.failures:
        return []
    kinds = recorder.failures.most_common()
    lines = [f"{INDENT}{recorder.failure_count} failed calls:"]
    for failure, count in kinds[:MAX_FAILURE_KINDS]:
        lines.append(f"{INDENT * 2}{count:>6} x {failure.rpc}: {failure.code}: {failure.details}")
    if len(kinds) > MAX_FAILURE_KINDS:
        lines.append(f"{INDENT * 2}... and {len(kinds) - MAX_FAILURE_KINDS} other kinds (see --json)")
    return lines


def cpu_line(phase: PhaseResult) -> str:
    per_item = f"{phase.unit[:-1]}"
    ok = max(phase.outcome.ok, 1)
    wall_s = phase.outcome.wall_ns / 1e9 or 1.0
    parts = [f"bench CPU {phase.client_cpu_s:.2f} s ({phase.client_cpu_s / wall_s:.0%} of a core)"]
    if phase.server_cpu_s is not None:
        parts.insert(0, f"runtime CPU {phase.server_cpu_s:.2f} s ({phase.server_cpu_s / wall_s:.0%} of a core, "
                        f"{phase.server_cpu_s * 1000 / ok:.2f} ms per {per_item})")
    return INDENT + ", ".join(parts)


def phase_lines(phase: PhaseResult) -> list[str]:
    o = phase.outcome
    clients = f"{phase.clients} client{'s' if phase.clients != 1 else ''}"
    if phase.processes > 1:
        clients += f" in {phase.processes} processes"
    head = (f"{phase.title}: {o.ok} {phase.unit} ({o.failed} failed) with {clients} in {o.wall_ns / 1e9:.2f} s "
            f"= {phase.rate:.1f} {phase.unit}/s")
    return [head, *rpc_table(phase.summaries()), cpu_line(phase), *failure_lines(phase.recorder)]


def live_lines(live: LiveResult, memory: Mapping[str, ProcSample]) -> list[str]:
    pods = live.populate.outcome.ok
    repeats = live.lists[0].summary.count if live.lists else 0
    lines = [f"List* with {pods:,} live pods, no filter, serially: a first call (last column), then {repeats} more",
             "(timed until the whole answer has arrived; the client decodes it afterwards):"]
    lines += list_table(live.lists)
    for label, s in memory.items():
        if "live" in label:
            rss, hwm = s.rss_bytes / MiB, s.hwm_bytes / MiB
            lines.append(f"{INDENT}runtime RSS {label}: {rss:.1f} MiB (peak VmHWM {hwm:.1f} MiB)")
    return lines


def cleanup_lines(live: LiveResult) -> list[str]:
    if live.cleanup is None:
        return [f"kept {live.populate.outcome.ok:,} live pods (--keep)"]
    o = live.cleanup.outcome
    return [f"clean-up: removed {o.ok:,} pods ({o.failed} failed) in {o.wall_ns / 1e9:.2f} s",
            *failure_lines(live.cleanup.recorder)]


def memory_lines(memory: Mapping[str, ProcSample]) -> list[str]:
    if not memory:
        return ["runtime memory: not measured (its PID is unknown; give --server-pid)"]
    lines = ["runtime memory and CPU at each checkpoint:",
             f"{INDENT}{'checkpoint':<32} {'RSS MiB':>9} {'HWM MiB':>9} {'CPU s':>8}"]
    for label, s in memory.items():
        lines.append(f"{INDENT}{label:<32} {s.rss_bytes / MiB:>9.1f} {s.hwm_bytes / MiB:>9.1f} {s.cpu_s:>8.2f}")
    return lines


def target_lines(checks: Iterable[Check]) -> list[str]:
    lines = ["targets:"]
    for check in checks:
        lines.append(f"{INDENT}{check.status:<13} {check.target:<52} {check.detail}")
    return lines
