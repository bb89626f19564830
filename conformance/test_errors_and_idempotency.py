"""Error codes and idempotency of stop, remove, status and friends; runtime info and the event stream."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from kubeharness.conformance.plugin import code_name
from kubeharness.conformance.target import Target
from kubeharness.wire.cri import api_pb2 as api

Observe = Callable[[str, Any], None]
UNKNOWN_ID = "0" * 64


async def rpc(call: Awaitable[Any]) -> tuple[str, str]:
    """(gRPC code name, message) of a call: ("OK", "") when it succeeds."""
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return code_name(err), err.details() or ""
    return "OK", ""


def stem(message: str, target: Target, *ids: str) -> str:
    """The message with ids and this run's unique names made generic, comparable across targets."""
    for object_id in ids:
        message = message.replace(object_id, "<id>")
    return message.replace(target.run_id, "<run>")


async def stop_pod(target: Target, sid: str) -> None:
    await target.call(target.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=60))


async def remove_pod(target: Target, sid: str) -> None:
    await target.call(target.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=60))


async def stop(target: Target, cid: str, grace_s: int = 0) -> None:
    request = api.StopContainerRequest(container_id=cid, timeout=grace_s)
    await target.call(target.runtime.StopContainer(request, timeout=60))


async def remove(target: Target, cid: str) -> None:
    await target.call(target.runtime.RemoveContainer(api.RemoveContainerRequest(container_id=cid), timeout=60))


async def exited_container(target: Target, name: str) -> tuple[str, str, api.PodSandboxConfig]:
    """(sandbox id, container id, sandbox config): a pod whose one container has exited 0."""
    sid, cid, pod = await target.running_container(name, ["--exit-after=200ms"])
    await target.exited(cid, 20)
    return sid, cid, pod


# -- sandboxes: stop, remove, status ---------------------------------------------------------------------


async def test_stop_and_remove_of_a_sandbox_are_idempotent_but_stopping_a_removed_one_is_not_found(
    target: Target, observe: Observe
) -> None:
    sid, _, _ = await target.running_container("twice", [])
    await stop_pod(target, sid)
    await stop_pod(target, sid)
    assert (await target.sandbox_status(sid)).state == api.SANDBOX_NOTREADY
    await remove_pod(target, sid)
    await remove_pod(target, sid)
    code, message = await rpc(stop_pod(target, sid))
    observe("stop after remove", code)
    observe("message", stem(message, target, sid))
    assert code == "NOT_FOUND"  # containerd 1.6; 2.x answers success


async def test_an_unknown_sandbox_stop_and_status_are_not_found_and_remove_succeeds(
    target: Target, observe: Observe
) -> None:
    stopped, stop_message = await rpc(stop_pod(target, UNKNOWN_ID))
    status, status_message = await rpc(target.sandbox_status(UNKNOWN_ID))
    removed, _ = await rpc(remove_pod(target, UNKNOWN_ID))
    observe("codes", [stopped, status, removed])
    observe("stop message", stem(stop_message, target, UNKNOWN_ID))
    observe("status message", stem(status_message, target, UNKNOWN_ID))
    assert [stopped, status, removed] == ["NOT_FOUND", "NOT_FOUND", "OK"]


# -- containers: stop, remove, status --------------------------------------------------------------------


async def test_stop_and_remove_of_a_container_are_idempotent(target: Target, observe: Observe) -> None:
    _, cid, _ = await target.running_container("twice", [])
    await stop(target, cid)
    await stop(target, cid)
    status = await target.status(cid)
    observe("after two stops", [status.state, status.exit_code, status.reason])
    assert (status.state, status.exit_code) == (api.CONTAINER_EXITED, 137)
    await remove(target, cid)
    await remove(target, cid)
    code, _ = await rpc(target.status(cid))
    observe("status after remove", code)
    assert code == "NOT_FOUND"


async def test_stopping_a_created_container_succeeds_and_leaves_it_created(target: Target) -> None:
    await target.pull("kubeharness.test/khelper:1")
    pod = target.pod("stopmade")
    sid = await target.run_pod(pod)
    cid = await target.create(sid, pod, target.container("made", args=[]))
    await stop(target, cid)
    assert (await target.status(cid)).state == api.CONTAINER_CREATED
    await remove(target, cid)


async def test_stopping_an_unknown_or_removed_container_is_not_found(target: Target, observe: Observe) -> None:
    unknown, message = await rpc(stop(target, UNKNOWN_ID))
    _, cid, _ = await exited_container(target, "gone")
    await remove(target, cid)
    removed, _ = await rpc(stop(target, cid))
    observe("codes", [unknown, removed])
    observe("message", stem(message, target, UNKNOWN_ID))
    assert unknown == removed == "NOT_FOUND"  # containerd 1.6; 2.x answers success


