"""``kubeharness bench agent``'s probes phase: what probing costs the agent, how evenly it probes, how fast
a failed liveness probe kills.

``--probe-pods`` static pods (110, kubelet's maxPods), each with a readiness probe (httpGet) and a liveness
probe at ``periodSeconds: 1``. The readiness probes go to an HTTP server of the benchmark's own on
127.0.0.1 (``/ready/<pod>``, the probe's ``host`` set to it), so every probe's arrival is seen from outside
the agent. Liveness is ``exec`` (``khelper check healthy``) for all but ``--probe-kill-pods`` pods, whose
liveness is an httpGet to the same server (``/live/<pod>``), which the benchmark turns to 500 at a moment it
chooses, so it knows exactly when the third failure (failureThreshold 3) was answered. The kill is the
runtime's CONTAINER_STOPPED event for that container (GetContainerEvents; a runtime without the stream,
containerd 1.6, gives no kill figure).

Figures, once every pod is Ready and after a settling second: the agent's CPU over ``--probe-seconds`` as %
of one core (target at most 25 %); the period jitter, |interval between two readiness probes of a pod - 1 s|
over the pods that are not killed, p50, p99 and max (no target beyond "small"); the kill latency from the
third failed answer to the stop event, p50 and max (target at most 100 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import secrets
import shutil
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web

from kubeharness.bench.agentnode import GRACE_PERIOD_S, IMAGE, SpawnedAgent, free_port, static_name
from kubeharness.bench.agentphases import clean_up, sweep
from kubeharness.bench.client import open_channel
from kubeharness.bench.errors import BenchError
from kubeharness.bench.procstat import sample
from kubeharness.bench.stats import percentile
from kubeharness.wire.cri import api_pb2 as api
from kubeharness.wire.cri import api_pb2_grpc as api_grpc

PERIOD_S = 1
FAILURE_THRESHOLD = 3
SETTLE_S = 2.0
KILL_AFTER_S = 5.0  # into the measuring window, the kill pods' liveness turns to 500
START_TIMEOUT_S = 30.0


@dataclass
class ProbeRun:
    pods: int = 0
    seconds: float = 0.0
    agent_cpu_s: float | None = None
    ready_s: float | None = None  # from the manifests to every pod Ready
    jitter_ms: list[float] = field(default_factory=list)
    probes_seen: int = 0
    kill_ms: list[float] = field(default_factory=list)
    kills_wanted: int = 0
    kill_note: str = ""
    problem: str = ""

    @property
    def cpu_pct(self) -> float | None:
        return None if self.agent_cpu_s is None or not self.seconds else 100 * self.agent_cpu_s / self.seconds


def probe_manifest(name: str, namespace: str, port: int, kill: bool) -> dict[str, Any]:
    """A khelper pod with readiness on the benchmark's server and liveness by exec (or on the server)."""
    live: dict[str, Any] = ({"httpGet": {"host": "127.0.0.1", "port": port, "path": f"/live/{name}"}} if kill
                            else {"exec": {"command": ["khelper", "check", "healthy"]}})
    container = {
        "name": "app", "image": IMAGE, "command": ["/khelper"], "imagePullPolicy": "IfNotPresent",
        "readinessProbe": {"httpGet": {"host": "127.0.0.1", "port": port, "path": f"/ready/{name}"},
                           "periodSeconds": PERIOD_S},
        "livenessProbe": {**live, "periodSeconds": PERIOD_S, "failureThreshold": FAILURE_THRESHOLD},
    }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
            "spec": {"containers": [container], "restartPolicy": "Always",
                     "terminationGracePeriodSeconds": GRACE_PERIOD_S}}


class ProbeServer:
    """The benchmark's HTTP server: records when each probe arrived; liveness of a pod fails once told to."""

    def __init__(self) -> None:
        self.ready_at: dict[str, list[int]] = defaultdict(list)
        self.failing: set[str] = set()
        self.failures: dict[str, list[int]] = defaultdict(list)  # pod -> when each 500 was answered
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/ready/{pod}", self._ready)
        app.router.add_get("/live/{pod}", self._live)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _ready(self, request: web.Request) -> web.Response:
        self.ready_at[request.match_info["pod"]].append(time.time_ns())
        return web.Response(text="ok")

    async def _live(self, request: web.Request) -> web.Response:
        pod = request.match_info["pod"]
        if pod in self.failing:
            response = web.Response(status=500, text="failing")
            self.failures[pod].append(time.time_ns())
            return response
        return web.Response(text="ok")


