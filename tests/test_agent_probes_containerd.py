"""The probe scenarios of test_agent_probes on real containerd and the real clock, with short periods.

One ``kubeharness env up`` (containerd, runc, the bridge CNI network, the khelper image) and one agent
with :class:`RealClock` serve the whole module. The module's fixture writes every scenario's manifest at
once, so the scenarios run side by side (each in a pod of its own, independent of the others), and a
poller keeps the agent's ``/pods`` as it was every quarter of a second: each test reads the history of its
own pod (what it was before the test began waiting too), checks ``/events`` and ``/metrics/probes``,
then deletes its manifest and waits until the agent removed the pod's sandbox and containers, checked
with a CRI client on containerd's socket.

Probes go from the host to the pod IPs on the run's own bridge network (exec probes through containerd's
ExecSync). Times are bounded below by what the probe periods make certain and above only generously (a
loaded machine, two cores beside CPU hogs); the timestamps in the status have whole seconds, so every
bound allows one second for them. Root and the Debian packages of ci/setup-env are required.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from kubeharness.agent.agent import Agent
from kubeharness.agent.config.kubelet import AgentConfig
from kubeharness.agent.pod.labels import POD_NAME, POD_NAMESPACE
from kubeharness.clock import RealClock
from kubeharness.conformance.node.agentnode import kubelet_config
from kubeharness.wire.cri import api_pb2 as api
from kubeharness.wire.cri import api_pb2_grpc as api_grpc
from tests.conftest import containerd_env, free_port
from tests.promtext import matching
from tests.test_agent_e2e import NODE, container, helper, http_get, pod

pytestmark = [pytest.mark.xdist_group("containerd"), pytest.mark.asyncio(loop_scope="module"),
              pytest.mark.timeout(300)]

NAMESPACE = "probes-containerd"  # every pod of this module, so that a leftover sandbox is recognisably ours
POLL_S = 0.25
Pods = dict[str, dict[str, Any]]
Record = Callable[[str, object], None]  # pytest's record_testsuite_property


def probe(handler: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {**handler, **fields}


def exec_(*command: str) -> dict[str, Any]:
    return {"exec": {"command": list(command)}}


def when(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def ran_s(terminated: dict[str, Any]) -> float:
    """How long a terminated container ran, from its status's (whole-second) stamps."""
    return when(terminated["finishedAt"]) - when(terminated["startedAt"])


def conditions(pods: Pods, name: str) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in pods.get(f"{name}-{NODE}", {}).get("status", {}).get("conditions", [])}


def refused(pods: Pods, name: str, port: int, path: str = "/healthz") -> str:
    """The readiness failure of an HTTP probe that came before the container listened (kubelet's text)."""
    ip = pods[f"{name}-{NODE}"]["status"]["podIP"]
    return f'Readiness probe failed: Get "http://{ip}:{port}{path}": dial tcp {ip}:{port}: connect: connection refused'


def seen(metrics: list[dict[str, str]], **labels: str) -> bool:
    """Whether one of ``metrics`` (label sets) has all of ``labels``."""
    return any(labels.items() <= m.items() for m in metrics)


def running(status: dict[str, Any]) -> bool:
    return "running" in status.get("state", {})


# -- the scenarios' pods ------------------------------------------------------------------------------------

def exec_liveness() -> dict[str, Any]:
    app = helper("app", "--unhealthy-after=4s")
    # a generous timeout: an exec on a loaded machine can take more than the default second
    app["livenessProbe"] = probe(exec_("khelper", "check", "healthy"), periodSeconds=1, failureThreshold=3,
                                 timeoutSeconds=10)
    return pod("live", app, grace=5)


def http_readiness() -> dict[str, Any]:
    app = helper("app", "--http-port=8080", "--unhealthy-after=5s")
    app["readinessProbe"] = probe({"httpGet": {"path": "/healthz", "port": 8080}}, periodSeconds=1,
                                  failureThreshold=2, timeoutSeconds=5)
    return pod("ready", app, grace=5)


def tcp_startup() -> dict[str, Any]:
    # nothing listens on 9000 for the first 4 s, then busybox's httpd (in the khelper image) does; a liveness
    # probe that ran before the start would fail at once and kill the container (threshold 1)
    app: dict[str, Any] = {"name": "app", "image": "kubeharness.test/khelper:1",
                           "command": ["sh", "-c", "sleep 4; exec httpd -f -p 9000"]}
    app["startupProbe"] = probe({"tcpSocket": {"port": 9000}}, periodSeconds=1, failureThreshold=30,
                                timeoutSeconds=5)
    app["livenessProbe"] = probe({"tcpSocket": {"port": 9000}}, periodSeconds=1, failureThreshold=1,
                                 timeoutSeconds=5)
    return pod("slow", app, grace=2)  # sh and httpd as PID 1 ignore SIGTERM: the deletion takes the grace


