"""The fault-injecting CRI proxy in front of the CRI emulator: forwarding every call, and faults on the way.

The emulator runs in-process on its socket, the proxy on another, and clients call the proxy's socket
through real gRPC stubs. Forwarding is checked against calling the emulator directly (every method
of both services gives the same answer), then the same fault plans that the emulator applies run in
the proxy. The proxy in front of real containerd is tested in test_env.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from kubeharness.clock import VirtualClock
from kubeharness.emulators.cri.config import CriConfig
from kubeharness.faults import FaultEngine, load_plan, load_plan_file
from kubeharness.proxy.server import CriProxy
from kubeharness.wire.cri import api_pb2 as api
from kubeharness.wire.cri import api_pb2_grpc as api_grpc
from tests.conftest import CHANNEL_OPTIONS, CriHarness, code_of

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "faults" / "one-pod-flaky-sandbox.yaml"
NS = 1_000_000_000


@dataclass
class Proxied:
    """An emulator (``cri``), a proxy in front of it, and stubs on the proxy's socket."""

    cri: CriHarness
    proxy: CriProxy
    channel: grpc.aio.Channel
    runtime: api_grpc.RuntimeServiceAsyncStub
    images: api_grpc.ImageServiceAsyncStub

    def fired(self) -> list[dict[str, object]]:
        path = self.cri.root / "proxy-fired.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def start_proxied(tmp_path: Path, plan_text: str = "rules: []", plan_file: Path | None = None) -> Proxied:
    clock = VirtualClock()
    h = CriHarness(root=tmp_path, clock=clock, config=CriConfig())
    await h.start()
    plan = load_plan_file(plan_file) if plan_file else load_plan(plan_text)
    engine = FaultEngine(plan, clock, seed=7, log_path=tmp_path / "proxy-fired.jsonl")
    proxy = CriProxy(str(tmp_path / "proxy.sock"), f"unix://{h.socket}", engine, clock, tmp_path / "proxy.faults")
    await proxy.start()
    channel = grpc.aio.insecure_channel(f"unix://{tmp_path / 'proxy.sock'}", options=CHANNEL_OPTIONS)
    return Proxied(h, proxy, channel, api_grpc.RuntimeServiceStub(channel), api_grpc.ImageServiceStub(channel))


async def stop_proxied(p: Proxied) -> None:
    await p.channel.close(None)
    await p.proxy.stop(grace=0)
    await p.cri.stop()


@pytest.fixture
async def proxied(tmp_path: Path) -> AsyncIterator[Proxied]:
    p = await start_proxied(tmp_path)
    try:
        yield p
    finally:
        await stop_proxied(p)


async def answer(channel: grpc.aio.Channel, service: str, method_name: str, request: object) -> tuple[str, object]:
    """(status name, response or details) of one call by method name; an idle stream is ``OPEN``."""
    descriptor = api.DESCRIPTOR.services_by_name[service]
    method = descriptor.methods_by_name[method_name]
    response_cls = getattr(api, method.output_type.name)
    path = f"/{descriptor.full_name}/{method.name}"
    try:
        if method.server_streaming:
            stream = channel.unary_stream(path, request_serializer=lambda m: m.SerializeToString(),
                                          response_deserializer=response_cls.FromString)(request)
            try:
                return "OK", await asyncio.wait_for(stream.read(), timeout=0.3)
            except TimeoutError:
                return "OPEN", None
            finally:
                stream.cancel()
        reply = await channel.unary_unary(path, request_serializer=lambda m: m.SerializeToString(),
                                          response_deserializer=response_cls.FromString)(request, timeout=5)
        return "OK", reply
    except grpc.aio.AioRpcError as err:
        return err.code().name, err.details()


@pytest.mark.parametrize("service", ["RuntimeService", "ImageService"])
async def test_every_method_answers_through_the_proxy_as_it_does_directly(proxied: Proxied, service: str) -> None:
    cri = proxied.cri
    assert cri.channel is not None
    sandbox_id = await cri.run_sandbox()
    descriptor = api.DESCRIPTOR.services_by_name[service]
    for method in descriptor.methods:
        for request in (getattr(api, method.input_type.name)(), _with_ids(method.input_type.name, sandbox_id)):
            if method.name in ("RemovePodSandbox", "StopPodSandbox", "RemoveImage", "PullImage",
                               "UpdateRuntimeConfig", "RunPodSandbox", "CreateContainer"):
                continue  # calls that change state are compared below, in a lifecycle
            direct = await answer(cri.channel, service, method.name, request)
            through = await answer(proxied.channel, service, method.name, request)
            assert _untokened(through) == _untokened(direct), method.name