def write_probe_manifests(agent: SpawnedAgent, names: list[str], namespace: str, port: int, kill: set[str]) -> None:
    for name in names:
        (agent.staging / f"{name}.json").write_text(json.dumps(probe_manifest(name, namespace, port, name in kill)))
    for name in names:
        os.replace(agent.staging / f"{name}.json", agent.manifests / f"{name}.json")


def _all_ready(pods: dict[str, dict[str, Any]], names: list[str]) -> bool:
    for name in names:
        statuses = pods.get(static_name(name), {}).get("status", {}).get("containerStatuses", [])
        if not statuses or not all(s.get("ready") for s in statuses):
            return False
    return True


async def _wait_ready(agent: SpawnedAgent, names: list[str], timeout_s: float) -> float | None:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s and agent.alive():
        with contextlib.suppress(OSError, TimeoutError, ValueError):
            if _all_ready(await agent.pods(), names):
                return time.perf_counter() - started
        await asyncio.sleep(0.1)
    return None


async def _stop_events(endpoint: str, stopped: dict[str, int], ended: asyncio.Event) -> None:
    """Container id -> when the runtime reported it stopped, until cancelled; ``ended`` if the runtime has no
    event stream."""
    try:
        async with open_channel(endpoint) as channel:
            stream = api_grpc.RuntimeServiceStub(channel).GetContainerEvents(api.GetEventsRequest())
            async for event in stream:
                if event.container_event_type == api.CONTAINER_STOPPED_EVENT:
                    stopped.setdefault(event.container_id, event.created_at)
    except grpc.aio.AioRpcError:
        ended.set()


async def _container_ids(endpoint: str, namespace: str) -> dict[str, str]:
    """Running container id -> its pod's name, for the run's namespace."""
    async with open_channel(endpoint) as channel:
        listed = await api_grpc.RuntimeServiceStub(channel).ListContainers(api.ListContainersRequest(), timeout=30)
    return {c.id: c.labels.get("io.kubernetes.pod.name", "") for c in listed.containers
            if c.labels.get("io.kubernetes.pod.namespace") == namespace and c.state == api.CONTAINER_RUNNING}


def jitters_ms(arrivals: dict[str, list[int]], since_ns: int, until_ns: int) -> list[float]:
    """|gap - period| in ms for every two consecutive probe arrivals of a pod inside the window."""
    out: list[float] = []
    for times in arrivals.values():
        inside = [t for t in times if since_ns <= t <= until_ns]
        out.extend(abs((b - a) / 1e6 - PERIOD_S * 1000) for a, b in itertools.pairwise(inside))
    return out


async def measure_probes(agent: SpawnedAgent, server: ProbeServer, endpoint: str, names: list[str],
                         namespace: str, kill: list[str], seconds: float, timeout_s: float) -> ProbeRun:
    """Write the probe pods, wait until all are Ready, then measure for ``seconds``."""
    run = ProbeRun(pods=len(names), kills_wanted=len(kill))
    write_probe_manifests(agent, names, namespace, server.port, set(kill))
    run.ready_s = await _wait_ready(agent, names, timeout_s)
    if run.ready_s is None:
        run.problem = f"not every pod was Ready within {timeout_s:g} s"
        return run
    ids = await _container_ids(endpoint, namespace)
    stopped: dict[str, int] = {}
    no_stream = asyncio.Event()
    events = asyncio.ensure_future(_stop_events(endpoint, stopped, no_stream))
    try:
        await asyncio.sleep(SETTLE_S)
        before = sample(agent.pid)
        since_ns, t0 = time.time_ns(), time.perf_counter()
        await asyncio.sleep(min(KILL_AFTER_S, seconds))
        server.failing.update(kill)
        await asyncio.sleep(max(0.0, seconds - (time.perf_counter() - t0)))
        run.seconds = time.perf_counter() - t0
        after = sample(agent.pid)
        until_ns = time.time_ns()
        if before is not None and after is not None:
            run.agent_cpu_s = after.cpu_s - before.cpu_s
        steady = {pod: times for pod, times in server.ready_at.items() if pod not in kill}  # not restarted
        run.jitter_ms = jitters_ms(steady, since_ns, until_ns)
        run.probes_seen = sum(len([t for t in ts if since_ns <= t <= until_ns]) for ts in server.ready_at.values())
        await asyncio.sleep(1.0)  # the last kills' events
    finally:
        events.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await events
        server.failing.clear()
    if no_stream.is_set():
        run.kill_note = "the runtime has no container event stream: no kill figure"
        return run
    by_pod = {pod: cid for cid, pod in ids.items()}
    for name in kill:
        cid = by_pod.get(static_name(name))
        failures = server.failures.get(name, [])
        if cid is None or cid not in stopped or len(failures) < FAILURE_THRESHOLD:
            continue
        run.kill_ms.append((stopped[cid] - failures[FAILURE_THRESHOLD - 1]) / 1e6)
    if len(run.kill_ms) < len(kill):
        run.kill_note = f"{len(kill) - len(run.kill_ms)} of {len(kill)} kill pods were not seen killed"
    return run