def grpc_liveness() -> dict[str, Any]:
    app = helper("app", "--grpc-port=9090", "--unhealthy-after=4s")
    app["livenessProbe"] = probe({"grpc": {"port": 9090}}, periodSeconds=1, failureThreshold=2, timeoutSeconds=5)
    return pod("grpc", app, grace=5)


def startup_grace() -> dict[str, Any]:
    app = helper("app", "--ignore-sigterm")
    app["startupProbe"] = probe({"tcpSocket": {"port": 9999}}, periodSeconds=2, failureThreshold=2,
                                terminationGracePeriodSeconds=3)
    return pod("never", app, grace=60)


def sidecar_readiness() -> dict[str, Any]:
    side = helper("side", "--http-port=8081", "--unhealthy-after=8s")
    side["restartPolicy"] = "Always"
    side["readinessProbe"] = probe({"httpGet": {"port": 8081}}, periodSeconds=1, failureThreshold=2,
                                   timeoutSeconds=5)
    return pod("car", helper("app"), init=[side], grace=5)


def timeouts() -> dict[str, Any]:
    app = helper("app", "--http-port=8080")
    # containerd ends the exec after the probe's second and answers DEADLINE_EXCEEDED: a failure, never ready
    app["readinessProbe"] = probe(exec_("khelper", "sleep", "5"), periodSeconds=2, timeoutSeconds=1)
    # /hang never answers: the client's timeout fails the probe, twice in a row kills the container
    app["livenessProbe"] = probe({"httpGet": {"path": "/hang", "port": 8080}}, periodSeconds=2, timeoutSeconds=1,
                                 failureThreshold=2)
    return pod("hang", app, grace=5)


SCENARIOS: dict[str, Callable[[], dict[str, Any]]] = {
    "live": exec_liveness, "ready": http_readiness, "slow": tcp_startup, "grpc": grpc_liveness,
    "never": startup_grace, "car": sidecar_readiness, "hang": timeouts,
}


# -- the node -----------------------------------------------------------------------------------------------