def _untokened(answer: tuple[str, object]) -> tuple[str, object]:
    """Streaming URLs carry a fresh token per call: compare everything before it."""
    code, reply = answer
    url = getattr(reply, "url", None)
    return (code, url.rsplit("/", 1)[0]) if isinstance(url, str) else answer


def _with_ids(type_name: str, sandbox_id: str) -> object:
    request = getattr(api, type_name)()
    for field in request.DESCRIPTOR.fields:
        if field.name == "pod_sandbox_id":
            setattr(request, field.name, sandbox_id)
        elif field.name == "container_id":
            setattr(request, field.name, "not-a-container")
    return request


async def test_a_pod_lifecycle_through_the_proxy_with_its_events(proxied: Proxied) -> None:
    cri = proxied.cri
    events = proxied.runtime.GetContainerEvents(api.GetEventsRequest())
    await cri.subscribed()  # the proxy's upstream subscription has reached the emulator
    config = cri.sandbox_config(name="web")
    sandbox_id = (await proxied.runtime.RunPodSandbox(api.RunPodSandboxRequest(config=config))).pod_sandbox_id
    await cri.drive(proxied.images.PullImage(api.PullImageRequest(image=api.ImageSpec(image="kubeharness.test/app:1"))))
    created = await proxied.runtime.CreateContainer(api.CreateContainerRequest(
        pod_sandbox_id=sandbox_id, sandbox_config=config,
        config=api.ContainerConfig(metadata=api.ContainerMetadata(name="app"),
                                   image=api.ImageSpec(image="kubeharness.test/app:1"), log_path="app.log")))
    await proxied.runtime.StartContainer(api.StartContainerRequest(container_id=created.container_id))
    status = await proxied.runtime.ContainerStatus(api.ContainerStatusRequest(container_id=created.container_id))
    assert status.status.state == api.CONTAINER_RUNNING
    seen = []
    for _ in range(4):
        event = await asyncio.wait_for(events.read(), 5)
        assert isinstance(event, api.ContainerEventResponse)
        seen.append((event.container_id, event.container_event_type))
    assert seen == [(sandbox_id, api.CONTAINER_CREATED_EVENT), (sandbox_id, api.CONTAINER_STARTED_EVENT),
                    (created.container_id, api.CONTAINER_CREATED_EVENT),
                    (created.container_id, api.CONTAINER_STARTED_EVENT)]
    await proxied.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
    await proxied.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
    assert (await cri.runtime.ListPodSandbox(api.ListPodSandboxRequest())).items == []
    events.cancel()
    # an error of the runtime comes back unchanged, code and words
    direct = await answer(proxied.channel, "RuntimeService", "ContainerStatus",
                          api.ContainerStatusRequest(container_id=created.container_id))
    assert direct[0] == "NOT_FOUND" and created.container_id in str(direct[1])


async def test_the_example_plan_runs_unchanged_in_the_proxy(tmp_path: Path) -> None:
    p = await start_proxied(tmp_path, plan_file=EXAMPLE)
    try:
        flaky = p.cri.sandbox_config(name="flaky")
        flaky.annotations["kubeharness.io/faults"] = "flaky-sandbox,slow-pull"
        request = api.RunPodSandboxRequest(config=flaky)
        codes = [await code_of(p.runtime.RunPodSandbox(request)) for _ in range(3)]
        assert codes == [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.OK]
        # the failed attempts never reached the emulator: one sandbox
        assert len((await p.cri.runtime.ListPodSandbox(api.ListPodSandboxRequest())).items) == 1
        pull = api.PullImageRequest(image=api.ImageSpec(image="busybox:1.36"), sandbox_config=flaky)
        start = p.cri.clock.now_ns()
        await p.cri.drive(p.images.PullImage(pull), step=0.01)
        assert p.cri.clock.now_ns() - start >= 2 * NS
        fired = p.fired()
        assert [(f["rule"], f["where"], f["method"], f["pod"]) for f in fired] == [
            ("flaky-sandbox", "proxy", "RunPodSandbox", "default/flaky"),
            ("flaky-sandbox", "proxy", "RunPodSandbox", "default/flaky"),
            ("slow-pull", "proxy", "PullImage", "default/flaky")]
    finally:
        await stop_proxied(p)


