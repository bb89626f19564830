"""``kubeharness bench cri``: pod-cycle latency and throughput of any CRI endpoint, and List* at scale.

    phase 1  N pod cycles serially on one channel
    phase 2  N pod cycles with K concurrent clients, each with its own channel (optionally spread
             over P client processes, since one Python client process saturates a core)
    phase 3  with --live-pods M: M sandboxes with one running container each, then ListContainers
             and ListPodSandbox (no filter) serially: a first call, timed and shown on its own (a
             runtime may cache list entries, as kubelet's relisting every second keeps them warm),
             then --list-repeats timed calls; then clean-up unless --keep

With no ``--endpoint`` it starts a CRI emulator as a subprocess in a temporary directory and reports
that process's memory and CPU too (``--server-pid`` does the same for a runtime started elsewhere,
such as containerd). Every figure is printed as plain text tables, judged against the project's
targets, and optionally written as JSON (``--json FILE``) for comparing runtimes. RPC failures are
counted and summarized, never raised; the exit code is 1 if any call failed, else 0.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import secrets
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import grpc

from kubeharness.bench import report
from kubeharness.bench.client import Recorder, TimedClient, open_channel
from kubeharness.bench.compare import comparison_lines
from kubeharness.bench.cycle import pod_cycle, remove_pod, run_pod
from kubeharness.bench.drive import Outcome, Work, connect, drive
from kubeharness.bench.emulator import SpawnedEmulator
from kubeharness.bench.errors import BenchError
from kubeharness.bench.kubelet import PodPlan
from kubeharness.bench.parallel import WorkerJob, run_processes, split
from kubeharness.bench.procstat import ProcSample, own_cpu_s, sample
from kubeharness.bench.results import BenchResult, ListFigure, LiveResult, PhaseResult
from kubeharness.bench.stats import NS_PER_MS, summarize
from kubeharness.bench.targets import evaluate
from kubeharness.wire.cri import api_pb2 as api

DEFAULT_IMAGE = "kubeharness.test/khelper:1"
CONNECT_TIMEOUT_S = 10.0
PULL_TIMEOUT_S = 600.0
LIST_RPCS = ("ListContainers", "ListPodSandbox")

PhaseRun = Callable[[], Awaitable[tuple[Recorder, Outcome, float]]]


@dataclass(frozen=True)
class Options:
    """The benchmark's settings, read from the CLI's arguments (missing ones take their defaults)."""

    endpoint: str | None = None
    cycles: int = 300
    concurrency: int = 16
    live_pods: int = 0
    image: str = DEFAULT_IMAGE
    stop_timeout: int = 0
    client_processes: int = 1
    warmup: int = 10
    list_repeats: int = 50
    rpc_timeout: float = 60.0
    start_timeout: float = 20.0
    server_pid: int | None = None
    keep: bool = False
    json: str | None = None
    compare_endpoint: str | None = None  # also measure this runtime and print both side by side
    compare_cycles: int = 30

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        defaults = cls()
        values = {name: getattr(args, name, getattr(defaults, name)) for name in asdict(defaults)}
        values["image"] = values["image"] or DEFAULT_IMAGE
        return cls(**values)

    def check(self) -> None:
        if self.compare_endpoint and self.endpoint:
            raise BenchError("--compare-endpoint compares with an emulator the benchmark starts: leave out --endpoint")
        for name in ("cycles", "concurrency", "client_processes", "list_repeats", "compare_cycles"):
            if getattr(self, name) < 1:
                raise BenchError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("live_pods", "stop_timeout", "warmup"):
            if getattr(self, name) < 0:
                raise BenchError(f"--{name.replace('_', '-')} must not be negative")


class Monitor:
    """Samples the runtime process (when its PID is known) into named checkpoints."""

    def __init__(self, pid: int | None, checkpoints: dict[str, ProcSample]) -> None:
        self.pid = pid
        self.checkpoints = checkpoints

    def cpu_s(self) -> float | None:
        found = sample(self.pid) if self.pid is not None else None
        return found.cpu_s if found is not None else None

    def checkpoint(self, label: str) -> None:
        found = sample(self.pid) if self.pid is not None else None
        if found is not None:
            self.checkpoints[label] = found


def say(lines: str | Sequence[str] = "") -> None:
    print(lines if isinstance(lines, str) else "\n".join(lines), flush=True)


class CriBench:
    """One run against one endpoint."""

    def __init__(self, options: Options, endpoint: str, root: Path, pid: int | None) -> None:
        self.options = options
        self.endpoint = endpoint
        self.plan = PodPlan(secrets.token_hex(3), options.image, str(root / "pods"), options.stop_timeout)
        self.result = BenchResult(settings=settings_json(options, endpoint), runtime={})
        self.monitor = Monitor(pid, self.result.memory)

    # -- preparation ------------------------------------------------------------------------------

    async def preflight(self) -> None:
        """Version (is anybody there?) and PullImage (is the image available?), untimed."""
        async with open_channel(self.endpoint) as channel:
            await connect(channel, self.endpoint, CONNECT_TIMEOUT_S)
            client = TimedClient(channel, Recorder(), self.options.rpc_timeout)
            version = await client.call("Version", client.runtime.Version, api.VersionRequest())
            if version is None:
                raise BenchError(f"{self.endpoint} does not answer Version: {first_failure(client.recorder)}")
            self.result.runtime = {"name": version.runtime_name, "version": version.runtime_version,
                                   "api_version": version.runtime_api_version}
            pull = api.PullImageRequest(image=api.ImageSpec(image=self.options.image))
            if await client.call("PullImage", client.images.PullImage, pull, extra_timeout_s=PULL_TIMEOUT_S) is None:
                raise BenchError(
                    f"PullImage {self.options.image} failed: {first_failure(client.recorder)}\n"
                    "The benchmark's containers need this image. On a real runtime it must be pullable or "
                    "already imported (e.g. `ctr -n k8s.io images import khelper.tar`); or pick one with --image."
                )

    def header(self) -> list[str]:
        o, rt = self.options, self.result.runtime
        pid = f", runtime PID {self.monitor.pid}" if self.monitor.pid is not None else ""
        if o.endpoint is None:
            pid += " (an emulator the benchmark started)"
        return [
            f"CRI benchmark of {self.endpoint}: {rt['name']} {rt['version']} (CRI {rt['api_version']}){pid}",
            f"image {o.image}, StopContainer timeout {o.stop_timeout} s, {o.warmup} warm-up cycles, "
            f"{os.cpu_count()} CPUs, Python {platform.python_version()}, grpcio {grpc.__version__}",
        ]

    # -- running work -----------------------------------------------------------------------------

    async def in_process(self, items: Sequence[Any], clients: int, work: Work[Any]) -> tuple[Recorder, Outcome, float]:
        recorder = Recorder()
        cpu_before = own_cpu_s()
        outcome = await drive(self.endpoint, items, clients, work, recorder, self.options.rpc_timeout)
        return recorder, outcome, own_cpu_s() - cpu_before

    async def in_processes(self, phase: str, cycles: int, clients: int) -> tuple[Recorder, Outcome, float]:
        jobs = [WorkerJob(self.endpoint, self.plan, phase, indices, share, self.options.rpc_timeout)
                for indices, share in split(cycles, clients, self.options.client_processes)]
        results = await asyncio.to_thread(run_processes, jobs)
        recorder = Recorder()
        recorder.merge(r.recorder for r in results)
        outcomes = [r.outcome for r in results if r.outcome is not None]
        outcome = Outcome(sum(o.ok for o in outcomes), sum(o.failed for o in outcomes),
                          min(o.start_ns for o in outcomes), max(o.end_ns for o in outcomes))
        return recorder, outcome, sum(r.cpu_s for r in results)

    async def measure(self, name: str, title: str, unit: str, clients: int, processes: int,
                      run: PhaseRun) -> PhaseResult:
        """Run one phase, adding the runtime's CPU time over it."""
        cpu_before = self.monitor.cpu_s()
        recorder, outcome, client_cpu_s = await run()
        cpu_after = self.monitor.cpu_s()
        server_cpu_s = cpu_after - cpu_before if cpu_before is not None and cpu_after is not None else None
        return PhaseResult(name, title, unit, clients, processes, recorder, outcome, server_cpu_s, client_cpu_s)

    def cycles_work(self, phase: str) -> Work[int]:
        async def cycle(client: TimedClient, index: int) -> bool:
            return await pod_cycle(client, self.plan, phase, index)

        return cycle

    # -- the phases -------------------------------------------------------------------------------

    async def warm_up(self) -> None:
        """A few untimed cycles, so first-call costs on either side are not in phase 1's figures."""
        if self.options.warmup:
            recorder, _, _ = await self.in_process(range(self.options.warmup), 1, self.cycles_work("warmup"))
            if recorder.failures:
                say(["warm-up:", *report.failure_lines(recorder)])

    async def serial(self) -> PhaseResult:
        cycles = self.options.cycles
        return await self.measure("serial", "phase 1: serial pod cycles", "cycles", 1, 1,
                                  lambda: self.in_process(range(cycles), 1, self.cycles_work("serial")))

    async def concurrent(self) -> PhaseResult:
        o = self.options
        processes = min(o.client_processes, o.concurrency)
        if processes > 1:
            run: PhaseRun = lambda: self.in_processes("concurrent", o.cycles, o.concurrency)  # noqa: E731
        else:
            run = lambda: self.in_process(range(o.cycles), o.concurrency, self.cycles_work("concurrent"))  # noqa: E731
        return await self.measure("concurrent", "phase 2: concurrent pod cycles", "cycles", o.concurrency,
                                  processes, run)

    async def populate(self, sandbox_ids: list[str]) -> PhaseResult:
        async def create(client: TimedClient, index: int) -> bool:
            pod = await run_pod(client, self.plan, "live", index)
            if pod is not None:
                sandbox_ids.append(pod[0])
            return pod is not None

        o = self.options
        return await self.measure("populate", "phase 3: creating live pods", "pods", o.concurrency, 1,
                                  lambda: self.in_process(range(o.live_pods), o.concurrency, create))

    async def list_figures(self) -> list[ListFigure]:
        """ListContainers and ListPodSandbox (no filter): one first call, then ``list_repeats`` timed calls."""
        recorder = Recorder()
        # As timeit does, keep the client's own garbage collector out of the timings: a collection
        # pass over this process's heap is the measuring tool's cost, not the runtime's.
        gc.collect()
        gc.disable()
        try:
            async with open_channel(self.endpoint) as channel:
                await connect(channel, self.endpoint, CONNECT_TIMEOUT_S)
                figures = [await self.list_figure(channel, rpc, recorder) for rpc in LIST_RPCS]
        finally:
            gc.enable()
        if recorder.failures:
            say(report.failure_lines(recorder))
        return figures

    async def list_figure(self, channel: grpc.aio.Channel, rpc: str, failures: Recorder) -> ListFigure:
        """The first call is timed on its own: it may pay for work a runtime caches for the calls after it."""
        first, repeated = Recorder(), Recorder()
        items = await list_once(TimedClient(channel, first, self.options.rpc_timeout), rpc)
        client = TimedClient(channel, repeated, self.options.rpc_timeout)
        for _ in range(self.options.list_repeats):
            items = await list_once(client, rpc) or items
        failures.merge([first, repeated])
        first_ms = first.samples[rpc][0] / NS_PER_MS if rpc in first.samples else 0.0
        return ListFigure(rpc, summarize(repeated.samples.get(rpc, [])), items or 0, first_ms)

    async def clean_up(self, sandbox_ids: list[str]) -> PhaseResult:
        async def remove(client: TimedClient, sandbox_id: str) -> bool:
            return await remove_pod(client, sandbox_id)

        o = self.options
        return await self.measure("cleanup", "clean-up", "pods", o.concurrency, 1,
                                  lambda: self.in_process(sandbox_ids, o.concurrency, remove))

    async def live(self) -> LiveResult:
        n = self.options.live_pods
        say(f"phase 3: creating {n:,} live pods with {self.options.concurrency} clients ...")
        sandbox_ids: list[str] = []
        populate = await self.populate(sandbox_ids)
        say(report.phase_lines(populate))
        self.monitor.checkpoint(f"with {len(sandbox_ids):,} live pods")
        figures = await self.list_figures()
        self.monitor.checkpoint(f"live pods, after {len(figures)} x {self.options.list_repeats} lists")
        live = LiveResult(n, populate, figures)
        say(report.live_lines(live, self.result.memory))
        if not self.options.keep:
            live.cleanup = await self.clean_up(sandbox_ids)
        say(report.cleanup_lines(live))
        return live

    async def run(self) -> BenchResult:
        await self.preflight()
        say(self.header())
        self.monitor.checkpoint("idle, image pulled")
        await self.warm_up()
        for phase in (self.serial, self.concurrent):
            result = await phase()
            self.result.phases.append(result)
            say("")
            say(report.phase_lines(result))
            self.monitor.checkpoint(f"after {result.name} phase")
        if self.options.live_pods:
            say("")
            self.result.live = await self.live()
        self.monitor.checkpoint("end")
        return self.result


