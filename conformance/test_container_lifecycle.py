"""Container lifecycle: exit codes and reasons, timestamps, stop timeout then kill, restart by recreation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from kubeharness.conformance.plugin import code_name
from kubeharness.conformance.target import Target
from kubeharness.wire.cri import api_pb2 as api

Observe = Callable[[str, Any], None]


async def test_a_container_that_exits_0_is_completed(target: Target, observe: Observe) -> None:
    _, cid, _ = await target.running_container("ok", ["--exit-after=1s", "--exit-code=0"])
    status = await target.exited(cid, 20)
    observe("exit", [status.exit_code, status.reason])
    assert (status.exit_code, status.reason) == (0, "Completed")
    assert status.started_at <= status.finished_at


async def test_a_container_that_exits_3_is_an_error(target: Target, observe: Observe) -> None:
    _, cid, _ = await target.running_container("bad", ["--exit-after=1s", "--exit-code=3"])
    status = await target.exited(cid, 20)
    observe("exit", [status.exit_code, status.reason])
    assert (status.exit_code, status.reason) == (3, "Error")


async def test_timestamps_are_ordered_and_the_run_lasts_as_long_as_the_program(target: Target) -> None:
    _, cid, _ = await target.running_container("timed", ["--exit-after=2s"])
    status = await target.exited(cid, 20)
    assert 0 < status.created_at <= status.started_at < status.finished_at
    ran_s = (status.finished_at - status.started_at) / 1e9
    assert 1.9 <= ran_s <= 3.0


async def test_memory_above_the_limit_is_oom_killed(target: Target, observe: Observe) -> None:
    await target.pull("kubeharness.test/khelper:1")
    pod = target.pod("oom")
    sid = await target.run_pod(pod)
    config = target.container("hog", args=["--memory-mib=64"])
    config.linux.resources.memory_limit_in_bytes = 16 * 1024 * 1024
    cid = await target.create(sid, pod, config)
    await target.start(cid)
    status = await target.exited(cid, 20)
    observe("exit", [status.exit_code, status.reason])
    assert (status.exit_code, status.reason) == (137, "OOMKilled")


async def test_a_program_that_handles_sigterm_ends_at_stop(target: Target, observe: Observe) -> None:
    _, cid, _ = await target.running_container("polite", ["--sigterm-exit-code=0"])
    await target.call(target.runtime.StopContainer(api.StopContainerRequest(container_id=cid, timeout=30), timeout=60))
    status = await target.status(cid)
    observe("exit", [status.state, status.exit_code, status.reason])
    assert (status.state, status.exit_code, status.reason) == (api.CONTAINER_EXITED, 0, "Completed")


async def test_a_program_that_ignores_sigterm_is_killed_after_the_timeout(target: Target, observe: Observe) -> None:
    _, cid, _ = await target.running_container("stubborn", ["--ignore-sigterm"])
    await target.call(target.runtime.StopContainer(api.StopContainerRequest(container_id=cid, timeout=2), timeout=60))
    status = await target.status(cid)
    observe("exit", [status.exit_code, status.reason])
    assert (status.state, status.exit_code) == (api.CONTAINER_EXITED, 137)
    assert status.finished_at - status.started_at >= 2 * 10**9


async def test_a_recreated_container_keeps_the_pod_ip(target: Target) -> None:
    sid, cid, pod = await target.running_container("again", ["--exit-after=500ms", "--exit-code=1"])
    ip = (await target.sandbox_status(sid)).network.ip
    await target.exited(cid, 20)
    await target.runtime.RemoveContainer(api.RemoveContainerRequest(container_id=cid), timeout=30)
    second = await target.create(sid, pod, target.container("again", args=["--exit-after=30s"], attempt=1))
    await target.start(second)
    assert (await target.status(second)).metadata.attempt == 1
    assert (await target.sandbox_status(sid)).network.ip == ip


async def test_starting_a_container_twice_is_refused(target: Target, observe: Observe) -> None:
    _, cid, _ = await target.running_container("twice", [])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await target.start(cid)
    observe("code", code_name(info.value))
    assert info.value.code() == grpc.StatusCode.UNKNOWN  # containerd: "container is in CONTAINER_RUNNING state"


async def test_status_of_an_unknown_container_is_not_found(target: Target, observe: Observe) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await target.status("0" * 64)
    observe("code", code_name(info.value))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_removing_an_unknown_container_succeeds(target: Target) -> None:
    await target.runtime.RemoveContainer(api.RemoveContainerRequest(container_id="0" * 64), timeout=30)
