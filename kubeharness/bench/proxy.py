"""``kubeharness bench proxy``: what the fault-injecting CRI proxy adds to each call.

It starts a CRI emulator (or uses ``--upstream``, e.g. containerd), starts ``kubeharness cri proxy``
in front of it as a subprocess, and makes the same calls on a channel to the runtime and on a channel to
the proxy, interleaved (which side goes first alternates) so that both see the same machine load:

- ``calls``: ``--calls`` rounds of five reads of one running pod (Version, PodSandboxStatus,
  ContainerStatus, ListContainers, ImageStatus). The runtime answers these fast and steadily, so the
  difference of the medians is the proxy's own cost; the target (at most 1 ms added at p50 for every
  RPC) is judged here.
- ``pod cycles``: ``--cycles`` whole pod cycles (RunPodSandbox ... RemovePodSandbox). Shown for
  completeness: against a real runtime, calls of 10-100 ms vary by more than the proxy adds, so their
  differences are mostly that runtime's noise.

Each is measured twice: with no rules, and with a plan whose rules concern every method but match no
pod (the proxy then decodes every request, resolves its pod and asks the engine, as with a real plan).
The exit code is 1 if any call failed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from kubeharness.bench.client import Recorder, TimedClient, open_channel
from kubeharness.bench.cycle import pod_cycle, remove_pod, run_pod
from kubeharness.bench.drive import connect
from kubeharness.bench.emulator import SpawnedEmulator
from kubeharness.bench.errors import BenchError
from kubeharness.bench.kubelet import PodPlan
from kubeharness.bench.report import ordered_rpcs
from kubeharness.bench.stats import summarize
from kubeharness.faults.control import FaultControl
from kubeharness.wire.cri import api_pb2 as api

TARGET_ADDED_P50_MS = 1.0
DEFAULT_IMAGE = "kubeharness.test/khelper:1"
RPC_TIMEOUT_S = 60.0
WATCHING_PLAN = """\
rules:
  - name: watch-every-call
    where: proxy
    method: "*"
    match: {pod_name: no-such-pod-*, labels: {never: set}}
    action: {error: {code: UNAVAILABLE, message: never fires}}
"""
ROUNDS = (("no rules", None), ("rules watching", WATCHING_PLAN))


class SpawnedProxy(SpawnedEmulator):
    """``kubeharness cri proxy`` in a subprocess, listening under ``root``."""

    what = "the CRI proxy"

    def __init__(self, root: Path, upstream: str) -> None:
        super().__init__(root)
        self.upstream = upstream
        self.socket = root / "proxy.sock"
        self.control = root / "proxy.faults"
        self.log_path = root / "proxy.log"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "kubeharness.cli", "cri", "proxy", "--listen", str(self.socket),
                "--upstream", self.upstream, "--fault-control", str(self.control)]


@dataclass
class Round:
    """The samples of one measurement: per side (``direct``, ``proxy``), every call's latency by RPC."""

    name: str
    direct: Recorder
    proxy: Recorder


async def _pull(client: TimedClient, image: str) -> None:
    pull = api.PullImageRequest(image=api.ImageSpec(image=image))
    if await client.call("PullImage", client.images.PullImage, pull, extra_timeout_s=600) is None:
        failure = next(iter(client.recorder.failures), None)
        raise BenchError(f"PullImage {image} failed: {failure}; pick a pullable image with --image")


async def reads(client: TimedClient, sandbox_id: str, container_id: str, image: str) -> None:
    """The five cheap calls of one ``calls`` round."""
    rt, im = client.runtime, client.images
    await client.call("Version", rt.Version, api.VersionRequest())
    await client.call("PodSandboxStatus", rt.PodSandboxStatus, api.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id))
    await client.call("ContainerStatus", rt.ContainerStatus, api.ContainerStatusRequest(container_id=container_id))
    await client.call("ListContainers", rt.ListContainers, api.ListContainersRequest(
        filter=api.ContainerFilter(pod_sandbox_id=sandbox_id)))
    await client.call("ImageStatus", im.ImageStatus, api.ImageStatusRequest(image=api.ImageSpec(image=image)))


Step = Callable[[TimedClient, int], Awaitable[object]]


async def interleaved(name: str, direct: grpc.aio.Channel, proxied: grpc.aio.Channel, count: int, warmup: int,
                      step: Step) -> Round:
    """``step`` ``count`` times on each side, alternating which side goes first; untimed warm-up first."""
    result = Round(name, Recorder(), Recorder())
    scratch = Recorder()
    for index in range(warmup):
        await step(TimedClient(direct, scratch, RPC_TIMEOUT_S), -1 - 2 * index)
        await step(TimedClient(proxied, scratch, RPC_TIMEOUT_S), -2 - 2 * index)
    sides = [TimedClient(direct, result.direct, RPC_TIMEOUT_S), TimedClient(proxied, result.proxy, RPC_TIMEOUT_S)]
    for index in range(count):
        first, second = sides if index % 2 == 0 else sides[::-1]
        await step(first, 2 * index)
        await step(second, 2 * index + 1)
    return result


