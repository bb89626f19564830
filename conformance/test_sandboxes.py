"""Pod sandboxes: the pause container and its IP, shared namespaces, PID namespaces, stop, remove and list."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from kubeharness.conformance.plugin import code_name
from kubeharness.conformance.target import BUSYBOX, KHELPER, Target
from kubeharness.wire.cri import api_pb2 as api

Observe = Callable[[str, Any], None]
PAUSE = "registry.k8s.io/pause:3.10"
SLEEP = ["sleep", "3600"]


async def run_sh(target: Target, cid: str, cmd: list[str]) -> str:
    """ExecSync ``cmd`` in the container; its stdout (the exec must succeed)."""
    request = api.ExecSyncRequest(container_id=cid, cmd=cmd, timeout=10)
    response = await target.call(target.runtime.ExecSync(request, timeout=30))
    assert response.exit_code == 0, f"{cmd}: exit {response.exit_code}, stderr {response.stderr!r}"
    return response.stdout.decode()


async def busybox_pod(target: Target, name: str, pid: api.NamespaceMode = api.CONTAINER,
                      command: list[str] | None = None) -> tuple[str, str, api.PodSandboxConfig, api.ContainerConfig]:
    """(sandbox id, container id, sandbox config, container config): one started busybox container."""
    await target.pull(BUSYBOX)
    pod = target.pod(name)
    sid = await target.run_pod(pod)
    config = target.container("box", BUSYBOX, command=command or SLEEP)
    config.linux.security_context.namespace_options.pid = pid
    cid = await target.create(sid, pod, config)
    await target.start(cid)
    return sid, cid, pod, config


async def log_text(target: Target, pod: api.PodSandboxConfig, config: api.ContainerConfig, want: str) -> str:
    """The container's log messages once one of them contains ``want``."""
    path = Path(pod.log_directory) / config.log_path

    def messages() -> str:
        lines = path.read_text().splitlines() if path.exists() else []
        return "\n".join(line.split(" ", 3)[3] for line in lines if line.count(" ") >= 3)

    async def logged() -> bool:
        return want in messages()

    await target.until(logged, 20, f"{want!r} in the log of {config.metadata.name}")
    return messages()


def pid_1(ps_output: str) -> str:
    """The command of PID 1 in busybox `ps` output ("" when ps does not list it)."""
    lines = ps_output.splitlines()
    columns = len(lines[0].split()) if lines else 1  # PID USER [TIME] COMMAND
    for line in lines[1:]:
        fields = line.split(None, columns - 1)
        if fields and fields[0] == "1":
            return fields[-1]
    return ""


def node_file(path: str) -> str:
    return Path(path).read_text()


async def sandbox_ids(target: Target, **filters: Any) -> list[str]:
    """ListPodSandbox restricted to this run's sandboxes (the runtime may be shared)."""
    selector = {"kubeharness.test/run": target.run_id, **filters.pop("labels", {})}
    flt = api.PodSandboxFilter(label_selector=selector, **filters)
    items = (await target.runtime.ListPodSandbox(api.ListPodSandboxRequest(filter=flt), timeout=30)).items
    return sorted(item.id for item in items)


async def stop_pod(target: Target, sid: str) -> None:
    await target.call(target.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=60))


# -- a ready sandbox ------------------------------------------------------------------------------------


async def test_a_ready_sandbox_has_an_ip_and_runs_the_pause_image(target: Target, observe: Observe) -> None:
    pod = target.pod("ready", tier="web")
    sid = await target.run_pod(pod)
    request = api.PodSandboxStatusRequest(pod_sandbox_id=sid, verbose=True)
    response = await target.runtime.PodSandboxStatus(request, timeout=30)
    status = response.status
    info = json.loads(response.info.get("info", "{}"))
    observe("state", status.state)
    observe("has ip", bool(status.network.ip))
    observe("info image", info.get("image"))
    assert status.id == sid and status.state == api.SANDBOX_READY
    assert status.metadata.name == pod.metadata.name and status.labels["tier"] == "web"
    assert status.created_at > 0
    assert status.network.ip
    assert info.get("image") == PAUSE


async def test_the_pause_image_is_the_runtimes_sandbox_image_and_is_not_pinned(
    target: Target, observe: Observe
) -> None:
    await target.run_pod(target.pod("paused"))
    request = api.ImageStatusRequest(image=api.ImageSpec(image=PAUSE))
    image = (await target.images.ImageStatus(request, timeout=30)).image
    runtime_status = await target.runtime.Status(api.StatusRequest(verbose=True), timeout=30)
    config = json.loads(runtime_status.info.get("config", "{}"))
    observe("repo tags", list(image.repo_tags))
    observe("pinned", image.pinned)
    observe("sandbox image", config.get("sandboxImage"))
    assert PAUSE in image.repo_tags
    assert config.get("sandboxImage") == PAUSE
    assert not image.pinned  # containerd 1.6 does not pin it (1.7 does)


