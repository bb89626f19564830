"""activeDeadlineSeconds end to end: the agent on the CRI emulator, one virtual clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.test_agent_e2e import NODE, Node, container, helper, phase, pod, start_node, stop_node
from tests.test_agent_probes import events, reasons


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    n = await start_node(tmp_path)
    try:
        yield n
    finally:
        await stop_node(n)


async def test_a_pod_past_its_active_deadline_is_killed_and_failed(node: Node) -> None:
    manifest = pod("late", helper("app"), grace=5)
    manifest["spec"]["activeDeadlineSeconds"] = 30
    node.write("late", manifest)
    await node.until(lambda p: phase(p, "late") == "Running", limit_s=30)
    start = node.clock.now_ns()
    pods = await node.until(lambda p: phase(p, "late") == "Failed", limit_s=120)
    assert 25 <= (node.clock.now_ns() - start) / 1e9 <= 35
    status = pods[f"late-{NODE}"]["status"]
    assert (status["reason"], status["message"]) == (
        "DeadlineExceeded", "Pod was active on the node longer than the specified deadline")
    pods = await node.until(lambda p: "terminated" in container(p, "late").get("state", {}), limit_s=30)
    await node.clock.advance(60)
    pods = await node.pods()
    assert phase(pods, "late") == "Failed" and container(pods, "late")["restartCount"] == 0
    assert "terminated" in container(pods, "late")["state"]
    evs = reasons(await events(node, "late"))
    assert ("DeadlineExceeded", "Pod was active on the node longer than the specified deadline") in evs
    assert ("Killing", "Stopping container app") in evs


async def test_a_pod_without_a_deadline_runs_on(node: Node) -> None:
    node.write("free", pod("free", helper("app")))
    await node.until(lambda p: phase(p, "free") == "Running", limit_s=30)
    await node.clock.advance(600)
    pods = await node.until(lambda p: phase(p, "free") == "Running", limit_s=5)
    assert "reason" not in pods[f"free-{NODE}"]["status"]


@pytest.mark.parametrize("how", ["deadline", "finished"])
async def test_a_pod_that_has_ended_does_not_keep_its_worker_busy(node: Node, how: str) -> None:
    """Found by the resources benchmark: a pod whose kill had nothing left to stop (past its deadline, evicted,
    or finished under Never) was synced again and again, each sync forcing a relist, hundreds a second."""
    if how == "deadline":
        manifest = pod("ended", helper("app"), grace=1)
        manifest["spec"]["activeDeadlineSeconds"] = 5
    else:
        manifest = pod("ended", helper("app", "--exit-after=2s"), restart="Never")
    node.write("ended", manifest)
    await node.until(lambda p: phase(p, "ended") in ("Failed", "Succeeded")
                     and "terminated" in container(p, "ended").get("state", {}), limit_s=60)
    await node.advance(5)
    before = node.agent.pleg.started
    await asyncio.sleep(1.0)  # real time, the virtual clock standing still: only relists someone forced
    assert node.agent.pleg.started - before <= 3
