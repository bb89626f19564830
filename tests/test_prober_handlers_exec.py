"""The prober's exec handler through the agent's runtime client against the real CRI emulator (a real
socket, a virtual clock): khelper's checks, exit codes, the 10 KiB cap, a timeout enforced by the runtime,
a runtime that hangs, and ExecSync errors, which are probes that could not run. And the network handlers
against the emulated khelper's real HTTP, TCP and gRPC listeners on the pod's (loopback) IP.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from kubeharness.agent.prober.handlers import exec_command, grpc_health, http_get, tcp_socket
from kubeharness.agent.prober.handlers.exec import MAX_OUTPUT_BYTES
from kubeharness.agent.prober.outcome import Outcome, ProbeError, ProbeResult
from kubeharness.agent.runtime.client import RuntimeClient
from kubeharness.agent.server.metrics import Registry
from kubeharness.clock import VirtualClock
from kubeharness.emulators.cri.config import CriConfig
from kubeharness.faults import FaultEngine, load_plan
from kubeharness.wire.cri import api_pb2 as api
from tests.conftest import CriHarness, private_pod_cidr
from tests.promtext import value

SUCCESS, FAILURE = ProbeResult.SUCCESS, ProbeResult.FAILURE
REQUEST_TIMEOUT_S = 5  # the agent's runtime request timeout in these tests


@dataclass
class Node:
    cri: CriHarness
    client: RuntimeClient

    async def run(self, *flags: str) -> str:
        """A running khelper container with these behaviour flags; its id."""
        _, cid = await self.cri.run_container(args=list(flags))
        return cid

    async def probe(self, cid: str, *command: str, timeout_s: float = 1) -> Outcome:
        return await exec_command(self.cri.clock, self.client, container_id=cid, command=command,
                                  timeout_s=timeout_s)


async def start_node(tmp_path: Path, plan: str = "rules: []") -> Node:
    clock = VirtualClock()
    cri = CriHarness(root=tmp_path, clock=clock, config=CriConfig(pod_cidr=private_pod_cidr()),
                     faults=FaultEngine(load_plan(plan), clock))
    await cri.start()
    return Node(cri, RuntimeClient(f"unix://{cri.socket}", None, Registry(), timeout_s=REQUEST_TIMEOUT_S))


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


@pytest.mark.parametrize(("command", "outcome"), [
    (("khelper", "check", "healthy"), Outcome(SUCCESS, "healthy\n")),
    (("/khelper", "check", "live"), Outcome(SUCCESS, "healthy\n")),
    (("khelper", "check", "ready"), Outcome(FAILURE, "not ready yet\n")),  # stderr is output too
    (("true",), Outcome(SUCCESS, "")),
    (("false",), Outcome(FAILURE, "")),
    (("khelper", "exit", "3"), Outcome(FAILURE, "")),
    (("echo", "hello", "probe"), Outcome(SUCCESS, "hello probe\n")),
])
async def test_exit_code_decides_and_output_is_kept(node: Node, command: tuple[str, ...], outcome: Outcome) -> None:
    cid = await node.run("--ready-after=1h")
    assert await node.probe(cid, *command) == outcome


async def test_a_failing_check_after_the_container_turns_unhealthy(node: Node) -> None:
    cid = await node.run("--unhealthy-after=30s")
    assert (await node.probe(cid, "khelper", "check", "healthy")).result is SUCCESS
    await node.cri.clock.advance(30)
    assert await node.probe(cid, "khelper", "check", "healthy") == Outcome(FAILURE, "unhealthy\n")


async def test_stdout_then_stderr(node: Node) -> None:
    cid = await node.run()
    assert await node.probe(cid, "sh", "-c", "echo out; echo err >&2; exit 1") == Outcome(FAILURE, "out\nerr\n")


async def test_output_is_capped_at_10_kib(node: Node) -> None:
    cid = await node.run()
    outcome = await node.probe(cid, "echo", "y" * 30_000)
    assert outcome == Outcome(SUCCESS, "y" * MAX_OUTPUT_BYTES)


async def test_a_command_past_its_timeout_fails_when_the_clock_gets_there(node: Node) -> None:
    cid = await node.run()
    before = node.cri.clock.pending()
    task = asyncio.ensure_future(node.probe(cid, "sleep", "5", timeout_s=2))
    await node.cri.until_timer_added(before + 1)  # the runtime's timer, beside the handler's own
    await node.cri.clock.advance(1.999)
    assert not task.done()
    await node.cri.clock.advance(0.001)
    assert await task == Outcome(FAILURE, 'command "sleep 5" timed out')


async def test_a_command_within_its_timeout_succeeds(node: Node) -> None:
    cid = await node.run()
    before = node.cri.clock.pending()
    task = asyncio.ensure_future(node.probe(cid, "sleep", "1", timeout_s=2))
    await node.cri.until_timer_added(before + 1)
    await node.cri.clock.advance(1)
    assert await task == Outcome(SUCCESS, "")


async def test_a_runtime_that_hangs_is_cut_off_after_the_request_timeout(tmp_path: Path) -> None:
    n = await start_node(tmp_path, "rules:\n  - {name: stuck, where: cri, method: ExecSync, action: hang}\n")
    try:
        cid = await n.run()
        before = n.cri.clock.pending()
        task = asyncio.ensure_future(n.probe(cid, "khelper", "check", "healthy", timeout_s=1))
        await n.cri.until_timer_added(before)
        await n.cri.clock.advance(1 + REQUEST_TIMEOUT_S - 0.001)  # kubelet waits the request timeout on top
        assert not task.done()
        await n.cri.clock.advance(0.001)
        assert await task == Outcome(FAILURE, 'command "khelper check healthy" timed out')
    finally:
        await stop_node(n)


async def test_a_container_that_is_gone_cannot_be_probed(node: Node) -> None:
    with pytest.raises(ProbeError, match=r"code = NotFound desc = .*not found"):
        await node.probe("0" * 64, "khelper", "check", "healthy")


async def test_a_container_that_is_not_running_cannot_be_probed(node: Node) -> None:
    cid = await node.run()
    await node.cri.drive(node.cri.runtime.StopContainer(api.StopContainerRequest(container_id=cid, timeout=0)))
    with pytest.raises(ProbeError, match=r"code = Unknown desc = .*CONTAINER_EXITED state"):
        await node.probe(cid, "khelper", "check", "healthy")


async def test_a_program_the_image_lacks_cannot_be_probed(node: Node) -> None:
    cid = await node.run()
    with pytest.raises(ProbeError, match="executable file not found"):
        await node.probe(cid, "no-such-program")


async def test_an_unavailable_runtime_is_an_error_the_prober_retries(tmp_path: Path) -> None:
    n = await start_node(tmp_path, """
