"""``kubeharness bench agent``: how fast the node agent starts pods, and what it costs while they idle.

    phase 1  ``--pods`` static pod manifests written at once (each renamed into ``staticPodPath``, so the
             agent never reads half a file); ``/pods`` polled every 20 ms until all are Running. Per pod:
             its ``kubernetes.io/config.seen`` (stamped when the agent first read the manifest, so the
             file source's 1 s polling is not counted) to the poll that first showed it Running.
    phase 2  pods added up to ``--idle-pods``, then, once all are Running and without polling the agent,
             its CPU time (``/proc/PID/stat``) over ``--idle-seconds`` as % of one core
    clean-up the manifests deleted; the benchmark waits until the agent has taken the pods out of ``/pods``
             and removed their sandboxes, stops the agent (SIGTERM by PID), then stops and removes through
             CRI whatever of the run's namespace is left

Without ``--endpoint`` it starts a CRI emulator subprocess; the agent is always a subprocess of its own
(``python -m kubeharness.cli agent``) in a temporary directory, with ``readOnlyPort`` on a free port.
``--compare-endpoint`` runs the same phases against a second runtime (containerd from ``kubeharness env
up``, say) with a second agent and ``--compare-timeout``, and prints both side by side. Targets (issue):
startup p99 at most 200 ms, idle CPU at most 5% of one core. Failures (timeouts, pods not Running, pods
left behind) are printed, never raised; the exit code is 1 then.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from kubeharness.bench.agentnode import Histogram, SpawnedAgent, by_label, parse_histogram
from kubeharness.bench.agentphases import (
    POLL_INTERVAL_S,
    Cleanup,
    Idle,
    Startup,
    clean_up,
    measure_idle,
    pull_image,
    runtime_version,
    sweep,
    watch_until_running,
)
from kubeharness.bench.agentprobes import ProbeRun, bench_probes, probe_lines
from kubeharness.bench.agentresources import ResourceRun, bench_resources, resource_lines, resource_targets
from kubeharness.bench.emulator import SpawnedEmulator
from kubeharness.bench.errors import BenchError
from kubeharness.bench.procstat import sample
from kubeharness.bench.stats import rate_per_second, summarize

TARGET_P99_MS = 200.0
TARGET_IDLE_CPU_PERCENT = 5.0
START_TIMEOUT_S = 30.0
POD_START = "kubelet_pod_start_duration_seconds"
PLEG_RELIST = "kubelet_pleg_relist_duration_seconds"
OPERATION_DURATION = "kubelet_runtime_operations_duration_seconds"
SLOWEST_CALLS_SHOWN = 6


@dataclass
class Run:
    """Everything measured against one runtime."""

    label: str
    endpoint: str
    runtime: str = ""
    agent_pid: int = 0
    startup: Startup | None = None
    own_view: Histogram | None = None  # the agent's pod start histogram after phase 1
    relists: Histogram | None = None  # PLEG relists during phase 1
    calls: dict[str, tuple[int, float]] = field(default_factory=dict)  # CRI operation -> (count, seconds), phase 1
    startup_cpu_s: tuple[float, float] = (0.0, 0.0)  # CPU of the agent and of the runtime (if known) in phase 1
    probes: ProbeRun | None = None  # phase 3
    resources: ResourceRun | None = None  # phase 4
    added: Startup | None = None
    idle: Idle | None = None
    cleanup: Cleanup = field(default_factory=Cleanup)
    problems: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.problems)


def _cpu(pid: int | None) -> float:
    found = sample(pid) if pid else None
    return found.cpu_s if found is not None else 0.0


def call_deltas(before: str, after: str) -> dict[str, tuple[int, float]]:
    """CRI operations the agent finished between two /metrics texts: operation -> (count, total seconds)."""
    counts = [by_label(t, f"{OPERATION_DURATION}_count") for t in (before, after)]
    sums = [by_label(t, f"{OPERATION_DURATION}_sum") for t in (before, after)]
    return {op: (int(n - counts[0].get(op, 0)), sums[1].get(op, 0.0) - sums[0].get(op, 0.0))
            for op, n in counts[1].items() if n > counts[0].get(op, 0)}


def _delta(after: Histogram, before: Histogram) -> Histogram:
    return Histogram(after.count - before.count, after.sum - before.sum, {})


async def _metrics(agent: SpawnedAgent) -> str:
    try:
        return await agent.metrics()
    except (OSError, TimeoutError, ValueError):
        return ""


async def _phases(run: Run, agent: SpawnedAgent, options: argparse.Namespace, namespace: str, timeout_s: float,
                  runtime_pid: int | None) -> list[str]:
    """Phases 1 and 2 on a started agent; the names of every manifest written."""
    names = [f"pod-{i:04d}" for i in range(options.pods)]
    before = await _metrics(agent)
    relists_before = parse_histogram(before, PLEG_RELIST)
    cpu_before = _cpu(agent.pid), _cpu(runtime_pid)
    written_ns, started = time.time_ns(), time.perf_counter()
    agent.write_manifests(names, namespace)
    run.startup = await watch_until_running(agent, names, written_ns, started, timeout_s)
    run.startup_cpu_s = _cpu(agent.pid) - cpu_before[0], _cpu(runtime_pid) - cpu_before[1]
    text = await _metrics(agent)
    run.own_view = parse_histogram(text, POD_START)
    run.relists = _delta(parse_histogram(text, PLEG_RELIST), relists_before)
    run.calls = call_deltas(before, text)
    if run.startup.problem:
        run.problems.append(f"phase 1: {run.startup.problem}")
        return names
    more = [f"pod-{i:04d}" for i in range(options.pods, options.idle_pods)]
    if more:
        written_ns, started = time.time_ns(), time.perf_counter()
        agent.write_manifests(more, namespace)
        run.added = await watch_until_running(agent, more, written_ns, started, timeout_s)
        if run.added.problem:
            run.problems.append(f"phase 2: {run.added.problem}")
            return names + more
    run.idle = await measure_idle(agent, names + more, options.idle_seconds, runtime_pid)
    if run.idle.running_after < run.idle.pods:
        run.problems.append(f"phase 2: only {run.idle.running_after} of {run.idle.pods} pods Running after the "
                            "idle interval")
    return names + more


async def bench_runtime(run: Run, options: argparse.Namespace, timeout_s: float, runtime_pid: int | None) -> None:
    """Both phases and the clean-up against ``run.endpoint``; everything that goes wrong ends in run.problems."""
    root = Path(tempfile.mkdtemp(prefix="kubeharness-bench-agent-"))
    namespace = f"khbench-{secrets.token_hex(3)}"
    agent = SpawnedAgent(root, run.endpoint, options.idle_pods)
    names: list[str] = []
    cleaned = False
    try:
        run.runtime = await runtime_version(run.endpoint)
        await pull_image(run.endpoint)  # untimed: the agent pulls IfNotPresent, so it finds the image
        agent.start()
        run.agent_pid = agent.pid
        await agent.wait_ready(START_TIMEOUT_S)
        names = await _phases(run, agent, options, namespace, timeout_s, runtime_pid)
        cleaned = True
        run.cleanup = await clean_up(agent, run.endpoint, names, namespace, timeout_s)
        if run.cleanup.problem:
            run.problems.append(f"clean-up: {run.cleanup.problem}")
    except (BenchError, grpc.aio.AioRpcError, OSError) as err:
        details = err.details() if isinstance(err, grpc.aio.AioRpcError) else str(err)
        run.problems.append(f"{type(err).__name__}: {details}")
        if not cleaned and agent.alive():  # let the agent take down what it started before it is stopped
            with contextlib.suppress(grpc.aio.AioRpcError, OSError):
                run.cleanup = await clean_up(agent, run.endpoint, names, namespace, timeout_s)
    finally:
        code = agent.stop()
        if code not in (0, None):
            run.problems.append(f"the agent exited with code {code}; the end of its log:\n{agent.log_tail()}")
        try:
            run.cleanup.swept, run.cleanup.left, run.cleanup.sweep_error = await sweep(run.endpoint, namespace)
        except grpc.aio.AioRpcError as err:
            run.problems.append(f"clean-up through CRI failed: {err.code().name}: {err.details()}")
        if run.cleanup.left:
            run.problems.append(f"clean-up: {run.cleanup.left} sandboxes of namespace {namespace} are still there "
                                f"(last error: {run.cleanup.sweep_error or 'none'})")
        shutil.rmtree(root, ignore_errors=True)
    if options.probe_pods and not run.problems:
        run.probes, problems = await bench_probes(run.endpoint, options.probe_pods, options.probe_kill_pods,
                                                  options.probe_seconds, timeout_s)
        run.problems.extend(problems)
    # the emulator only: on a real runtime the hog would really allocate up to 4 GiB and 110 pods really log
    if options.resource_pods and not run.problems and run.label == "emulator":
        run.resources, problems = await bench_resources(run.endpoint, options, timeout_s)
        run.problems.extend(problems)


# -- report -------------------------------------------------------------------------------------------

def _ms(ns: float) -> str:
    return f"{ns / 1e6:.1f} ms"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def startup_lines(title: str, s: Startup) -> list[str]:
    rate = rate_per_second(s.running, s.busy_ns)
    lines = [f"{title}: {s.running}/{s.wanted} Running {s.wall_ns / 1e9:.2f} s after the writes (the file source "
             f"looks every 1 s); first seen to last Running {s.busy_ns / 1e9:.2f} s = {rate:.1f} pods/s"]
    if s.latencies_ns:
        sm = summarize(s.latencies_ns)
        lines.append(f"  startup latency (config.seen to Running in /pods): p50 {sm.p50_ms:.1f} ms, "
                     f"p99 {sm.p99_ms:.1f} ms, max {sm.max_ms:.1f} ms, mean {sm.mean_ms:.1f} ms")
    if s.poll_gaps_ns:
        lines.append(f"  /pods polled every {POLL_INTERVAL_S * 1000:g} ms (mean gap "
                     f"{_ms(sum(s.poll_gaps_ns) / len(s.poll_gaps_ns))}, max {_ms(max(s.poll_gaps_ns))}): each "
                     "latency is late by up to one gap, so that bounds the resolution")
    if s.left:
        lines.append("  not Running at the end: " + ", ".join(f"{n} {state}" for state, n in sorted(s.left.items())))
    return lines


def run_lines(run: Run) -> list[str]:
    lines = [f"== {run.label}: {run.runtime or run.endpoint} ({run.endpoint}), agent PID {run.agent_pid or '-'}"]
    if run.startup is not None:
        lines += startup_lines(f"phase 1: {run.startup.wanted} pods written at once", run.startup)
    if run.own_view is not None and run.own_view.count:
        under = run.own_view.buckets.get(0.5, 0)
        lines.append(f"  the agent's own {POD_START}: {run.own_view.count} pods, mean "
                     f"{run.own_view.mean * 1000:.1f} ms, {under} at or under 0.5 s (its smallest bucket)")
    if run.relists is not None and run.relists.count:
        lines.append(f"  PLEG relists in phase 1: {run.relists.count}, mean {run.relists.mean * 1000:.1f} ms")
    if run.startup is not None and run.startup.wall_ns:
        agent_s, runtime_s = run.startup_cpu_s
        also = f", the runtime {runtime_s:.2f} s" if runtime_s else ""
        lines.append(f"  CPU in phase 1 ({run.startup.wall_ns / 1e9:.2f} s): the agent {agent_s:.2f} s{also}")
    if run.calls:
        slowest = sorted(run.calls.items(), key=lambda item: -item[1][1])[:SLOWEST_CALLS_SHOWN]
        lines.append("  the agent's CRI calls in phase 1 (count x mean, most total time first): " + ", ".join(
            f"{op} {n} x {total / n * 1000:.1f} ms" for op, (n, total) in slowest))
    if run.added is not None:
        lines += startup_lines(f"phase 2: {run.added.wanted} pods added", run.added)
    if run.idle is not None:
        idle = run.idle
        runtime = (f"; the runtime {idle.runtime_cpu_s:.2f} s = {_pct(Idle.percent(idle.runtime_cpu_s, idle.wall_s))}"
                   if idle.runtime_cpu_s is not None else "")
        agent_cpu = f"{idle.agent_cpu_s:.2f} s" if idle.agent_cpu_s is not None else "unknown"
        lines.append(f"phase 2: {idle.pods} pods idle ({idle.running_after} Running after): agent CPU {agent_cpu} in "
                     f"{idle.wall_s:.2f} s = {_pct(Idle.percent(idle.agent_cpu_s, idle.wall_s))} of one core{runtime}")
    c = run.cleanup
    gone = f"{c.gone_from_pods_s:.2f} s" if c.gone_from_pods_s is not None else "not reached"
    removed = f"{c.sandboxes_gone_s:.2f} s" if c.sandboxes_gone_s is not None else "not reached"
    lines.append(f"clean-up: {c.manifests} manifests deleted; out of /pods after {gone}, sandboxes removed by the "
                 f"agent after {removed}; {c.swept} swept through CRI, {c.left} left")
    if run.probes is not None:
        lines += probe_lines(run.probes)
    if run.resources is not None:
        lines += resource_lines(run.resources)
    return lines + [f"FAILED {p}" for p in run.problems]


def target_lines(run: Run) -> list[str]:
    s = run.startup
    if s is None or not s.latencies_ns:
        startup = "NOT met (no pod reached Running)"
    else:
        p99 = summarize(s.latencies_ns).p99_ms
        complete = s.running == s.wanted
        startup = (f"{'met' if p99 <= TARGET_P99_MS and complete else 'NOT met'} (p99 {p99:.1f} ms"
                   f"{'' if complete else f', only {s.running} of {s.wanted} Running'})")
    percent = Idle.percent(run.idle.agent_cpu_s, run.idle.wall_s) if run.idle else None
    idle = ("NOT met (not measured)" if percent is None else
            f"{'met' if percent <= TARGET_IDLE_CPU_PERCENT else 'NOT met'} ({percent:.1f}%)")
    resources = resource_targets(run.resources, run.label) if run.resources is not None else []
    return [f"target ({run.label}) startup p99 <= {TARGET_P99_MS:g} ms: {startup}",
            f"target ({run.label}) idle agent CPU <= {TARGET_IDLE_CPU_PERCENT:g}% of one core: {idle}", *resources]


def comparison_lines(runs: list[Run]) -> list[str]:
    width = max(14, *(len(r.label) + 2 for r in runs))
    rows: list[tuple[str, list[str]]] = []

    def figures(run: Run) -> dict[str, str]:
        s = run.startup
        sm = summarize(s.latencies_ns) if s is not None else None
        idle = Idle.percent(run.idle.agent_cpu_s, run.idle.wall_s) if run.idle else None
        return {
            "pods Running": f"{s.running}/{s.wanted}" if s else "-",
            "startup p50 ms": f"{sm.p50_ms:.1f}" if sm and sm.count else "-",
            "startup p99 ms": f"{sm.p99_ms:.1f}" if sm and sm.count else "-",
            "startup max ms": f"{sm.max_ms:.1f}" if sm and sm.count else "-",
            "pods/s": f"{rate_per_second(s.running, s.busy_ns):.1f}" if s else "-",
            "idle agent CPU": _pct(idle),
            "idle pods": f"{run.idle.running_after}/{run.idle.pods}" if run.idle else "-",
        }

    table = [figures(r) for r in runs]
    for key in table[0]:
        rows.append((key, [t[key] for t in table]))
    head = f"  {'':<16}" + "".join(f"{r.label:>{width}}" for r in runs)
    return ["side by side:", head] + [f"  {k:<16}" + "".join(f"{v:>{width}}" for v in vs) for k, vs in rows]


# -- main ---------------------------------------------------------------------------------------------

def check(options: argparse.Namespace) -> None:
    if options.pods < 1:
        raise BenchError("--pods must be at least 1")
    if options.idle_pods < options.pods:
        raise BenchError(f"--idle-pods ({options.idle_pods}) must be at least --pods ({options.pods})")
    if options.probe_pods < 0 or options.probe_kill_pods < 0 or options.probe_seconds <= 0 or \
            (options.probe_pods and options.probe_kill_pods > options.probe_pods):
        raise BenchError("--probe-pods and --probe-seconds must be positive (0 pods: no probes phase), "
                         "--probe-kill-pods at most --probe-pods")
    if options.resource_pods < 0 or options.resource_seconds <= 0 or options.log_rate <= 0 \
            or options.log_line_bytes < 0:
        raise BenchError("--resource-pods must be at least 0 (0: no resources phase), --resource-seconds and "
                         "--log-rate positive, --log-line-bytes at least 0")
    if options.idle_seconds <= 0 or options.timeout <= 0 or options.compare_timeout <= 0:
        raise BenchError("--idle-seconds, --timeout and --compare-timeout must be positive")


async def _main(options: argparse.Namespace, root: Path) -> list[Run]:
    emulator = SpawnedEmulator(root) if options.endpoint is None else None
    runs: list[Run] = []
    try:
        if emulator is not None:
            emulator.start()
            await emulator.wait_ready(START_TIMEOUT_S)
        endpoint = emulator.endpoint if emulator is not None else options.endpoint
        first = Run("emulator" if emulator is not None else "runtime", endpoint)
        runs.append(first)
        await bench_runtime(first, options, options.timeout, emulator.pid if emulator is not None else None)
        if emulator is None and first.runtime:
            first.label = first.runtime.split()[0]
        print("\n".join(run_lines(first)), flush=True)
    finally:
        code = emulator.stop() if emulator is not None else None
        if emulator is not None and code not in (0, None) and runs:
            problem = f"the emulator exited with code {code}; the end of its log:\n{emulator.log_tail()}"
            runs[0].problems.append(problem)
            print(f"FAILED {problem}")
    if options.compare_endpoint:
        other = Run("compared", options.compare_endpoint)
        runs.append(other)
        await bench_runtime(other, options, options.compare_timeout, None)
        if other.runtime:
            other.label = other.runtime.split()[0]
        print("")
        print("\n".join(run_lines(other)), flush=True)
    return runs


def main(options: argparse.Namespace) -> int:
    check(options)
    print(f"agent benchmark: {options.pods} pods at once, then {options.idle_pods} idle for "
          f"{options.idle_seconds:g} s; {os.cpu_count()} CPUs, Python {platform.python_version()}", flush=True)
    root = Path(tempfile.mkdtemp(prefix="kubeharness-bench-agent-"))
    try:
        runs = asyncio.run(_main(options, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("")
    if len(runs) > 1:
        print("\n".join(comparison_lines(runs)))
        print("")
    for run in runs:
        print("\n".join(target_lines(run)))
    failed = [r for r in runs if r.failed]
    if failed:
        print(f"failures against {', '.join(r.label for r in failed)} (see FAILED lines above)")
    return 1 if failed else 0