@dataclass
class RealNode:
    """The agent on containerd, and the history of its ``/pods``."""

    root: Path
    endpoint: str
    agent: Agent
    port: int
    record: Record
    history: list[tuple[float, Pods]] = field(default_factory=list)  # (time.time(), /pods then)

    @property
    def manifests(self) -> Path:
        return self.root / "manifests"

    def write(self, name: str, manifest: dict[str, Any]) -> None:
        staged = self.root / "staging" / f"{name}.json"  # written whole first: the file source never reads half
        staged.write_text(json.dumps(manifest))
        os.replace(staged, self.manifests / f"{name}.json")

    async def poll(self) -> None:
        """Keep ``/pods`` in the history every :data:`POLL_S` (a failed request leaves a gap, not an end)."""
        while True:
            with contextlib.suppress(OSError, ValueError):
                status, body = await http_get(self.port, "/pods")
                if status == 200:
                    items = json.loads(body)["items"]
                    self.history.append((time.time(), {item["metadata"]["name"]: item for item in items}))
            await asyncio.sleep(POLL_S)

    async def until(self, check: Callable[[Pods], bool], what: str, limit_s: float = 90,
                    since: float = 0.0) -> Pods:
        """Wait (real time) until ``check`` holds in the history (from ``since`` on, a ``time.time()``): the
        pods when it first did. The history counts from the module's start, so a test finds what happened
        before it ran, whatever the order of the tests."""
        deadline = time.monotonic() + limit_s
        seen = 0
        while True:
            for t, pods in self.history[seen:]:
                if t >= since and check(pods):
                    return pods
            seen = len(self.history)
            assert time.monotonic() < deadline, f"no {what} within {limit_s:.0f} s: {json.dumps(self.latest())[:3000]}"
            await asyncio.sleep(POLL_S)

    def measure(self, pod_name: str, what: str, seconds: float) -> None:
        """A measured time, into the junit report's properties (``<pod>.<what>``)."""
        self.record(f"containerd_probes.{pod_name}.{what}", round(seconds, 1))

    def latest(self) -> Pods:
        return self.history[-1][1] if self.history else {}

    def first(self, check: Callable[[Pods], bool], after: float = 0.0) -> tuple[float, Pods]:
        """When ``check`` first held in the history (from ``after`` on), and the pods then."""
        found = next(((t, pods) for t, pods in self.history if t >= after and check(pods)), None)
        assert found is not None, "never seen"
        return found

    async def events(self, name: str) -> list[dict[str, Any]]:
        status, body = await http_get(self.port, "/events")
        assert status == 200
        return [e for e in json.loads(body)["items"] if e["involvedObject"]["name"] == f"{name}-{NODE}"]

    async def probe_metrics(self, name: str) -> list[dict[str, str]]:
        """The label sets of pod ``name``'s ``prober_probe_total`` series (each counted at least once)."""
        status, body = await http_get(self.port, "/metrics/probes")
        assert status == 200
        found = matching(body, "prober_probe_total", pod=f"{name}-{NODE}")
        assert all(s.value >= 1 for s in found), found
        return [s.labels for s in found]

    async def cri_leftovers(self, name: str | None = None) -> list[str]:
        """This module's sandboxes and containers (of pod ``name``, else of every pod) containerd still has."""
        labels = {POD_NAMESPACE: NAMESPACE, **({POD_NAME: f"{name}-{NODE}"} if name else {})}
        async with grpc.aio.insecure_channel(self.endpoint) as channel:
            runtime = api_grpc.RuntimeServiceStub(channel)
            sandboxes = await runtime.ListPodSandbox(api.ListPodSandboxRequest(
                filter=api.PodSandboxFilter(label_selector=labels)), timeout=30)
            containers = await runtime.ListContainers(api.ListContainersRequest(
                filter=api.ContainerFilter(label_selector=labels)), timeout=30)
        return [f"sandbox {s.metadata.name} ({api.PodSandboxState.Name(s.state)})" for s in sandboxes.items] + \
            [f"container {c.metadata.name} ({api.ContainerState.Name(c.state)})" for c in containers.containers]

    async def delete(self, name: str, limit_s: float = 120) -> float:
        """Remove the manifest and wait until the agent dropped the pod and containerd has nothing left of
        it; how long that took."""
        start, since = time.monotonic(), time.time()
        (self.manifests / f"{name}.json").unlink(missing_ok=True)
        await self.until(lambda p: f"{name}-{NODE}" not in p, f"{name} gone from /pods", limit_s, since)
        while left := await self.cri_leftovers(name):
            assert time.monotonic() - start < limit_s, f"{name} left behind on containerd: {left}"
            await asyncio.sleep(0.5)
        return time.monotonic() - start


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with containerd_env(tmp_path_factory.mktemp("env")) as socket:
        yield socket


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def node(endpoint: str, tmp_path_factory: pytest.TempPathFactory,
               record_testsuite_property: Record) -> AsyncIterator[RealNode]:
    root = tmp_path_factory.mktemp("agent")
    for sub in ("manifests", "staging"):
        (root / sub).mkdir()
    port = free_port()
    config = AgentConfig.from_dict(kubelet_config(endpoint, root, port, {}), node_name=NODE,
                                   root_dir=str(root / "kubelet"))
    agent = Agent(config, RealClock())
    await agent.start()
    node = RealNode(root, endpoint, agent, port, record_testsuite_property)
    poller = asyncio.ensure_future(node.poll())
    try:
        for name, make in SCENARIOS.items():
            manifest = make()
            manifest["metadata"]["namespace"] = NAMESPACE
            node.write(name, manifest)
        yield node
        # whatever a failed test left: every pod goes, and nothing of this module stays on containerd
        for name in SCENARIOS:
            await node.delete(name, limit_s=150)
        assert await node.cri_leftovers() == []
    finally:
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller
        await agent.stop()


# -- the scenarios ------------------------------------------------------------------------------------------

async def restarted(node: RealNode, name: str, last: dict[str, Any]) -> float:
    """How long after the kill of ``last`` its successor was running (the first restart has no backoff)."""
    pods = await node.until(lambda p: running(container(p, name)) and container(p, name)["containerID"]
                            != last["containerID"], f"the restarted container of {name}")
    after = when(container(pods, name)["state"]["running"]["startedAt"]) - when(last["finishedAt"])
    assert -1 <= after <= 30, (last, container(pods, name))
    return after


