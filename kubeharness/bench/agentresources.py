"""``kubeharness bench agent``'s resources phase: the agent's CPU while many pods log under rotation, how many
lines rotation loses, and how fast a memory threshold crossing ends in an eviction's kill.

An agent of its own (``containerLogMaxSize`` 1Mi, ``containerLogMaxFiles`` 5, ``containerLogMonitorInterval``
10s, kubelet's defaults but the size; an emulated node, ``kubeharnessNodeCapacity`` memory 4Gi, with
``evictionHard`` ``memory.available: 2Gi`` alone) runs ``--resource-pods`` static pods, each a khelper at
``--log-rate`` lines per second (``--log-text=<pod>``, so its lines are ``<pod> <n>``, padded to
``--log-line-bytes``: unpadded lines of about 60 bytes would not reach 1 MiB in 60 s, so nothing would
rotate). Once all are Running and after a settling second, the measured window of ``--resource-seconds``
begins; at its start one more pod, ``hog``, annotated ``kubeharness.io/evictable: "true"`` (static pods are
critical otherwise), allocates memory at a constant rate (``--memory-mib-per-second``), so the emulated node's
``memory.available`` falls in a straight line.

Figures:

- the agent's CPU (``/proc/PID/stat``) over the window, as % of one core (target at most 15 %);
- lines lost. Right after the window a cut-off instant is taken; every line whose due time (khelper's line
  ``n`` is due at the container's start plus ``(n-1)/rate``, and stamped with it) is at or before the cut-off
  must be in the container's files ``SETTLE_S`` later, when they are read: the live file, the rotated ones
  and the gunzipped ``.gz`` ones (a listing that changed while it was read is read again). A line is *lost*
  if it is missing between the lowest and the highest number found (a gap), or above the highest but due by
  the cut-off (the runtime has had ``SETTLE_S`` to write it), or below the lowest while the container has
  fewer than ``maxFiles - 1`` files (nothing was removed by retention). Lines below the lowest when it has
  ``maxFiles - 1`` or more files were removed on purpose (kubelet keeps at most ``maxFiles``, and in the middle
  of a pass, after removing the excess and before renaming the live file, ``maxFiles - 1``) and are *retired*,
  not lost; lines due after the cut-off are not counted at all (they may still be in the runtime's hands).
  A number found twice is a *duplicate* (a rotated file read along with its ``.gz``; reported, not lost).
  Target 0 lost.
- the eviction delay: from the moment ``memory.available`` crossed the threshold to the runtime's
  CONTAINER_STOPPED event for the hog (GetContainerEvents). The crossing is computed from one
  ``/stats/summary`` reading once the hog runs (available ``A0`` at its time ``t0``): ``t0 + (A0 -
  threshold) / rate``, since nothing else on the node changes its memory. Target at most the eviction
  monitoring period (10 s) plus 1 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import math
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from kubeharness.agent.logs.files import siblings
from kubeharness.agent.logs.rotation import COMPRESS_SUFFIX, split_unused
from kubeharness.bench.agentnode import (
    GRACE_PERIOD_S,
    IMAGE,
    SpawnedAgent,
    by_label,
    http_get,
    is_running,
    parse_rfc3339_ns,
    static_name,
)
from kubeharness.bench.agentphases import clean_up, sweep
from kubeharness.bench.client import open_channel
from kubeharness.bench.errors import BenchError
from kubeharness.bench.procstat import sample
from kubeharness.wire.cri import api_pb2 as api
from kubeharness.wire.cri import api_pb2_grpc as api_grpc

NS = 1_000_000_000
MiB = 1024 * 1024
LOG_MAX_FILES = 5
MONITORING_PERIOD_S = 10.0  # kubelet's evictionMonitoringPeriod (not configurable)
NODE_MEMORY = "4Gi"
NODE_MEMORY_BYTES = 4 * 1024 * MiB
THRESHOLD = "2Gi"
THRESHOLD_BYTES = 2 * 1024 * MiB
CROSS_AT = 0.4  # of the window: the hog's rate makes the crossing come about then
SETTLE_S = 2.0  # after the cut-off, before the files are read; also after all pods are Running
START_TIMEOUT_S = 30.0
POLL_S = 0.2
READ_ATTEMPTS = 50
READ_PAUSE_S = 0.2
CALLS_SHOWN = 6
OPERATIONS = "kubelet_runtime_operations_total"
HOG = "hog"
TARGET_CPU_PERCENT = 15.0
TARGET_DELAY_S = MONITORING_PERIOD_S + 1.0


@dataclass
class LogCount:
    """What was found of one container's lines."""

    pod: str
    files: int = 0  # live + rotated + .gz
    rotated: int = 0  # of those, rotated (plain or .gz)
    found: int = 0  # distinct numbers
    lowest: int = 0
    highest: int = 0
    due: int = 0  # lines due by the cut-off
    gaps: int = 0
    tail: int = 0  # due by the cut-off, above the highest found
    head: int = 0  # below the lowest found
    retired: bool = False  # head lines were removed by retention (maxFiles files present)
    duplicates: int = 0
    foreign: int = 0  # lines that are not "<pod> <n>"

    @property
    def lost(self) -> int:
        return self.gaps + self.tail + (0 if self.retired else self.head)


