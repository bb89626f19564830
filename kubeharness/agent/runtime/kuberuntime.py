"""Carrying out a pod's actions through CRI: kubelet's kuberuntime ``SyncPod`` and ``KillPod``.

:class:`PodRuntime` turns a :class:`~kubeharness.agent.runtime.actions.PodActions` into CRI calls, in kubelet's
order: kill what must go (the whole pod, or single containers), create the sandbox (with the pod's cgroup
parent for its QoS class, DNS config, log directory, namespaces, port mappings, kubelet's labels and
annotations), pull images per policy, then create and start the next init container or the app
containers. What went wrong for a container (ErrImagePull, ErrImageNeverPull, CreateContainerError,
RunContainerError, PostStartHookError) is kept in :attr:`PodRuntime.reasons`, kubelet's reason cache, for the
status. A runtime that is away makes calls fail with UNAVAILABLE; the error propagates to the pod worker,
which retries on its next sync.

Lifecycle (kubelet's ``startContainer`` and ``killContainer``; the handlers are ``runtime.lifecycle``'s):

- Every container with a ``terminationMessagePath`` gets its termination message file mounted
  (:func:`~kubeharness.agent.runtime.termination.message_mount`).
- postStart runs right after StartContainer and the pod worker waits for it; meanwhile
  :meth:`PodRuntime.without_post_starting` hides the container from the status (kubelet's status was made
  before the start and is not remade until the sync returns). A failed hook: the container is killed
  (``Killing`` "FailedPostStartHook", its preStop included) and the reason is ``PostStartHookError`` with
  the hook's message, until the restart policy and the back-off start it again.
- Every kill (a single container or the whole pod) runs the container's preStop first when the grace period
  is above 0, within it; StopContainer gets what is left in whole seconds, and never less than 2
  (kubelet's ``minimumGracePeriodInSeconds``). A pod's containers are killed concurrently, as kubelet does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

import grpc

from kubeharness.agent.config.kubelet import AgentConfig
from kubeharness.agent.events import KILLING, NORMAL, Recorder, container_field_path
from kubeharness.agent.pleg.observed import RUNNING, ObservedPod
from kubeharness.agent.pod import labels, qos
from kubeharness.agent.pod.expansion import expand_command
from kubeharness.agent.pod.model import PULL_ALWAYS, PULL_NEVER, Container, Pod
from kubeharness.agent.runtime import termination
from kubeharness.agent.runtime.actions import PodActions, backoff_entry
from kubeharness.agent.runtime.backoff import Backoff
from kubeharness.agent.runtime.client import RuntimeClient, unless_gone
from kubeharness.agent.runtime.lifecycle import HookRunner
from kubeharness.agent.server.metrics import Registry
from kubeharness.clock import Clock
from kubeharness.wire.cri import api_pb2 as api

log = logging.getLogger(__name__)

DEFAULT_MEMORY_CAPACITY = 8 * 1024**3  # for oom_score_adj until node capacity is read (part 2)
CLUSTER_FIRST, CLUSTER_FIRST_HOST_NET = "ClusterFirst", "ClusterFirstWithHostNet"
DNS_DEFAULT, DNS_NONE = "Default", "None"
MIN_GRACE_PERIOD_S = 2  # kubelet's minimumGracePeriodInSeconds: StopContainer never gets less
POST_START_HOOK_ERROR = "PostStartHookError"  # kubelet's ErrPostStartHook
FAILED_POST_START_HOOK_KILL = "FailedPostStartHook"  # the Killing event's message for that kill


def dns_config(pod: Pod, config: AgentConfig) -> api.DNSConfig:
    """The pod's resolver settings as kubelet computes them from dnsPolicy, clusterDNS and clusterDomain."""
    policy = pod.spec.dns_policy
    if policy == CLUSTER_FIRST and pod.spec.host_network:
        policy = DNS_DEFAULT  # kubelet: a host-network pod with ClusterFirst uses the node's resolver
    if policy == DNS_NONE:
        custom = pod.raw.get("spec", {}).get("dnsConfig", {}) or {}
        return api.DNSConfig(servers=list(custom.get("nameservers", [])), searches=list(custom.get("searches", [])),
                             options=[o.get("name", "") + (f":{o['value']}" if o.get("value") else "")
                                      for o in custom.get("options", [])])
    if policy in (CLUSTER_FIRST, CLUSTER_FIRST_HOST_NET) and config.cluster_dns:
        domain = config.cluster_domain
        searches = [f"{pod.namespace}.svc.{domain}", f"svc.{domain}", domain] if domain else []
        return api.DNSConfig(servers=list(config.cluster_dns), searches=searches, options=["ndots:5"])
    return api.DNSConfig()  # the runtime uses the node's resolv.conf


