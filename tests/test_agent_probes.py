"""Probes end to end: manifests into the agent's staticPodPath, ``/pods``, ``/events`` and ``/metrics/probes`` out,
against the CRI emulator on one virtual clock (exec probes through ExecSync, HTTP, TCP and gRPC probes to
the emulated containers' real sockets on their loopback pod IPs)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.promtext import matching
from tests.test_agent_e2e import NODE, Node, container, helper, http_get, phase, pod, start_node, stop_node


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    n = await start_node(tmp_path)
    try:
        yield n
    finally:
        await stop_node(n)


def probe(handler: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {**handler, **fields}


def exec_(*command: str) -> dict[str, Any]:
    return {"exec": {"command": list(command)}}


async def events(node: Node, name: str) -> list[dict[str, Any]]:
    status, body = await http_get(node.port, "/events")
    assert status == 200
    return [e for e in json.loads(body)["items"] if e["involvedObject"]["name"] == f"{name}-{NODE}"]


def when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def reasons(evs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["reason"], e["message"]) for e in evs]


async def test_a_failing_exec_liveness_probe_restarts_the_container(node: Node) -> None:
    app = helper("app", "--unhealthy-after=20s")
    app["livenessProbe"] = probe(exec_("khelper", "check", "healthy"), periodSeconds=5, failureThreshold=3)
    node.write("live", pod("live", app))
    await node.until(lambda p: phase(p, "live") == "Running")
    started = node.clock.now_ns()
    pods = await node.until(lambda p: container(p, "live").get("restartCount", 0) >= 1, limit_s=120)
    waited = (node.clock.now_ns() - started) / 1e9
    # unhealthy from 20 s on; probes every 5 s; the third failure in a row kills it: at 30-35 s
    assert 25 <= waited <= 40, waited
    status = container(pods, "live")
    assert "running" in status["state"] and status["lastState"]["terminated"]["exitCode"] == 0
    evs = await events(node, "live")
    kills = [e for e in evs if e["reason"] == "Killing"]
    assert [e["message"] for e in kills] == ["Container app failed liveness probe, will be restarted"]
    assert kills[0]["type"] == "Normal" and kills[0]["involvedObject"]["fieldPath"] == "spec.containers{app}"
    unhealthy = [e for e in evs if e["reason"] == "Unhealthy"]
    assert unhealthy and unhealthy[0]["message"].startswith("Liveness probe failed:")
    assert unhealthy[0]["count"] >= 3 and unhealthy[0]["type"] == "Warning"
    code, body = await http_get(node.port, "/metrics/probes")
    assert code == 200
    for result in ("failed", "successful"):
        found = matching(body, "prober_probe_total", probe_type="Liveness", result=result, container="app")
        assert found and all(s.value >= 1 for s in found), (result, body)


async def test_a_failing_http_readiness_probe_makes_the_pod_unready_without_a_restart(node: Node) -> None:
    app = helper("app", "--http-port=8080", "--unhealthy-after=30s")
    app["readinessProbe"] = probe({"httpGet": {"path": "/healthz", "port": 8080}}, periodSeconds=2,
                                  failureThreshold=2)
    node.write("ready", pod("ready", app))

    def conditions(p: dict[str, dict[str, Any]]) -> dict[str, str]:
        return {c["type"]: c["status"] for c in p.get(f"ready-{NODE}", {}).get("status", {}).get("conditions", [])}

    # ready once the first probe succeeded (the prober triggers it at once when the container starts)
    pods = await node.until(lambda p: bool(container(p, "ready").get("ready")), limit_s=30)
    assert conditions(pods)["Ready"] == "True" and conditions(pods)["ContainersReady"] == "True"
    pods = await node.until(lambda p: not container(p, "ready").get("ready"), limit_s=60)
    assert conditions(pods)["Ready"] == "False"
    assert container(pods, "ready")["restartCount"] == 0 and "running" in container(pods, "ready")["state"]
    ready = next(c for c in pods[f"ready-{NODE}"]["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["reason"], ready["message"]) == ("ContainersNotReady", "containers with unready status: [app]")
    failed = [m for r, m in reasons(await events(node, "ready")) if r == "Unhealthy"]
    assert failed == ["Readiness probe failed: HTTP probe failed with statuscode: 503"]


async def test_a_startup_probe_gates_liveness_and_readiness_until_it_succeeds(node: Node) -> None:
    app = helper("app", "--ready-after=30s", "--tcp-port=9000")
    app["startupProbe"] = probe(exec_("khelper", "check", "ready"), periodSeconds=5, failureThreshold=20)
    app["livenessProbe"] = probe({"tcpSocket": {"port": 9000}}, periodSeconds=5)
    app["readinessProbe"] = probe({"tcpSocket": {"port": 9000}}, periodSeconds=5)
    node.write("slow", pod("slow", app))
    await node.until(lambda p: "running" in container(p, "slow").get("state", {}), limit_s=30)
    start = node.clock.now_ns()
    flags: list[tuple[float, bool, bool]] = []

    def track(p: dict[str, dict[str, Any]]) -> bool:
        status = container(p, "slow")
        flags.append(((node.clock.now_ns() - start) / 1e9, bool(status.get("started")), bool(status.get("ready"))))
        return flags[-1][2]

    await node.until(track, limit_s=90)
    first_started = next(t for t, started, _ in flags if started)
    assert 25 <= first_started <= 40, flags  # ready-after 30 s, probed every 5 s
    assert all(not ready for _, started, ready in flags if not started)
    _, body = await http_get(node.port, "/metrics/probes")
    assert matching(body, "prober_probe_total", probe_type="Startup", result="failed"), body
    assert matching(body, "prober_probe_total", probe_type="Startup", result="successful"), body
    # liveness and readiness ran only after the start
    assert not matching(body, "prober_probe_total", probe_type="Liveness", result="failed"), body


async def test_a_failing_startup_probe_kills_with_the_probe_s_grace_period(node: Node) -> None:
    app = helper("app", "--ignore-sigterm")
    app["startupProbe"] = probe({"tcpSocket": {"port": 9999}}, periodSeconds=2, failureThreshold=2,
                                terminationGracePeriodSeconds=3)
    node.write("never", pod("never", app, grace=60))
    await node.until(lambda p: "running" in container(p, "never").get("state", {}), limit_s=30)
    pods = await node.until(lambda p: container(p, "never").get("restartCount", 0) >= 1, limit_s=60)
    last = container(pods, "never")["lastState"]["terminated"]
    assert last["exitCode"] == 137  # ignored SIGTERM: killed after the probe's 3 s, not the pod's 60 s
    killed_after = (when(last["finishedAt"]) - when(last["startedAt"])).total_seconds()
    assert killed_after <= 12, last  # started, 2 failures 2 s apart (the first within 2 s), 3 s of grace
    kills = [m for r, m in reasons(await events(node, "never")) if r == "Killing"]
    assert kills[0] == "Container app failed startup probe, will be restarted"
    assert not container(pods, "never")["started"]


async def test_liveness_failure_under_restart_policy_never_only_kills(node: Node) -> None:
    app = helper("app", "--unhealthy-after=5s")
    app["livenessProbe"] = probe(exec_("khelper", "check", "healthy"), periodSeconds=2, failureThreshold=1)
    node.write("once", pod("once", app, restart="Never"))
    pods = await node.until(lambda p: phase(p, "once") in ("Succeeded", "Failed"), limit_s=60)
    assert container(pods, "once")["restartCount"] == 0
    kills = [m for r, m in reasons(await events(node, "once")) if r == "Killing"]
    # nothing is left to run, so the whole pod is killed, and kubelet's KillPod names no reason
    assert kills == ["Stopping container app"]


async def test_without_probes_a_running_container_is_started_and_ready(node: Node) -> None:
    node.write("plain", pod("plain", helper("app")))
    pods = await node.until(lambda p: bool(container(p, "plain").get("ready")), limit_s=30)
    assert container(pods, "plain")["started"] is True
    assert await events(node, "plain") == []


async def test_readiness_gates_keep_a_static_pod_unready(node: Node) -> None:
    manifest = pod("gated", helper("app"))
    manifest["spec"]["readinessGates"] = [{"conditionType": "example.com/feature"}]
    node.write("gated", manifest)
    pods = await node.until(lambda p: bool(container(p, "gated").get("ready")), limit_s=30)
    conditions = {c["type"]: c for c in pods[f"gated-{NODE}"]["status"]["conditions"]}
    assert conditions["ContainersReady"]["status"] == "True"
    assert (conditions["Ready"]["status"], conditions["Ready"]["reason"], conditions["Ready"]["message"]) == (
        "False", "ReadinessGatesNotReady",
        'corresponding condition of pod readiness gate "example.com/feature" does not exist.')


async def test_a_sidecar_starts_first_keeps_running_and_is_probed(node: Node) -> None:
    side = helper("side", "--http-port=8081", "--unhealthy-after=60s")
    side["restartPolicy"] = "Always"
    side["readinessProbe"] = probe({"httpGet": {"port": 8081}}, periodSeconds=5)
    side["livenessProbe"] = probe({"httpGet": {"port": 8081}}, periodSeconds=5, failureThreshold=2)
    setup = helper("setup", "--exit-after=2s")
    node.write("car", pod("car", helper("app"), init=[side, setup]))

    def init_status(p: dict[str, dict[str, Any]], index: int) -> dict[str, Any]:
        return container(p, "car", index, init=True)

    pods = await node.until(lambda p: "running" in container(p, "car").get("state", {}), limit_s=60)
    assert "running" in init_status(pods, 0)["state"]  # the sidecar runs on beside the app
    assert init_status(pods, 1)["state"]["terminated"]["reason"] == "Completed"
    pods = await node.until(lambda p: bool(init_status(p, 0).get("ready")), limit_s=30)
    assert init_status(pods, 0)["started"] is True and phase(pods, "car") == "Running"
    # unhealthy from 60 s: two failed liveness probes restart the sidecar alone
    pods = await node.until(lambda p: init_status(p, 0).get("restartCount", 0) >= 1, limit_s=120)
    assert container(pods, "car")["restartCount"] == 0 and "running" in container(pods, "car")["state"]
    kills = [m for r, m in reasons(await events(node, "car")) if r == "Killing"]
    assert kills == ["Init container side failed liveness probe"]


async def test_a_grpc_liveness_probe_restarts_a_container_that_stops_serving(node: Node) -> None:
    app = helper("app", "--grpc-port=9090", "--grpc-service=app", "--unhealthy-after=20s")
    app["livenessProbe"] = probe({"grpc": {"port": 9090, "service": "app"}}, periodSeconds=5, failureThreshold=2)
    app["readinessProbe"] = probe({"grpc": {"port": 9090}}, periodSeconds=5)
    node.write("rpc", pod("rpc", app))
    pods = await node.until(lambda p: bool(container(p, "rpc").get("ready")), limit_s=30)
    assert container(pods, "rpc")["restartCount"] == 0
    await node.until(lambda p: container(p, "rpc").get("restartCount", 0) >= 1, limit_s=120)
    failed = {m for r, m in reasons(await events(node, "rpc")) if r == "Unhealthy"}
    assert 'Liveness probe failed: service unhealthy (responded with "NOT_SERVING")' in failed


async def test_a_grpc_probe_of_an_unknown_service_fails(node: Node) -> None:
    app = helper("app", "--grpc-port=9090")
    app["readinessProbe"] = probe({"grpc": {"port": 9090, "service": "other"}}, periodSeconds=2)
    node.write("svc", pod("svc", app))
    await node.until(lambda p: "running" in container(p, "svc").get("state", {}), limit_s=30)
    await node.advance(10)
    pods = await node.pods()
    assert container(pods, "svc")["ready"] is False
    failed = [m for r, m in reasons(await events(node, "svc")) if r == "Unhealthy"]
    assert failed == ["Readiness probe failed: error: health rpc probe failed: rpc error: code = NotFound desc = "
                      "unknown service"]


async def test_an_unready_sidecar_keeps_the_pod_unready(node: Node) -> None:
    side = helper("side")
    side["restartPolicy"] = "Always"
    side["readinessProbe"] = probe({"tcpSocket": {"port": 7777}}, periodSeconds=2)  # nothing listens
    node.write("half", pod("half", helper("app"), init=[side]))
    pods = await node.until(lambda p: bool(container(p, "half").get("ready")), limit_s=60)
    conditions = {c["type"]: c for c in pods[f"half-{NODE}"]["status"]["conditions"]}
    assert container(pods, "half", 0, init=True)["ready"] is False
    assert (conditions["ContainersReady"]["status"], conditions["ContainersReady"]["message"]) == (
        "False", "containers with unready status: [side]")
    assert conditions["Ready"]["status"] == "False" and conditions["Initialized"]["status"] == "True"


# every probe kind with every handler: the container turns unhealthy (or never is) and the kind's effect shows
HANDLERS: dict[str, tuple[list[str], dict[str, Any]]] = {
    # handler -> (khelper flags that make it healthy until 10 s, then unhealthy; the probe's handler)
    "exec": (["--unhealthy-after=10s"], exec_("khelper", "check", "healthy")),
    "httpGet": (["--http-port=8080", "--unhealthy-after=10s"], {"httpGet": {"port": 8080}}),
    "grpc": (["--grpc-port=9090", "--unhealthy-after=10s"], {"grpc": {"port": 9090}}),
    "tcpSocket": ([], {"tcpSocket": {"port": 9000}}),  # nothing ever listens: unhealthy from the start
}


@pytest.mark.parametrize("handler", list(HANDLERS))
@pytest.mark.parametrize("kind", ["livenessProbe", "readinessProbe", "startupProbe"])
async def test_every_probe_kind_with_every_handler(node: Node, kind: str, handler: str) -> None:
    flags, action = HANDLERS[handler]
    app = helper("app", *flags)
    app[kind] = probe(action, periodSeconds=2, failureThreshold=2)
    if kind == "startupProbe":
        app[kind]["initialDelaySeconds"] = 12  # first probed once unhealthy: it never starts
    name = f"{kind[:4].lower()}-{handler.lower()}"
    node.write(name, pod(name, app))
    if kind == "readinessProbe":
        if handler != "tcpSocket":
            await node.until(lambda p: bool(container(p, name).get("ready")), limit_s=30)
        await node.until(lambda p: "running" in container(p, name).get("state", {})
                         and not container(p, name).get("ready"), limit_s=60)
        await node.advance(20)
        pods = await node.pods()
        assert not container(pods, name)["ready"] and container(pods, name)["restartCount"] == 0
    else:
        pods = await node.until(lambda p: container(p, name).get("restartCount", 0) >= 1, limit_s=120)
        what = "liveness" if kind == "livenessProbe" else "startup"
        kills = {m for r, m in reasons(await events(node, name)) if r == "Killing"}
        assert kills == {f"Container app failed {what} probe, will be restarted"}
    failed = [m for r, m in reasons(await events(node, name)) if r == "Unhealthy"]
    assert failed and all(m.startswith(f"{kind[:-5].capitalize()} probe failed: ") for m in failed), failed
