"""Container log rotation through the agent on real containerd and the real clock.

One ``kubeharness env up`` (containerd, runc, the bridge CNI network, the khelper image) and an agent with
:class:`RealClock`, ``containerLogMaxSize: 64Ki``, ``containerLogMaxFiles: 3`` and a 3 s monitor interval. A
khelper container writes numbered lines for real; containerd keeps writing to the renamed file until the
agent's ReopenContainerLog, so afterwards the log directory holds kubelet's files (the live one, one
uncompressed rotated file, one ``.gz``) and every line not in a removed oldest file is there once, in order.
Root and the Debian packages of ci/setup-env are required.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import pytest

from kubeharness.agent.agent import Agent
from kubeharness.agent.config.kubelet import AgentConfig
from kubeharness.agent.logs import files
from kubeharness.agent.logs.rotation import all_logs
from kubeharness.agent.pod.labels import POD_NAMESPACE
from kubeharness.clock import RealClock
from kubeharness.conformance.node.agentnode import kubelet_config
from kubeharness.wire.cri import api_pb2 as api
from kubeharness.wire.cri import api_pb2_grpc as api_grpc
from tests.conftest import containerd_env, free_port
from tests.promtext import value
from tests.test_agent_e2e import NODE, helper, http_get, pod
from tests.test_agent_logs_e2e import lines, shape

pytestmark = [pytest.mark.xdist_group("containerd"), pytest.mark.timeout(300)]

NAMESPACE = "logs-containerd"
COUNT = 9000  # 600 lines/s of 200 bytes (about 140 KiB/s) for 15 s: a rotation at almost every 3-s pass


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with containerd_env(tmp_path_factory.mktemp("env")) as socket:
        yield socket


async def leftovers(endpoint: str) -> list[str]:
    async with grpc.aio.insecure_channel(endpoint) as channel:
        runtime = api_grpc.RuntimeServiceStub(channel)
        selector = {POD_NAMESPACE: NAMESPACE}
        sandboxes = await runtime.ListPodSandbox(api.ListPodSandboxRequest(
            filter=api.PodSandboxFilter(label_selector=selector)), timeout=30)
        containers = await runtime.ListContainers(api.ListContainersRequest(
            filter=api.ContainerFilter(label_selector=selector)), timeout=30)
    return [s.id for s in sandboxes.items] + [c.id for c in containers.containers]


async def wait(what: str, check: Callable[[], Awaitable[bool]], limit_s: float = 120) -> None:
    deadline = time.monotonic() + limit_s
    while not await check():
        assert time.monotonic() < deadline, f"no {what} within {limit_s:.0f} s"
        await asyncio.sleep(0.25)


async def test_containerd_logs_rotate_for_real(endpoint: str, tmp_path: Path,
                                               record_testsuite_property: Callable[[str, object], None]) -> None:
    (tmp_path / "manifests").mkdir()
    port = free_port()
    config = AgentConfig.from_dict(kubelet_config(endpoint, tmp_path, port, {
        "containerLogMaxSize": "64Ki", "containerLogMaxFiles": 3, "containerLogMonitorInterval": "3s",
    }), node_name=NODE, root_dir=str(tmp_path / "kubelet"))
    agent = Agent(config, RealClock())
    await agent.start()
    manifest = tmp_path / "manifests" / "chatty.json"
    try:
        spec = pod("chatty", helper("app", "--log-rate=600", "--log-line-bytes=200", f"--log-count={COUNT}"),
                   grace=2)
        spec["metadata"]["namespace"] = NAMESPACE
        manifest.write_text(json.dumps(spec))
        begun = time.monotonic()

        async def logging() -> bool:
            return bool(list((tmp_path / "pods").glob(f"{NAMESPACE}_chatty-*/app/0.log")))

        await wait("log file", logging)
        d = next((tmp_path / "pods").glob(f"{NAMESPACE}_chatty-*/app"))
        most = 0

        async def all_written() -> bool:
            nonlocal most
            in_use = all_logs(str(d / "0.log"), files.siblings(str(d / "0.log")))
            most = max(most, len(in_use))
            assert len(in_use) <= 3, in_use
            try:
                data = (d / "0.log").read_bytes()
            except FileNotFoundError:  # between the rename and the reopen
                return False
            complete = data[:data.rfind(b"\n") + 1].splitlines()
            return bool(complete) and complete[-1].split(b" ")[4] == str(COUNT).encode()

        await wait("last line", all_written)
        record_testsuite_property("containerd_logs_all_written_s", round(time.monotonic() - begun, 1))
        await asyncio.sleep(7)  # two more passes: a last rotation if the live file is over the size, then none
        plain, gz = shape(d)
        assert most == 3 and len(plain) == 1 and len(gz) == 1, (most, plain, gz)
        found = lines(d)
        assert found == list(range(found[0], COUNT + 1)), "a line is missing or repeated"
        assert found[0] > 1
        status, body = await http_get(port, "/metrics")
        assert status == 200
        reopened = value(body, "kubelet_runtime_operations_total", operation_type="reopen_container_log")
        assert reopened is not None and reopened >= 1, "no ReopenContainerLog call counted"
    finally:
        manifest.unlink(missing_ok=True)

        async def gone() -> bool:
            return not await leftovers(endpoint)

        try:
            await wait("pod removed from containerd", gone, limit_s=120)
        finally:
            await agent.stop()

