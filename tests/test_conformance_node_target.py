"""The node suite's target machinery on its own: container states as the timeline names them, the timeline
keeping only changes, manifests written whole, and until/holds on a virtual clock against a real agent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kubeharness.conformance.node.agentnode import agent_on_emulator
from kubeharness.conformance.node.pods import khelper, pod
from kubeharness.conformance.node.target import container_state, samples


def status(name: str, state: dict[str, Any], ready: bool = False, restarts: int = 0) -> dict[str, Any]:
    return {"name": name, "state": state, "ready": ready, "restartCount": restarts}


@pytest.mark.parametrize(("state", "want"), [
    ({"waiting": {"reason": "CrashLoopBackOff"}}, "waiting:CrashLoopBackOff"),
    ({"waiting": {}}, "waiting"),
    ({"running": {"startedAt": "2026-01-01T00:00:00Z"}}, "running"),
    ({"terminated": {"reason": "Error", "exitCode": 1}}, "terminated:Error"),
    ({}, "unknown"),
])
def test_a_container_state_is_named_with_its_reason(state: dict[str, Any], want: str) -> None:
    assert container_state({"state": state}) == want


def test_samples_list_init_containers_first_then_the_app_containers() -> None:
    pods = {"p-n": {"status": {"initContainerStatuses": [status("init", {"terminated": {"reason": "Completed"}})],
                               "containerStatuses": [status("app", {"running": {}}, True, 2)]}}}
    got = [(s.pod, s.container, s.state, s.ready, s.restarts, s.t) for s in samples(pods, 1.23456)]
    assert got == [("p-n", "init", "terminated:Completed", False, 0, 1.235), ("p-n", "app", "running", True, 2, 1.235)]


async def test_the_timeline_keeps_changes_and_until_and_holds_follow_the_virtual_clock(tmp_path: Path) -> None:
    node = await agent_on_emulator(tmp_path, {})
    try:
        assert node.virtual and node.elapsed_s() == 0
        node.write("p", pod("p", khelper("app", "--exit-after=3s", "--exit-code=1"), restart="Never"))
        assert not list(node.manifests.glob(".*"))  # written aside, then renamed into place
        name = node.pod_name("p")
        with pytest.raises(AssertionError, match="finished: not within 1 s"):
            await node.until(lambda p: p.get(name, {}).get("status", {}).get("phase") == "Failed", 1, "finished")
        await node.until(lambda p: p.get(name, {}).get("status", {}).get("phase") == "Failed", 60, "finished")
        with pytest.raises(AssertionError, match="still there: broken after"):
            await node.holds(lambda p: name not in p, 5, "still there")
        states = [s.state for s in node.timeline if s.container == "app"]
        assert states[-1] == "terminated:Error" and "running" in states
        assert len(states) == len(set(states))  # a change each, not a sample per read
        await node.drain(60)
        assert await node.pods() == {}
    finally:
        await node.close()
