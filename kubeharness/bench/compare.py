"""The emulator against a real runtime, side by side: p50 of every RPC and pod cycles per second, with ratios.

``kubeharness bench cri --compare-endpoint unix://...`` runs the same phases on an emulator and on the
given runtime (with ``--compare-cycles`` cycles, since a real runtime takes hundreds of milliseconds per
pod) and prints this table. Goal (issue 4): the emulator at least 100 times faster per pod cycle.
"""

from __future__ import annotations

from kubeharness.bench.results import BenchResult
from kubeharness.bench.stats import summarize

CYCLE_SPEEDUP_GOAL = 100.0


def _ratio(slow: float, fast: float) -> str:
    return f"{slow / fast:8.1f}x" if fast > 0 and slow > 0 else "       -"


def comparison_lines(emulator: BenchResult, other: BenchResult) -> list[str]:
    name = other.runtime.get("name", "runtime") or "runtime"
    lines = [f"emulator vs {name} {other.runtime.get('version', '')}".rstrip()]
    for phase_name in ("serial", "concurrent"):
        a, b = emulator.phase(phase_name), other.phase(phase_name)
        if a is None or b is None:
            continue
        lines += ["", f"  {phase_name} ({a.clients} client{'s' if a.clients > 1 else ''}): p50 per RPC",
                  f"  {'RPC':<20} {'emulator ms':>12} {name + ' ms':>14} {'ratio':>9}"]
        for rpc, samples in a.recorder.samples.items():
            fast = summarize(samples).p50_ms
            slow = summarize(b.recorder.samples.get(rpc, [])).p50_ms
            lines.append(f"  {rpc:<20} {fast:12.3f} {slow:14.3f} {_ratio(slow, fast)}")
        lines.append(f"  {'pod cycles/s':<20} {a.rate:12.1f} {b.rate:14.1f} {_ratio(a.rate, b.rate)}")
    serial_a, serial_b = emulator.phase("serial"), other.phase("serial")
    if serial_a is not None and serial_b is not None and serial_b.rate > 0:
        speedup = serial_a.rate / serial_b.rate
        verdict = "MET" if speedup >= CYCLE_SPEEDUP_GOAL else "NOT MET"
        goal = f"emulator >= {CYCLE_SPEEDUP_GOAL:g}x faster per pod cycle (serial)"
        lines += ["", f"  {verdict:<8} {goal}: {speedup:.0f}x"]
    return lines