def sandbox_config(pod: Pod, attempt: int, config: AgentConfig) -> api.PodSandboxConfig:
    spec = pod.spec
    ns = api.NamespaceOption(network=api.NODE if spec.host_network else api.POD,
                             pid=api.NODE if spec.host_pid else api.CONTAINER,
                             ipc=api.NODE if spec.host_ipc else api.POD)
    security = api.LinuxSandboxSecurityContext(namespace_options=ns,
                                               supplemental_groups=list(spec.supplemental_groups))
    if spec.run_as_user is not None:
        security.run_as_user.value = spec.run_as_user
    if spec.run_as_group is not None:
        security.run_as_group.value = spec.run_as_group
    ports = [api.PortMapping(protocol=p.protocol if p.protocol in ("TCP", "UDP", "SCTP") else "TCP",
                             container_port=p.container_port, host_port=p.host_port)
             for c in spec.containers for p in c.ports if p.host_port]
    hostname = (spec.hostname or pod.name)[:63] if not spec.host_network else ""
    linux = api.LinuxPodSandboxConfig(
        cgroup_parent=qos.pod_cgroup_parent(pod, cgroups_per_qos=config.cgroups_per_qos,
                                            cgroup_root=config.cgroup_root, cgroup_driver=config.cgroup_driver),
        security_context=security, resources=qos.sandbox_resources(pod))
    return api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=pod.name, namespace=pod.namespace, uid=pod.uid, attempt=attempt),
        hostname=hostname, log_directory=pod_log_dir(pod, config), dns_config=dns_config(pod, config),
        port_mappings=ports, labels=labels.sandbox_labels(pod), annotations=labels.sandbox_annotations(pod),
        linux=linux)


def pod_log_dir(pod: Pod, config: AgentConfig) -> str:
    return os.path.join(config.pod_logs_dir, f"{pod.namespace}_{pod.name}_{pod.uid}")


def container_config(pod: Pod, container: Container, restart_count: int, image: str,
                     mounts: Sequence[api.Mount] = ()) -> api.ContainerConfig:
    security = api.LinuxContainerSecurityContext(namespace_options=api.NamespaceOption(
        network=api.NODE if pod.spec.host_network else api.POD,
        pid=api.NODE if pod.spec.host_pid else api.CONTAINER, ipc=api.NODE if pod.spec.host_ipc else api.POD))
    if pod.spec.run_as_user is not None:
        security.run_as_user.value = pod.spec.run_as_user
    if pod.spec.run_as_group is not None:
        security.run_as_group.value = pod.spec.run_as_group
    security.supplemental_groups.extend(pod.spec.supplemental_groups)
    resources = qos.container_resources(pod, container, memory_capacity=DEFAULT_MEMORY_CAPACITY)
    return api.ContainerConfig(
        metadata=api.ContainerMetadata(name=container.name, attempt=restart_count),
        image=api.ImageSpec(image=image, user_specified_image=container.image),
        command=expand_command(container.command, container.env), args=expand_command(container.args, container.env),
        working_dir=container.working_dir,
        envs=[api.KeyValue(key=e.name, value=e.value) for e in container.env],
        labels=labels.container_labels(pod, container),
        annotations=labels.container_annotations(pod, container, restart_count), mounts=list(mounts),
        log_path=os.path.join(container.name, f"{restart_count}.log"), stdin=container.stdin, tty=container.tty,
        linux=api.LinuxContainerConfig(resources=resources, security_context=security))