async def test_a_failing_exec_liveness_probe_restarts_the_container(node: RealNode) -> None:
    pods = await node.until(lambda p: container(p, "live").get("restartCount", 0) >= 1, "restart of live")
    last = container(pods, "live")["lastState"]["terminated"]
    # unhealthy from 4 s; probed every second; the third failure in a row kills it: at 6 s at the earliest
    node.measure("live", "killed_after_s", ran_s(last))
    assert 6 - 1 <= ran_s(last) <= 7 * 3 + 30, last
    assert last["exitCode"] == 0 and last["reason"] == "Completed"  # khelper leaves at SIGTERM with 0
    node.measure("live", "restarted_after_s", await restarted(node, "live", last))
    evs = await node.events("live")
    kills = [e for e in evs if e["reason"] == "Killing"]
    assert kills and {e["message"] for e in kills} == {"Container app failed liveness probe, will be restarted"}
    assert kills[0]["type"] == "Normal" and kills[0]["involvedObject"]["fieldPath"] == "spec.containers{app}"
    unhealthy = [e for e in evs if e["reason"] == "Unhealthy"]
    assert [e["message"] for e in unhealthy] == ["Liveness probe failed: unhealthy\n"]
    assert unhealthy[0]["count"] >= 3 and unhealthy[0]["type"] == "Warning"
    metrics = await node.probe_metrics("live")
    assert seen(metrics, probe_type="Liveness", result="failed", container="app"), metrics
    assert seen(metrics, probe_type="Liveness", result="successful", container="app"), metrics
    node.measure("live", "deleted_after_s", await node.delete("live"))


async def test_a_failing_http_readiness_probe_makes_the_pod_unready_without_a_restart(node: RealNode) -> None:
    def is_ready(p: Pods) -> bool:
        return bool(container(p, "ready").get("ready"))

    await node.until(is_ready, "ready pod")
    became_ready, ready_pods = node.first(is_ready)
    assert conditions(ready_pods, "ready")["Ready"]["status"] == "True"
    assert conditions(ready_pods, "ready")["ContainersReady"]["status"] == "True"

    def unready(p: Pods) -> bool:
        return container(p, "ready").get("ready") is False

    await node.until(unready, "unready pod", since=became_ready)
    went_unready, pods = node.first(unready, after=became_ready)
    app = container(pods, "ready")
    assert app["restartCount"] == 0 and running(app)
    ready = conditions(pods, "ready")["Ready"]
    assert (ready["status"], ready["reason"], ready["message"]) == (
        "False", "ContainersNotReady", "containers with unready status: [app]")
    assert conditions(pods, "ready")["ContainersReady"]["status"] == "False"
    started = when(app["state"]["running"]["startedAt"])
    # 503 from 5 s on, probed every second, the second failure in a row makes it unready: at 6 s at the earliest
    node.measure("ready", "unready_after_s", went_unready - started)
    assert 6 - 1 <= went_unready - started <= 7 * 3 + 30, (started, went_unready)
    failed = {e["message"] for e in await node.events("ready") if e["reason"] == "Unhealthy"}
    assert "Readiness probe failed: HTTP probe failed with statuscode: 503" in failed
    # a probe at the very start (the prober triggers one) may find that khelper does not listen yet
    assert failed <= {"Readiness probe failed: HTTP probe failed with statuscode: 503", refused(pods, "ready", 8080)}
    latest = container(node.latest(), "ready")
    assert latest["restartCount"] == 0 and not latest["ready"]  # and it stays so: readiness never restarts
    node.measure("ready", "deleted_after_s", await node.delete("ready"))


