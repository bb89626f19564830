"""Node specs: probes with the restart counts and readiness timing kubelet gives, as
test/e2e/common/node/container_probe.go checks them (with periods of a second, so a real node is quick)."""

from __future__ import annotations

from typing import Any

from kubeharness.conformance.node.pods import condition, container, khelper, pod, restarts, stamp, state, status
from kubeharness.conformance.node.target import NodeTarget


def exec_(*command: str, **fields: Any) -> dict[str, Any]:
    return {"exec": {"command": list(command)}, "periodSeconds": 1, "timeoutSeconds": 10, **fields}


def http(port: int, **fields: Any) -> dict[str, Any]:
    return {"httpGet": {"path": "/", "port": port}, "periodSeconds": 1, "timeoutSeconds": 5, **fields}


async def test_a_liveness_probe_that_starts_failing_restarts_the_container_once(node: NodeTarget) -> None:
    app = khelper("app", "--unhealthy-after=5s")
    app["livenessProbe"] = exec_("khelper", "check", "healthy", failureThreshold=1)
    node.write("live", pod("live", app))
    name = node.pod_name("live")
    await node.until(lambda p: restarts(p, name, "app") >= 1, 60, "the restart after the probe failed")
    # the new container is healthy for its first 5 s: no second restart before then
    pods = await node.holds(lambda p: restarts(p, name, "app") == 1, 3, "one restart")
    last = container(pods, name, "app")["lastState"]["terminated"]
    assert stamp(last["finishedAt"]) - stamp(last["startedAt"]) >= 4  # it ran healthy for its 5 s first
    events = await node.events()
    if events is not None:
        reasons = {(e["reason"], e["involvedObject"].get("fieldPath", "")) for e in events}
        assert ("Unhealthy", "spec.containers{app}") in reasons and ("Killing", "spec.containers{app}") in reasons


async def test_a_readiness_probe_on_a_port_nobody_listens_on_is_never_ready(node: NodeTarget) -> None:
    app = khelper("app", "--http-port=8080")
    app["readinessProbe"] = http(8081)
    node.write("deaf", pod("deaf", app))
    name = node.pod_name("deaf")
    await node.until(lambda p: state(p, name, "app") == "running", 60, "the container runs")
    pods = await node.holds(lambda p: not container(p, name, "app").get("ready") and restarts(p, name, "app") == 0,
                            15, "never ready, never restarted")
    assert condition(pods, name, "Ready") == "False" and condition(pods, name, "ContainersReady") == "False"


async def test_a_readiness_probe_waits_for_its_initial_delay(node: NodeTarget) -> None:
    app = khelper("app", "--http-port=8080")
    app["readinessProbe"] = http(8080, initialDelaySeconds=8)
    node.write("delayed", pod("delayed", app))
    name = node.pod_name("delayed")
    pods = await node.until(lambda p: condition(p, name, "Ready") == "True", 60, "ready")
    started = stamp(container(pods, name, "app")["state"]["running"]["startedAt"])
    ready = next(c for c in status(pods, name)["conditions"] if c["type"] == "Ready")
    assert stamp(ready["lastTransitionTime"]) - started >= 8 - 1  # whole-second stamps


async def test_a_startup_probe_holds_off_liveness_until_it_succeeds(node: NodeTarget) -> None:
    app = khelper("app", "--ready-after=5s")
    app["startupProbe"] = exec_("khelper", "check", "ready", failureThreshold=30)
    # the same check as liveness with threshold 1: run before the startup probe succeeded, it would kill at once
    app["livenessProbe"] = exec_("khelper", "check", "ready", failureThreshold=1)
    node.write("slow", pod("slow", app))
    name = node.pod_name("slow")
    await node.until(lambda p: state(p, name, "app") == "running", 60, "the container runs")
    pods = await node.until(lambda p: bool(container(p, name, "app").get("started")), 60, "started")
    assert restarts(pods, name, "app") == 0
    start = stamp(container(pods, name, "app")["state"]["running"]["startedAt"])
    assert node.now_s() - start >= 5 - 1  # not started before the check could pass
    await node.holds(lambda p: restarts(p, name, "app") == 0 and bool(container(p, name, "app").get("ready")), 5,
                     "live and ready once started")