async def test_pod_sandbox_status_leaves_the_evented_pleg_fields_empty(target: Target, observe: Observe) -> None:
    sid, _, _ = await target.running_container("plain", [])
    response = await target.runtime.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=sid), timeout=30)
    observe("container statuses", len(response.containers_statuses))
    observe("timestamp set", response.timestamp > 0)
    assert (len(response.containers_statuses), response.timestamp) == (0, 0)


async def test_the_ip_is_unique_and_stable_across_container_recreation(target: Target) -> None:
    sid, cid, pod = await target.running_container("stable", ["--exit-after=300ms", "--exit-code=1"])
    ip = (await target.sandbox_status(sid)).network.ip
    neighbour = (await target.sandbox_status(await target.run_pod(target.pod("neighbour")))).network.ip
    assert ip and neighbour and ip != neighbour
    for attempt in (1, 2):
        await target.exited(cid, 20)
        assert (await target.sandbox_status(sid)).network.ip == ip
        await target.runtime.RemoveContainer(api.RemoveContainerRequest(container_id=cid), timeout=30)
        config = target.container("stable", args=["--exit-after=300ms", "--exit-code=1"], attempt=attempt)
        cid = await target.create(sid, pod, config)
        await target.start(cid)
        assert (await target.sandbox_status(sid)).network.ip == ip


async def test_a_host_network_sandbox_has_no_ip(target: Target, observe: Observe) -> None:
    pod = target.pod("hostnet")
    pod.linux.security_context.namespace_options.network = api.NODE
    status = await target.sandbox_status(await target.run_pod(pod))
    observe("ip", status.network.ip)
    observe("network mode", status.linux.namespaces.options.network)
    assert status.state == api.SANDBOX_READY
    assert status.network.ip == ""
    assert status.linux.namespaces.options.network == api.NODE


# -- what the containers of a pod share ------------------------------------------------------------------


async def test_containers_of_a_pod_share_its_hostname_and_dns_config(target: Target, observe: Observe) -> None:
    await target.pull(BUSYBOX)
    pod = target.pod("shared")
    pod.hostname = f"shared-{target.run_id}"
    pod.dns_config.servers.append("10.96.0.10")
    pod.dns_config.searches.append("conformance.svc.cluster.local")
    sid = await target.run_pod(pod)
    seen: list[tuple[str, str, list[str]]] = []
    for name in ("first", "second"):
        cid = await target.create(sid, pod, target.container(name, BUSYBOX, command=SLEEP))
        await target.start(cid)
        hostname = await run_sh(target, cid, ["hostname"])
        etc_hostname = await run_sh(target, cid, ["cat", "/etc/hostname"])
        resolv = await run_sh(target, cid, ["cat", "/etc/resolv.conf"])
        seen.append((hostname, etc_hostname, sorted(line for line in resolv.splitlines() if line)))
    observe("resolv.conf", seen[0][2])
    assert seen[0] == seen[1]
    assert seen[0][0] == seen[0][1] == pod.hostname + "\n"
    assert seen[0][2] == ["nameserver 10.96.0.10", "search conformance.svc.cluster.local"]


async def test_without_a_hostname_in_the_config_containers_see_the_nodes_hostname(
    target: Target, observe: Observe
) -> None:
    _, cid, pod, _ = await busybox_pod(target, "nohost")
    seen = [await run_sh(target, cid, cmd) for cmd in (["hostname"], ["cat", "/etc/hostname"])]
    node = socket.gethostname()
    observe("is node hostname", [s == node + "\n" for s in seen])
    observe("is pod name", [s == pod.metadata.name + "\n" for s in seen])
    assert seen == [node + "\n", node + "\n"]


async def test_without_a_hosts_mount_containers_see_a_copy_of_the_nodes_etc_hosts(
    target: Target, observe: Observe
) -> None:
    _, cid, _, _ = await busybox_pod(target, "hosts")
    hosts = await run_sh(target, cid, ["cat", "/etc/hosts"])
    node_hosts = node_file("/etc/hosts")
    observe("is node's", hosts == node_hosts)
    assert hosts == node_hosts


# -- PID namespaces --------------------------------------------------------------------------------------


async def test_a_container_with_its_own_pid_namespace_is_pid_1_there_and_its_execs_are_not(
    target: Target, observe: Observe
) -> None:
    _, cid, pod, config = await busybox_pod(target, "pid1", api.CONTAINER, ["sh", "-c", "echo pid $$; sleep 3600"])
    logged = await log_text(target, pod, config, "pid ")
    exec_pid = (await run_sh(target, cid, ["sh", "-c", "echo $$"])).strip()
    ps = await run_sh(target, cid, ["ps"])
    observe("main", logged.strip())
    observe("exec is pid 1", exec_pid == "1")
    observe("ps pid 1", pid_1(ps))
    assert logged.strip() == "pid 1"
    assert exec_pid.isdigit() and exec_pid != "1"
    assert pid_1(ps) == "sleep 3600"  # busybox sh execs the last command of -c