async def test_a_tcp_startup_probe_gates_liveness_until_it_succeeds(node: RealNode) -> None:
    def started(p: Pods) -> bool:
        return bool(container(p, "slow").get("started"))

    await node.until(started, "started container")
    first_started, pods = node.first(started)
    app = container(pods, "slow")
    since = when(app["state"]["running"]["startedAt"])
    node.measure("slow", "started_after_s", first_started - since)
    assert first_started - since >= 4 - 1, (since, first_started)  # nothing listened before 4 s
    # running and probed but not started before that, and not ready either (no readiness probe: ready = started)
    before = [container(p, "slow") for t, p in node.history if t < first_started and running(container(p, "slow"))]
    assert before and all(c["started"] is False and c["ready"] is False for c in before)
    assert app["ready"] is True
    # liveness runs from the start on (threshold 1): a while later it has probed and never failed
    await node.until(lambda p: True, "a few seconds of liveness probes", since=first_started + 4)
    metrics = await node.probe_metrics("slow")
    assert seen(metrics, probe_type="Startup", result="failed"), metrics
    assert seen(metrics, probe_type="Startup", result="successful"), metrics
    assert seen(metrics, probe_type="Liveness", result="successful"), metrics
    assert not seen(metrics, probe_type="Liveness", result="failed"), metrics
    assert container(node.latest(), "slow")["restartCount"] == 0
    evs = await node.events("slow")
    assert not [e for e in evs if e["reason"] == "Killing"]
    failed = {e["message"] for e in evs if e["reason"] == "Unhealthy"}
    ip = node.latest()[f"slow-{NODE}"]["status"]["podIP"]
    assert failed == {f"Startup probe failed: dial tcp {ip}:9000: connect: connection refused"}
    node.measure("slow", "deleted_after_s", await node.delete("slow"))


async def test_a_failing_grpc_liveness_probe_restarts_the_container(node: RealNode) -> None:
    pods = await node.until(lambda p: container(p, "grpc").get("restartCount", 0) >= 1, "restart of grpc")
    last = container(pods, "grpc")["lastState"]["terminated"]
    # SERVING for 4 s, then NOT_SERVING; probed every second; the second failure in a row kills it
    node.measure("grpc", "killed_after_s", ran_s(last))
    assert 5 - 1 <= ran_s(last) <= 6 * 3 + 30, last
    assert last["exitCode"] == 0
    node.measure("grpc", "restarted_after_s", await restarted(node, "grpc", last))
    evs = await node.events("grpc")
    assert {e["message"] for e in evs if e["reason"] == "Killing"} == {
        "Container app failed liveness probe, will be restarted"}
    failed = {e["message"] for e in evs if e["reason"] == "Unhealthy"}
    not_serving = 'Liveness probe failed: service unhealthy (responded with "NOT_SERVING")'
    address = f'{pods[f"grpc-{NODE}"]["status"]["podIP"]}:9090'
    # a probe at the very start waits up to its timeout for khelper to listen; on a slow machine in vain
    assert not_serving in failed and failed <= {
        not_serving, f'Liveness probe failed: timeout: failed to connect service "{address}" within 5s: '
                     'context deadline exceeded'}, failed
    metrics = await node.probe_metrics("grpc")
    assert seen(metrics, probe_type="Liveness", result="successful"), metrics
    node.measure("grpc", "deleted_after_s", await node.delete("grpc"))


async def test_a_failing_startup_probe_kills_with_the_probe_s_grace_period(node: RealNode) -> None:
    pods = await node.until(lambda p: container(p, "never").get("restartCount", 0) >= 1, "restart of never")
    last = container(pods, "never")["lastState"]["terminated"]
    assert last["exitCode"] == 137  # SIGTERM ignored: killed after the probe's 3 s, not the pod's 60 s
    # two failures 2 s apart, then 3 s of grace; far below the pod's 60 s however loaded the machine is
    node.measure("never", "killed_after_s", ran_s(last))
    assert 2 + 3 - 1 <= ran_s(last) <= 50, last
    assert container(pods, "never")["started"] is False
    evs = await node.events("never")
    kills = {e["message"] for e in evs if e["reason"] == "Killing"}
    assert kills == {"Container app failed startup probe, will be restarted"}
    ip = pods[f"never-{NODE}"]["status"]["podIP"]
    assert {e["message"] for e in evs if e["reason"] == "Unhealthy"} == {
        f"Startup probe failed: dial tcp {ip}:9999: connect: connection refused"}
    # deleted while it backs off (nothing runs): no 60 s of grace for the deletion to wait out
    await node.until(lambda p: container(p, "never").get("state", {}).get("waiting", {}).get("reason")
                     == "CrashLoopBackOff", "the crash-loop backoff of never")
    node.measure("never", "deleted_after_s", await node.delete("never"))