async def run_rounds(upstream: str, proxy: SpawnedProxy, plan: PodPlan, options: argparse.Namespace) -> list[Round]:
    """Both measurements, each with no rules and with rules watching; the pod the reads use is removed after."""
    rounds: list[Round] = []
    async with open_channel(upstream) as direct, open_channel(proxy.endpoint) as proxied:
        await connect(direct, upstream, 10)
        await connect(proxied, proxy.endpoint, 10)
        setup = TimedClient(direct, Recorder(), RPC_TIMEOUT_S)
        await _pull(setup, plan.image)
        pod = await run_pod(setup, plan, "reads", 0)
        if pod is None:
            raise BenchError(f"the pod for the reads did not start: {next(iter(setup.recorder.failures), None)}")
        sandbox_id, container_id = pod
        control = FaultControl(proxy.control)
        try:
            for rules, plan_text in ROUNDS:
                await (control.clear() if plan_text is None else control.replace(plan_text))

                async def read(client: TimedClient, _: int) -> None:
                    await reads(client, sandbox_id, container_id, plan.image)

                async def cycle(client: TimedClient, index: int, rules: str = rules) -> None:
                    await pod_cycle(client, plan, f"{rules[0]}{index}", 0)

                rounds.append(await interleaved(f"calls, {rules}", direct, proxied, options.calls, options.warmup,
                                                read))
                rounds.append(await interleaved(f"pod cycles, {rules}", direct, proxied, options.cycles,
                                                options.warmup, cycle))
        finally:
            await remove_pod(setup, sandbox_id, record=False)
        fired = await control.fired()
        if fired:
            raise BenchError(f"the watching plan fired {len(fired)} faults; the figures would be wrong")
    return rounds


def round_lines(result: Round) -> tuple[list[str], float]:
    """The table of one round and the largest p50 the proxy added to an RPC (ms)."""
    lines = [f"  {'RPC':<18} {'direct p50':>10} {'proxy p50':>10} {'added p50':>10}   "
             f"{'direct p99':>10} {'proxy p99':>10}"]
    worst = 0.0
    everything: dict[str, list[int]] = {"direct": [], "proxy": []}
    for rpc in ordered_rpcs(set(result.direct.samples) | set(result.proxy.samples)):
        d = summarize(result.direct.samples.get(rpc, []))
        p = summarize(result.proxy.samples.get(rpc, []))
        everything["direct"] += result.direct.samples.get(rpc, [])
        everything["proxy"] += result.proxy.samples.get(rpc, [])
        added = p.p50_ms - d.p50_ms
        worst = max(worst, added)
        lines.append(f"  {rpc:<18} {d.p50_ms:>10.3f} {p.p50_ms:>10.3f} {added:>+10.3f}   "
                     f"{d.p99_ms:>10.3f} {p.p99_ms:>10.3f}")
    d, p = summarize(everything["direct"]), summarize(everything["proxy"])
    lines.append(f"  {'every call':<18} {d.p50_ms:>10.3f} {p.p50_ms:>10.3f} {p.p50_ms - d.p50_ms:>+10.3f}   "
                 f"{d.p99_ms:>10.3f} {p.p99_ms:>10.3f}")
    return lines, worst


def failure_lines(rounds: list[Round]) -> list[str]:
    lines = []
    for r in rounds:
        for side, recorder in (("direct", r.direct), ("proxy", r.proxy)):
            for failure, count in recorder.failures.most_common(5):
                lines.append(f"  {r.name}, {side}: {count} x {failure.rpc} {failure.code}: {failure.details}")
    return lines


async def _main(options: argparse.Namespace, root: Path) -> int:
    emulator = SpawnedEmulator(root) if options.upstream is None else None
    proxy: SpawnedProxy | None = None
    try:
        if emulator is not None:
            emulator.start()
            await emulator.wait_ready(20)
        upstream = emulator.endpoint if emulator is not None else options.upstream
        proxy = SpawnedProxy(root, upstream)
        proxy.start()
        await proxy.wait_ready(20)
        plan = PodPlan(secrets.token_hex(3), options.image, str(root / "pods"))
        print(f"CRI proxy overhead against {upstream}" + (" (an emulator the benchmark started)" if emulator else "")
              + f": {options.calls} rounds of reads and {options.cycles} pod cycles per side, interleaved")
        print(f"{os.cpu_count()} CPUs, Python {platform.python_version()}, grpcio {grpc.__version__}; "
              f"times in ms, per call as the client sees it")
        rounds = await run_rounds(upstream, proxy, plan, options)
    finally:
        if proxy is not None:
            proxy.stop()
        if emulator is not None:
            emulator.stop()
    worst = 0.0
    for r in rounds:
        lines, round_worst = round_lines(r)
        if r.name.startswith("calls"):
            worst = max(worst, round_worst)
        print(f"\n{r.name}:")
        print("\n".join(lines))
    failures = failure_lines(rounds)
    if failures:
        print("\nfailed calls:")
        print("\n".join(failures))
    verdict = "met" if worst <= TARGET_ADDED_P50_MS else "NOT met"
    print(f"\ntarget: at most {TARGET_ADDED_P50_MS:g} ms added at p50 for every RPC (calls): {verdict} "
          f"(largest added p50 {worst:.3f} ms)")
    return 1 if failures else 0


def main(options: argparse.Namespace) -> int:
    root = Path(tempfile.mkdtemp(prefix="kubeharness-bench-proxy-"))
    try:
        return asyncio.run(_main(options, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)