async def test_in_the_pods_pid_namespace_the_pause_process_is_pid_1(target: Target, observe: Observe) -> None:
    _, cid, pod, config = await busybox_pod(target, "podpid", api.POD, ["sh", "-c", "echo pid $$; sleep 3600"])
    logged = (await log_text(target, pod, config, "pid ")).strip()
    ps = await run_sh(target, cid, ["ps"])
    observe("main is pid 1", logged == "pid 1")
    observe("ps pid 1", pid_1(ps))
    assert logged.startswith("pid ") and logged != "pid 1"
    assert pid_1(ps) == "/pause"


# -- stop and remove -------------------------------------------------------------------------------------


async def test_stopping_a_sandbox_kills_running_containers_and_leaves_created_ones(
    target: Target, observe: Observe
) -> None:
    await target.pull(KHELPER)
    pod = target.pod("stopall")
    sid = await target.run_pod(pod)
    running = await target.create(sid, pod, target.container("running", args=["--sigterm-exit-code=0"]))
    await target.start(running)
    created = await target.create(sid, pod, target.container("created", args=[]))
    await stop_pod(target, sid)
    ran, made = await target.status(running), await target.status(created)
    observe("running", [ran.state, ran.exit_code, ran.reason])
    observe("created", [made.state, made.exit_code, made.reason, made.finished_at])
    assert (ran.state, ran.exit_code, ran.reason) == (api.CONTAINER_EXITED, 137, "Error")
    assert ran.finished_at >= ran.started_at > 0
    assert (made.state, made.started_at, made.finished_at) == (api.CONTAINER_CREATED, 0, 0)


async def test_a_stopped_sandbox_is_not_ready_and_reports_no_ip(target: Target, observe: Observe) -> None:
    sid = await target.run_pod(target.pod("noip"))
    before = await target.sandbox_status(sid)
    await stop_pod(target, sid)
    after = await target.sandbox_status(sid)
    observe("state", after.state)
    observe("ip", after.network.ip)
    assert before.network.ip
    assert (after.state, after.network.ip) == (api.SANDBOX_NOTREADY, "")
    assert (after.id, after.metadata.name, after.created_at) == (sid, before.metadata.name, before.created_at)


async def test_removing_a_ready_sandbox_removes_it_and_its_containers(target: Target, observe: Observe) -> None:
    sid, running, pod = await target.running_container("rmall", [])
    created = await target.create(sid, pod, target.container("created", args=[]))
    await target.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=60)
    flt = api.ContainerFilter(pod_sandbox_id=sid)
    listed = (await target.runtime.ListContainers(api.ListContainersRequest(filter=flt), timeout=30)).containers
    codes = []
    for cid in (running, created):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await target.status(cid)
        codes.append(code_name(info.value))
    with pytest.raises(grpc.aio.AioRpcError) as sandbox_info:
        await target.sandbox_status(sid)
    observe("container status codes", codes)
    observe("sandbox status code", code_name(sandbox_info.value))
    assert list(listed) == []
    assert await sandbox_ids(target) == []
    assert codes == ["NOT_FOUND", "NOT_FOUND"]
    assert sandbox_info.value.code() == grpc.StatusCode.NOT_FOUND


# -- ListPodSandbox filters ------------------------------------------------------------------------------


async def test_list_pod_sandbox_filters_by_labels(target: Target) -> None:
    web = await target.run_pod(target.pod("web", app="web"))
    db = await target.run_pod(target.pod("db", app="db"))
    assert await sandbox_ids(target) == sorted([web, db])
    assert await sandbox_ids(target, labels={"app": "web"}) == [web]
    assert await sandbox_ids(target, labels={"app": "cache"}) == []


async def test_list_pod_sandbox_filters_by_state(target: Target) -> None:
    live = await target.run_pod(target.pod("live"))
    stopped = await target.run_pod(target.pod("stopped"))
    await stop_pod(target, stopped)
    ready = api.PodSandboxStateValue(state=api.SANDBOX_READY)
    not_ready = api.PodSandboxStateValue(state=api.SANDBOX_NOTREADY)
    assert await sandbox_ids(target, state=ready) == [live]
    assert await sandbox_ids(target, state=not_ready) == [stopped]


async def test_list_pod_sandbox_filters_by_id_or_unique_prefix(target: Target, observe: Observe) -> None:
    wanted = await target.run_pod(target.pod("wanted"))
    await target.run_pod(target.pod("other"))
    by_prefix = await sandbox_ids(target, id=wanted[:12])
    unknown = await sandbox_ids(target, id="f" * 64)
    observe("by prefix", len(by_prefix))
    observe("by unknown id", len(unknown))
    assert await sandbox_ids(target, id=wanted) == [wanted]
    assert by_prefix == [wanted]
    assert unknown == []