async def test_a_sidecar_is_probed_for_readiness_beside_the_app(node: RealNode) -> None:
    def side(p: Pods) -> dict[str, Any]:
        return container(p, "car", 0, init=True)

    def side_ready(p: Pods) -> bool:
        return bool(side(p).get("ready"))

    def unready_because_of_the_sidecar(p: Pods) -> None:
        # kubelet's ContainersReady counts restartable init containers first, then the app containers
        for kind in ("ContainersReady", "Ready"):
            condition = conditions(p, "car")[kind]
            assert (condition["status"], condition.get("reason"), condition.get("message")) == (
                "False", "ContainersNotReady", "containers with unready status: [side]"), p

    await node.until(side_ready, "a ready sidecar")
    became_ready, pods = node.first(side_ready)
    assert side(pods)["started"] is True and running(side(pods))
    # the app starts once the sidecar has (it runs and has no startup probe), and runs beside it
    _, pods = node.first(lambda p: running(container(p, "car")))
    assert running(side(pods))
    assert when(container(pods, "car")["state"]["running"]["startedAt"]) >= \
        when(side(pods)["state"]["running"]["startedAt"])
    before = [p for t, p in node.history if t < became_ready and container(p, "car").get("ready")]
    for p in before:  # app ready, sidecar not yet
        unready_because_of_the_sidecar(p)
    _, pods = node.first(lambda p: side_ready(p) and bool(container(p, "car").get("ready")))
    assert conditions(pods, "car")["Ready"]["status"] == "True"
    assert conditions(pods, "car")["ContainersReady"]["status"] == "True"
    # 503 from 8 s on: two failures in a row and the sidecar is unready, still running, not restarted
    await node.until(lambda p: side(p).get("ready") is False, "an unready sidecar", since=became_ready)
    went_unready, pods = node.first(lambda p: side(p).get("ready") is False, after=became_ready)
    started = when(side(pods)["state"]["running"]["startedAt"])
    node.measure("car", "unready_after_s", went_unready - started)
    assert 8 + 1 - 1 <= went_unready - started <= 9 * 3 + 30, (started, went_unready)
    assert side(pods)["restartCount"] == 0 and running(side(pods)) and side(pods)["started"] is True
    app = container(pods, "car")
    assert running(app) and app["restartCount"] == 0 and app["ready"] is True
    assert conditions(pods, "car")["Initialized"]["status"] == "True"
    unready_because_of_the_sidecar(pods)
    evs = await node.events("car")
    unhealthy = [e for e in evs if e["reason"] == "Unhealthy"]
    failed = {e["message"] for e in unhealthy}
    assert "Readiness probe failed: HTTP probe failed with statuscode: 503" in failed
    assert failed <= {"Readiness probe failed: HTTP probe failed with statuscode: 503",
                      refused(pods, "car", 8081, "/")}
    assert {e["involvedObject"]["fieldPath"] for e in unhealthy} == {"spec.initContainers{side}"}
    assert not [e for e in evs if e["reason"] == "Killing"]
    node.measure("car", "deleted_after_s", await node.delete("car"))


async def test_probes_that_time_out_fail(node: RealNode) -> None:
    pods = await node.until(lambda p: container(p, "hang").get("restartCount", 0) >= 1, "restart of hang")
    last = container(pods, "hang")["lastState"]["terminated"]
    node.measure("hang", "killed_after_s", ran_s(last))
    # two probes 2 s apart, each failing after its 1 s timeout: 3 s at the earliest
    assert 2 + 1 - 1 <= ran_s(last) <= 5 * 3 + 30, last
    assert not any(c.get("ready") for _, p in node.history if (c := container(p, "hang")))
    evs = await node.events("hang")
    ip = pods[f"hang-{NODE}"]["status"]["podIP"]
    unhealthy = {e["message"]: e for e in evs if e["reason"] == "Unhealthy"}
    timed_out = {'Readiness probe failed: command "khelper sleep 5" timed out',
                 f'Liveness probe failed: Get "http://{ip}:8080/hang": context deadline exceeded '
                 '(Client.Timeout exceeded while awaiting headers)'}
    assert timed_out <= unhealthy.keys(), list(unhealthy)
    # the readiness worker, as kubelet's, goes on until the status shows the kill: an exec under way as the
    # container dies ends with 137 and no output, one that comes after finds no task or an exited container
    # (an error: retried, then thrown away); never before the first kill
    for message, event in unhealthy.items():
        if message not in timed_out:
            assert message == "Readiness probe failed: " or message.startswith(
                "Readiness probe errored and resulted in unknown state: rpc error: "), message
            assert when(event["firstTimestamp"]) >= when(last["finishedAt"]) - 1, (event, last)
    assert {e["message"] for e in evs if e["reason"] == "Killing"} == {
        "Container app failed liveness probe, will be restarted"}
    node.measure("hang", "deleted_after_s", await node.delete("hang"))
