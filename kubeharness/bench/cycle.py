"""The work items of the benchmark: a full pod cycle, and creating or removing one live pod.

A pod cycle is what kubelet asks of a runtime for a one-container pod from start to finish:

    RunPodSandbox, CreateContainer, StartContainer, ContainerStatus,
    StopContainer, RemoveContainer, StopPodSandbox, RemovePodSandbox

A step that fails ends its cycle; the sandbox is then removed without timing (RemovePodSandbox
force-removes its containers), so a failure does not leave pods behind to slow later cycles.
"""

from __future__ import annotations

from kubeharness.bench.client import TimedClient
from kubeharness.bench.kubelet import PodPlan, container_config, make_log_directories, sandbox_config
from kubeharness.wire.cri import api_pb2 as api

CYCLE_RPCS = (
    "RunPodSandbox", "CreateContainer", "StartContainer", "ContainerStatus",
    "StopContainer", "RemoveContainer", "StopPodSandbox", "RemovePodSandbox",
)
STOP_GRACE_S = 30.0  # on top of the StopContainer timeout, before the client gives up on the call


async def run_pod(client: TimedClient, plan: PodPlan, phase: str, index: int) -> tuple[str, str] | None:
    """RunPodSandbox, CreateContainer and StartContainer: (sandbox id, container id), or None on failure."""
    sandbox = sandbox_config(plan, phase, index)
    make_log_directories(sandbox)
    rt = client.runtime
    ran = await client.call("RunPodSandbox", rt.RunPodSandbox, api.RunPodSandboxRequest(config=sandbox))
    if ran is None:
        return None
    sandbox_id = ran.pod_sandbox_id
    create = api.CreateContainerRequest(
        pod_sandbox_id=sandbox_id, config=container_config(plan, sandbox), sandbox_config=sandbox
    )
    created = await client.call("CreateContainer", rt.CreateContainer, create)
    if created is None:
        await discard_pod(client, sandbox_id)
        return None
    container_id = created.container_id
    started = await client.call(
        "StartContainer", rt.StartContainer, api.StartContainerRequest(container_id=container_id)
    )
    if started is None:
        await discard_pod(client, sandbox_id)
        return None
    return sandbox_id, container_id


async def check_running(client: TimedClient, container_id: str) -> bool:
    """ContainerStatus; a container that is not running after StartContainer is counted as a failure."""
    request = api.ContainerStatusRequest(container_id=container_id)
    answer = await client.call("ContainerStatus", client.runtime.ContainerStatus, request)
    if answer is None:
        return False
    if answer.status.state != api.CONTAINER_RUNNING:
        state = api.ContainerState.Name(answer.status.state)
        client.recorder.fail("ContainerStatus", "UNEXPECTED_STATE", f"{state} after StartContainer")
    return True


async def finish_container(client: TimedClient, plan: PodPlan, container_id: str) -> bool:
    """StopContainer, then RemoveContainer."""
    rt = client.runtime
    stop = api.StopContainerRequest(container_id=container_id, timeout=plan.stop_timeout_s)
    grace = plan.stop_timeout_s + STOP_GRACE_S
    if await client.call("StopContainer", rt.StopContainer, stop, extra_timeout_s=grace) is None:
        return False
    remove = api.RemoveContainerRequest(container_id=container_id)
    return await client.call("RemoveContainer", rt.RemoveContainer, remove) is not None


async def remove_pod(client: TimedClient, sandbox_id: str, record: bool = True) -> bool:
    """StopPodSandbox, then RemovePodSandbox."""
    rt = client.runtime
    stop = api.StopPodSandboxRequest(pod_sandbox_id=sandbox_id)
    if await client.call("StopPodSandbox", rt.StopPodSandbox, stop, extra_timeout_s=STOP_GRACE_S,
                         record=record) is None:
        return False
    remove = api.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id)
    return await client.call("RemovePodSandbox", rt.RemovePodSandbox, remove, record=record) is not None


async def discard_pod(client: TimedClient, sandbox_id: str) -> None:
    """Best-effort, untimed removal of a sandbox whose cycle failed."""
    remove = api.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id)
    await client.call("RemovePodSandbox (clean-up)", client.runtime.RemovePodSandbox, remove,
                      extra_timeout_s=STOP_GRACE_S, record=False)


async def pod_cycle(client: TimedClient, plan: PodPlan, phase: str, index: int) -> bool:
    """One full pod cycle; True if every step succeeded."""
    pod = await run_pod(client, plan, phase, index)
    if pod is None:
        return False
    sandbox_id, container_id = pod
    ok = await check_running(client, container_id) and await finish_container(client, plan, container_id)
    ok = ok and await remove_pod(client, sandbox_id)
    if not ok:
        await discard_pod(client, sandbox_id)
    return ok
