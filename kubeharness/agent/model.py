"""The pods the agent runs, as typed records of the fields it uses, read from Kubernetes pod objects.

A manifest is a ``v1`` Pod (or a ``PodList``/``List`` of them) in YAML or JSON. :func:`pod_from_object`
validates and defaults it as kubelet does for what kubelet uses (see :mod:`.defaults`), and keeps the
object itself (``Pod.raw``) so the read-only ``/pods`` endpoint can serve it back with its status.
Everything here is plain data; nothing talks to the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# restartPolicy values
ALWAYS, ON_FAILURE, NEVER = "Always", "OnFailure", "Never"
# imagePullPolicy values
PULL_ALWAYS, PULL_IF_NOT_PRESENT, PULL_NEVER = "Always", "IfNotPresent", "Never"


@dataclass(frozen=True)
class Resources:
    """Requests and limits in base units: CPU in millicores, memory and storage in bytes."""

    requests: dict[str, int] = field(default_factory=dict)
    limits: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class EnvVar:
    name: str
    value: str


@dataclass(frozen=True)
class ContainerPort:
    container_port: int
    protocol: str = "TCP"
    name: str = ""
    host_port: int = 0


@dataclass(frozen=True)
class Container:
    """One container of a pod spec (app or init)."""

    name: str
    image: str
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    working_dir: str = ""
    env: tuple[EnvVar, ...] = ()
    ports: tuple[ContainerPort, ...] = ()
    resources: Resources = field(default_factory=Resources)
    image_pull_policy: str = PULL_IF_NOT_PRESENT
    termination_message_path: str = "/dev/termination-log"
    tty: bool = False
    stdin: bool = False
    # The container's spec as given: a changed spec (a different hash) means kill and recreate.
    spec_hash: str = ""


@dataclass(frozen=True)
class PodSpec:
    containers: tuple[Container, ...]
    init_containers: tuple[Container, ...] = ()
    restart_policy: str = ALWAYS
    termination_grace_period_seconds: int = 30
    active_deadline_seconds: int | None = None
    dns_policy: str = "ClusterFirst"
    host_network: bool = False
    host_pid: bool = False
    host_ipc: bool = False
    hostname: str = ""
    subdomain: str = ""
    node_name: str = ""
    priority: int = 0
    # pod-level security context fields kubelet passes to CRI
    run_as_user: int | None = None
    run_as_group: int | None = None
    fs_group: int | None = None
    supplemental_groups: tuple[int, ...] = ()


@dataclass(frozen=True)
class Pod:
    """A desired pod: identity, spec, where it came from, and the object it was read from."""

    uid: str
    name: str
    namespace: str
    spec: PodSpec
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    source: str = "file"  # "file" or "http" (kubelet's config.source annotation)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def full_name(self) -> str:
        """``name_namespace``, kubelet's key for a pod."""
        return f"{self.name}_{self.namespace}"

    def all_containers(self) -> tuple[Container, ...]:
        return (*self.spec.init_containers, *self.spec.containers)