@dataclass
class PodRuntime:
    """Runs one agent's pods through CRI."""

    client: RuntimeClient
    config: AgentConfig
    clock: Clock
    backoff: Backoff
    metrics: Registry
    # pod uid -> container name -> (waiting reason, message): why a container could not be started
    reasons: dict[str, dict[str, tuple[str, str]]] = field(default_factory=dict)
    recorder: Recorder | None = None
    rng: random.Random = field(default_factory=random.Random)  # names of termination message files
    hooks: HookRunner = field(init=False)
    # pod uid -> container id -> its interrupt, while the container's postStart hook runs
    _post_starting: dict[str, dict[str, asyncio.Event]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.hooks = HookRunner(self.clock, self.client, self.recorder or Recorder(self.clock, self.config.node_name))

    def without_post_starting(self, observed: ObservedPod | None) -> ObservedPod | None:
        """The pod as its status must show it: without the containers whose postStart hook is still running
        (kubelet reports them as they were before the start until the hook returns)."""
        running = self._post_starting.get(observed.uid) if observed is not None else None
        if observed is None or not running:
            return observed
        return replace(observed, containers=tuple(c for c in observed.containers if c.id not in running))

    def interrupt_post_start(self, uid: str) -> None:
        """Stop the pod's running postStart hooks, as kubelet's cancelled pod worker context stops them (the
        pod is being deleted); each then fails and its container is killed."""
        for event in self._post_starting.get(uid, {}).values():
            event.set()

    async def close(self) -> None:
        await self.hooks.close()

    async def sync(self, pod: Pod, observed: ObservedPod | None, actions: PodActions) -> None:
        """Carry out ``actions`` for ``pod``."""
        if actions.kill_pod:
            await self.kill_pod(pod, observed, actions.grace_period_s)
        else:
            sandbox_of = {c.id: c.sandbox_id for c in observed.containers} if observed is not None else {}
            for kill in actions.containers_to_kill:
                await self.kill_container(pod, kill.name, kill.container_id, sandbox_of.get(kill.container_id, ""),
                                          kill.message, kill.grace_period_s)
        sandbox_id = actions.sandbox_id
        sandbox = sandbox_config(pod, actions.attempt, self.config)
        if actions.create_sandbox:
            sandbox_id = await self.client.run_sandbox(sandbox)
            if actions.attempt > 0:
                self.metrics.restarted_pods.labels("true").inc()
            self.metrics.started_pods.inc()
        if not sandbox_id:
            return
        fresh = actions.create_sandbox
        for idx in actions.init_containers_to_start:  # in order; an ordinary init container that fails ends it
            container = pod.spec.init_containers[idx]
            started = await self._start(pod, None if fresh else observed, sandbox_id, sandbox, container)
            if not started and container.restart_policy != "Always":
                return
        if actions.init_failed:
            return
        for container in (pod.spec.containers[i] for i in actions.containers_to_start):
            await self._start(pod, None if fresh else observed, sandbox_id, sandbox, container)

    async def _start(self, pod: Pod, observed: ObservedPod | None, sandbox_id: str,
                     sandbox: api.PodSandboxConfig, container: Container) -> bool:
        """Create and start ``container``; False (and a reason for the status) if it could not be."""
        reasons = self.reasons.setdefault(pod.uid, {})
        image = await self._ensure_image(pod, container, sandbox, reasons)
        if image is None:
            return False
        previous = observed.latest(container.name) if observed is not None else None
        restart_count = previous.restart_count + 1 if previous is not None else 0
        entry = backoff_entry(pod, observed, container)
        mount = termination.message_mount(self.config.root_dir, pod.uid, container, self.rng)
        config = container_config(pod, container, restart_count, image, [mount] if mount is not None else [])
        try:
            container_id = await self.client.create_container(sandbox_id, config, sandbox)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNAVAILABLE:
                raise
            reasons[container.name] = ("CreateContainerError", err.details() or "")
            return False
        try:
            await self.client.start_container(container_id)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNAVAILABLE:
                raise
            reasons[container.name] = ("RunContainerError", err.details() or "")
            return False
        finally:
            if entry is not None:
                self.backoff.next(*entry, now_ns=self.clock.now_ns())
        kind = labels.TYPE_INIT if container in pod.spec.init_containers else labels.TYPE_APP
        self.metrics.started_containers.labels(kind).inc()
        if container.lifecycle.post_start is not None and not await self._post_start(pod, container, container_id,
                                                                                      sandbox_id, reasons):
            return False
        reasons.pop(container.name, None)
        return True

    async def _post_start(self, pod: Pod, container: Container, container_id: str, sandbox_id: str,
                          reasons: dict[str, tuple[str, str]]) -> bool:
        """Run the postStart hook; on failure kill the container and record the reason. True if it succeeded."""
        interrupt = self._post_starting.setdefault(pod.uid, {}).setdefault(container_id, asyncio.Event())
        try:
            failure = await self.hooks.post_start(pod, container, container_id, self._ips(sandbox_id), interrupt)
        finally:
            running = self._post_starting.get(pod.uid, {})
            running.pop(container_id, None)
            if not running:
                self._post_starting.pop(pod.uid, None)
        if failure is None:
            return True
        reasons[container.name] = (POST_START_HOOK_ERROR, failure.message)
        await self.kill_container(pod, container.name, container_id, sandbox_id, FAILED_POST_START_HOOK_KILL)
        return False

    def _ips(self, sandbox_id: str) -> Callable[[], Awaitable[Sequence[str]]]:
        """The pod's IPs as the runtime reports them now (kubelet's GetPodStatus for an httpGet hook)."""
        async def ips() -> Sequence[str]:
            status = await unless_gone(self.client.sandbox_status(sandbox_id)) if sandbox_id else None
            if status is None or not status.HasField("network"):
                return ()
            return tuple(ip for ip in (status.network.ip, *(p.ip for p in status.network.additional_ips)) if ip)
        return ips
        return True

    async def _ensure_image(self, pod: Pod, container: Container, sandbox: api.PodSandboxConfig,
                            reasons: dict[str, tuple[str, str]]) -> str | None:
        """The image to create the container from, pulled per policy; None (and a reason) if it cannot be."""
        policy = container.image_pull_policy
        try:
            present = None if policy == PULL_ALWAYS else await self.client.image_ref(container.image)
            if present is not None:
                return container.image
            if policy == PULL_NEVER:
                reasons[container.name] = ("ErrImageNeverPull", f'Container image "{container.image}" is not '
                                           'present with pull policy of Never')
                return None
            await self.client.pull_image(container.image, sandbox)
            return container.image
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNAVAILABLE:
                raise
            reasons[container.name] = ("ErrImagePull", err.details() or "")
            return None

    async def kill_pod(self, pod: Pod | None, observed: ObservedPod | None, grace_s: int | None = None) -> None:
        """Stop every running container (with the grace period), then every sandbox of the pod."""
        if observed is None:
            return
        grace = grace_s if grace_s is not None else (pod.spec.termination_grace_period_seconds if pod else 30)
        kills = [self.kill_container(pod, c.name, c.id, c.sandbox_id, "", grace)
                 for c in observed.containers if c.state == RUNNING]
        failed = [r for r in await asyncio.gather(*kills, return_exceptions=True) if isinstance(r, BaseException)]
        if failed:
            raise failed[0]
        for sandbox in observed.sandboxes:
            if sandbox.ready:
                await unless_gone(self.client.stop_sandbox(sandbox.id))

    async def kill_container(self, pod: Pod | None, name: str, container_id: str, sandbox_id: str, message: str,
                             grace_s: int | None = None) -> None:
        """Kubelet's killContainer: the Killing event, preStop within the grace period (``grace_s``, else the
        pod's), then StopContainer with what is left, at least 2 s."""
        grace = grace_s if grace_s is not None else (pod.spec.termination_grace_period_seconds if pod else 30)
        spec = next((c for c in pod.all_containers() if c.name == name), None) if pod is not None else None
        if pod is not None:
            self._killing(pod, name, message)
        if pod is not None and spec is not None and spec.lifecycle.pre_stop is not None and grace > 0:
            grace -= await self.hooks.pre_stop(pod, spec, container_id, grace, self._ips(sandbox_id))
        await unless_gone(self.client.stop_container(container_id, max(grace, MIN_GRACE_PERIOD_S)))

    def _killing(self, pod: Pod, name: str, message: str) -> None:
        """Kubelet's Killing event: the kill's reason, or "Stopping container <name>"."""
        if self.recorder is None:
            return
        init = any(c.name == name for c in pod.spec.init_containers)
        self.recorder.record(pod.namespace, pod.name, pod.uid, container_field_path(name, init), NORMAL, KILLING,
                             message or f"Stopping container {name}")

    def forget_pod(self, uid: str) -> None:
        """Drop what the runtime keeps for a pod that is gone: its termination message files, its reasons and
        back-off entries (housekeeping; ``gc.containers`` removes its containers and sandboxes)."""
        termination.remove_pod_dir(self.config.root_dir, uid)
        self.reasons.pop(uid, None)
        self.backoff.forget_pod(uid)
