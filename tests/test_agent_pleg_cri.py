"""The PLEG relisting a real CRI emulator (in-process, on a virtual clock) through the agent's CRI client:
events, the cache, retries after failed inspections, health, the queue bound, the relist loop and the
runtime's event stream. Failures come from the emulator's own fault plans, not from a fake."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from kubeharness.agent.pleg.pleg import CONTAINER_DIED, CONTAINER_REMOVED, CONTAINER_STARTED, Pleg
from kubeharness.agent.pod import labels
from kubeharness.agent.runtime.client import RuntimeClient
from kubeharness.agent.server.metrics import Registry
from kubeharness.clock import NS_PER_SECOND, VirtualClock
from kubeharness.emulators.cri.config import CriConfig
from kubeharness.faults import FaultEngine, load_plan
from kubeharness.wire.cri import api_pb2 as api
from tests.conftest import CriHarness, eventually
from tests.promtext import value

UID = "uid-web"


class Node:
    """An emulator, the agent's client to it, and a PLEG over that client."""

    def __init__(self, cri: CriHarness, client: RuntimeClient) -> None:
        self.cri = cri
        self.client = client
        self.relists: list[float] = []

    def pleg(self, **kw: object) -> Pleg:
        return Pleg(self.client, self.cri.clock, on_relist=self.relists.append, **kw)  # type: ignore[arg-type]

    async def pod(self, start: bool = True) -> tuple[str, str]:
        """A sandbox and a helper container labelled as kubelet labels them: (sandbox id, container id)."""
        cfg = self.cri.sandbox_config(name="web", uid=UID)
        sid = await self.cri.run_sandbox(cfg)
        await self.cri.pull("kubeharness.test/khelper:1")
        cid = await self.cri.create(sid, cfg, name="app", labels={labels.POD_UID: UID, labels.POD_NAME: "web",
                                                                  labels.POD_NAMESPACE: "default",
                                                                  labels.CONTAINER_NAME: "app"})
        if start:
            await self.cri.start_container(cid)
        return sid, cid

    def status_calls(self) -> float:
        found = value(generate_latest(self.client.metrics.registry), "kubelet_runtime_operations_total",
                      operation_type="container_status")
        return found or 0.0


async def start_node(tmp_path: Path, plan: str = "rules: []") -> Node:
    clock = VirtualClock()
    cri = CriHarness(root=tmp_path, clock=clock, config=CriConfig(), faults=FaultEngine(load_plan(plan), clock))
    await cri.start()
    return Node(cri, RuntimeClient(f"unix://{cri.socket}", None, Registry(), timeout_s=5))


async def stop_node(node: Node) -> None:
    await node.client.close()
    await node.cri.stop()


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    n = await start_node(tmp_path)
    try:
        yield n
    finally:
        await stop_node(n)


def drain(pleg: Pleg) -> list[tuple[str, str]]:
    out = []
    while not pleg.events.empty():
        event = pleg.events.get_nowait()
        out.append((event.type, event.data))
    return out


async def test_relists_turn_runtime_changes_into_events_and_a_cache(node: Node) -> None:
    pleg = node.pleg()
    sid, cid = await node.pod()
    await pleg.relist()
    assert drain(pleg) == [(CONTAINER_STARTED, cid), (CONTAINER_STARTED, sid)]
    cached = pleg.get(UID)
    assert cached is not None and cached.ips and cached.containers[0].state == "running"
    await node.cri.drive(node.cri.runtime.StopContainer(api.StopContainerRequest(container_id=cid, timeout=1)))
    await pleg.relist()
    assert drain(pleg) == [(CONTAINER_DIED, cid)]
    await node.cri.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=sid))
    await node.cri.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=sid))
    await pleg.relist()
    assert drain(pleg) == [(CONTAINER_REMOVED, cid), (CONTAINER_DIED, sid), (CONTAINER_REMOVED, sid)]
    assert pleg.get(UID) is None and pleg.pods() == {}


async def test_a_created_container_gives_no_event_of_its_own(node: Node) -> None:
    pleg = node.pleg()
    sid, _ = await node.pod(start=False)
    assert [(e.type, e.data) for e in await pleg.relist()] == [(CONTAINER_STARTED, sid)]
    cached = pleg.get(UID)
    assert cached is not None and cached.containers[0].state == "created"