@dataclass
class ResourceRun:
    pods: int = 0
    seconds: float = 0.0
    log_rate: float = 0.0
    line_bytes: int = 0
    max_size: str = ""
    monitor_interval: str = ""
    agent_cpu_s: float | None = None
    running_s: float | None = None  # from the manifests to every pod Running
    counts: list[LogCount] = field(default_factory=list)
    hog_rate_mib: float = 0.0
    crossing_ns: int | None = None
    kill_ns: int | None = None
    eviction_note: str = ""
    before_kill: tuple[float, float] | None = None  # (agent CPU s, wall s) from the window's start to the kill
    unread: list[str] = field(default_factory=list)  # pods whose log files could not be read, with the reason
    calls: dict[str, int] = field(default_factory=dict)  # the agent's CRI calls begun in the window, by operation
    problem: str = ""

    @property
    def cpu_pct(self) -> float | None:
        return None if self.agent_cpu_s is None or not self.seconds else 100 * self.agent_cpu_s / self.seconds

    @property
    def delay_s(self) -> float | None:
        if self.crossing_ns is None or self.kill_ns is None:
            return None
        return (self.kill_ns - self.crossing_ns) / NS


def agent_config(max_size: str, monitor_interval: str) -> dict[str, Any]:
    """The KubeletConfiguration fields of the phase's agent, over SpawnedAgent's own."""
    return {"containerLogMaxSize": max_size, "containerLogMaxFiles": LOG_MAX_FILES,
            "containerLogMonitorInterval": monitor_interval,
            "kubeharnessNodeCapacity": {"cpu": "8", "memory": NODE_MEMORY},
            "evictionHard": {"memory.available": THRESHOLD}}


def hog_rate_mib(seconds: float) -> float:
    """MiB per second that takes a node with nothing else on it to the threshold at CROSS_AT of the window."""
    return math.ceil((NODE_MEMORY_BYTES - THRESHOLD_BYTES) / MiB / (CROSS_AT * seconds))


def _manifest(name: str, namespace: str, args: list[str], annotations: dict[str, str] | None = None,
              ) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"containers": [{"name": "app", "image": IMAGE, "command": ["/khelper"], "args": args,
                                     "imagePullPolicy": "IfNotPresent"}],
                     "restartPolicy": "Always", "terminationGracePeriodSeconds": GRACE_PERIOD_S}}


def logger_manifest(name: str, namespace: str, rate: float, line_bytes: int) -> dict[str, Any]:
    args = [f"--log-rate={rate:g}", f"--log-text={name}"]
    if line_bytes:
        args.append(f"--log-line-bytes={line_bytes}")
    return _manifest(name, namespace, args)


def hog_manifest(namespace: str, rate_mib: float) -> dict[str, Any]:
    return _manifest(HOG, namespace, [f"--memory-mib={NODE_MEMORY_BYTES // MiB}",
                                      f"--memory-mib-per-second={rate_mib:g}"],
                     {"kubeharness.io/evictable": "true"})


def _write(agent: SpawnedAgent, manifests: dict[str, dict[str, Any]]) -> None:
    for name, manifest in manifests.items():
        (agent.staging / f"{name}.json").write_text(json.dumps(manifest))
    for name in manifests:
        os.replace(agent.staging / f"{name}.json", agent.manifests / f"{name}.json")