async def test_a_rule_matches_a_container_created_before_the_proxy_started(tmp_path: Path) -> None:
    p = await start_proxied(tmp_path, """
rules:
  - name: no-stop-for-db
    where: proxy
    method: StopContainer
    match: {pod_name: db, container_name: main, labels: {tier: data}}
    action: {error: {code: DEADLINE_EXCEEDED, message: stop timed out}}
""")
    try:
        cri = p.cri
        await cri.pull("kubeharness.test/app:1")
        ids = {}
        for name in ("db", "web"):  # created directly on the emulator: the proxy never saw them
            config = cri.sandbox_config(name=name)
            config.labels["tier"] = "data"
            sandbox_id = await cri.run_sandbox(config)
            ids[name] = await cri.create(sandbox_id, config, name="main", image="kubeharness.test/app:1")
        stop_db = p.runtime.StopContainer(api.StopContainerRequest(container_id=ids["db"], timeout=1))
        assert await code_of(stop_db) == grpc.StatusCode.DEADLINE_EXCEEDED
        stop_web = p.runtime.StopContainer(api.StopContainerRequest(container_id=ids["web"], timeout=1))
        assert await code_of(cri.drive(stop_web)) == grpc.StatusCode.OK
        assert [(f["rule"], f["pod"], f["matched"]) for f in p.fired()] == [
            ("no-stop-for-db", "default/db", {"pod_name": "db", "container_name": "main", "labels": {"tier": "data"}})]
    finally:
        await stop_proxied(p)


async def test_the_clients_deadline_and_metadata_reach_the_runtime(tmp_path: Path) -> None:
    # A recording runtime (a test instrument, not a fake of anything): it notes what each Version call carries.
    seen: list[tuple[float | None, dict[str, str]]] = []

    async def version(request: api.VersionRequest, context: grpc.aio.ServicerContext[object, object]) -> bytes:
        metadata = {k: str(v) for k, v in (context.invocation_metadata() or ())}
        seen.append((context.time_remaining(), metadata))
        return api.VersionResponse(version="0.1.0", runtime_api_version="v1").SerializeToString()

    recorder = grpc.aio.server()
    recorder.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("runtime.v1.RuntimeService", {
        "Version": grpc.unary_unary_rpc_method_handler(version, request_deserializer=api.VersionRequest.FromString),
    }),))
    recorder.add_insecure_port(f"unix://{tmp_path / 'recorder.sock'}")
    await recorder.start()
    proxy = CriProxy(str(tmp_path / "proxy.sock"), f"unix://{tmp_path / 'recorder.sock'}")
    await proxy.start()
    try:
        async with grpc.aio.insecure_channel(f"unix://{tmp_path / 'proxy.sock'}") as channel:
            stub = api_grpc.RuntimeServiceStub(channel)
            await stub.Version(api.VersionRequest(), timeout=7, metadata=(("x-trace", "abc"),))
            await stub.Version(api.VersionRequest())
        (deadline, metadata), (no_deadline, _) = seen
        assert deadline is not None and 6 < deadline < 7.5  # gRPC rounds the timeout it sends up a little
        assert metadata["x-trace"] == "abc"
        assert no_deadline is None
    finally:
        await proxy.stop(grace=0)
        await recorder.stop(0)


async def test_a_runtime_that_is_down_is_unavailable_and_back_when_it_is(tmp_path: Path) -> None:
    p = await start_proxied(tmp_path)
    try:
        sandbox_id = await p.cri.run_sandbox()
        await p.cri.stop()
        assert await code_of(p.runtime.Version(api.VersionRequest(), timeout=5)) == grpc.StatusCode.UNAVAILABLE
        await p.cri.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while True:  # the proxy reconnects with a short backoff; until then it answers UNAVAILABLE
            try:
                reply = await p.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id),
                                                         timeout=5)
                break
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE
                assert loop.time() < deadline, "the proxy did not reach the restarted runtime"
                await asyncio.sleep(0.05)
        assert reply.status.id == sandbox_id
    finally:
        await stop_proxied(p)