async def test_a_pod_that_cannot_be_inspected_is_tried_again(tmp_path: Path) -> None:
    n = await start_node(tmp_path, """
rules:
  - {name: flaky-status, where: cri, method: ContainerStatus, action: {error: {code: UNAVAILABLE}}, when: {first: 1}}
""")
    try:
        pleg = n.pleg()
        _, cid = await n.pod()
        assert await pleg.relist() == [] and pleg.get(UID) is None
        assert (CONTAINER_STARTED, cid) in [(e.type, e.data) for e in await pleg.relist()]
        assert pleg.get(UID) is not None
    finally:
        await stop_node(n)


async def test_a_container_gone_between_list_and_status_is_left_out(tmp_path: Path) -> None:
    n = await start_node(tmp_path, """
rules:
  - {name: gone, where: cri, method: ContainerStatus, action: {error: {code: NOT_FOUND}}, when: {first: 1}}
""")
    try:
        pleg = n.pleg()
        await n.pod()
        await pleg.relist()
        cached = pleg.get(UID)
        assert cached is not None and cached.containers == () and len(cached.sandboxes) == 1
    finally:
        await stop_node(n)


async def test_health_follows_the_last_successful_relist(node: Node) -> None:
    pleg = node.pleg()
    assert not pleg.healthy()
    await pleg.relist()
    assert pleg.healthy()
    await node.cri.stop()  # the runtime goes away
    await node.cri.clock.advance(180)
    assert await pleg.relist() == []
    assert pleg.healthy()  # kubelet's threshold is 3 minutes
    await node.cri.clock.advance(1)
    assert not pleg.healthy()
    await node.cri.start()
    for _ in range(100):  # the client reconnects within its short backoff
        await pleg.relist()
        if pleg.healthy():
            break
        await asyncio.sleep(0.05)
    assert pleg.healthy()


async def test_a_full_queue_drops_events_and_counts_them(node: Node) -> None:
    pleg = node.pleg(queue_size=1)
    await node.pod()
    await pleg.relist()
    assert pleg.events.qsize() == 1 and pleg.discarded_events == 1


async def test_run_relists_every_period_and_when_triggered(node: Node) -> None:
    pleg = node.pleg(period_s=1.0)
    task = asyncio.create_task(pleg.run())

    async def relisted(count: int) -> None:
        """Wait for the count of relists, then check that no further one follows on its own."""
        await eventually(lambda: len(node.relists) >= count, f"{count} relists")
        for _ in range(20):
            await asyncio.sleep(0.005)
        assert len(node.relists) == count

    try:
        await relisted(1)
        for n in range(3):
            await node.cri.clock.advance(1)
            await relisted(2 + n)
        pleg.trigger()
        await relisted(5)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_the_runtimes_event_stream_triggers_relists(node: Node) -> None:
    pleg = node.pleg(period_s=600.0)
    task = asyncio.create_task(pleg.run())
    follower = asyncio.create_task(pleg.follow_events(node.client.container_events()))
    try:
        await node.cri.subscribed()
        await eventually(lambda: len(node.relists) == 1, "the first relist")
        before = len(node.relists)
        await node.pod()

        def seen() -> bool:
            pod = pleg.get(UID)
            return pod is not None and len(pod.containers) == 1

        await eventually(seen, "the PLEG to see the new pod")
        assert len(node.relists) > before  # no clock advance was needed
    finally:
        follower.cancel()
        task.cancel()
        for t in (follower, task):
            with pytest.raises(asyncio.CancelledError):
                await t


async def test_the_relist_duration_is_measured_on_the_clock(tmp_path: Path) -> None:
    n = await start_node(tmp_path, """
rules:
  - {name: slow-list, where: cri, method: ListContainers, action: {delay: {seconds: 0.25}}}
""")
    try:
        pleg = n.pleg()
        before = n.cri.clock.pending()
        relist = asyncio.create_task(pleg.relist())
        await n.cri.until_timer_added(before)  # the ListContainers call waits on the rule's delay
        await n.cri.clock.advance(0.25)
        await relist
        # virtual seconds: the list took exactly the rule's 0.25 s, however slow the machine
        assert n.relists == [0.25]
        assert pleg.last_relist_ns is not None and n.cri.clock.now_ns() - pleg.last_relist_ns >= NS_PER_SECOND // 5
    finally:
        await stop_node(n)


async def test_a_relist_with_nothing_changed_inspects_nothing(node: Node) -> None:
    pleg = node.pleg()
    _, cid = await node.pod()
    await pleg.relist()
    first = node.status_calls()
    assert first == 1
    await pleg.relist()
    assert node.status_calls() == first  # unchanged: no status calls at all
    await node.cri.drive(node.cri.runtime.StopContainer(api.StopContainerRequest(container_id=cid, timeout=1)))
    await pleg.relist()
    assert node.status_calls() == first + 1 and drain(pleg)[-1] == (CONTAINER_DIED, cid)