rules:
  - {name: away, where: cri, method: ExecSync, action: {error: {code: UNAVAILABLE, message: gone}}, when: {first: 1}}
""")
    try:
        cid = await n.run()
        with pytest.raises(ProbeError, match="code = Unavailable desc = gone"):
            await n.probe(cid, "khelper", "check", "healthy")
        assert await n.probe(cid, "khelper", "check", "healthy") == Outcome(SUCCESS, "healthy\n")  # the retry
    finally:
        await stop_node(n)


async def test_the_call_is_counted_under_kubelets_operation_name(node: Node) -> None:
    cid = await node.run()
    await node.probe(cid, "true")
    text = generate_latest(node.client.metrics.registry)
    assert value(text, "kubelet_runtime_operations_total", operation_type="exec_sync") == 1


# -- the network handlers against khelper's listeners in the emulator (on the pod's loopback IP) ----------

async def test_the_network_handlers_against_khelpers_listeners(node: Node) -> None:
    sid, _ = await node.cri.run_container(
        args=["--http-port=8080", "--tcp-port=9000", "--grpc-port=9090", "--grpc-service=app",
              "--unhealthy-after=60s"])
    status = await node.cri.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=sid))
    ip = status.status.network.ip
    clock = node.cri.clock

    async def http(path: str) -> Outcome:
        return await http_get(clock, scheme="HTTP", host=ip, port=8080, path=path, headers=(), timeout_s=1)

    assert await http("/healthz") == Outcome(SUCCESS, "ok\n")
    assert await http("/redirect?loc=/status%3Fcode%3D204") == Outcome(SUCCESS, "")
    assert await http("/status?code=500") == Outcome(FAILURE, "HTTP probe failed with statuscode: 500")
    assert await tcp_socket(clock, host=ip, port=9000, timeout_s=1) == Outcome(SUCCESS, "")
    assert await grpc_health(clock, host=ip, port=9090, service="app", timeout_s=1) == Outcome(
        SUCCESS, "service healthy")
    assert await grpc_health(clock, host=ip, port=9090, service="other", timeout_s=1) == Outcome(
        FAILURE, "error: health rpc probe failed: rpc error: code = NotFound desc = unknown service")
    await clock.advance(60)
    assert await http("/healthz") == Outcome(FAILURE, "HTTP probe failed with statuscode: 503")
    assert await grpc_health(clock, host=ip, port=9090, service="", timeout_s=1) == Outcome(
        FAILURE, 'service unhealthy (responded with "NOT_SERVING")')
