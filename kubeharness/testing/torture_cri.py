"""A CRI workload for :mod:`.torture`: pod lifecycles through RuntimeService, and the check of what survived.

Each lifecycle runs a sandbox (labelled with its key), creates and starts one container in it, stops and
removes the container, stops and removes the sandbox, and ends at a stage drawn from the worker's seeded
random source, so the final state holds pods at every stage. In-doubt calls are resolved the way a
kubelet resolves them: a RunPodSandbox or CreateContainer by listing what carries the key's label (and
adopting it, or running it again), a StartContainer by its status, the idempotent stops and removes by
repeating them. The ledger then knows exactly what the runtime must show, and :func:`check` compares:

- every acknowledged sandbox and container is there, in the state acknowledged last;
- nothing removed is there, and nothing is there that no lifecycle knows (a duplicate of an in-doubt run);
- no metadata (name, namespace, uid, attempt) twice, no container without its sandbox, no pod IP twice;
- everything can be removed afterwards, leaving the lists empty.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import grpc

from kubeharness.testing.torture import CALL_TIMEOUT_S, CHANNEL_OPTIONS, IN_DOUBT, InDoubt, Torture, duplicates
from kubeharness.wire.cri import api_pb2 as cri
from kubeharness.wire.cri import api_pb2_grpc as cri_grpc

LABEL = "kubeharness.io/torture"
IMAGE = "kubeharness.test/app:1"  # runs until stopped, on the emulator and in kubeharness's test image set
# Where a lifecycle ends, with weights: most go all the way, so the live set stays small.
STAGES = ("ready", "created", "running", "exited", "container-removed", "notready", "removed")
WEIGHTS = (1, 1, 2, 1, 1, 1, 8)


@dataclass
class Expected:
    """What the runtime must show for one key: the sandbox and its container, with their last states."""

    sandbox_id: str = ""
    sandbox_state: int = cri.SANDBOX_READY
    container_id: str = ""
    container_state: int = cri.CONTAINER_CREATED


class CriWorkload:
    """Pod lifecycles on one CRI endpoint; ``expected`` is the ledger (key -> Expected, absent when removed)."""

    def __init__(self, torture: Torture, endpoint: str, image: str = IMAGE) -> None:
        self.torture = torture
        self.endpoint = endpoint
        self.image = image
        self.expected: dict[str, Expected] = {}
        self._channel = grpc.aio.insecure_channel(endpoint, options=CHANNEL_OPTIONS)
        self.runtime = cri_grpc.RuntimeServiceStub(self._channel)
        self.images = cri_grpc.ImageServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close(None)

    async def prepare(self) -> None:
        """Pull the containers' image (before the kills: the workload is about lifecycles)."""
        await self.images.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=self.image)),
                                    timeout=CALL_TIMEOUT_S, wait_for_ready=True)

    async def worker(self, index: int) -> None:
        rng = self.torture.worker_rng(index)
        n = 0
        while not self.torture.stopping:
            await self.lifecycle(f"w{index}-{n}", rng)
            n += 1

    def _sandbox_config(self, key: str) -> cri.PodSandboxConfig:
        return cri.PodSandboxConfig(
            metadata=cri.PodSandboxMetadata(name=key, namespace="torture", uid=f"uid-{key}", attempt=0),
            labels={LABEL: key}, log_directory="")

    def _container_config(self, key: str) -> cri.ContainerConfig:
        return cri.ContainerConfig(metadata=cri.ContainerMetadata(name="main", attempt=0),
                                   image=cri.ImageSpec(image=self.image), labels={LABEL: key})

    async def lifecycle(self, key: str, rng: random.Random) -> None:
        end = rng.choices(STAGES, WEIGHTS)[0]
        t, rt = self.torture, self.runtime
        config = self._sandbox_config(key)
        sandbox_id = await self._run_sandbox(key, config)
        exp = self.expected[key] = Expected(sandbox_id=sandbox_id)
        if end == "ready":
            return self._lived()
        if end == "notready":
            await t.settle(lambda: rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sandbox_id),
                                                     timeout=CALL_TIMEOUT_S, wait_for_ready=True))
            exp.sandbox_state = cri.SANDBOX_NOTREADY
            return self._lived()
        exp.container_id = container_id = await self._create_container(key, sandbox_id, config)
        if end == "created":
            return self._lived()
        await self._start_container(container_id)
        exp.container_state = cri.CONTAINER_RUNNING
        if end == "running":
            return self._lived()
        await t.settle(lambda: rt.StopContainer(cri.StopContainerRequest(container_id=container_id, timeout=0),
                                                timeout=CALL_TIMEOUT_S, wait_for_ready=True))
        exp.container_state = cri.CONTAINER_EXITED
        if end == "exited":
            return self._lived()
        await t.settle(lambda: rt.RemoveContainer(cri.RemoveContainerRequest(container_id=container_id),
                                                  timeout=CALL_TIMEOUT_S, wait_for_ready=True))
        exp.container_id = ""
        if end == "container-removed":
            return self._lived()
        await t.settle(lambda: rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sandbox_id),
                                                 timeout=CALL_TIMEOUT_S, wait_for_ready=True))
        exp.sandbox_state = cri.SANDBOX_NOTREADY
        await t.settle(lambda: rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id),
                                                   timeout=CALL_TIMEOUT_S, wait_for_ready=True))
        del self.expected[key]
        self._lived()

    def _lived(self) -> None:
        self.torture.report.lifecycles += 1

    async def _run_sandbox(self, key: str, config: cri.PodSandboxConfig) -> str:
        t = self.torture
        while True:
            answer = await t.call(lambda: self.runtime.RunPodSandbox(
                cri.RunPodSandboxRequest(config=config), timeout=CALL_TIMEOUT_S, wait_for_ready=True))
            if not isinstance(answer, InDoubt):
                return answer.pod_sandbox_id
            listed = await t.settle(lambda: self.runtime.ListPodSandbox(
                cri.ListPodSandboxRequest(filter=cri.PodSandboxFilter(label_selector={LABEL: key})),
                timeout=CALL_TIMEOUT_S, wait_for_ready=True))
            t.resolved(bool(listed.items))
            if listed.items:  # more than one shows in the final check
                return str(listed.items[0].id)

    async def _create_container(self, key: str, sandbox_id: str, sandbox: cri.PodSandboxConfig) -> str:
        t = self.torture
        while True:
            answer = await t.call(lambda: self.runtime.CreateContainer(cri.CreateContainerRequest(
                pod_sandbox_id=sandbox_id, config=self._container_config(key), sandbox_config=sandbox),
                timeout=CALL_TIMEOUT_S, wait_for_ready=True))
            if not isinstance(answer, InDoubt):
                return answer.container_id
            listed = await t.settle(lambda: self.runtime.ListContainers(cri.ListContainersRequest(
                filter=cri.ContainerFilter(pod_sandbox_id=sandbox_id, label_selector={LABEL: key})),
                timeout=CALL_TIMEOUT_S, wait_for_ready=True))
            t.resolved(bool(listed.containers))
            if listed.containers:
                return str(listed.containers[0].id)

    async def _start_container(self, container_id: str) -> None:
        t = self.torture
        while True:
            answer = await t.call(lambda: self.runtime.StartContainer(
                cri.StartContainerRequest(container_id=container_id), timeout=CALL_TIMEOUT_S, wait_for_ready=True))
            if answer is not IN_DOUBT:
                return
            status = await t.settle(lambda: self.runtime.ContainerStatus(
                cri.ContainerStatusRequest(container_id=container_id), timeout=CALL_TIMEOUT_S, wait_for_ready=True))
            started = status.status.state != cri.CONTAINER_CREATED
            t.resolved(started)
            if started:
                return

    async def check(self) -> list[str]:
        """Compare what the runtime lists with the ledger; then remove everything and expect empty lists."""
        problems = await self._compare()
        problems += await self._remove_everything()
        return problems

    async def _list(self) -> tuple[list[cri.PodSandbox], list[cri.Container]]:
        sandboxes = await self.runtime.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=CALL_TIMEOUT_S,
                                                      wait_for_ready=True)
        containers = await self.runtime.ListContainers(cri.ListContainersRequest(), timeout=CALL_TIMEOUT_S,
                                                       wait_for_ready=True)
        return list(sandboxes.items), list(containers.containers)

    async def _compare(self) -> list[str]:
        problems: list[str] = []
        sandboxes, containers = await self._list()
        by_id = {sb.id: sb for sb in sandboxes}
        meta = [(sb.metadata.name, sb.metadata.namespace, sb.metadata.uid, sb.metadata.attempt) for sb in sandboxes]
        problems += [f"two sandboxes with the metadata {m}" for m in duplicates(meta)]
        named = [(c.pod_sandbox_id, c.metadata.name, c.metadata.attempt) for c in containers]
        problems += [f"two containers with the metadata {m}" for m in duplicates(named)]
        problems += [f"container {c.id[:12]} of a sandbox that is not listed ({c.pod_sandbox_id[:12]})"
                     for c in containers if c.pod_sandbox_id not in by_id]
        ips: list[str] = []
        for sb in sandboxes:
            if sb.state == cri.SANDBOX_READY:
                status = await self.runtime.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=sb.id),
                                                             timeout=CALL_TIMEOUT_S, wait_for_ready=True)
                if not status.status.network.ip:
                    problems.append(f"ready sandbox {sb.id[:12]} has no IP")
                ips.append(status.status.network.ip)
        problems += [f"the IP {ip} belongs to two ready sandboxes" for ip in duplicates(ips) if ip]
        expected_sandboxes = {exp.sandbox_id: key for key, exp in self.expected.items()}
        for listed in sandboxes:
            if listed.id not in expected_sandboxes:
                problems.append(f"sandbox {listed.id[:12]} ({listed.labels.get(LABEL)}) is listed, "
                                "but no lifecycle has it")
        expected_containers = {exp.container_id: key for key, exp in self.expected.items() if exp.container_id}
        listed_containers = {c.id: c for c in containers}
        for one in containers:
            if one.id not in expected_containers:
                problems.append(f"container {one.id[:12]} ({one.labels.get(LABEL)}) is listed, "
                                "but no lifecycle has it")
        for key, exp in sorted(self.expected.items()):
            found = by_id.get(exp.sandbox_id)
            if found is None:
                problems.append(f"{key}: acknowledged sandbox {exp.sandbox_id[:12]} is gone")
            elif found.state != exp.sandbox_state:
                problems.append(f"{key}: sandbox is {cri.PodSandboxState.Name(found.state)}, acknowledged "
                                f"{cri.PodSandboxState.Name(exp.sandbox_state)}")
            if exp.container_id:
                c_found = listed_containers.get(exp.container_id)
                if c_found is None:
                    problems.append(f"{key}: acknowledged container {exp.container_id[:12]} is gone")
                elif c_found.state != exp.container_state:
                    problems.append(f"{key}: container is {cri.ContainerState.Name(c_found.state)}, acknowledged "
                                    f"{cri.ContainerState.Name(exp.container_state)}")
        return problems

    async def _remove_everything(self) -> list[str]:
        sandboxes, _ = await self._list()
        for sb in sandboxes:
            await self.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=sb.id),
                                                timeout=CALL_TIMEOUT_S, wait_for_ready=True)
        sandboxes, containers = await self._list()
        if sandboxes or containers:
            return [f"after removing everything, {len(sandboxes)} sandboxes and {len(containers)} containers remain"]
        return []
