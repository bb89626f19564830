"""Node specs: init containers, as test/e2e/common/node/init_container.go checks them: they run one after
another to completion before any app container starts; a failing one is retried (Always, OnFailure) with
the app containers waiting in PodInitializing, or fails the pod (Never)."""

from __future__ import annotations

from kubeharness.conformance.node.pods import condition, container, khelper, phase, pod, reason, restarts, stamp, state
from kubeharness.conformance.node.target import NodeTarget


async def test_init_containers_run_in_order_to_completion_before_the_app(node: NodeTarget) -> None:
    inits = [khelper("first", "--exit-after=1s"), khelper("second", "--exit-after=1s")]
    node.write("inits", pod("inits", khelper("app", "--exit-after=1s"), restart="Never", init=inits))
    name = node.pod_name("inits")
    pods = await node.until(lambda p: phase(p, name) == "Succeeded", 90, "the pod succeeded")
    first, second = (container(pods, name, n, init=True)["state"]["terminated"] for n in ("first", "second"))
    app = container(pods, name, "app")["state"]["terminated"]
    assert [t["reason"] for t in (first, second, app)] == ["Completed"] * 3
    assert stamp(first["finishedAt"]) <= stamp(second["startedAt"])  # one after the other
    assert stamp(second["finishedAt"]) <= stamp(app["startedAt"])
    assert condition(pods, name, "Initialized") == "True"


async def test_a_failing_init_container_is_retried_and_holds_the_app_back_under_always(node: NodeTarget) -> None:
    inits = [khelper("fails", "--exit-after=1s", "--exit-code=1")]
    node.write("stuck", pod("stuck", khelper("app"), init=inits))
    name = node.pod_name("stuck")
    pods = await node.until(lambda p: restarts(p, name, "fails", init=True) >= 2, 120, "the init container retried")
    assert phase(pods, name) == "Pending"
    assert (state(pods, name, "app"), reason(pods, name, "app")) == ("waiting", "PodInitializing")
    assert condition(pods, name, "Initialized") == "False"
    assert condition(pods, name, "Ready") == "False"
    initialized = next(c for c in pods[name]["status"]["conditions"] if c["type"] == "Initialized")
    assert initialized.get("reason") == "ContainersNotInitialized"


async def test_a_failing_init_container_fails_the_pod_under_never(node: NodeTarget) -> None:
    inits = [khelper("fails", "--exit-after=1s", "--exit-code=1"), khelper("never", "--exit-after=1s")]
    node.write("doomed", pod("doomed", khelper("app"), restart="Never", init=inits))
    name = node.pod_name("doomed")
    pods = await node.until(lambda p: phase(p, name) == "Failed", 90, "the pod failed")
    failed = container(pods, name, "fails", init=True)["state"]["terminated"]
    assert (failed["exitCode"], failed["reason"]) == (1, "Error")
    assert restarts(pods, name, "fails", init=True) == 0
    assert state(pods, name, "never", init=True) == "waiting"  # the next one never ran
    assert (state(pods, name, "app"), reason(pods, name, "app")) == ("waiting", "PodInitializing")
    assert condition(pods, name, "Initialized") == "False"