# -- counting lines -----------------------------------------------------------------------------------

def due_by(started_ns: int, rate: float, cutoff_ns: int) -> int:
    """How many lines a khelper at ``rate`` started at ``started_ns`` has due at or before ``cutoff_ns``
    (line n, from 1, is due at ``started_ns + int((n - 1) * 1e9 / rate)``, the emulator's arithmetic)."""
    if cutoff_ns < started_ns or rate <= 0:
        return 0
    n = int((cutoff_ns - started_ns) * rate / NS) + 1
    while n > 0 and started_ns + int((n - 1) * NS / rate) > cutoff_ns:
        n -= 1
    while started_ns + int(n * NS / rate) <= cutoff_ns:
        n += 1
    return n


def read_log_files(live: str) -> tuple[list[bytes], int, int]:
    """The contents of a container's live log and its rotated files in use (``.gz`` gunzipped), oldest first,
    from a listing that did not change while it was read: (contents, files, rotated files)."""
    for attempt in range(READ_ATTEMPTS):
        if attempt:
            time.sleep(READ_PAUSE_S)  # a rotation pass is under way for this container: let it finish
        before = sorted(siblings(live))
        inuse, _unused = split_unused(before)
        names = [*sorted(inuse), live]
        contents: list[bytes] = []
        try:
            for name in names:
                with open(name, "rb") as f:
                    data = f.read()
                contents.append(gzip.decompress(data) if name.endswith(COMPRESS_SUFFIX) else data)
        except FileNotFoundError:
            continue
        if sorted(siblings(live)) == before:
            return contents, len(names), len(inuse)
    raise BenchError(f"the log files of {live} kept changing while they were read ({READ_ATTEMPTS} attempts "
                     f"{READ_PAUSE_S:g} s apart)")


def count_lines(pod: str, contents: list[bytes], started_ns: int, rate: float, cutoff_ns: int,
                max_files: int, files: int, rotated: int) -> LogCount:
    """Count the numbered lines ``<pod> <n>`` of CRI log contents against what was due by ``cutoff_ns``."""
    count = LogCount(pod, files=files, rotated=rotated, due=due_by(started_ns, rate, cutoff_ns))
    seen = bytearray(count.due + 1024)
    prefix = pod.encode()
    for data in contents:
        for line in data.splitlines():
            parts = line.split(b" ", 4)  # time stream tag text...
            if len(parts) < 5 or parts[3] != prefix:
                count.foreign += 1
                continue
            number_text = parts[4].split(b" ", 1)[0]
            if not number_text.isdigit() or int(number_text) < 1:
                count.foreign += 1
                continue
            n = int(number_text)
            if n >= len(seen):
                seen.extend(bytes(n + 1024 - len(seen)))
            if seen[n]:
                count.duplicates += 1
            seen[n] = 1
    present = [i for i in range(1, len(seen)) if seen[i]] if any(seen) else []
    count.found = len(present)
    if present:
        count.lowest, count.highest = present[0], present[-1]
        count.gaps = count.highest - count.lowest + 1 - count.found
        count.tail = max(0, count.due - count.highest)
        count.head = count.lowest - 1
        # retention keeps maxFiles - 2 rotated files before it renames the live one, and a pass compresses in
        # between: a reader can find maxFiles - 1 files while the head is already gone
        count.retired = count.head > 0 and files >= max_files - 1
    else:
        count.tail = count.due
    return count


# -- the runtime's side ---------------------------------------------------------------------------------

async def _containers(endpoint: str, namespace: str) -> dict[str, list[api.Container]]:
    """Pod name -> its containers in the runtime, for the run's namespace."""
    async with open_channel(endpoint) as channel:
        listed = await api_grpc.RuntimeServiceStub(channel).ListContainers(api.ListContainersRequest(), timeout=30)
    found: dict[str, list[api.Container]] = {}
    for c in listed.containers:
        if c.labels.get("io.kubernetes.pod.namespace") == namespace:
            found.setdefault(c.labels.get("io.kubernetes.pod.name", ""), []).append(c)
    return found


async def _status(endpoint: str, container_id: str) -> api.ContainerStatus:
    async with open_channel(endpoint) as channel:
        answer = await api_grpc.RuntimeServiceStub(channel).ContainerStatus(
            api.ContainerStatusRequest(container_id=container_id), timeout=30)
    return answer.status