def probe_lines(run: ProbeRun) -> list[str]:
    if run.problem:
        return [f"phase 3 (probes): {run.problem}"]
    cpu = f"{run.agent_cpu_s:.2f} s in {run.seconds:.1f} s = {run.cpu_pct:.1f}% of one core" \
        if run.agent_cpu_s is not None and run.cpu_pct is not None else "n/a"
    lines = [f"phase 3: {run.pods} pods probed (readiness httpGet + liveness exec, periodSeconds 1; "
             f"{run.kills_wanted} with liveness httpGet turned to 500), all Ready {run.ready_s or 0:.1f} s after "
             f"the manifests: agent CPU {cpu} (target <= 25%)"]
    if run.jitter_ms:
        lines.append(f"  probe period jitter over {len(run.jitter_ms)} intervals ({run.probes_seen} readiness "
                     f"probes): p50 {percentile(run.jitter_ms, 50):.1f} ms, p99 {percentile(run.jitter_ms, 99):.1f} "
                     f"ms, max {max(run.jitter_ms):.1f} ms")
    if run.kill_ms:
        lines.append(f"  third failed liveness answer to the container's stop ({len(run.kill_ms)} kills): p50 "
                     f"{percentile(run.kill_ms, 50):.1f} ms, max {max(run.kill_ms):.1f} ms (target <= 100 ms)")
    if run.kill_note:
        lines.append(f"  {run.kill_note}")
    return lines


async def bench_probes(endpoint: str, pods: int, kill_pods: int, seconds: float, timeout_s: float,
                       ) -> tuple[ProbeRun, list[str]]:
    """The probes phase with an agent of its own against ``endpoint``, cleaned up after; (figures, problems)."""
    root = Path(tempfile.mkdtemp(prefix="kubeharness-bench-probes-"))
    namespace = f"khprobes-{secrets.token_hex(3)}"
    agent = SpawnedAgent(root, endpoint, pods)
    server = ProbeServer()
    names = [f"probe-{i:04d}" for i in range(pods)]
    problems: list[str] = []
    run = ProbeRun(pods=pods)
    try:
        await server.start()
        agent.start()
        await agent.wait_ready(START_TIMEOUT_S)
        run = await measure_probes(agent, server, endpoint, names, namespace, names[:kill_pods], seconds, timeout_s)
        if run.problem:
            problems.append(f"phase 3: {run.problem}")
        cleanup = await clean_up(agent, endpoint, names, namespace, timeout_s)
        if cleanup.problem:
            problems.append(f"phase 3 clean-up: {cleanup.problem}")
    except (BenchError, grpc.aio.AioRpcError, OSError) as err:
        details = err.details() if isinstance(err, grpc.aio.AioRpcError) else str(err)
        problems.append(f"phase 3: {type(err).__name__}: {details}")
    finally:
        code = agent.stop()
        if code not in (0, None):
            problems.append(f"phase 3: the agent exited with code {code}; the end of its log:\n{agent.log_tail()}")
        await server.stop()
        with contextlib.suppress(grpc.aio.AioRpcError):
            _, left, _ = await sweep(endpoint, namespace)
            if left:
                problems.append(f"phase 3 clean-up: {left} sandboxes of namespace {namespace} are still there")
        shutil.rmtree(root, ignore_errors=True)
    return run, problems