async def list_once(client: TimedClient, rpc: str) -> int | None:
    """One unfiltered List call: how many items it returned, None if it failed.

    The call is timed until the whole answer has arrived; decoding it (tens of milliseconds for 8 MiB
    in Python, the client's cost, not the runtime's) happens after the clock has stopped.
    """
    if rpc == "ListContainers":
        request: Any = api.ListContainersRequest()
        decode: Any = lambda data: len(api.ListContainersResponse.FromString(data).containers)  # noqa: E731
    else:
        request = api.ListPodSandboxRequest()
        decode = lambda data: len(api.ListPodSandboxResponse.FromString(data).items)  # noqa: E731
    undecoded = client.channel.unary_unary(
        f"/runtime.v1.RuntimeService/{rpc}", request_serializer=type(request).SerializeToString,
        response_deserializer=None,
    )
    data = await client.call(rpc, undecoded, request)
    return None if data is None else int(decode(data))


def first_failure(recorder: Recorder) -> str:
    for failure in recorder.failures:
        return f"{failure.code}: {failure.details}"
    return "no answer"


def settings_json(options: Options, endpoint: str) -> dict[str, Any]:
    return {**asdict(options), "endpoint": endpoint, "cpus": os.cpu_count(),
            "python": platform.python_version(), "grpcio": grpc.__version__}


