"""The emulator's objects: pod sandboxes and containers, and how they are saved.

A container's state is derived from its timestamps, as in containerd::

    CreateContainer ──> CREATED ──StartContainer──> RUNNING ──exit / stop / OOM──> EXITED

A created container stays CREATED when its sandbox stops (as in containerd); RemoveContainer deletes
a container from any state, force-stopping a running one first.

A sandbox is READY from RunPodSandbox until StopPodSandbox, then NOTREADY until removed. Records
keep the CRI configs as serialized protobuf (base64 in the JSON record) so a restarted emulator
answers exactly what it answered before.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from kubeharness.wire.cri import api_pb2 as cri

CREATED, RUNNING, EXITED = cri.CONTAINER_CREATED, cri.CONTAINER_RUNNING, cri.CONTAINER_EXITED


def _pack(message: Any) -> str:
    return base64.b64encode(message.SerializeToString()).decode()


def _unpack(cls: Any, text: str) -> Any:
    return cls.FromString(base64.b64decode(text))


@dataclass
class Sandbox:
    """A pod sandbox: the pause container and the namespaces its containers join."""

    id: str
    name: str
    config: cri.PodSandboxConfig
    runtime_handler: str
    created_ns: int
    ip: str = ""
    ready: bool = True
    netns_path: str = ""
    stopped_ns: int = 0
    # Pod networking through CNI: the further IPs of the result, and whether the sandbox is attached
    # (ADD done, DEL not yet), which stop and remove must undo.
    additional_ips: list[str] = field(default_factory=list)
    cni_attached: bool = False

    @property
    def state(self) -> cri.PodSandboxState:
        return cri.SANDBOX_READY if self.ready else cri.SANDBOX_NOTREADY

    @property
    def host_network(self) -> bool:
        ns = self.config.linux.security_context.namespace_options
        return bool(ns.network == cri.NODE)

    def to_record(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "config": _pack(self.config), "runtime_handler": self.runtime_handler,
            "created_ns": self.created_ns, "ip": self.ip, "ready": self.ready, "netns_path": self.netns_path,
            "stopped_ns": self.stopped_ns, "additional_ips": self.additional_ips, "cni_attached": self.cni_attached,
        }

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> Sandbox:
        return cls(
            id=r["id"], name=r["name"], config=_unpack(cri.PodSandboxConfig, r["config"]),
            runtime_handler=r["runtime_handler"], created_ns=r["created_ns"], ip=r["ip"], ready=r["ready"],
            netns_path=r["netns_path"], stopped_ns=r["stopped_ns"], additional_ips=list(r.get("additional_ips", [])),
            cni_attached=bool(r.get("cni_attached", False)),
        )


@dataclass
class Container:
    """A container in a sandbox; timestamps are nanoseconds since the epoch, 0 when not yet reached."""

    id: str
    sandbox_id: str
    name: str
    config: cri.ContainerConfig
    image_id: str
    log_path: str
    created_ns: int
    resources: cri.LinuxContainerResources = field(default_factory=cri.LinuxContainerResources)
    started_ns: int = 0
    finished_ns: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    # Set while a stop is in progress: when SIGTERM was sent and when SIGKILL is due.
    term_ns: int = 0
    kill_ns: int = 0
    # How many log lines of the behaviour were written (so a restarted emulator continues, not repeats).
    lines_written: int = 0
    # When UpdateContainerResources last changed the memory limit (an OOM kill cannot come earlier).
    limit_changed_ns: int = 0

    @property
    def state(self) -> cri.ContainerState:
        if self.finished_ns:
            return EXITED
        if self.started_ns:
            return RUNNING
        return CREATED

    def to_record(self) -> dict[str, Any]:
        return {
            "id": self.id, "sandbox_id": self.sandbox_id, "name": self.name, "config": _pack(self.config),
            "image_id": self.image_id, "log_path": self.log_path, "created_ns": self.created_ns,
            "resources": _pack(self.resources), "started_ns": self.started_ns, "finished_ns": self.finished_ns,
            "exit_code": self.exit_code, "reason": self.reason, "message": self.message, "term_ns": self.term_ns,
            "kill_ns": self.kill_ns, "lines_written": self.lines_written, "limit_changed_ns": self.limit_changed_ns,
        }

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> Container:
        return cls(
            id=r["id"], sandbox_id=r["sandbox_id"], name=r["name"], config=_unpack(cri.ContainerConfig, r["config"]),
            image_id=r["image_id"], log_path=r["log_path"], created_ns=r["created_ns"],
            resources=_unpack(cri.LinuxContainerResources, r["resources"]), started_ns=r["started_ns"],
            finished_ns=r["finished_ns"], exit_code=r["exit_code"], reason=r["reason"], message=r["message"],
            term_ns=r["term_ns"], kill_ns=r["kill_ns"], lines_written=r["lines_written"],
            limit_changed_ns=r.get("limit_changed_ns", 0),
        )