async def _stop_events(endpoint: str, stopped: dict[str, int], ended: asyncio.Event) -> None:
    """Container id -> when the runtime reported it stopped, until cancelled; ``ended`` without a stream."""
    try:
        async with open_channel(endpoint) as channel:
            stream = api_grpc.RuntimeServiceStub(channel).GetContainerEvents(api.GetEventsRequest())
            async for event in stream:
                if event.container_event_type == api.CONTAINER_STOPPED_EVENT:
                    stopped.setdefault(event.container_id, event.created_at)
    except grpc.aio.AioRpcError:
        ended.set()


async def _wait_running(agent: SpawnedAgent, names: list[str], timeout_s: float) -> float | None:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s and agent.alive():
        with contextlib.suppress(OSError, TimeoutError, ValueError):
            pods = await agent.pods()
            if all(is_running(pods.get(static_name(n), {})) for n in names):
                return time.perf_counter() - started
        await asyncio.sleep(POLL_S)
    return None


async def _hog_container(endpoint: str, namespace: str, timeout_s: float) -> str | None:
    """The hog's container id once the runtime has it running (polled through CRI, not the agent)."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        for c in (await _containers(endpoint, namespace)).get(static_name(HOG), []):
            if c.state == api.CONTAINER_RUNNING:
                return str(c.id)
        await asyncio.sleep(POLL_S)
    return None


async def _memory_available(agent: SpawnedAgent) -> tuple[int, int]:
    """The node's memory.available and the time of that figure, from /stats/summary."""
    status, body = await http_get(agent.port, "/stats/summary")
    if status != 200:
        raise BenchError(f"/stats/summary answered {status}")
    memory = json.loads(body)["node"]["memory"]
    return int(memory["availableBytes"]), parse_rfc3339_ns(memory["time"])


async def _metrics(agent: SpawnedAgent) -> str:
    try:
        return await agent.metrics()
    except (OSError, TimeoutError, ValueError):
        return ""


def _calls(before: str, after: str) -> dict[str, int]:
    """CRI operations the agent began between two /metrics texts, by operation."""
    first, second = by_label(before, OPERATIONS), by_label(after, OPERATIONS)
    return {op: int(n - first.get(op, 0)) for op, n in second.items() if n > first.get(op, 0)}


async def measure_resources(agent: SpawnedAgent, endpoint: str, namespace: str, options: Any, run: ResourceRun,
                            timeout_s: float) -> None:
    names = [f"logger-{i:04d}" for i in range(run.pods)]
    _write(agent, {n: logger_manifest(n, namespace, run.log_rate, run.line_bytes) for n in names})
    run.running_s = await _wait_running(agent, names, timeout_s)
    if run.running_s is None:
        run.problem = f"not every logging pod was Running within {timeout_s:g} s"
        return
    stopped: dict[str, int] = {}
    no_stream = asyncio.Event()
    events = asyncio.ensure_future(_stop_events(endpoint, stopped, no_stream))
    try:
        await asyncio.sleep(SETTLE_S)
        metrics_before = await _metrics(agent)
        before = sample(agent.pid)
        t0 = time.perf_counter()
        _write(agent, {HOG: hog_manifest(namespace, run.hog_rate_mib)})
        hog = await _hog_container(endpoint, namespace, min(timeout_s, run.seconds))
        if hog is None:
            run.eviction_note = "the hog pod's container did not run in time: no eviction figure"
        else:
            available, at_ns = await _memory_available(agent)
            rate = run.hog_rate_mib * MiB
            run.crossing_ns = at_ns + int((available - THRESHOLD_BYTES) / rate * NS)
            if available <= THRESHOLD_BYTES:
                run.eviction_note = (f"memory.available was {available / MiB:.0f} MiB already at the first "
                                     "reading: the crossing is not known")
                run.crossing_ns = None
        at_kill = None  # the agent's CPU and the time when the hog's stop is first seen inside the window
        for _ in range(max(0, math.ceil((run.seconds - (time.perf_counter() - t0)) / POLL_S))):
            if at_kill is None and hog is not None and hog in stopped:
                at_kill = sample(agent.pid), time.perf_counter()
            await asyncio.sleep(max(0.0, min(POLL_S, run.seconds - (time.perf_counter() - t0))))
        run.seconds = time.perf_counter() - t0
        after = sample(agent.pid)
        cutoff_ns = time.time_ns()
        run.calls = _calls(metrics_before, await _metrics(agent))
        if before is not None and after is not None:
            run.agent_cpu_s = after.cpu_s - before.cpu_s
            if at_kill is not None and at_kill[0] is not None:
                run.before_kill = at_kill[0].cpu_s - before.cpu_s, at_kill[1] - t0
        await asyncio.sleep(SETTLE_S)
        run.counts = await _count_all(endpoint, namespace, names, run.log_rate, cutoff_ns, run.unread)
        if hog is not None and run.crossing_ns is not None:  # the kill may come after the window
            wait_s = (run.crossing_ns - time.time_ns()) / NS + MONITORING_PERIOD_S * 2 + 5
            for _ in range(max(0, math.ceil(wait_s / POLL_S))):
                if hog in stopped or no_stream.is_set():
                    break
                await asyncio.sleep(POLL_S)
            run.kill_ns = stopped.get(hog)
            if no_stream.is_set():
                run.eviction_note = "the runtime has no container event stream: no eviction figure"
            elif run.kill_ns is None:
                run.eviction_note = "the hog was not seen killed within two monitoring periods of the crossing"
    finally:
        events.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await events