def final_report(result: BenchResult, json_path: str | None) -> None:
    checks = evaluate(result)
    say("")
    say(report.memory_lines(result.memory))
    say("")
    say(report.target_lines(checks))
    if json_path:
        data = {**result.to_json(), "targets": [asdict(c) for c in checks]}
        Path(json_path).write_text(json.dumps(data, indent=2) + "\n")
        say(f"figures written to {json_path}")


async def run_bench(options: Options, root: Path, emulator: SpawnedEmulator | None) -> BenchResult:
    """Run every phase against ``options.endpoint``, or against ``emulator`` (already started)."""
    if emulator is not None:
        await emulator.wait_ready(options.start_timeout)
        bench = CriBench(options, emulator.endpoint, root, emulator.pid)
    else:
        assert options.endpoint is not None
        bench = CriBench(options, options.endpoint, root, options.server_pid)
    return await bench.run()


def main(args: argparse.Namespace) -> int:
    options = Options.from_args(args)
    options.check()
    root = Path(tempfile.mkdtemp(prefix="kubeharness-bench-"))
    emulator = SpawnedEmulator(root) if options.endpoint is None else None
    try:
        if emulator is not None:
            emulator.start()
        result = asyncio.run(run_bench(options, root, emulator))
    finally:
        code = emulator.stop() if emulator is not None else None
        if options.keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    final_report(result, options.json)
    if emulator is not None and code not in (0, None):
        say(f"note: the emulator exited with code {code}")
    failures = result.failure_count()
    if options.compare_endpoint:
        other_options = replace(options, endpoint=options.compare_endpoint, cycles=options.compare_cycles,
                                live_pods=0, warmup=min(options.warmup, 2), json=None, compare_endpoint=None)
        say("")
        say(f"== the same phases against {options.compare_endpoint} ({options.compare_cycles} cycles each)")
        other_root = Path(tempfile.mkdtemp(prefix="kubeharness-bench-"))
        try:
            other = asyncio.run(run_bench(other_options, other_root, None))
        finally:
            shutil.rmtree(other_root, ignore_errors=True)
        say("")
        say(comparison_lines(result, other))
        failures += other.failure_count()
    return 1 if failures else 0
