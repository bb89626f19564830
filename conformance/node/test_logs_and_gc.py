"""Node specs: container log rotation (kubelet's own e2e_node test: 40Ki and 3 files, the directory reaches
3 files and never holds more) and container GC (a crash-looping container keeps its current and its last
dead instance, with their logs: kubelet's MaxPerPodContainer 1)."""

from __future__ import annotations

import pytest

from kubeharness.conformance.node.pods import khelper, pod, restarts
from kubeharness.conformance.node.target import NodeTarget, Pods


@pytest.mark.node_config(containerLogMaxSize="40Ki", containerLogMaxFiles=3, containerLogMonitorInterval="3s")
async def test_container_logs_are_rotated_and_limited_to_max_files(node: NodeTarget) -> None:
    node.write("chatty", pod("chatty", khelper("app", "--log-rate=100", "--log-line-bytes=400")))  # 40 KB/s
    name = node.pod_name("chatty")
    most = 0

    def files(pods: Pods) -> dict[str, bytes]:
        nonlocal most
        found = node.log_files(pods[name], "app") if name in pods else {}
        assert len(found) <= 3, f"more than containerLogMaxFiles files: {sorted(found)}"
        most = max(most, len(found))
        return found

    pods = await node.until(lambda p: len(files(p)) == 3, 60, "three log files")
    await node.holds(lambda p: len(files(p)) <= 3, 15, "never more than three files")
    names = sorted(node.log_files(pods[name], "app"))
    assert "0.log" in names and all(n.startswith("0.log.") for n in names if n != "0.log"), names
    assert most == 3


async def test_a_crash_looping_container_keeps_its_current_and_last_dead_instance_logs(node: NodeTarget) -> None:
    node.write("gc", pod("gc", khelper("app", "--exit-after=1s", "--exit-code=1", "--log-rate=1")))
    name = node.pod_name("gc")
    await node.until(lambda p: restarts(p, name, "app") >= 3, 180, "three restarts")

    def only_the_last_two(pods: Pods) -> bool:
        n = restarts(pods, name, "app")
        found = set(node.log_files(pods[name], "app")) if name in pods else set()
        return found in ({f"{n}.log", f"{n - 1}.log"}, {f"{n + 1}.log", f"{n}.log"})

    # kubelet collects every minute: the older instances' logs are gone within two
    await node.until(only_the_last_two, 130, "the logs of the current and the last dead instance only")