async def test_empty_ids_are_an_unknown_error(target: Target, observe: Observe) -> None:
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "StopPodSandbox": lambda: stop_pod(target, ""),
        "RemovePodSandbox": lambda: remove_pod(target, ""),
        "PodSandboxStatus": lambda: target.sandbox_status(""),
        "StopContainer": lambda: stop(target, ""),
        "RemoveContainer": lambda: remove(target, ""),
        "ContainerStatus": lambda: target.status(""),
    }
    codes = {}
    for name, call in calls.items():
        code, message = await rpc(call())
        codes[name] = code
        observe(name, [code, stem(message, target)])
    assert set(codes.values()) == {"UNKNOWN"}


# -- name conflicts --------------------------------------------------------------------------------------


async def test_a_second_sandbox_with_the_same_name_is_refused_naming_the_holder(
    target: Target, observe: Observe
) -> None:
    pod = target.pod("same")
    sid = await target.run_pod(pod)
    code, message = await rpc(target.runtime.RunPodSandbox(api.RunPodSandboxRequest(config=pod), timeout=60))
    observe("code", code)
    observe("message", stem(message, target, sid))
    assert code == "UNKNOWN"
    assert "is reserved for" in message and sid in message


async def test_a_second_container_with_the_same_name_is_refused_naming_the_holder(
    target: Target, observe: Observe
) -> None:
    sid, cid, pod = await target.running_container("dup", [])
    code, message = await rpc(target.create(sid, pod, target.container("dup", args=[])))
    observe("code", code)
    observe("message", stem(message, target, cid))
    assert code == "UNKNOWN"
    assert "is reserved for" in message and cid in message


# -- operations on a stopped sandbox or a container that is not running ----------------------------------


async def test_creating_a_container_in_a_stopped_sandbox_is_not_found(target: Target, observe: Observe) -> None:
    await target.pull("kubeharness.test/khelper:1")
    pod = target.pod("late")
    sid = await target.run_pod(pod)
    await stop_pod(target, sid)
    code, message = await rpc(target.create(sid, pod, target.container("late", args=[])))
    observe("code", code)
    observe("message", stem(message, target, sid))
    assert code == "NOT_FOUND"  # the sandbox's task is gone


async def test_starting_a_created_container_of_a_stopped_sandbox_fails(target: Target, observe: Observe) -> None:
    await target.pull("kubeharness.test/khelper:1")
    pod = target.pod("orphan")
    sid = await target.run_pod(pod)
    cid = await target.create(sid, pod, target.container("orphan", args=[]))
    await stop_pod(target, sid)
    code, message = await rpc(target.start(cid))
    observe("code", code)
    observe("message", stem(message, target, sid, cid))
    assert code == "UNKNOWN"
    assert "not running" in message


async def test_exec_in_an_exited_container_fails(target: Target, observe: Observe) -> None:
    _, cid, _ = await exited_container(target, "execx")
    request = api.ExecSyncRequest(container_id=cid, cmd=["khelper", "true"], timeout=5)
    code, message = await rpc(target.call(target.runtime.ExecSync(request, timeout=30)))
    observe("code", code)
    observe("message", stem(message, target, cid))
    assert code == "UNKNOWN"
    assert "CONTAINER_EXITED" in message


async def test_reopening_the_log_of_an_exited_container_fails(target: Target, observe: Observe) -> None:
    _, cid, _ = await exited_container(target, "reopenx")
    request = api.ReopenContainerLogRequest(container_id=cid)
    code, message = await rpc(target.runtime.ReopenContainerLog(request, timeout=30))
    observe("code", code)
    observe("message", stem(message, target, cid))
    assert code == "UNKNOWN"
    assert "not running" in message


async def test_starting_an_exited_container_fails(target: Target, observe: Observe) -> None:
    _, cid, _ = await exited_container(target, "startx")
    code, message = await rpc(target.start(cid))
    observe("code", code)
    observe("message", stem(message, target, cid))
    assert code == "UNKNOWN"
    assert "CONTAINER_EXITED" in message
    assert (await target.status(cid)).state == api.CONTAINER_EXITED


