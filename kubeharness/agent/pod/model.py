"""The pods the agent runs, as typed records of the fields it uses, read from Kubernetes pod objects.

A manifest is a ``v1`` Pod (or a ``PodList``/``List`` of them) in YAML or JSON. :func:`pod_from_object`
validates and defaults it as kubelet does for what kubelet uses (see ``pod.defaults``), and keeps the
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
class ExecAction:
    """Run a command in the container (ExecSync); exit 0 succeeds."""

    command: tuple[str, ...]


@dataclass(frozen=True)
class HTTPGetAction:
    """GET ``scheme://host:port/path``; ``port`` is a number or the name of a container port."""

    port: int | str
    path: str = "/"
    host: str = ""  # default: the pod IP
    scheme: str = "HTTP"  # HTTP or HTTPS
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class TCPSocketAction:
    """Open a TCP connection to ``host:port``."""

    port: int | str
    host: str = ""


@dataclass(frozen=True)
class GRPCAction:
    """``grpc.health.v1.Health/Check`` on the pod IP and ``port`` for ``service``."""

    port: int
    service: str = ""


@dataclass(frozen=True)
class SleepAction:
    """Sleep (lifecycle hooks only)."""

    seconds: int


Handler = ExecAction | HTTPGetAction | TCPSocketAction | GRPCAction | SleepAction


@dataclass(frozen=True)
class Probe:
    """A liveness, readiness or startup probe, defaulted (kubelet's API defaults)."""

    handler: ExecAction | HTTPGetAction | TCPSocketAction | GRPCAction
    initial_delay_seconds: int = 0
    timeout_seconds: int = 1
    period_seconds: int = 10
    success_threshold: int = 1
    failure_threshold: int = 3
    termination_grace_period_seconds: int | None = None


@dataclass(frozen=True)
class Lifecycle:
    """postStart and preStop hooks (exec, httpGet or sleep; tcpSocket is accepted, as the API server accepts
    it, and fails when run, as kubelet's hook runner fails it)."""

    post_start: ExecAction | HTTPGetAction | SleepAction | TCPSocketAction | None = None
    pre_stop: ExecAction | HTTPGetAction | SleepAction | TCPSocketAction | None = None


# terminationMessagePolicy values
TERMINATION_MESSAGE_FILE, TERMINATION_MESSAGE_FALLBACK = "File", "FallbackToLogsOnError"


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
    termination_message_policy: str = TERMINATION_MESSAGE_FILE
    liveness_probe: Probe | None = None
    readiness_probe: Probe | None = None
    startup_probe: Probe | None = None
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    restart_policy: str = ""  # "Always" on an init container makes it a sidecar (restartable init container)
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
