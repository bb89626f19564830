"""Fault plans applied by the CRI emulator, through the socket: errors, delays, hangs, partial failures, crashes.

The example plan of the repository (examples/faults/one-pod-flaky-sandbox.yaml) runs here as a scenario:
one opted-in pod's RunPodSandbox fails twice with UNAVAILABLE, its image pull is slower, other pods are
untouched, and the fired-fault log says what happened.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from kubeharness.clock import VirtualClock
from kubeharness.emulators.cri.config import CriConfig
from kubeharness.errors import InvalidArgument
from kubeharness.faults import FaultEngine, load_plan, load_plan_file
from kubeharness.faults.control import FaultControl
from kubeharness.wire.cri import api_pb2 as api
from kubeharness.wire.cri import api_pb2_grpc as api_grpc
from tests.conftest import CriHarness, code_of

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "faults" / "one-pod-flaky-sandbox.yaml"
NS = 1_000_000_000


async def harness(tmp_path: Path, plan_text: str | None = None, plan_file: Path | None = None) -> CriHarness:
    clock = VirtualClock()
    plan = load_plan_file(plan_file) if plan_file else load_plan(plan_text or "rules: []")
    h = CriHarness(root=tmp_path, clock=clock, config=CriConfig(),
                   faults=FaultEngine(plan, clock, seed=7, log_path=tmp_path / "fired.jsonl"))
    await h.start()
    return h


@pytest.fixture
async def example(tmp_path: Path) -> AsyncIterator[CriHarness]:
    h = await harness(tmp_path, plan_file=EXAMPLE)
    try:
        yield h
    finally:
        await h.stop()


async def test_the_example_plan_fails_one_pods_sandbox_twice_and_slows_its_pull(example: CriHarness) -> None:
    flaky = example.sandbox_config(name="flaky")
    flaky.annotations["kubeharness.io/faults"] = "flaky-sandbox,slow-pull"
    calm = example.sandbox_config(name="calm")
    request = api.RunPodSandboxRequest(config=flaky)
    assert await code_of(example.runtime.RunPodSandbox(request)) == grpc.StatusCode.UNAVAILABLE
    assert await code_of(example.runtime.RunPodSandbox(request)) == grpc.StatusCode.UNAVAILABLE
    assert await code_of(example.runtime.RunPodSandbox(api.RunPodSandboxRequest(config=calm))) == grpc.StatusCode.OK
    assert await code_of(example.runtime.RunPodSandbox(request)) == grpc.StatusCode.OK  # third attempt
    # the pull for the opted-in pod takes 2 s longer than the same pull for the other pod
    pull = api.PullImageRequest(image=api.ImageSpec(image="busybox:1.36"), sandbox_config=flaky)
    start = example.clock.now_ns()
    await example.drive(example.images.PullImage(pull), step=0.01)
    slow = example.clock.now_ns() - start
    await example.images.RemoveImage(api.RemoveImageRequest(image=api.ImageSpec(image="busybox:1.36")))
    start = example.clock.now_ns()
    plain = api.PullImageRequest(image=api.ImageSpec(image="busybox:1.36"), sandbox_config=calm)
    await example.drive(example.images.PullImage(plain), step=0.01)
    fast = example.clock.now_ns() - start
    assert 1.9 * NS <= slow - fast <= 2.1 * NS
    fired = [json.loads(line) for line in (example.root / "fired.jsonl").read_text().splitlines()]
    assert [(f["rule"], f["method"]) for f in fired] == [
        ("flaky-sandbox", "RunPodSandbox"), ("flaky-sandbox", "RunPodSandbox"), ("slow-pull", "PullImage")]
    assert all(f["pod"] == "default/flaky" for f in fired)


async def test_a_partial_failure_does_the_work_and_reports_an_error(tmp_path: Path) -> None:
    h = await harness(tmp_path, """
rules:
  - name: leak
    where: cri
    method: RunPodSandbox
    action: {partial: {code: DEADLINE_EXCEEDED, message: timed out after doing it}}
    when: {first: 1}
""")
    try:
        code = await code_of(h.runtime.RunPodSandbox(api.RunPodSandboxRequest(config=h.sandbox_config())))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        # the sandbox exists anyway: what a kubelet must clean up after such a failure
        assert len((await h.runtime.ListPodSandbox(api.ListPodSandboxRequest())).items) == 1
    finally:
        await h.stop()


async def test_a_hang_lasts_until_the_caller_gives_up_and_the_next_call_works(tmp_path: Path) -> None:
    h = await harness(tmp_path, """
rules:
  - name: stuck
    where: cri
    method: Version
    action: hang
    when: {nth: 1}
