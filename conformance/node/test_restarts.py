"""Node specs: the pause sandbox across restarts, restart policies, and the crash-loop backoff.

As test/e2e/common/node (container_probe's restart counts, pods' RestartPolicy) and kubelet's backoff
(10 s doubling to 300 s, counted from the container's exit): a virtual-clock node is followed to the cap,
a real-clock node through its first restarts.
"""

from __future__ import annotations

import pytest

from kubeharness.conformance.node.pods import (
    container,
    khelper,
    phase,
    pod,
    reason,
    restarts,
    stamp,
    state,
    status,
)
from kubeharness.conformance.node.target import NodeTarget, Pods


async def test_the_pod_ip_stays_while_its_container_restarts(node: NodeTarget) -> None:
    node.write("crashy", pod("crashy", khelper("app", "--exit-after=1s", "--exit-code=1")))
    name = node.pod_name("crashy")
    pods = await node.until(lambda p: bool(status(p, name).get("podIP")), 60, "the pod has an IP")
    ip = status(pods, name)["podIP"]
    pods = await node.until(lambda p: restarts(p, name, "app") >= 2, 120, "two restarts")
    assert status(pods, name)["podIP"] == ip  # the same sandbox: its network stayed
    assert phase(pods, name) == "Running"


@pytest.mark.parametrize(("policy", "code", "want_phase", "want_restarts"), [
    ("Never", 0, "Succeeded", 0),
    ("Never", 1, "Failed", 0),
    ("OnFailure", 0, "Succeeded", 0),
])
async def test_a_container_that_exits_under_a_policy_that_keeps_it_down(
        node: NodeTarget, policy: str, code: int, want_phase: str, want_restarts: int) -> None:
    node.write("once", pod("once", khelper("app", "--exit-after=1s", f"--exit-code={code}"), restart=policy))
    name = node.pod_name("once")
    pods = await node.until(lambda p: phase(p, name) in ("Succeeded", "Failed"), 60, "the pod finished")
    assert phase(pods, name) == want_phase
    terminated = container(pods, name, "app")["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (code, "Completed" if code == 0 else "Error")
    pods = await node.holds(lambda p: restarts(p, name, "app") == want_restarts, 15, "no restart")
    assert phase(pods, name) == want_phase  # a terminal phase stays


@pytest.mark.parametrize(("policy", "code"), [("Always", 0), ("Always", 1), ("OnFailure", 1)])
async def test_a_container_that_exits_under_a_policy_that_restarts_it(
        node: NodeTarget, policy: str, code: int) -> None:
    node.write("again", pod("again", khelper("app", "--exit-after=1s", f"--exit-code={code}"), restart=policy))
    name = node.pod_name("again")
    pods = await node.until(lambda p: restarts(p, name, "app") >= 2, 120, "two restarts")
    assert phase(pods, name) == "Running"  # a restarting pod is Running, whatever the container does
    last = container(pods, name, "app")["lastState"]["terminated"]
    assert (last["exitCode"], last["reason"]) == (code, "Completed" if code == 0 else "Error")


async def test_the_crash_loop_backoff_doubles_from_10_s_to_300_s(node: NodeTarget) -> None:
    # each run lasts three reads: its start and its exit are seen even where the restart is immediate
    node.write("loop", pod("loop", khelper("app", "--exit-after=3s", "--exit-code=2")))
    name = node.pod_name("loop")
    started: dict[int, float] = {}  # instance n (restartCount n while it is current): its start and its exit
    finished: dict[int, float] = {}
    saw_backoff = False
    # virtual time: to the cap and once past it; real time: the immediate restart and the first two waits
    want = [0.0, 10, 20, 40, 80, 160, 300, 300] if node.virtual else [0.0, 10, 20]

    def progress(pods: Pods) -> bool:
        nonlocal saw_backoff
        app = container(pods, name, "app")
        saw_backoff |= reason(pods, name, "app") == "CrashLoopBackOff"
        count = int(app.get("restartCount", 0))
        now = app.get("state", {}).get("running") or app.get("state", {}).get("terminated") or {}
        if now.get("startedAt"):
            started[count] = stamp(now["startedAt"])
        if now.get("finishedAt"):
            finished[count] = stamp(now["finishedAt"])
        # the last run: the one before the current (running, terminated) instance, or, while the container
        # waits out its backoff, the instance the count still names (a run of a second may come and go unseen)
        last = app.get("lastState", {}).get("terminated", {})
        previous = count if "waiting" in app.get("state", {}) else count - 1
        if previous >= 0 and last.get("finishedAt"):
            started.setdefault(previous, stamp(last["startedAt"]))
            finished[previous] = stamp(last["finishedAt"])
        return all(n in started and n - 1 in finished for n in range(1, len(want) + 1))

    try:
        await node.until(progress, sum(want) + 60 * len(want), "the restarts")
    except AssertionError as err:
        raise AssertionError(f"starts seen {started}, exits seen {finished}: {err}") from None
    assert saw_backoff
    # restart n waits from the exit of instance n - 1 to the start of instance n (kubelet's backoff window)
    got = [started[n] - finished[n - 1] for n in range(1, len(want) + 1)]
    slack = 3.0 if node.virtual else 8.0  # a sync after the window opens; the stamps have whole seconds
    for n, (wait, expected) in enumerate(zip(got, want, strict=True), start=1):
        assert expected - 1 <= wait <= expected + slack, f"restart {n}: {wait:g} s after the exit, not {expected:g}"
    assert state(await node.pods(), name, "app") in ("running", "waiting", "terminated")
