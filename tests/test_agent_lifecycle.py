"""The lifecycle hook runner, handler by handler: exec through ExecSync on the real CRI emulator, httpGet against
real HTTP servers on loopback, sleep on a virtual clock; kubelet's messages and events, the interrupt, and
preStop bounded by the grace period."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from kubeharness.agent.events import Recorder
from kubeharness.agent.pod.model import (
    Container,
    ContainerPort,
    ExecAction,
    HTTPGetAction,
    Lifecycle,
    Pod,
    PodSpec,
    SleepAction,
)
from kubeharness.agent.runtime.client import RuntimeClient
from kubeharness.agent.runtime.lifecycle import USER_AGENT, HookFailure, HookRunner
from kubeharness.agent.server.metrics import Registry
from kubeharness.clock import VirtualClock
from kubeharness.emulators.cri.config import CriConfig
from kubeharness.faults import FaultEngine, load_plan
from kubeharness.wire.cri import api_pb2 as api
from tests import test_agent_e2e as e2e
from tests.conftest import CriHarness, free_port, private_pod_cidr
from tests.promtext import value

POD_NAME = 'Pod "web_default(uid-1)"'


def pod_with(container: Container) -> Pod:
    return Pod("uid-1", "web", "default", PodSpec(containers=(container,)))


def no_ips() -> Any:
    async def ips() -> Sequence[str]:
        return ()
    return ips


def ips_of(*addresses: str) -> Any:
    async def ips() -> Sequence[str]:
        return addresses
    return ips


@dataclass
class Served:
    """An HTTP server on 127.0.0.1 that answers ``status`` and records the requests it got."""

    port: int
    requests: list[dict[str, str]] = field(default_factory=list)


@pytest.fixture
async def server() -> AsyncIterator[Served]:
    served = Served(free_port())

    async def answer(request: web.Request) -> web.Response:
        served.requests.append({"path": request.path_qs, **dict(request.headers)})
        if request.path == "/moved":
            raise web.HTTPFound("/landed")
        if request.path == "/loop":
            raise web.HTTPFound("/loop")
        return web.Response(status=int(request.query.get("status", "200")), text="ok")

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", served.port)
    await site.start()
    try:
        yield served
    finally:
        await runner.cleanup()


@dataclass
class Node:
    cri: CriHarness
    client: RuntimeClient
    recorder: Recorder
    hooks: HookRunner

    @property
    def clock(self) -> VirtualClock:
        clock = self.cri.clock
        assert isinstance(clock, VirtualClock)
        return clock


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    clock = VirtualClock()
    cri = CriHarness(root=tmp_path, clock=clock, config=CriConfig(pod_cidr=private_pod_cidr()),
                     faults=FaultEngine(load_plan("rules: []"), clock))
    await cri.start()
    client = RuntimeClient(f"unix://{cri.socket}", None, Registry(), timeout_s=5)
    recorder = Recorder(clock, "node-1")
    try:
        yield Node(cri, client, recorder, HookRunner(clock, client, recorder))
    finally:
        await client.close()
        await cri.stop()


async def running(node: Node, *flags: str) -> str:
    _, cid = await node.cri.run_container(args=list(flags))
    return cid


# -- exec ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("command", "failure"), [
    (("true",), None),
    (("khelper", "check", "healthy"), None),
    (("khelper", "exit", "3"), HookFailure(
        "command 'khelper exit 3' exited with 3: ",
        f'Exec lifecycle hook ([khelper exit 3]) for Container "app" in {POD_NAME} failed - error: command '
        "'khelper exit 3' exited with 3: , message: \"\"")),
    (("khelper", "check", "ready"), HookFailure(
        "command 'khelper check ready' exited with 1: not ready yet\n",
        f'Exec lifecycle hook ([khelper check ready]) for Container "app" in {POD_NAME} failed - error: command '
        "'khelper check ready' exited with 1: not ready yet\n, message: \"not ready yet\\n\"")),
])
async def test_exec_hooks_succeed_on_exit_0_and_fail_with_kubelets_message(
        node: Node, command: tuple[str, ...], failure: HookFailure | None) -> None:
    cid = await running(node, "--ready-after=1h")
    hook = ExecAction(command)
    container = Container("app", "img", lifecycle=Lifecycle(post_start=hook))
    assert await node.hooks.run(pod_with(container), container, cid, hook, no_ips()) == failure


async def clock_until_done(clock: VirtualClock, work: asyncio.Future[Any], limit_s: float) -> float:
    """Advance the clock a second at a time (letting the emulator's socket catch up in between) until
    ``work`` is done; the virtual seconds that took."""
    start = clock.now_ns()
    while not work.done():
        assert (clock.now_ns() - start) / 1e9 < limit_s, "not done in time"
        await clock.advance(1)
        await asyncio.sleep(0.01)
    return (clock.now_ns() - start) / 1e9


async def test_an_exec_hook_has_no_timeout(node: Node) -> None:
    cid = await running(node)
    hook = ExecAction(("sleep", "300"))
    container = Container("app", "img")
    work = asyncio.ensure_future(node.hooks.run(pod_with(container), container, cid, hook, no_ips()))
    took = await clock_until_done(node.clock, work, 400)
    assert 300 <= took <= 310  # kubelet passes timeout 0: the command runs as long as it takes
    assert work.result() is None


async def test_an_exec_hook_in_a_container_that_is_gone_fails_with_the_runtimes_error(node: Node) -> None:
    hook = ExecAction(("true",))
    container = Container("app", "img")
    failure = await node.hooks.run(pod_with(container), container, "f" * 64, hook, no_ips())
    assert failure is not None and failure.error.startswith("rpc error: code = NotFound desc = ")


# -- httpGet ------------------------------------------------------------------------------------------------


def http_container(hook: HTTPGetAction) -> Container:
    return Container("app", "img", ports=(ContainerPort(8080, name="web"),), lifecycle=Lifecycle(post_start=hook))


async def test_an_http_hook_goes_to_the_pod_ip_with_kubelets_headers(node: Node, server: Served) -> None:
    hook = HTTPGetAction(port=server.port, path="/started?x=1")
    container = http_container(hook)
    assert await node.hooks.run(pod_with(container), container, "cid", hook, ips_of("127.0.0.1")) is None
    [request] = server.requests
    assert request["path"] == "/started?x=1"
    assert request["User-Agent"] == USER_AGENT == "kube-lifecycle/1.36" and request["Accept"] == "*/*"
    assert request["Host"] == f"127.0.0.1:{server.port}"


@pytest.mark.parametrize("status", [200, 302, 404, 500, 503])
async def test_any_http_answer_is_a_success(node: Node, server: Served, status: int) -> None:
    # kubelet's lifecycle runner fails only on a transport error: the status is not looked at
    hook = HTTPGetAction(port=server.port, path=f"/x?status={status}", host="127.0.0.1")
    container = http_container(hook)
    assert await node.hooks.run(pod_with(container), container, "cid", hook, no_ips()) is None


async def test_an_http_hook_keeps_the_headers_it_sets(node: Node, server: Served) -> None:
    hook = HTTPGetAction(port=server.port, host="127.0.0.1",
                         headers=(("user-agent", "mine/1"), ("X-Token", "t"), ("Host", "example.test")))
    container = http_container(hook)
    assert await node.hooks.run(pod_with(container), container, "cid", hook, no_ips()) is None
    [request] = server.requests
    assert (request["User-Agent"], request["X-Token"], request["Host"]) == ("mine/1", "t", "example.test")


async def test_an_http_hook_follows_redirects_but_not_forever(node: Node, server: Served) -> None:
    hook = HTTPGetAction(port=server.port, path="/moved", host="127.0.0.1")
    container = http_container(hook)
    assert await node.hooks.run(pod_with(container), container, "cid", hook, no_ips()) is None
    assert [r["path"] for r in server.requests] == ["/moved", "/landed"]
    looping = HTTPGetAction(port=server.port, path="/loop", host="127.0.0.1")
    failure = await node.hooks.run(pod_with(container), container, "cid", looping, no_ips())
    assert failure is not None and failure.error.endswith("stopped after 10 redirects")


async def test_an_http_hook_resolves_a_port_name(node: Node) -> None:
    port = free_port()
    hook = HTTPGetAction(port="web", host="127.0.0.1")
    container = Container("app", "img", ports=(ContainerPort(port, name="web"),))
    failure = await node.hooks.run(pod_with(container), container, "cid", hook, no_ips())
    assert failure == HookFailure(
        f'Get "http://127.0.0.1:{port}/": dial tcp 127.0.0.1:{port}: connect: connection refused',
        f'HTTP lifecycle hook (/) for Container "app" in {POD_NAME} failed - error: Get "http://127.0.0.1:{port}/": '
        f"dial tcp 127.0.0.1:{port}: connect: connection refused")
    unknown = HTTPGetAction(port="nope", host="127.0.0.1")
    failure = await node.hooks.run(pod_with(container), container, "cid", unknown, no_ips())
    assert failure is not None and failure.error == 'port "nope" not found'


async def test_an_http_hook_without_host_needs_a_pod_ip(node: Node) -> None:
    hook = HTTPGetAction(port=80)
    container = http_container(hook)
    failure = await node.hooks.run(pod_with(container), container, "cid", hook, no_ips())
    assert failure is not None and failure.error.startswith("failed to find networking container")


async def test_https_answered_in_plain_http_is_retried_over_http(node: Node, server: Served) -> None:
    hook = HTTPGetAction(port=server.port, path="/secure", host="127.0.0.1", scheme="HTTPS",
                         headers=(("Authorization", "Bearer x"),))
    container = http_container(hook)
    assert await node.hooks.run(pod_with(container), container, "cid", hook, no_ips()) is None
    assert [r["path"] for r in server.requests if r["path"] == "/secure"] == ["/secure"]
    assert "Authorization" not in server.requests[-1]  # kubelet drops it for the plain retry
    [event] = node.recorder.events()
    assert (event.type, event.reason, event.field_path) == ("Warning", "LifecycleHTTPFallback", "")
    assert event.message == (f"request to HTTPS lifecycle hook 127.0.0.1:{server.port} got HTTP response, "
                             "retry with HTTP succeeded")


# -- sleep and interrupts -----------------------------------------------------------------------------------


async def test_a_sleep_hook_sleeps_on_the_clock(node: Node) -> None:
    hook = SleepAction(5)
    container = Container("app", "img")
    work = asyncio.ensure_future(node.hooks.run(pod_with(container), container, "cid", hook, no_ips()))
    await node.clock.advance(4.9)
    assert not work.done()
    await node.clock.advance(0.2)
    assert await asyncio.wait_for(work, 10) is None


@pytest.mark.parametrize(("hook", "error"), [
    (SleepAction(60), "container terminated before sleep hook finished"),
    (ExecAction(("sleep", "600")), "context canceled"),
])
async def test_an_interrupted_hook_fails(node: Node, hook: SleepAction | ExecAction, error: str) -> None:
    cid = await running(node)
    container = Container("app", "img")
    stop = asyncio.Event()
    work = asyncio.ensure_future(node.hooks.run(pod_with(container), container, cid, hook, no_ips(), stop))
    await node.clock.advance(1)
    assert not work.done()
    stop.set()
    failure = await asyncio.wait_for(work, 10)
    assert failure is not None and failure.error == error
    if isinstance(hook, SleepAction):
        assert failure.message == (f'Sleep lifecycle hook (60) for Container "app" in {POD_NAME} failed - error: '
                                   "container terminated before sleep hook finished")


async def test_post_start_records_kubelets_event_without_the_output(node: Node) -> None:
    cid = await running(node)
    container = Container("app", "img", lifecycle=Lifecycle(post_start=ExecAction(("khelper", "exit", "1"))))
    failure = await node.hooks.post_start(pod_with(container), container, cid, no_ips())
    assert failure is not None
    [event] = node.recorder.events()
    assert (event.type, event.reason, event.message, event.field_path) == (
        "Warning", "FailedPostStartHook", "PostStartHook failed", "spec.containers{app}")
    ok = Container("ok", "img", lifecycle=Lifecycle(post_start=ExecAction(("true",))))
    assert await node.hooks.post_start(pod_with(ok), ok, cid, no_ips()) is None
    assert len(node.recorder.events()) == 1


# -- preStop within the grace period ------------------------------------------------------------------------


@pytest.mark.parametrize(("seconds", "grace", "took"), [(5, 30, 5), (40, 30, 30), (0, 30, 0), (3, 3, 3)])
async def test_pre_stop_runs_at_most_the_grace_period(node: Node, seconds: int, grace: int, took: int) -> None:
    container = Container("app", "img", lifecycle=Lifecycle(pre_stop=SleepAction(seconds)))
    work = asyncio.ensure_future(node.hooks.pre_stop(pod_with(container), container, "cid", grace, no_ips()))
    for _ in range(grace + 2):
        if work.done():
            break
        await node.clock.advance(1)
    assert await asyncio.wait_for(work, 10) == took
    assert node.recorder.events() == []


async def test_a_failing_pre_stop_records_its_event(node: Node) -> None:
    cid = await running(node)
    container = Container("app", "img", lifecycle=Lifecycle(pre_stop=ExecAction(("khelper", "exit", "2"))))
    assert await node.hooks.pre_stop(pod_with(container), container, cid, 30, no_ips()) == 0
    [event] = node.recorder.events()
    assert (event.reason, event.message, event.type) == ("FailedPreStopHook", "PreStopHook failed", "Warning")
    assert await node.hooks.pre_stop(pod_with(Container("x", "i")), Container("x", "i"), cid, 30, no_ips()) == 0


# -- end to end through the agent on the CRI emulator (virtual clock) ----------------------------------------


@pytest.fixture
async def agent_node(tmp_path: Path) -> AsyncIterator[e2e.Node]:
    n = await e2e.start_node(tmp_path)
    try:
        yield n
    finally:
        await e2e.stop_node(n)


def with_hooks(c: dict[str, Any], post_start: dict[str, Any] | None = None,
               pre_stop: dict[str, Any] | None = None) -> dict[str, Any]:
    hooks = {k: v for k, v in (("postStart", post_start), ("preStop", pre_stop)) if v is not None}
    return {**c, "lifecycle": hooks}


def exec_hook(*command: str) -> dict[str, Any]:
    return {"exec": {"command": list(command)}}


def sleep_hook(seconds: int) -> dict[str, Any]:
    return {"sleep": {"seconds": seconds}}


def state_of(pods: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    return dict(e2e.container(pods, name).get("state", {}))


def when(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


async def pod_events(node: e2e.Node, name: str) -> list[tuple[str, str, str]]:
    return [(e["type"], e["reason"], e["message"]) for e in await agent_events(node, name)]


async def agent_events(node: e2e.Node, name: str) -> list[dict[str, Any]]:
    code, body = await e2e.http_get(node.port, "/events")
    assert code == 200
    return [e for e in json.loads(body)["items"] if e["involvedObject"]["name"] == f"{name}-{e2e.NODE}"]


async def test_a_post_start_exec_runs_before_the_container_counts_as_running(agent_node: e2e.Node) -> None:
    app = with_hooks(e2e.helper("app"), post_start=exec_hook("khelper", "check", "healthy"))
    agent_node.write("hooked", e2e.pod("hooked", app))
    pods = await agent_node.until(lambda p: e2e.phase(p, "hooked") == "Running", limit_s=60)
    assert e2e.container(pods, "hooked")["restartCount"] == 0
    assert await pod_events(agent_node, "hooked") == []
    text = (await e2e.http_get(agent_node.port, "/metrics"))[1].decode()
    assert value(text, "kubelet_runtime_operations_total", operation_type="exec_sync") == 1


async def test_a_post_start_sleep_holds_the_container_back_from_running(agent_node: e2e.Node) -> None:
    app = with_hooks(e2e.helper("app"), post_start=sleep_hook(20))
    agent_node.write("slow", e2e.pod("slow", app))
    seen: list[tuple[float, str]] = []

    def track(p: dict[str, dict[str, Any]]) -> bool:
        seen.append((agent_node.clock.now_ns() / 1e9, e2e.phase(p, "slow")))
        return "running" in state_of(p, "slow")

    pods = await agent_node.until(track, limit_s=90)
    started = when(state_of(pods, "slow")["running"]["startedAt"])
    # the runtime started it, and for the 20 s of the hook the status still showed it waiting, the pod Pending
    assert agent_node.clock.now_ns() / 1e9 - started >= 19, seen
    waiting = [t for t, ph in seen if t >= started + 2 and t <= started + 18]
    assert waiting and all(ph == "Pending" for t, ph in seen if started + 2 <= t <= started + 18), seen


async def test_a_failing_post_start_kills_and_restarts_the_container(agent_node: e2e.Node) -> None:
    app = with_hooks(e2e.helper("app", "--ignore-sigterm"), post_start=exec_hook("khelper", "exit", "3"))
    agent_node.write("bad", e2e.pod("bad", app, grace=10))
    pods = await agent_node.until(
        lambda p: state_of(p, "bad").get("waiting", {}).get("reason") == "PostStartHookError", limit_s=60)
    uid = pods[f"bad-{e2e.NODE}"]["metadata"]["uid"]
    assert state_of(pods, "bad")["waiting"]["message"] == (
        f'Exec lifecycle hook ([khelper exit 3]) for Container "app" in Pod "bad-{e2e.NODE}_default({uid})" failed - '
        "error: command 'khelper exit 3' exited with 3: , message: \"\"")
    pods = await agent_node.until(
        lambda p: state_of(p, "bad").get("waiting", {}).get("reason") == "CrashLoopBackOff", limit_s=120)
    status = e2e.container(pods, "bad")
    assert status["restartCount"] >= 1
    last = status["lastState"]["terminated"]
    # it ignores SIGTERM: killed with the pod's grace of 10 s
    assert last["exitCode"] == 137 and 9 <= when(last["finishedAt"]) - when(last["startedAt"]) <= 12
    evs = await pod_events(agent_node, "bad")
    assert ("Warning", "FailedPostStartHook", "PostStartHook failed") in evs
    assert ("Normal", "Killing", "FailedPostStartHook") in evs


@pytest.mark.parametrize(("sigterm_code", "final"), [(143, "Failed"), (0, "Succeeded")])
async def test_a_post_start_failure_under_restart_policy_never_ends_the_pod(
        agent_node: e2e.Node, sigterm_code: int, final: str) -> None:
    # killed, not restarted: the phase follows the exit code the kill left, as for any container
    app = with_hooks(e2e.helper("app", f"--sigterm-exit-code={sigterm_code}"), post_start=exec_hook("false"))
    agent_node.write("once", e2e.pod("once", app, restart="Never"))
    pods = await agent_node.until(lambda p: e2e.phase(p, "once") in ("Failed", "Succeeded"), limit_s=60)
    status = e2e.container(pods, "once")
    assert e2e.phase(pods, "once") == final
    assert status["restartCount"] == 0 and status["state"]["terminated"]["exitCode"] == sigterm_code


def liveness_kill(*flags: str, pre_stop: dict[str, Any], **probe: Any) -> dict[str, Any]:
    app = with_hooks(e2e.helper("app", "--unhealthy-after=10s", *flags), pre_stop=pre_stop)
    app["livenessProbe"] = {"exec": {"command": ["khelper", "check", "healthy"]}, "periodSeconds": 5,
                            "failureThreshold": 1, **probe}
    return app


async def killed_after(node: e2e.Node, name: str) -> tuple[float, dict[str, Any]]:
    """Wait for the first liveness restart: (seconds from the Killing event to the old container's end, its
    terminated state)."""
    pods = await node.until(lambda p: e2e.container(p, name).get("restartCount", 0) >= 1, limit_s=180)
    last = e2e.container(pods, name)["lastState"]["terminated"]
    [kill] = [e for e in await agent_events(node, name) if e["reason"] == "Killing"]
    assert kill["message"] == "Container app failed liveness probe, will be restarted"
    return when(last["finishedAt"]) - when(kill["firstTimestamp"]), last


async def test_pre_stop_runs_before_sigterm(agent_node: e2e.Node) -> None:
    app = liveness_kill("--termination-message=bye", pre_stop=sleep_hook(5))
    agent_node.write("term", e2e.pod("term", app))
    took, last = await killed_after(agent_node, "term")
    assert 4 <= took <= 6.5, took  # SIGTERM only after the 5 s hook; it then exits at once
    assert (last["exitCode"], last.get("message")) == (0, "bye")  # written as it exited after SIGTERM


async def test_pre_stop_eats_into_the_grace_period(agent_node: e2e.Node) -> None:
    app = liveness_kill("--ignore-sigterm", "--termination-message=never written", pre_stop=sleep_hook(5))
    agent_node.write("grace", e2e.pod("grace", app, grace=30))
    took, last = await killed_after(agent_node, "grace")
    # 5 s of hook, then StopContainer with the 25 s left: SIGKILL 30 s after the kill began, not 35
    assert 29 <= took <= 31.5, took
    assert last["exitCode"] == 137 and "message" not in last  # SIGKILL leaves no time to write it


async def test_a_pre_stop_longer_than_the_grace_is_cut_and_stop_gets_2_s(agent_node: e2e.Node) -> None:
    app = liveness_kill("--ignore-sigterm", pre_stop=sleep_hook(20), terminationGracePeriodSeconds=3)
    agent_node.write("cut", e2e.pod("cut", app, grace=30))
    took, last = await killed_after(agent_node, "cut")
    assert 4 <= took <= 6.5, took  # the probe's grace of 3 s all to the hook, then kubelet's minimum of 2 s
    assert last["exitCode"] == 137


async def test_a_failing_pre_stop_is_reported_and_the_pod_still_goes(agent_node: e2e.Node) -> None:
    app = with_hooks(e2e.helper("app"), pre_stop=exec_hook("khelper", "exit", "1"))
    agent_node.write("leaving", e2e.pod("leaving", app))
    await agent_node.until(lambda p: e2e.phase(p, "leaving") == "Running", limit_s=60)
    (agent_node.manifests / "leaving.json").unlink()
    await agent_node.until(lambda p: f"leaving-{e2e.NODE}" not in p, limit_s=60)

    async def stopped() -> bool:
        return all(sb.state != api.SANDBOX_READY for sb in await agent_node.sandboxes())

    for _ in range(400):
        if await stopped():
            break
        await agent_node.clock.advance(0.25)
        await asyncio.sleep(0.005)
    assert await stopped()
    evs = await pod_events(agent_node, "leaving")
    assert ("Warning", "FailedPreStopHook", "PreStopHook failed") in evs
    assert ("Normal", "Killing", "Stopping container app") in evs


async def test_a_tcp_socket_post_start_cannot_run_and_kills_the_container(agent_node: e2e.Node) -> None:
    # the API server accepts tcpSocket hooks (kept for compatibility); kubelet's runner has no case for them
    app = e2e.helper("app", "--tcp-port=80")
    app["lifecycle"] = {"postStart": {"tcpSocket": {"port": 80}}}
    agent_node.write("tcp", e2e.pod("tcp", app, grace=2))
    pods = await agent_node.until(
        lambda p: state_of(p, "tcp").get("waiting", {}).get("reason") == "PostStartHookError", limit_s=60)
    assert state_of(pods, "tcp")["waiting"]["message"] == (
        "Cannot run handler: invalid handler: &LifecycleHandler{Exec:nil,HTTPGet:nil,"
        "TCPSocket:&TCPSocketAction{Port:{0 80 },Host:,},Sleep:nil,}")
    assert ("Warning", "FailedPostStartHook", "PostStartHook failed") in await pod_events(agent_node, "tcp")