""")
    try:
        code = await code_of(h.runtime.Version(api.VersionRequest(), timeout=0.3))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert (await h.runtime.Version(api.VersionRequest(), timeout=5)).runtime_api_version == "v1"
    finally:
        await h.stop()


async def test_a_crash_rule_ends_the_emulator_process_and_it_restarts_with_its_state(tmp_path: Path) -> None:
    plan = tmp_path / "crash.yaml"
    plan.write_text("""
rules:
  - name: die
    where: cri
    method: RemovePodSandbox
    action: {crash: {how: exit, exit_code: 3}}
""")
    sock, state = tmp_path / "cri.sock", tmp_path / "state"
    cmd = [sys.executable, "-m", "kubeharness.cli", "cri", "serve", "--socket", str(sock), "--state-dir", str(state)]
    quiet = {"stdout": asyncio.subprocess.DEVNULL, "stderr": asyncio.subprocess.DEVNULL}
    process = await asyncio.create_subprocess_exec(*cmd, "--faults", str(plan), **quiet)  # type: ignore[arg-type]
    try:
        async with grpc.aio.insecure_channel(f"unix://{sock}") as channel:
            stub = api_grpc.RuntimeServiceStub(channel)
            await stub.Version(api.VersionRequest(), wait_for_ready=True, timeout=20)
            config = api.PodSandboxConfig(metadata=api.PodSandboxMetadata(name="p", namespace="n", uid="u"))
            sid = (await stub.RunPodSandbox(api.RunPodSandboxRequest(config=config), timeout=10)).pod_sandbox_id
            code = await code_of(stub.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=10))
            assert code == grpc.StatusCode.UNAVAILABLE
        assert await asyncio.wait_for(process.wait(), 20) == 3
        # restarted without the plan: the sandbox is still there
        process = await asyncio.create_subprocess_exec(*cmd, **quiet)  # type: ignore[arg-type]
        async with grpc.aio.insecure_channel(f"unix://{sock}") as channel:
            stub = api_grpc.RuntimeServiceStub(channel)
            listed = await stub.ListPodSandbox(api.ListPodSandboxRequest(), wait_for_ready=True, timeout=20)
            assert [item.id for item in listed.items] == [sid]
    finally:
        if process.returncode is None:
            process.terminate()
            await asyncio.wait_for(process.wait(), 10)


async def test_the_control_socket_changes_rules_at_run_time(tmp_path: Path) -> None:
    clock = VirtualClock()
    control_path = tmp_path / "faults.sock"
    h = CriHarness(root=tmp_path, clock=clock, config=CriConfig(),
                   faults=FaultEngine(load_plan("rules: []"), clock, seed=1), fault_control=control_path)
    await h.start()
    try:
        assert control_path.stat().st_mode & 0o777 == 0o600  # owner only
        control = FaultControl(control_path)
        assert await control.rules() == []
        rules = await control.load("""
rules:
  - name: no-version
    where: cri
    method: Version
    action: {error: {code: UNAVAILABLE, message: try later}}
""")
        assert [r["name"] for r in rules] == ["no-version"]
        assert await code_of(h.runtime.Version(api.VersionRequest())) == grpc.StatusCode.UNAVAILABLE
        # a bad plan is refused naming the line, and the rules in force stay
        with pytest.raises(InvalidArgument, match="line 4"):
            await control.replace("rules:\n  - name: x\n    where: cri\n    method: RunPodSandbx\n    action: hang\n")
        assert [r["name"] for r in await control.rules()] == ["no-version"]
        fired = await control.fired()
        assert [(f["rule"], f["method"]) for f in fired] == [("no-version", "Version")]
        await control.clear()
        assert await code_of(h.runtime.Version(api.VersionRequest())) == grpc.StatusCode.OK
        assert len(await control.fired()) == 1  # the log stays
    finally:
        await h.stop()
    assert not control_path.exists()


async def test_kubeharness_faults_commands_speak_to_a_running_emulator(tmp_path: Path) -> None:
    sock, state, control = tmp_path / "cri.sock", tmp_path / "state", tmp_path / "state" / "faults.sock"
    plan = tmp_path / "plan.yaml"
    plan.write_text("rules:\n  - {name: slow, where: cri, method: Version, action: {error: {code: ABORTED}}}\n")
    cli = [sys.executable, "-m", "kubeharness.cli"]
    quiet = {"stdout": asyncio.subprocess.DEVNULL, "stderr": asyncio.subprocess.DEVNULL}
    process = await asyncio.create_subprocess_exec(*cli, "cri", "serve", "--socket", str(sock), "--state-dir",
                                                   str(state), **quiet)  # type: ignore[arg-type]

    async def faults(*args: str) -> tuple[int, str]:
        run = await asyncio.create_subprocess_exec(*cli, "faults", *args, "--control", str(control),
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await run.communicate()
        return int(run.returncode or 0), (out + err).decode()

    try:
        async with grpc.aio.insecure_channel(f"unix://{sock}") as channel:
            stub = api_grpc.RuntimeServiceStub(channel)
            await stub.Version(api.VersionRequest(), wait_for_ready=True, timeout=20)
            code, out = await faults("load", str(plan))
            assert code == 0 and '"name": "slow"' in out
            code, out = await faults("list")
            assert code == 0 and '"name": "slow"' in out
            assert await code_of(stub.Version(api.VersionRequest(), timeout=10)) == grpc.StatusCode.ABORTED
            code, out = await faults("fired")
            assert code == 0 and '"rule": "slow"' in out
            assert (await faults("clear"))[0] == 0
            assert await code_of(stub.Version(api.VersionRequest(), timeout=10)) == grpc.StatusCode.OK
        code, out = await faults("load", str(tmp_path / "missing.yaml"))
        assert code == 2 and "missing.yaml" in out and "Traceback" not in out
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)


# -- faults on the server stream (GetContainerEvents) -------------------------------------------------------

STREAM_PLAN = """
rules:
  - name: events
    where: cri
    method: GetContainerEvents
    action: {action}
    when: {{first: 1}}