async def _count_all(endpoint: str, namespace: str, names: list[str], rate: float, cutoff_ns: int,
                     unread: list[str]) -> list[LogCount]:
    """Every logging pod's count; a pod whose files could not be read goes into ``unread`` with the reason."""
    containers = await _containers(endpoint, namespace)
    counts: list[LogCount] = []
    for name in names:
        found = containers.get(static_name(name), [])
        if len(found) != 1:
            raise BenchError(f"pod {name} has {len(found)} containers in the runtime, expected one (restarted?)")
        status = await _status(endpoint, found[0].id)
        try:
            contents, files, rotated = await asyncio.to_thread(read_log_files, status.log_path)
        except (BenchError, OSError, EOFError, gzip.BadGzipFile) as err:
            unread.append(f"{name}: {err}")
            continue
        counts.append(count_lines(name, contents, status.started_at, rate, cutoff_ns, LOG_MAX_FILES, files,
                                  rotated))
    return counts


def resource_lines(run: ResourceRun) -> list[str]:
    if run.problem:
        return [f"phase 4 (resources): {run.problem}"]
    cpu = (f"{run.agent_cpu_s:.2f} s in {run.seconds:.1f} s = {run.cpu_pct:.1f}% of one core"
           if run.agent_cpu_s is not None and run.cpu_pct is not None else "n/a")
    lines = [f"phase 4: {run.pods} pods logging {run.log_rate:g} lines/s each ({run.line_bytes or 'unpadded'} "
             f"bytes a line; containerLogMaxSize {run.max_size}, maxFiles {LOG_MAX_FILES}, monitor every "
             f"{run.monitor_interval}), all Running {run.running_s or 0:.1f} s after the manifests: agent CPU "
             f"{cpu} (target <= {TARGET_CPU_PERCENT:g}%)"]
    if run.counts:
        c = run.counts
        lost = sum(x.lost for x in c)
        retired = sum(x.head for x in c if x.retired)
        rotations = [x.rotated for x in c]
        lines.append(f"  lines: {sum(x.due for x in c)} due by the cut-off, {sum(x.found for x in c)} found, "
                     f"{lost} lost (target 0), {retired} retired by maxFiles, {sum(x.duplicates for x in c)} "
                     f"duplicates, {sum(x.foreign for x in c)} not numbered; rotated files per container: min "
                     f"{min(rotations)}, max {max(rotations)}")
        worst = sorted((x for x in c if x.lost), key=lambda x: -x.lost)[:3]
        for x in worst:
            lines.append(f"  lost in {x.pod}: {x.gaps} in gaps, {x.tail} after the highest ({x.highest} of "
                         f"{x.due} due), {0 if x.retired else x.head} before the lowest ({x.lowest}); "
                         f"{x.files} files")
    if run.before_kill is not None and run.agent_cpu_s is not None:
        cpu_s, wall_s = run.before_kill
        rest_s = run.seconds - wall_s
        after_pct = f"{100 * (run.agent_cpu_s - cpu_s) / rest_s:.1f}%" if rest_s > 0 else "-"
        lines.append(f"  agent CPU until the hog's kill ({wall_s:.1f} s): {100 * cpu_s / wall_s:.1f}% of one core; "
                     f"after it ({rest_s:.1f} s): {after_pct}")
    if run.calls:
        most = sorted(run.calls.items(), key=lambda item: -item[1])[:CALLS_SHOWN]
        lines.append(f"  the agent's CRI calls in the window: {sum(run.calls.values())}, most: "
                     + ", ".join(f"{op} {n}" for op, n in most))
    for reason in run.unread:
        lines.append(f"  not counted: {reason}")
    delay = run.delay_s
    if delay is not None:
        lines.append(f"  eviction: hog at {run.hog_rate_mib:g} MiB/s, memory.available under {THRESHOLD} to the "
                     f"hog's stop {delay:.2f} s (target <= {TARGET_DELAY_S:g} s: monitoring period "
                     f"{MONITORING_PERIOD_S:g} s + 1 s)")
    if run.eviction_note:
        lines.append(f"  eviction: {run.eviction_note}")
    return lines


