"""Pod sandbox and container configurations shaped like the ones kubelet sends.

The benchmark should cost a runtime what a real node costs it, so the messages carry what kubelet
puts in them for an ordinary Burstable pod with one container: identity labels and annotations, a
pod log directory ``<root>/<namespace>_<name>_<uid>`` that exists before RunPodSandbox, an empty
cgroup parent, POD network/IPC and CONTAINER PID namespaces, RuntimeDefault seccomp, cluster DNS, a
container log path ``<container>/<attempt>.log`` and Linux resources with a 128 MiB memory limit.
Every pod gets a name and uid of its own, so no two cycles (nor two benchmark runs) collide.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from kubeharness.wire.cri import api_pb2 as api

MiB = 1024 * 1024
NAMESPACE = "kubeharness-bench"
CONTAINER = "bench"
MEMORY_LIMIT_BYTES = 128 * MiB
CPU_SHARES = 102  # a 100m CPU request
OOM_SCORE_ADJ = 999  # what kubelet computes for a small Burstable container
DNS_SERVER = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"


@dataclass(frozen=True)
class PodPlan:
    """What every pod of one benchmark run looks like; picklable, so client processes get a copy."""

    run_id: str
    image: str
    log_root: str
    stop_timeout_s: int = 0

    def pod_name(self, phase: str, index: int) -> str:
        return f"bench-{self.run_id}-{phase}-{index}"

    def pod_uid(self, phase: str, index: int) -> str:
        return f"{self.run_id}-{phase}-{index:08d}"


def sandbox_config(plan: PodPlan, phase: str, index: int) -> api.PodSandboxConfig:
    name, uid = plan.pod_name(phase, index), plan.pod_uid(phase, index)
    config = api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=name, namespace=NAMESPACE, uid=uid, attempt=0),
        hostname=name,
        log_directory=os.path.join(plan.log_root, f"{NAMESPACE}_{name}_{uid}"),
        dns_config=api.DNSConfig(
            servers=[DNS_SERVER],
            searches=[f"{NAMESPACE}.svc.{CLUSTER_DOMAIN}", f"svc.{CLUSTER_DOMAIN}", CLUSTER_DOMAIN],
            options=["ndots:5"],
        ),
        labels={
            "io.kubernetes.pod.name": name,
            "io.kubernetes.pod.namespace": NAMESPACE,
            "io.kubernetes.pod.uid": uid,
            "app": "kubeharness-bench",
        },
        annotations={"kubernetes.io/config.source": "api", "kubernetes.io/config.seen": "2026-01-01T00:00:00Z"},
    )
    linux = config.linux
    linux.cgroup_parent = ""
    options = linux.security_context.namespace_options
    options.network = api.POD
    options.pid = api.CONTAINER
    options.ipc = api.POD
    linux.security_context.seccomp.profile_type = api.SecurityProfile.RuntimeDefault
    return config


def container_config(plan: PodPlan, sandbox: api.PodSandboxConfig) -> api.ContainerConfig:
    meta = sandbox.metadata
    config = api.ContainerConfig(
        metadata=api.ContainerMetadata(name=CONTAINER, attempt=0),
        image=api.ImageSpec(image=plan.image, user_specified_image=plan.image),
        envs=[
            api.KeyValue(key="KUBERNETES_SERVICE_HOST", value="10.96.0.1"),
            api.KeyValue(key="KUBERNETES_SERVICE_PORT", value="443"),
        ],
        log_path=f"{CONTAINER}/0.log",
        labels={
            "io.kubernetes.container.name": CONTAINER,
            "io.kubernetes.pod.name": meta.name,
            "io.kubernetes.pod.namespace": meta.namespace,
            "io.kubernetes.pod.uid": meta.uid,
        },
        annotations={
            "io.kubernetes.container.hash": "5d1f9c2a",
            "io.kubernetes.container.restartCount": "0",
            "io.kubernetes.container.terminationMessagePath": "/dev/termination-log",
            "io.kubernetes.container.terminationMessagePolicy": "File",
            "io.kubernetes.pod.terminationGracePeriod": "30",
        },
    )
    resources = config.linux.resources
    resources.cpu_period = 100_000
    resources.cpu_shares = CPU_SHARES
    resources.memory_limit_in_bytes = MEMORY_LIMIT_BYTES
    resources.oom_score_adj = OOM_SCORE_ADJ
    security = config.linux.security_context
    security.namespace_options.network = api.POD
    security.namespace_options.pid = api.CONTAINER
    security.namespace_options.ipc = api.POD
    security.seccomp.profile_type = api.SecurityProfile.RuntimeDefault
    security.masked_paths.extend(["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"])
    security.readonly_paths.extend(["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"])
    return config


def make_log_directories(sandbox: api.PodSandboxConfig) -> None:
    """Create the pod's and the container's log directories, as kubelet does before it asks the runtime."""
    os.makedirs(os.path.join(sandbox.log_directory, CONTAINER), exist_ok=True)