"""


async def stream_harness(tmp_path: Path, action: str) -> CriHarness:
    return await harness(tmp_path, STREAM_PLAN.format(action=action))


async def test_an_error_ends_the_event_stream_before_any_event_and_the_next_subscription_works(
    tmp_path: Path,
) -> None:
    h = await stream_harness(tmp_path, "{error: {code: UNAVAILABLE, message: events are down}}")
    try:
        stream = h.runtime.GetContainerEvents(api.GetEventsRequest())
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stream.read()
        assert (failed.value.code(), failed.value.details()) == (grpc.StatusCode.UNAVAILABLE, "events are down")
        again = h.runtime.GetContainerEvents(api.GetEventsRequest())
        await h.subscribed()  # before the sandbox starts
        sandbox_id = await h.run_sandbox()
        event = await asyncio.wait_for(again.read(), 5)
        assert isinstance(event, api.ContainerEventResponse)
        assert (event.container_id, event.container_event_type) == (sandbox_id, api.CONTAINER_CREATED_EVENT)
        again.cancel()
    finally:
        await h.stop()


async def test_a_partial_stream_delivers_one_event_then_fails(tmp_path: Path) -> None:
    h = await stream_harness(tmp_path, "{partial: {code: INTERNAL, message: stream broke}}")
    try:
        stream = h.runtime.GetContainerEvents(api.GetEventsRequest())
        await h.subscribed()
        sandbox_id = await h.run_sandbox()
        first = await asyncio.wait_for(stream.read(), 5)
        assert isinstance(first, api.ContainerEventResponse)
        assert first.container_id == sandbox_id
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await asyncio.wait_for(stream.read(), 5)
        assert failed.value.code() == grpc.StatusCode.INTERNAL
    finally:
        await h.stop()


async def test_a_delay_after_holds_every_event_on_the_clock(tmp_path: Path) -> None:
    h = await stream_harness(tmp_path, "{delay: {seconds: 3, when: after}}")
    try:
        stream = h.runtime.GetContainerEvents(api.GetEventsRequest())
        await h.subscribed()
        await h.run_sandbox(h.sandbox_config(name="one"))
        await h.run_sandbox(h.sandbox_config(name="two"))
        start = h.clock.now_ns()
        first = asyncio.ensure_future(stream.read())
        await h.clock.advance(2.9)
        await asyncio.sleep(0.05)
        assert not first.done()  # held on the clock, not sent at once
        await h.drive(first, step=0.01)
        await h.drive(stream.read(), step=0.01)
        # each event waits 3 virtual seconds before it is sent: two delays, not one and not three (the test
        # steps the clock while the round trip runs in real time, so a slow machine adds a few steps)
        assert 5.99 * NS <= h.clock.now_ns() - start < 9 * NS
        stream.cancel()
    finally:
        await h.stop()


async def test_a_hung_stream_stays_open_and_delivers_nothing(tmp_path: Path) -> None:
    h = await stream_harness(tmp_path, "hang")
    try:
        stream = h.runtime.GetContainerEvents(api.GetEventsRequest(), timeout=0.5)
        await h.run_sandbox()
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stream.read()
        assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        fired = [json.loads(line) for line in (h.root / "fired.jsonl").read_text().splitlines()]
        assert [(f["rule"], f["method"], f["action"]) for f in fired] == [
            ("events", "GetContainerEvents", {"hang": {}})]
    finally:
        await h.stop()