def resource_targets(run: ResourceRun, label: str) -> list[str]:
    cpu = run.cpu_pct
    lost = sum(x.lost for x in run.counts) if run.counts else None
    delay = run.delay_s
    return [
        f"target ({label}) resources phase agent CPU <= {TARGET_CPU_PERCENT:g}% of one core: " + (
            "NOT met (not measured)" if cpu is None else f"{'met' if cpu <= TARGET_CPU_PERCENT else 'NOT met'} "
                                                          f"({cpu:.1f}%)"),
        f"target ({label}) log lines lost 0: " + (
            "NOT met (not measured)" if lost is None else f"{'met' if lost == 0 else 'NOT met'} ({lost})"),
        f"target ({label}) memory threshold crossing to the eviction's kill <= {TARGET_DELAY_S:g} s: " + (
            "NOT met (not measured)" if delay is None else
            f"{'met' if delay <= TARGET_DELAY_S else 'NOT met'} ({delay:.2f} s)"),
    ]


async def bench_resources(endpoint: str, options: Any, timeout_s: float) -> tuple[ResourceRun, list[str]]:
    """The resources phase with an agent of its own against ``endpoint``, cleaned up after; (figures, problems)."""
    root = Path(tempfile.mkdtemp(prefix="kubeharness-bench-resources-"))
    namespace = f"khres-{secrets.token_hex(3)}"
    run = ResourceRun(pods=options.resource_pods, seconds=options.resource_seconds, log_rate=options.log_rate,
                      line_bytes=options.log_line_bytes, max_size=options.log_max_size,
                      monitor_interval=options.log_monitor_interval,
                      hog_rate_mib=hog_rate_mib(options.resource_seconds))
    agent = SpawnedAgent(root, endpoint, run.pods + 1, agent_config(run.max_size, run.monitor_interval))
    names = [f"logger-{i:04d}" for i in range(run.pods)] + [HOG]
    problems: list[str] = []
    try:
        agent.start()
        await agent.wait_ready(START_TIMEOUT_S)
        await measure_resources(agent, endpoint, namespace, options, run, timeout_s)
        if run.problem:
            problems.append(f"phase 4: {run.problem}")
        if run.unread:
            problems.append(f"phase 4: the log files of {len(run.unread)} pods could not be read (see above)")
        cleanup = await clean_up(agent, endpoint, names, namespace, timeout_s)
        if cleanup.problem:
            problems.append(f"phase 4 clean-up: {cleanup.problem}")
    except (BenchError, grpc.aio.AioRpcError, OSError) as err:
        details = err.details() if isinstance(err, grpc.aio.AioRpcError) else str(err)
        problems.append(f"phase 4: {type(err).__name__}: {details}")
    finally:
        code = agent.stop()
        if code not in (0, None):
            problems.append(f"phase 4: the agent exited with code {code}; the end of its log:\n{agent.log_tail()}")
        with contextlib.suppress(grpc.aio.AioRpcError):
            _, left, _ = await sweep(endpoint, namespace)
            if left:
                problems.append(f"phase 4 clean-up: {left} sandboxes of namespace {namespace} are still there")
        shutil.rmtree(root, ignore_errors=True)
    return run, problems