async def test_updating_the_resources_of_an_exited_container_succeeds(target: Target) -> None:
    _, cid, _ = await exited_container(target, "updatex")
    resources = api.LinuxContainerResources(cpu_shares=512, memory_limit_in_bytes=64 * 1024 * 1024)
    request = api.UpdateContainerResourcesRequest(container_id=cid, linux=resources)
    await target.runtime.UpdateContainerResources(request, timeout=30)
    assert (await target.status(cid)).state == api.CONTAINER_EXITED


async def test_calls_on_an_unknown_container_are_not_found(target: Target, observe: Observe) -> None:
    runtime = target.runtime
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "StartContainer": lambda: target.start(UNKNOWN_ID),
        "ExecSync": lambda: runtime.ExecSync(api.ExecSyncRequest(container_id=UNKNOWN_ID, cmd=["true"]), timeout=30),
        "ReopenContainerLog": lambda: runtime.ReopenContainerLog(
            api.ReopenContainerLogRequest(container_id=UNKNOWN_ID), timeout=30
        ),
        "UpdateContainerResources": lambda: runtime.UpdateContainerResources(
            api.UpdateContainerResourcesRequest(container_id=UNKNOWN_ID), timeout=30
        ),
    }
    codes = {}
    for name, call in calls.items():
        code, message = await rpc(call())
        codes[name] = code
        observe(name, [code, stem(message, target, UNKNOWN_ID)])
    assert set(codes.values()) == {"NOT_FOUND"}


# -- images ----------------------------------------------------------------------------------------------


async def test_removing_an_unknown_image_succeeds_and_an_empty_name_fails(target: Target, observe: Observe) -> None:
    for ref in ("kubeharness.test/nosuch:9", "sha256:" + "0" * 64):
        spec = api.ImageSpec(image=ref)
        status = await target.images.ImageStatus(api.ImageStatusRequest(image=spec), timeout=30)
        assert not status.HasField("image")
        await target.images.RemoveImage(api.RemoveImageRequest(image=spec), timeout=30)
    request = api.RemoveImageRequest(image=api.ImageSpec(image=""))
    code, message = await rpc(target.images.RemoveImage(request, timeout=30))
    observe("empty name", code)
    observe("message", stem(message, target))
    assert code == "UNKNOWN"


# -- runtime info ----------------------------------------------------------------------------------------


async def test_version_names_the_runtime_and_cri_v1(target: Target, observe: Observe) -> None:
    version = await target.runtime.Version(api.VersionRequest(version="v1"), timeout=30)
    observe("version", version.version)
    observe("runtime api version", version.runtime_api_version)
    assert (version.version, version.runtime_api_version) == ("0.1.0", "v1")
    assert version.runtime_name and version.runtime_version


async def test_status_reports_runtime_and_network_ready(target: Target, observe: Observe) -> None:
    status = (await target.runtime.Status(api.StatusRequest(), timeout=30)).status
    conditions = {c.type: (c.status, c.reason, c.message) for c in status.conditions}
    observe("conditions", sorted(conditions))
    assert conditions["RuntimeReady"] == (True, "", "")
    assert conditions["NetworkReady"] == (True, "", "")


async def test_runtime_config_is_unimplemented(target: Target, observe: Observe) -> None:
    code, _ = await rpc(target.runtime.RuntimeConfig(api.RuntimeConfigRequest(), timeout=30))
    observe("code", code)
    assert code == "UNIMPLEMENTED"  # containerd 1.6; 1.7+ answers the cgroup driver


async def test_get_container_events_is_unimplemented(target: Target, observe: Observe) -> None:
    """What arrives for a pod cycle; containerd 1.6 has no event stream (1.7+ streams container events)."""
    stream = target.runtime.GetContainerEvents(api.GetEventsRequest())
    events: list[api.ContainerEventResponse] = []
    ended = asyncio.get_running_loop().create_future()

    async def read() -> None:
        try:
            async for event in stream:
                events.append(event)
            ended.set_result("OK")
        except grpc.aio.AioRpcError as err:
            ended.set_result(code_name(err))

    reader = asyncio.ensure_future(read())
    await target.wait(0.3)
    sid, cid, _ = await target.running_container("events", [])
    await stop(target, cid)
    await remove(target, cid)
    await stop_pod(target, sid)
    await remove_pod(target, sid)
    await target.wait(0.5)
    stream.cancel()
    await asyncio.wait([reader], timeout=5)
    names = {sid: "sandbox", cid: "container"}
    seen = [
        f"{names[e.container_id]} {api.ContainerEventType.Name(e.container_event_type)}"
        for e in events
        if e.container_id in names
    ]
    code = ended.result() if ended.done() else "stream open"
    observe("stream", code)
    observe("events", seen)
    assert code == "UNIMPLEMENTED"
