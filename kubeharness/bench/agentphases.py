"""The phases of ``kubeharness bench agent`` against one runtime, and the CRI calls around them.

- :func:`watch_until_running` polls ``/pods`` every ``POLL_INTERVAL_S`` until every named pod is Running
  (every container running) and records, per pod, the time from its ``kubernetes.io/config.seen`` to the
  poll that first showed it Running; a timeout or the agent exiting ends it with what was reached.
- :func:`measure_idle` reads the agent's (and, if known, the runtime's) CPU time from ``/proc`` over a
  quiet interval in which the benchmark does not poll the agent at all.
- :func:`clean_up` deletes the manifests, waits until the agent has taken the pods out of ``/pods`` and
  removed their sandboxes from the runtime; :func:`sweep` stops and removes through CRI whatever of the
  run's namespace is left (it runs in any case, after the agent is stopped). The agent is stopped only
  once it has no CRI call under way (read from its /metrics): containerd 1.6 keeps a task that no CRI
  call removes when a StartContainer is cancelled half-way.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field

import grpc

from kubeharness.bench.agentnode import (
    IMAGE,
    SpawnedAgent,
    is_running,
    runtime_calls_in_flight,
    seen_ns,
    static_name,
)
from kubeharness.bench.client import open_channel
from kubeharness.bench.procstat import sample
from kubeharness.wire.cri import api_pb2 as api
from kubeharness.wire.cri import api_pb2_grpc as api_grpc

POLL_INTERVAL_S = 0.02
CLEANUP_POLL_S = 0.1
IDLE_SETTLE_S = 0.5  # after the last pod is Running, before the CPU interval starts
RPC_TIMEOUT_S = 120.0
CLEANUP_MIN_TIMEOUT_S = 120.0  # the agent must finish what it does before it is stopped (see clean_up)
SWEEP_TIMEOUT_S = 60.0
SWEEP_PAUSE_S = 1.0
POD_NAMESPACE_LABEL = "io.kubernetes.pod.namespace"


@dataclass
class Startup:
    """Pods written at once and watched until Running."""

    wanted: int
    latencies_ns: list[int] = field(default_factory=list)  # config.seen to the first poll showing Running
    wall_ns: int = 0  # manifests written to the poll that saw the last pod Running (or the end)
    first_seen_ns: int | None = None  # the earliest config.seen (wall clock)
    last_running_ns: int | None = None  # the poll that saw the last pod Running (wall clock)
    poll_gaps_ns: list[int] = field(default_factory=list)
    poll_errors: int = 0
    left: dict[str, int] = field(default_factory=dict)  # what the pods not Running were at the end, counted
    problem: str = ""

    @property
    def running(self) -> int:
        return len(self.latencies_ns)

    @property
    def busy_ns(self) -> int:
        """The earliest config.seen to the poll that saw the last pod Running: the agent's share of wall_ns."""
        if self.first_seen_ns is None or self.last_running_ns is None:
            return 0
        return self.last_running_ns - self.first_seen_ns


@dataclass
class Idle:
    """CPU of the agent (and the runtime, when its PID is known) while pods sit idle."""

    pods: int
    running_after: int
    wall_s: float
    agent_cpu_s: float | None
    runtime_cpu_s: float | None

    @staticmethod
    def percent(cpu_s: float | None, wall_s: float) -> float | None:
        return None if cpu_s is None or wall_s <= 0 else cpu_s / wall_s * 100


@dataclass
class Cleanup:
    manifests: int = 0
    gone_from_pods_s: float | None = None  # manifests deleted -> none of the pods in /pods
    sandboxes_gone_s: float | None = None  # manifests deleted -> no sandbox of the run's namespace
    swept: int = 0  # sandboxes the benchmark itself had to stop and remove
    left: int = 0  # sandboxes still there after the sweep
    sweep_error: str = ""  # the last CRI error of the sweep
    problem: str = ""


def _state_of(item: dict[str, object] | None) -> str:
    if item is None:
        return "not in /pods"
    status = item.get("status")
    phase = status.get("phase", "?") if isinstance(status, dict) else "?"
    return f"{phase} (not every container running)" if phase == "Running" else str(phase)