async def test_methods_it_does_not_know_are_forwarded_and_other_services_refused(proxied: Proxied) -> None:
    unknown = proxied.channel.unary_unary("/runtime.v1.RuntimeService/FutureMethod", None, None)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await unknown(b"", timeout=5)
    # forwarded: the emulator does not know it either
    assert failed.value.code() == grpc.StatusCode.UNIMPLEMENTED
    other = proxied.channel.unary_unary("/grpc.health.v1.Health/Check", None, None)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await other(b"", timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_a_stream_fault_in_the_proxy_and_the_control_socket(tmp_path: Path) -> None:
    from kubeharness.faults.control import FaultControl

    p = await start_proxied(tmp_path)
    try:
        control = FaultControl(tmp_path / "proxy.faults")
        assert await control.rules() == []
        await control.load("""
rules:
  - {name: no-events, where: proxy, method: GetContainerEvents, action: {error: {code: UNAVAILABLE}}}
""")
        stream = p.runtime.GetContainerEvents(api.GetEventsRequest())
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stream.read()
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert [f["rule"] for f in await control.fired()] == ["no-events"]
        await control.clear()
        again = p.runtime.GetContainerEvents(api.GetEventsRequest())
        await p.cri.subscribed()
        sandbox_id = await p.cri.run_sandbox()
        event = await asyncio.wait_for(again.read(), 5)
        assert isinstance(event, api.ContainerEventResponse) and event.container_id == sandbox_id
        again.cancel()
    finally:
        await stop_proxied(p)


async def test_a_crashed_proxy_is_restarted_and_forwards_again(tmp_path: Path, cri: CriHarness) -> None:
    import sys

    plan = tmp_path / "crash.yaml"
    plan.write_text("""
rules:
  - name: die-on-crasher
    where: proxy
    method: RunPodSandbox
    match: {pod_name: crasher}
    action: {crash: {how: sigkill}}
""")
    listen = tmp_path / "p.sock"
    supervisor = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kubeharness.cli", "cri", "proxy", "--listen", str(listen),
        "--upstream", f"unix://{cri.socket}", "--faults", str(plan), "--restart-on-crash",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        async with grpc.aio.insecure_channel(f"unix://{listen}", options=CHANNEL_OPTIONS) as channel:
            runtime = api_grpc.RuntimeServiceStub(channel)
            await runtime.Version(api.VersionRequest(), timeout=60, wait_for_ready=True)
            crasher = api.RunPodSandboxRequest(config=cri.sandbox_config(name="crasher"))
            assert await code_of(runtime.RunPodSandbox(crasher, timeout=10)) == grpc.StatusCode.UNAVAILABLE
            # the supervisor starts the proxy again on the same socket; calls work again through it
            other = api.RunPodSandboxRequest(config=cri.sandbox_config(name="other"))
            sandbox_id = ""
            deadline = asyncio.get_running_loop().time() + 60
            while not sandbox_id:  # not answered until the new proxy does, as a kubelet would see it
                try:
                    sandbox_id = (await runtime.RunPodSandbox(other, timeout=5, wait_for_ready=True)).pod_sandbox_id
                except grpc.aio.AioRpcError as err:
                    # UNAVAILABLE, or (on a busy machine, where the proxy's restart takes longer) the call's
                    # deadline passing while it waits for the socket to answer
                    assert err.code() in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}, err
                    assert asyncio.get_running_loop().time() < deadline, "the proxy did not come back"
                    await asyncio.sleep(0.05)
            listed = await runtime.ListPodSandbox(api.ListPodSandboxRequest(), timeout=10)
            assert [s.id for s in listed.items] == [sandbox_id]  # the crashing call never reached the runtime
        assert supervisor.returncode is None  # the supervisor itself lives on
    finally:
        supervisor.terminate()
        _, stderr = await asyncio.wait_for(supervisor.communicate(), 30)
    assert supervisor.returncode == 0
    assert b"restart" in stderr.lower()
