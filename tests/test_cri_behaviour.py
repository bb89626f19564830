"""The behaviour vocabulary through the real gRPC client: exits, plain commands, image entrypoint/cmd,
OOM kills, SIGTERM handling in StopContainer, ExecSync and the streaming URLs.

Every time is checked on the virtual clock: a container started at ``started_at`` that is told to exit
after 5 s has ``finished_at == started_at + 5 s`` exactly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import grpc
import pytest

from kubeharness.emulators.cri.config import CriConfig
from kubeharness.wire.cri import api_pb2 as api
from tests.conftest import CriHarness

NS = 1_000_000_000
MIB = 1024 * 1024
HELPER_IMAGE = "kubeharness.test/khelper:1"
APP_IMAGE = "example.test/app:1"  # entrypoint /khelper, cmd: exit 4 after 3 s
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
STREAM_URL = "http://127.0.0.1:45123"

T = TypeVar("T")


@pytest.fixture
def cri_config() -> CriConfig:
    return CriConfig(
        stream_url=STREAM_URL,
        images=[
            {"ref": APP_IMAGE, "size_bytes": 1000, "entrypoint": ["/khelper"],
             "cmd": ["--exit-after=3s", "--exit-code=4"]},
        ],
    )


# -- helpers ----------------------------------------------------------------------------------------


async def until_timer_added(cri: CriHarness, before: int) -> None:
    """Wait (real time, bounded) until the server has scheduled a new clock timer: the RPC arrived."""
    for _ in range(5000):
        if cri.clock.pending() > before:
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the server never scheduled the timer the call should have set")


async def settle() -> None:
    """Give in-flight gRPC round trips a chance to complete (only used before asserting 'not done')."""
    for _ in range(20):
        await asyncio.sleep(0.002)


async def finish(task: Awaitable[T]) -> T:
    """Await a call that should now be complete (a generous real-time bound that only guards hangs)."""
    return await asyncio.wait_for(task, timeout=10)


async def expect_code(call: Awaitable[object], code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    return info.value


async def run(cri: CriHarness, args: list[str] | None = None, command: list[str] | None = None,
              image: str = HELPER_IMAGE, memory_limit: int = 0) -> tuple[str, str, int]:
    """(sandbox id, container id, started_at) of a started container."""
    sid, cid = await cri.run_container(args=args, command=command, image=image, memory_limit=memory_limit)
    started = (await cri.status(cid)).started_at
    assert started == cri.clock.now_ns()
    return sid, cid, started


async def assert_exited(cri: CriHarness, cid: str, code: int, reason: str, finished_at: int) -> None:
    s = await cri.status(cid)
    assert (s.state, s.exit_code, s.reason, s.finished_at) == (api.CONTAINER_EXITED, code, reason, finished_at)


async def assert_running(cri: CriHarness, cid: str) -> None:
    s = await cri.status(cid)
    assert (s.state, s.finished_at, s.exit_code, s.reason) == (api.CONTAINER_RUNNING, 0, 0, "")


def log_lines(status: api.ContainerStatus) -> list[str]:
    return Path(status.log_path).read_text().splitlines()


def exec_sync(cri: CriHarness, cid: str, cmd: list[str], timeout: int = 0) -> Awaitable[api.ExecSyncResponse]:
    return cri.runtime.ExecSync(api.ExecSyncRequest(container_id=cid, cmd=cmd, timeout=timeout))


def stop(cri: CriHarness, cid: str, timeout: int) -> Awaitable[api.StopContainerResponse]:
    return cri.runtime.StopContainer(api.StopContainerRequest(container_id=cid, timeout=timeout))


# -- exits -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "reason"), [(0, "Completed"), (3, "Error")])
async def test_exit_after_exits_with_the_code_exactly_at_the_duration(
    cri: CriHarness, code: int, reason: str
) -> None:
    _, cid, started = await run(cri, args=["--exit-after=2500ms", f"--exit-code={code}"])
    await cri.clock.advance(2.499)
    await assert_running(cri, cid)
    await cri.clock.advance(0.001)
    await assert_exited(cri, cid, code, reason, started + 2_500_000_000)
    s = await cri.status(cid)
    assert s.started_at == started


@pytest.mark.parametrize(("program", "code", "reason"), [("true", 0, "Completed"), ("false", 1, "Error")])
async def test_true_and_false_exit_at_once(cri: CriHarness, program: str, code: int, reason: str) -> None:
    _, cid, started = await run(cri, command=[program])
    await assert_exited(cri, cid, code, reason, started)


async def test_sleep_5_exits_0_after_5_seconds(cri: CriHarness) -> None:
    _, cid, started = await run(cri, command=["sleep", "5"])
    await cri.clock.advance(4.999)
    await assert_running(cri, cid)
    await cri.clock.advance(0.001)
    await assert_exited(cri, cid, 0, "Completed", started + 5 * NS)


async def test_sleep_infinity_runs_forever_and_as_pid_1_ignores_sigterm(cri: CriHarness) -> None:
    _, cid, _ = await run(cri, command=["sleep", "infinity"])
    await cri.clock.advance(30 * 24 * 3600)
    await assert_running(cri, cid)
    stop_at = cri.clock.now_ns()
    task = asyncio.ensure_future(stop(cri, cid, timeout=2))
    await until_timer_added(cri, 0)
    await cri.clock.advance(1.999)
    await settle()
    assert not task.done()
    await assert_running(cri, cid)
    await cri.clock.advance(0.001)
    await finish(task)
    await assert_exited(cri, cid, 137, "Error", stop_at + 2 * NS)


async def test_pause_image_runs_until_stopped_and_exits_0_on_sigterm(cri: CriHarness) -> None:
    _, cid, _ = await run(cri, image=PAUSE_IMAGE)
    await cri.clock.advance(3600)
    await assert_running(cri, cid)
    stop_at = cri.clock.now_ns()
    await finish(stop(cri, cid, timeout=30))
    await assert_exited(cri, cid, 0, "Completed", stop_at)


@pytest.mark.parametrize(
    ("command", "args", "code", "after_s"),
    [
        ([], [], 4, 3.0),  # the image's entrypoint + cmd
        ([], ["--exit-after=1s"], 0, 1.0),  # args replace cmd (so --exit-code=4 is gone too)
        (["/khelper", "--exit-after=2s"], ["--exit-code=5"], 5, 2.0),  # command replaces entrypoint, args appended
        (["/khelper"], [], None, None),  # command without args drops the image's cmd: runs until stopped
    ],
    ids=["image-defaults", "args-replace-cmd", "command-and-args", "command-drops-cmd"],
)
async def test_command_and_args_compose_with_the_image_as_kubernetes_does(
    cri: CriHarness, command: list[str], args: list[str], code: int | None, after_s: float | None
) -> None:
    _, cid, started = await run(cri, command=command, args=args, image=APP_IMAGE)
    if code is None or after_s is None:
        await cri.clock.advance(600)
        await assert_running(cri, cid)
        return
    await cri.clock.advance(after_s - 0.001)
    await assert_running(cri, cid)
    await cri.clock.advance(0.001)
    await assert_exited(cri, cid, code, "Completed" if code == 0 else "Error", started + int(after_s * NS))


async def test_malformed_flag_exits_2_naming_the_flag_on_stderr(cri: CriHarness) -> None:
    _, cid, started = await run(cri, args=["--exit-after=1s", "--bogus-flag=1"])
    await assert_exited(cri, cid, 2, "Error", started)
    lines = log_lines(await cri.status(cid))
    assert lines, "the usage message must be in the container's log"
    assert all(line.split(" ")[1] == "stderr" for line in lines)
    assert any("--bogus-flag" in line for line in lines)


async def test_malformed_flag_prints_a_usage_line(cri: CriHarness) -> None:
    _, cid, _ = await run(cri, args=["--exit-code=banana"])
    s = await cri.status(cid)
    assert (s.state, s.exit_code) == (api.CONTAINER_EXITED, 2)
    text = "\n".join(log_lines(s))
    assert "--exit-code" in text
    assert "usage" in text.lower(), f"no usage line on stderr: {text!r}"


# -- memory and OOM ----------------------------------------------------------------------------------


async def test_memory_above_the_limit_is_oom_killed_at_start(cri: CriHarness) -> None:
    _, cid, started = await run(cri, args=["--memory-mib=100"], memory_limit=64 * MIB)
    await assert_exited(cri, cid, 137, "OOMKilled", started)


async def test_growing_memory_is_oom_killed_when_it_crosses_the_limit(cri: CriHarness) -> None:
    # 64.5 MiB limit; 512 KiB base use + 16 MiB/s reaches it 4 s after start, OOM just past that
    _, cid, started = await run(
        cri, args=["--memory-mib=200", "--memory-mib-per-second=16"], memory_limit=64 * MIB + 512 * 1024
    )
    await cri.clock.advance(4)
    await assert_running(cri, cid)
    await cri.clock.advance(0.001)
    s = await cri.status(cid)
    assert (s.state, s.exit_code, s.reason) == (api.CONTAINER_EXITED, 137, "OOMKilled")
    assert started + 4 * NS < s.finished_at <= started + 4 * NS + 1000


async def test_memory_below_the_limit_keeps_running(cri: CriHarness) -> None:
    _, cid, _ = await run(cri, args=["--memory-mib=32", "--memory-mib-per-second=1"], memory_limit=64 * MIB)
    await cri.clock.advance(3600)
    await assert_running(cri, cid)


async def test_lowering_the_memory_limit_below_the_usage_oom_kills(cri: CriHarness) -> None:
    _, cid, _ = await run(cri, args=["--memory-mib=100"], memory_limit=256 * MIB)
    await cri.clock.advance(10)
    await assert_running(cri, cid)
    update_at = cri.clock.now_ns()
    resources = api.LinuxContainerResources(memory_limit_in_bytes=64 * MIB)
    await cri.runtime.UpdateContainerResources(api.UpdateContainerResourcesRequest(container_id=cid, linux=resources))
    await cri.clock.advance(0)
    await assert_exited(cri, cid, 137, "OOMKilled", update_at)


# -- StopContainer and SIGTERM -------------------------------------------------------------------------


async def test_stop_of_a_program_without_sigterm_handler_exits_143(cri: CriHarness) -> None:
    _, cid, _ = await run(cri, image="kubeharness.test/app:1")  # an opaque program without a SIGTERM handler
    await cri.clock.advance(5)
    stop_at = cri.clock.now_ns()
    await finish(stop(cri, cid, timeout=30))
    await assert_exited(cri, cid, 143, "Error", stop_at)


async def test_stop_of_the_helper_exits_0_by_default(cri: CriHarness) -> None:
    _, cid, _ = await run(cri, args=[])
    await cri.clock.advance(5)
    stop_at = cri.clock.now_ns()
    await finish(stop(cri, cid, timeout=30))
    await assert_exited(cri, cid, 0, "Completed", stop_at)


async def test_sigterm_exit_code_is_the_exit_code_after_stop(cri: CriHarness) -> None:
    _, cid, _ = await run(cri, args=["--sigterm-exit-code=42"])
    await cri.clock.advance(1)
    stop_at = cri.clock.now_ns()
    await finish(stop(cri, cid, timeout=30))
    await assert_exited(cri, cid, 42, "Error", stop_at)


async def test_sigterm_delay_makes_stop_return_after_the_delay(cri: CriHarness) -> None:
    _, cid, _ = await run(cri, args=["--sigterm-delay=3s", "--sigterm-exit-code=7"])
    await cri.clock.advance(1)
    stop_at = cri.clock.now_ns()
    task = asyncio.ensure_future(stop(cri, cid, timeout=30))
    await until_timer_added(cri, 0)
    await cri.clock.advance(2.999)
    await settle()
    assert not task.done(), "StopContainer returned before the process finished shutting down"
    await assert_running(cri, cid)
    await cri.clock.advance(0.001)
    await finish(task)
    await assert_exited(cri, cid, 7, "Error", stop_at + 3 * NS)


async def test_sigterm_delay_longer_than_the_timeout_is_cut_by_sigkill(cri: CriHarness) -> None:
    _, cid, _ = await run(cri, args=["--sigterm-delay=1m"])
    stop_at = cri.clock.now_ns()
    task = asyncio.ensure_future(stop(cri, cid, timeout=4))
    await until_timer_added(cri, 0)
    await cri.clock.advance(4)
    await finish(task)
    await assert_exited(cri, cid, 137, "Error", stop_at + 4 * NS)


async def test_ignore_sigterm_waits_out_the_timeout_then_137(cri: CriHarness) -> None:
    _, cid, _ = await run(cri, args=["--ignore-sigterm", "--sigterm-exit-code=9"])
    stop_at = cri.clock.now_ns()
    task = asyncio.ensure_future(stop(cri, cid, timeout=10))
    await until_timer_added(cri, 0)
    await cri.clock.advance(9.999)
    await settle()
    assert not task.done()
    await assert_running(cri, cid)
    await cri.clock.advance(0.001)
    await finish(task)
    await assert_exited(cri, cid, 137, "Error", stop_at + 10 * NS)


async def test_a_process_that_ignores_sigterm_may_still_exit_by_itself_before_the_kill(cri: CriHarness) -> None:
    _, cid, started = await run(cri, command=["sleep", "5"])
    await cri.clock.advance(1)
    task = asyncio.ensure_future(stop(cri, cid, timeout=10))
    await until_timer_added(cri, 0)
    await cri.clock.advance(4)
    await finish(task)
    await assert_exited(cri, cid, 0, "Completed", started + 5 * NS)


async def test_stop_with_timeout_0_kills_at_once(cri: CriHarness) -> None:
    _, cid, _ = await run(cri, args=["--ignore-sigterm"])
    await cri.clock.advance(2)
    stop_at = cri.clock.now_ns()
    await finish(stop(cri, cid, timeout=0))
    await assert_exited(cri, cid, 137, "Error", stop_at)


# -- ExecSync ----------------------------------------------------------------------------------------


async def test_exec_check_ready_fails_before_ready_after_and_succeeds_after(cri: CriHarness) -> None:
    _, cid, _ = await run(cri, args=["--ready-after=5s"])
    before = await exec_sync(cri, cid, ["khelper", "check", "ready"])
    assert (before.exit_code, before.stdout, before.stderr) == (1, b"", b"not ready yet\n")
    await cri.clock.advance(4.999)
    assert (await exec_sync(cri, cid, ["khelper", "check", "ready"])).exit_code == 1
    await cri.clock.advance(0.001)
    after = await exec_sync(cri, cid, ["/khelper", "check", "ready"])
    assert (after.exit_code, after.stdout, after.stderr) == (0, b"ready\n", b"")


async def test_exec_check_healthy_succeeds_until_unhealthy_after(cri: CriHarness) -> None:
    _, cid, _ = await run(cri, args=["--unhealthy-after=10s"])
    healthy = await exec_sync(cri, cid, ["khelper", "check", "healthy"])
    assert (healthy.exit_code, healthy.stdout, healthy.stderr) == (0, b"healthy\n", b"")
    await cri.clock.advance(9.999)
    assert (await exec_sync(cri, cid, ["khelper", "check", "healthy"])).exit_code == 0
    await cri.clock.advance(0.001)
    sick = await exec_sync(cri, cid, ["khelper", "check", "healthy"])
    assert (sick.exit_code, sick.stdout, sick.stderr) == (1, b"", b"unhealthy\n")
    # the container itself keeps running: only the probe fails
    await assert_running(cri, cid)


async def test_exec_echo_exit_true_false(cri: CriHarness) -> None:
    _, cid, _ = await run(cri)
    echo = await exec_sync(cri, cid, ["echo", "hi"])
    assert (echo.exit_code, echo.stdout, echo.stderr) == (0, b"hi\n", b"")
    three = await exec_sync(cri, cid, ["khelper", "exit", "3"])
    assert (three.exit_code, three.stdout, three.stderr) == (3, b"", b"")
    assert (await exec_sync(cri, cid, ["true"])).exit_code == 0
    assert (await exec_sync(cri, cid, ["/bin/false"])).exit_code == 1


async def test_exec_sleep_longer_than_the_timeout_is_deadline_exceeded(cri: CriHarness) -> None:
    _, cid, _ = await run(cri)
    task = asyncio.ensure_future(exec_sync(cri, cid, ["khelper", "sleep", "10"], timeout=2))
    await until_timer_added(cri, 0)
    await cri.clock.advance(1.999)
    await settle()
    assert not task.done()
    await cri.clock.advance(0.001)
    await expect_code(finish(task), grpc.StatusCode.DEADLINE_EXCEEDED)
    await assert_running(cri, cid)


async def test_exec_sleep_within_the_timeout_returns_after_the_sleep(cri: CriHarness) -> None:
    _, cid, _ = await run(cri)
    task = asyncio.ensure_future(exec_sync(cri, cid, ["sleep", "1"], timeout=2))
    await until_timer_added(cri, 0)
    await cri.clock.advance(0.999)
    await settle()
    assert not task.done()
    await cri.clock.advance(0.001)
    resp = await finish(task)
    assert resp.exit_code == 0


async def test_exec_still_running_when_the_container_exits_is_killed_with_it(cri: CriHarness) -> None:
    _, cid, started = await run(cri, args=["--exit-after=2s"])
    task = asyncio.ensure_future(exec_sync(cri, cid, ["sleep", "10"]))
    try:
        await until_timer_added(cri, 1)  # the container's exit timer is already there
        await cri.clock.advance(2)
        await assert_exited(cri, cid, 0, "Completed", started + 2 * NS)
        await settle()
        # as in containerd: the exec process dies with the container's init (SIGKILL), ExecSync answers 137
        assert task.done(), "ExecSync kept running after its container exited"
        assert (await finish(task)).exit_code == 137
    finally:
        task.cancel()


async def test_exec_in_a_container_that_is_not_running_is_refused_as_containerd_does(cri: CriHarness) -> None:
    cfg = cri.sandbox_config()
    sid = await cri.run_sandbox(cfg)
    await cri.pull(HELPER_IMAGE)
    created = await cri.create(sid, cfg, name="created")
    await expect_code(exec_sync(cri, created, ["true"]), grpc.StatusCode.UNKNOWN)
    exited = await cri.create(sid, cfg, name="exited", args=["--exit-after=1s"])
    await cri.start_container(exited)
    await cri.clock.advance(1)
    assert (await cri.status(exited)).state == api.CONTAINER_EXITED
    await expect_code(exec_sync(cri, exited, ["true"]), grpc.StatusCode.UNKNOWN)


async def test_exec_bad_requests(cri: CriHarness) -> None:
    _, cid, _ = await run(cri)
    await expect_code(exec_sync(cri, "0" * 64, ["true"]), grpc.StatusCode.NOT_FOUND)
    await expect_code(exec_sync(cri, cid, []), grpc.StatusCode.INVALID_ARGUMENT)
    await expect_code(exec_sync(cri, "", ["true"]), grpc.StatusCode.INVALID_ARGUMENT)


async def test_exec_of_a_missing_program_fails_like_runc(cri: CriHarness) -> None:
    _, cid, _ = await run(cri)
    err = await expect_code(exec_sync(cri, cid, ["/no/such/program"]), grpc.StatusCode.UNKNOWN)
    assert "executable file not found" in (err.details() or "")


# -- Exec / Attach / PortForward ------------------------------------------------------------------------


async def test_exec_attach_and_port_forward_answer_urls_under_stream_url(cri: CriHarness) -> None:
    sid, cid, _ = await run(cri)
    exec_url = (await cri.runtime.Exec(api.ExecRequest(container_id=cid, cmd=["sh"], stdout=True))).url
    attach_url = (await cri.runtime.Attach(api.AttachRequest(container_id=cid, stdout=True))).url
    pf_url = (await cri.runtime.PortForward(api.PortForwardRequest(pod_sandbox_id=sid, port=[8080]))).url
    for url in (exec_url, attach_url, pf_url):
        assert url.startswith(STREAM_URL + "/")
        assert len(url) > len(STREAM_URL) + 1
    assert len({exec_url, attach_url, pf_url}) == 3


async def test_exec_attach_and_port_forward_of_unknown_ids_are_not_found(cri: CriHarness) -> None:
    await run(cri)
    unknown = "f" * 64
    await expect_code(
        cri.runtime.Exec(api.ExecRequest(container_id=unknown, cmd=["sh"], stdout=True)), grpc.StatusCode.NOT_FOUND
    )
    await expect_code(
        cri.runtime.Attach(api.AttachRequest(container_id=unknown, stdout=True)), grpc.StatusCode.NOT_FOUND
    )
    await expect_code(
        cri.runtime.PortForward(api.PortForwardRequest(pod_sandbox_id=unknown, port=[80])), grpc.StatusCode.NOT_FOUND
    )


# -- termination messages -----------------------------------------------------------------------------


async def run_with_message_file(cri: CriHarness, tmp_path: Path, args: list[str],
                                container_path: str = "/dev/termination-log", pod: str = "msg") -> tuple[str, Path]:
    """A started helper container with a host file mounted at ``container_path`` (as the kubelet mounts its
    termination message file): (container id, the host file)."""
    host = tmp_path / f"termination-file-{pod}"
    host.write_bytes(b"")
    cfg = cri.sandbox_config(name=pod)
    sid = await cri.run_sandbox(cfg)
    await cri.pull(HELPER_IMAGE)
    config = api.ContainerConfig(metadata=api.ContainerMetadata(name="c"), image=api.ImageSpec(image=HELPER_IMAGE),
                                 command=["/khelper", *args], log_path="c/0.log",
                                 mounts=[api.Mount(container_path=container_path, host_path=str(host))])
    config.linux.security_context.namespace_options.pid = api.CONTAINER
    cid = (await cri.runtime.CreateContainer(api.CreateContainerRequest(
        pod_sandbox_id=sid, config=config, sandbox_config=cfg))).container_id
    await cri.start_container(cid)
    return cid, host


async def test_the_termination_message_goes_through_the_mount_at_exit(cri: CriHarness, tmp_path: Path) -> None:
    cid, host = await run_with_message_file(cri, tmp_path, ["--exit-after=2s", "--termination-message=done here"])
    status = await cri.status(cid)
    assert [(m.container_path, m.host_path) for m in status.mounts] == [("/dev/termination-log", str(host))]
    await cri.clock.advance(1.999)
    assert host.read_bytes() == b""  # only as it ends
    await cri.clock.advance(0.001)
    assert (await cri.status(cid)).state == api.CONTAINER_EXITED
    assert host.read_bytes() == b"done here"


async def test_the_termination_message_at_a_custom_path(cri: CriHarness, tmp_path: Path) -> None:
    _, host = await run_with_message_file(
        cri, tmp_path, ["--exit-after=1s", "--termination-message=x", "--termination-message-path=/tmp/why"],
        container_path="/tmp/why")
    await cri.clock.advance(1)
    assert host.read_bytes() == b"x"


async def test_the_termination_message_after_sigterm_but_not_after_sigkill(cri: CriHarness, tmp_path: Path) -> None:
    cid, host = await run_with_message_file(cri, tmp_path, ["--termination-message=terminated"])
    await finish(stop(cri, cid, timeout=30))
    assert host.read_bytes() == b"terminated"
    killed, other = await run_with_message_file(cri, tmp_path, ["--ignore-sigterm", "--termination-message=never"],
                                                pod="killed")
    task = asyncio.ensure_future(stop(cri, killed, timeout=2))
    await until_timer_added(cri, 0)
    await cri.clock.advance(2)
    await finish(task)
    await assert_exited(cri, killed, 137, "Error", (await cri.status(killed)).finished_at)
    assert other.read_bytes() == b""


async def test_an_unwritable_termination_message_path_is_reported_on_stderr(cri: CriHarness) -> None:
    _, cid, _ = await run(cri, args=["--exit-after=1s", "--termination-message=x",
                                     "--termination-message-path=/no/such/dir/file"])
    await cri.clock.advance(1)
    status = await cri.status(cid)
    assert status.exit_code == 0
    assert log_lines(status)[-1].endswith(
        "stderr F khelper: cannot write /no/such/dir/file: No such file or directory")