async def watch_until_running(agent: SpawnedAgent, names: list[str], written_ns: int, started: float,
                              timeout_s: float) -> Startup:
    """Poll ``/pods`` until the static pods of ``names`` are all Running; ``written_ns`` (wall clock) and
    ``started`` (perf_counter) are when the manifests began to be written."""
    result = Startup(len(names))
    pending = {static_name(n) for n in names}
    deadline = started + timeout_s
    next_poll = time.perf_counter()
    last_ns: int | None = None
    pods: dict[str, dict[str, object]] = {}
    while pending:
        if not agent.alive():
            result.problem = f"the agent exited with code {agent.process.returncode if agent.process else '?'}"
            break
        if time.perf_counter() > deadline:
            result.problem = f"{len(pending)} of {len(names)} pods not Running within {timeout_s:g} s"
            break
        try:
            pods = await agent.pods()
        except (OSError, TimeoutError, ValueError) as err:
            result.poll_errors += 1
            result.problem = f"/pods failed: {err}"
            pods = {}
        now = time.time_ns()
        if last_ns is not None:
            result.poll_gaps_ns.append(now - last_ns)
        last_ns = now
        for name in [n for n in pending if n in pods and is_running(pods[n])]:
            seen = seen_ns(pods[name])
            if seen is None:
                result.problem = f"{name} has no config.seen annotation"
                continue
            result.latencies_ns.append(now - seen)
            result.wall_ns = now - written_ns
            result.first_seen_ns = seen if result.first_seen_ns is None else min(seen, result.first_seen_ns)
            result.last_running_ns = now
            pending.discard(name)
        next_poll += POLL_INTERVAL_S
        await asyncio.sleep(max(0.0, next_poll - time.perf_counter()))
    if not pending:
        result.problem = ""  # a failed poll along the way is no failure of the phase
    else:
        result.wall_ns = time.time_ns() - written_ns
        result.left = dict(Counter(_state_of(pods.get(n)) for n in pending))
    return result


async def measure_idle(agent: SpawnedAgent, names: list[str], seconds: float, runtime_pid: int | None) -> Idle:
    await asyncio.sleep(IDLE_SETTLE_S)
    before_agent, before_runtime = sample(agent.pid), sample(runtime_pid) if runtime_pid else None
    t0 = time.perf_counter()
    await asyncio.sleep(seconds)
    wall_s = time.perf_counter() - t0
    after_agent, after_runtime = sample(agent.pid), sample(runtime_pid) if runtime_pid else None
    agent_cpu = after_agent.cpu_s - before_agent.cpu_s if before_agent and after_agent else None
    runtime_cpu = after_runtime.cpu_s - before_runtime.cpu_s if before_runtime and after_runtime else None
    try:
        pods = await agent.pods()
    except (OSError, TimeoutError, ValueError):
        pods = {}
    running = sum(1 for n in names if static_name(n) in pods and is_running(pods[static_name(n)]))
    return Idle(len(names), running, wall_s, agent_cpu, runtime_cpu)


# -- the runtime, through CRI --------------------------------------------------------------------------

async def runtime_version(endpoint: str) -> str:
    async with open_channel(endpoint) as channel:
        reply = await api_grpc.RuntimeServiceStub(channel).Version(api.VersionRequest(), timeout=RPC_TIMEOUT_S)
    return f"{reply.runtime_name} {reply.runtime_version}"


async def pull_image(endpoint: str, image: str = IMAGE) -> None:
    async with open_channel(endpoint) as channel:
        await api_grpc.ImageServiceStub(channel).PullImage(api.PullImageRequest(image=api.ImageSpec(image=image)),
                                                           timeout=RPC_TIMEOUT_S)


async def sandboxes_of(endpoint: str, namespace: str) -> list[str]:
    """Ids of the runtime's sandboxes (ready or not) of pods in ``namespace``."""
    request = api.ListPodSandboxRequest(filter=api.PodSandboxFilter(label_selector={POD_NAMESPACE_LABEL: namespace}))
    async with open_channel(endpoint) as channel:
        reply = await api_grpc.RuntimeServiceStub(channel).ListPodSandbox(request, timeout=RPC_TIMEOUT_S)
    return [s.id for s in reply.items]


