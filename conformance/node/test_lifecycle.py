"""Node specs: lifecycle hooks, termination messages, graceful deletion, activeDeadlineSeconds and OOMKilled,
as test/e2e/common/node (lifecycle_hook.go, runtime.go's termination message cases, pods.go) checks them."""

from __future__ import annotations

from typing import Any

from kubeharness.conformance.node.pods import container, khelper, phase, pod, restarts, state, status
from kubeharness.conformance.node.target import NodeTarget


def terminated(pods: dict[str, Any], name: str, c: str = "app") -> dict[str, Any]:
    return dict(container(pods, name, c).get("state", {}).get("terminated", {}))


async def stopped_after(node: NodeTarget, full_name: str, since: float, within_s: float) -> float:
    """Node seconds from ``since`` until the runtime runs none of the pod's containers."""
    deadline = node.now_s() + within_s
    while await node.running(full_name):
        assert node.now_s() < deadline, f"{full_name}: still running {within_s:g} s on"
        await node.wait(node.poll_s)
    return node.now_s() - since


async def test_a_failing_post_start_hook_kills_the_container_and_it_is_restarted(node: NodeTarget) -> None:
    app = khelper("app", "--ready-after=1h")
    app["lifecycle"] = {"postStart": {"exec": {"command": ["khelper", "check", "ready"]}}}  # fails: exit 1
    node.write("hooked", pod("hooked", app))
    name = node.pod_name("hooked")
    await node.until(lambda p: restarts(p, name, "app") >= 1, 90, "restarted after its postStart hook failed")
    events = await node.events()
    if events is not None:
        assert any(e["reason"] == "FailedPostStartHook" for e in events), events


async def test_a_pre_stop_hook_runs_before_the_container_is_stopped(node: NodeTarget) -> None:
    app = khelper("app")
    app["lifecycle"] = {"preStop": {"sleep": {"seconds": 4}}}
    node.write("polite", pod("polite", app, grace=20))
    name = node.pod_name("polite")
    await node.until(lambda p: state(p, name, "app") == "running", 60, "running")
    removed = node.now_s()
    node.remove("polite")
    took = await stopped_after(node, name, removed, 60)
    assert 4 <= took <= 20, f"the container stopped {took:.1f} s after its deletion (preStop sleeps 4 s, grace 20 s)"


async def test_a_container_that_ignores_sigterm_is_killed_at_the_end_of_its_grace_period(node: NodeTarget) -> None:
    node.write("stubborn", pod("stubborn", khelper("app", "--ignore-sigterm"), grace=5))
    node.write("willing", pod("willing", khelper("app"), grace=30))
    stubborn, willing = node.pod_name("stubborn"), node.pod_name("willing")
    await node.until(lambda p: all(state(p, n, "app") == "running" for n in (stubborn, willing)), 60, "running")
    removed = node.now_s()
    node.remove("stubborn")
    node.remove("willing")
    took = await stopped_after(node, willing, removed, 60)
    assert took <= 15, f"the container that stops on SIGTERM took {took:.1f} s (grace 30 s)"
    took = await stopped_after(node, stubborn, removed, 60)
    assert 5 - 1 <= took <= 5 + 15, f"the container that ignores SIGTERM stopped {took:.1f} s after (grace 5 s)"


async def test_the_termination_message_is_read_from_the_file(node: NodeTarget) -> None:
    app = khelper("app", "--exit-after=1s", "--termination-message=all done")
    node.write("says", pod("says", app, restart="Never"))
    name = node.pod_name("says")
    pods = await node.until(lambda p: phase(p, name) == "Succeeded", 60, "succeeded")
    assert terminated(pods, name)["message"] == "all done"


async def test_the_termination_message_falls_back_to_the_log_on_error(node: NodeTarget) -> None:
    app = khelper("app", "--log-rate=10", "--log-count=3", "--log-text=last words", "--exit-after=2s",
                  "--exit-code=1")
    app["terminationMessagePolicy"] = "FallbackToLogsOnError"
    node.write("fallback", pod("fallback", app, restart="Never"))
    name = node.pod_name("fallback")
    pods = await node.until(lambda p: phase(p, name) == "Failed", 60, "failed")
    assert terminated(pods, name)["message"] == "last words 1\nlast words 2\nlast words 3\n"


async def test_a_pod_past_its_active_deadline_fails_with_deadline_exceeded(node: NodeTarget) -> None:
    node.write("late", pod("late", khelper("app"), activeDeadlineSeconds=5))
    name = node.pod_name("late")
    pods = await node.until(lambda p: phase(p, name) == "Running", 60, "running")
    began = node.now_s()
    pods = await node.until(lambda p: phase(p, name) == "Failed", 60, "failed past its deadline")
    assert status(pods, name)["reason"] == "DeadlineExceeded"
    assert node.now_s() - began <= 5 + 30  # killed, not left running
    await node.holds(lambda p: restarts(p, name, "app") == 0 and phase(p, name) == "Failed", 5, "never restarted")


async def test_a_container_over_its_memory_limit_is_oom_killed(node: NodeTarget) -> None:
    app = khelper("app", "--memory-mib=64")
    app["resources"] = {"limits": {"memory": "32Mi"}}
    node.write("greedy", pod("greedy", app, restart="Never"))
    name = node.pod_name("greedy")
    pods = await node.until(lambda p: phase(p, name) == "Failed", 60, "failed")
    assert terminated(pods, name)["reason"] == "OOMKilled"