async def containers_of(endpoint: str, namespace: str) -> list[api.Container]:
    request = api.ListContainersRequest(filter=api.ContainerFilter(label_selector={POD_NAMESPACE_LABEL: namespace}))
    async with open_channel(endpoint) as channel:
        reply = await api_grpc.RuntimeServiceStub(channel).ListContainers(request, timeout=RPC_TIMEOUT_S)
    return list(reply.containers)


async def _ignore_gone(call: Awaitable[object]) -> None:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        if err.code() != grpc.StatusCode.NOT_FOUND:
            raise


async def sweep(endpoint: str, namespace: str, timeout_s: float = SWEEP_TIMEOUT_S) -> tuple[int, int, str]:
    """Stop every container and stop and remove every sandbox of ``namespace`` (containers go with their
    sandbox), in rounds until nothing is left or ``timeout_s`` is over: (sandboxes removed, left, last error)."""
    removed, error = 0, ""
    deadline = time.perf_counter() + timeout_s
    async with open_channel(endpoint) as channel:
        stub = api_grpc.RuntimeServiceStub(channel)

        async def remove(sid: str) -> None:
            await _ignore_gone(stub.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=sid),
                                                   timeout=RPC_TIMEOUT_S))
            await _ignore_gone(stub.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=sid),
                                                     timeout=RPC_TIMEOUT_S))

        while (found := await sandboxes_of(endpoint, namespace)) and time.perf_counter() < deadline:
            running = [c.id for c in await containers_of(endpoint, namespace)
                       if c.state != api.ContainerState.CONTAINER_EXITED]
            stops = [_ignore_gone(stub.StopContainer(api.StopContainerRequest(container_id=cid, timeout=0),
                                                     timeout=RPC_TIMEOUT_S)) for cid in running]
            outcomes = await asyncio.gather(*stops, return_exceptions=True)
            results = await asyncio.gather(*(remove(sid) for sid in found), return_exceptions=True)
            removed += sum(1 for r in results if not isinstance(r, BaseException))
            failures = [r for r in (*outcomes, *results) if isinstance(r, BaseException)]
            if failures:
                failure = failures[-1]
                error = (f"{failure.code().name}: {failure.details()}" if isinstance(failure, grpc.aio.AioRpcError)
                         else repr(failure))
                await asyncio.sleep(SWEEP_PAUSE_S)
    return removed, len(found), error


async def _calls_in_flight(agent: SpawnedAgent) -> int:
    try:
        return runtime_calls_in_flight(await agent.metrics())
    except (OSError, TimeoutError, ValueError):
        return 1  # not known: assume there are


async def clean_up(agent: SpawnedAgent, endpoint: str, names: list[str], namespace: str,
                   timeout_s: float) -> Cleanup:
    """Delete the manifests and wait until the agent took the pods out of /pods and the runtime: at least
    CLEANUP_MIN_TIMEOUT_S, however short ``timeout_s``, because an agent stopped in the middle of a StartContainer
    can leave containerd 1.6 with a task that no CRI call removes ("cannot delete running task")."""
    result = Cleanup(manifests=agent.delete_manifests())
    timeout_s = max(timeout_s, CLEANUP_MIN_TIMEOUT_S)
    started = time.perf_counter()
    deadline = started + timeout_s
    wanted = {static_name(n) for n in names}
    while result.gone_from_pods_s is None and agent.alive() and time.perf_counter() < deadline:
        try:
            if not wanted & set(await agent.pods()):
                result.gone_from_pods_s = time.perf_counter() - started
                break
        except (OSError, TimeoutError, ValueError):
            pass
        await asyncio.sleep(CLEANUP_POLL_S)
    while result.sandboxes_gone_s is None and agent.alive() and time.perf_counter() < deadline:
        # no sandbox left and no CRI call under way: nothing the agent does now can leave anything behind
        if not await sandboxes_of(endpoint, namespace) and not await _calls_in_flight(agent):
            result.sandboxes_gone_s = time.perf_counter() - started
            break
        await asyncio.sleep(CLEANUP_POLL_S)
    if result.sandboxes_gone_s is None:
        where = "/pods" if result.gone_from_pods_s is None else "the runtime"
        result.problem = (f"the agent had not removed the pods from {where} within {timeout_s:g} s"
                          if agent.alive() else "the agent exited before it removed the pods")
    return result
