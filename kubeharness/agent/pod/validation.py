"""Validation of a defaulted pod object into the typed :class:`~kubeharness.agent.pod.model.Pod`.

:func:`~kubeharness.agent.pod.defaults.pod_from_object` defaults a manifest and gives it the static-pod
treatment, then calls :func:`to_pod` here, which checks what kubelet validates for the fields the agent
uses and builds the model. A problem raises :class:`Invalid` (``pod.apifields``) with the field path;
``defaults`` adds the origin (file or URL) and raises a ``ManifestError``. ``defaults`` uses :class:`Invalid`
and :func:`canonical` for its own steps too. Probes, lifecycle hooks, terminationMessagePolicy and the
sidecar restartPolicy are read by ``pod.probespec``, with the API server's rules and wording.

Each container gets ``spec_hash`` (:func:`container_hash`): the first 16 hex digits of the sha256 of its
defaulted spec as canonical JSON, so any change of any of its fields (image, command, env, resources,
probes, ...) gives a new hash and nothing else does. ``env[].valueFrom`` and ``envFrom`` are refused with
a clear error: the agent has no API server to resolve them, and running a container without a variable it
asked for would be silently wrong.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from kubeharness.agent.pod.apifields import Invalid
from kubeharness.agent.pod.apifields import typed as _typed
from kubeharness.agent.pod.model import (
    ALWAYS,
    NEVER,
    ON_FAILURE,
    PULL_ALWAYS,
    PULL_IF_NOT_PRESENT,
    PULL_NEVER,
    Container,
    ContainerPort,
    EnvVar,
    Pod,
    PodSpec,
    Resources,
)
from kubeharness.agent.pod.probespec import container_fields
from kubeharness.agent.pod.quantity import parse_resource
from kubeharness.errors import InvalidArgument

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[^=]+$")
RESTART_POLICIES = (ALWAYS, ON_FAILURE, NEVER)
PULL_POLICIES = (PULL_ALWAYS, PULL_IF_NOT_PRESENT, PULL_NEVER)
DNS_POLICIES = ("ClusterFirst", "ClusterFirstWithHostNet", "Default", "None")
PROTOCOLS = ("TCP", "UDP", "SCTP")
__all__ = ["Invalid", "canonical", "container_hash", "to_pod"]


def container_hash(container: Mapping[str, Any]) -> str:
    """The hash of a container's spec: equal exactly when every field is equal."""
    return hashlib.sha256(canonical(container).encode()).hexdigest()[:16]


def canonical(obj: object) -> str:
    """Canonical JSON (sorted keys, no spaces): the same text for equal objects, whatever their key order."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def to_pod(raw: dict[str, Any], uid: str, source: str) -> Pod:
    """The typed pod of a defaulted raw object that had the static-pod treatment; raises :class:`Invalid`."""
    meta, spec = raw["metadata"], raw["spec"]
    name = meta["name"]
    if len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name):
        raise Invalid("metadata.name", f"{name!r} is not a DNS subdomain (lower-case alphanumerics, '-', '.')")
    namespace = _typed(meta, "namespace", str, "metadata")
    if len(namespace) > 63 or not _DNS_LABEL.fullmatch(namespace):
        raise Invalid("metadata.namespace", f"{namespace!r} is not a DNS label")
    labels = _string_map(meta, "labels", "metadata")
    annotations = _string_map(meta, "annotations", "metadata")
    grace = _typed(spec, "terminationGracePeriodSeconds", int, "spec")
    if grace < 0:
        raise Invalid("spec.terminationGracePeriodSeconds", f"must be non-negative, got {grace}")
    init = _containers(spec, "initContainers", grace, required=False)
    app = _containers(spec, "containers", grace, required=True)
    seen: set[str] = set()
    for path, c in [(f"spec.initContainers[{i}]", c) for i, c in enumerate(init)] + \
            [(f"spec.containers[{i}]", c) for i, c in enumerate(app)]:
        if c.name in seen:
            raise Invalid(f"{path}.name", f"duplicate container name {c.name!r}")
        seen.add(c.name)
    host_network = _typed(spec, "hostNetwork", bool, "spec", False)
    if host_network:
        for path, c in [(f"spec.containers[{i}]", c) for i, c in enumerate(app)]:
            for j, port in enumerate(c.ports):
                if port.host_port != port.container_port:
                    raise Invalid(f"{path}.ports[{j}].hostPort", "must equal containerPort with hostNetwork")
    security = _typed(spec, "securityContext", dict, "spec", {})
    deadline = _typed(spec, "activeDeadlineSeconds", int, "spec", None)
    if deadline is not None and deadline < 1:
        raise Invalid("spec.activeDeadlineSeconds", f"must be at least 1, got {deadline}")
    hostname = _typed(spec, "hostname", str, "spec", "")
    subdomain = _typed(spec, "subdomain", str, "spec", "")
    for key, value in (("hostname", hostname), ("subdomain", subdomain)):
        if value and (len(value) > 63 or not _DNS_LABEL.fullmatch(value)):
            raise Invalid(f"spec.{key}", f"{value!r} is not a DNS label")
    groups = _typed(security, "supplementalGroups", list, "spec.securityContext", [])
    pod_spec = PodSpec(
        containers=app,
        init_containers=init,
        restart_policy=_choice(spec, "restartPolicy", RESTART_POLICIES, "spec"),
        termination_grace_period_seconds=grace,
        active_deadline_seconds=deadline,
        dns_policy=_choice(spec, "dnsPolicy", DNS_POLICIES, "spec"),
        host_network=host_network,
        host_pid=_typed(spec, "hostPID", bool, "spec", False),
        host_ipc=_typed(spec, "hostIPC", bool, "spec", False),
        hostname=hostname,
        subdomain=subdomain,
        node_name=spec["nodeName"],
        priority=_typed(spec, "priority", int, "spec", 0),
        run_as_user=_id(security, "runAsUser", "spec.securityContext"),
        run_as_group=_id(security, "runAsGroup", "spec.securityContext"),
        fs_group=_id(security, "fsGroup", "spec.securityContext"),
        supplemental_groups=tuple(_group(g, f"spec.securityContext.supplementalGroups[{i}]")
                                  for i, g in enumerate(groups)),
    )
    return Pod(uid=uid, name=name, namespace=namespace, spec=pod_spec, labels=labels, annotations=annotations,
               source=source, raw=raw)


def _containers(spec: dict[str, Any], key: str, grace: int, *, required: bool) -> tuple[Container, ...]:
    items = spec.get(key) or []
    if required and not items:
        raise Invalid(f"spec.{key}", "required: a pod needs at least one container")
    init = key == "initContainers"
    return tuple(_container(c, f"spec.{key}[{i}]", init, grace) for i, c in enumerate(items))


def _container(c: dict[str, Any], path: str, init: bool, grace: int) -> Container:
    name = c.get("name")
    if not isinstance(name, str) or not name:
        raise Invalid(f"{path}.name", "required")
    if len(name) > 63 or not _DNS_LABEL.fullmatch(name):
        raise Invalid(f"{path}.name", f"{name!r} is not a DNS label")
    image = c.get("image")
    if not isinstance(image, str) or not image.strip():
        raise Invalid(f"{path}.image", "required")
    if "envFrom" in c:
        raise Invalid(f"{path}.envFrom", "not supported: the agent has no API server to read ConfigMaps or Secrets")
    ports = tuple(_port(p, f"{path}.ports[{i}]") for i, p in enumerate(_typed(c, "ports", list, path, [])))
    fields = container_fields(c, path, init=init, grace_seconds=grace)
    return Container(
        name=name,
        image=image,
        command=_strings(c, "command", path),
        args=_strings(c, "args", path),
        working_dir=_typed(c, "workingDir", str, path, ""),
        env=tuple(_env(e, f"{path}.env[{i}]") for i, e in enumerate(_typed(c, "env", list, path, []))),
        ports=ports,
        resources=_resources(_typed(c, "resources", dict, path, {}), f"{path}.resources"),
        image_pull_policy=_choice(c, "imagePullPolicy", PULL_POLICIES, path),
        termination_message_path=_typed(c, "terminationMessagePath", str, path),
        termination_message_policy=fields.termination_message_policy,
        liveness_probe=fields.liveness_probe,
        readiness_probe=fields.readiness_probe,
        startup_probe=fields.startup_probe,
        lifecycle=fields.lifecycle,
        restart_policy=fields.restart_policy,
        tty=_typed(c, "tty", bool, path, False),
        stdin=_typed(c, "stdin", bool, path, False),
        spec_hash=container_hash(c),
    )


def _env(e: object, path: str) -> EnvVar:
    if not isinstance(e, dict):
        raise Invalid(path, "must be an object with name and value")
    name = e.get("name")
    if not isinstance(name, str) or not _ENV_NAME.match(name):
        raise Invalid(f"{path}.name", "required, and must not contain '='")
    if "valueFrom" in e:
        raise Invalid(f"{path}.valueFrom", "not supported by the agent (only value)")
    return EnvVar(name=name, value=_typed(e, "value", str, path, ""))


def _port(p: object, path: str) -> ContainerPort:
    if not isinstance(p, dict):
        raise Invalid(path, "must be an object with containerPort")
    if "containerPort" not in p:
        raise Invalid(f"{path}.containerPort", "required")
    number = _typed(p, "containerPort", int, path)
    if not 1 <= number <= 65535:
        raise Invalid(f"{path}.containerPort", f"must be between 1 and 65535, got {number}")
    host = _typed(p, "hostPort", int, path, 0)
    if not 0 <= host <= 65535:
        raise Invalid(f"{path}.hostPort", f"must be between 0 and 65535, got {host}")
    name = _typed(p, "name", str, path, "")
    if name and (len(name) > 15 or not _PORT_NAME.fullmatch(name) or not re.search("[a-z]", name) or "--" in name):
        raise Invalid(f"{path}.name", f"{name!r} is not a port name (at most 15 lower-case alphanumerics or '-')")
    return ContainerPort(container_port=number, protocol=_choice(p, "protocol", PROTOCOLS, path), name=name,
                         host_port=host)


def _resources(r: dict[str, Any], path: str) -> Resources:
    limits = {k: _quantity(k, v, f"{path}.limits.{k}") for k, v in _typed(r, "limits", dict, path, {}).items()}
    requests = {k: _quantity(k, v, f"{path}.requests.{k}") for k, v in _typed(r, "requests", dict, path, {}).items()}
    for name, request in requests.items():
        if name in limits and request > limits[name]:
            raise Invalid(f"{path}.requests.{name}", "must be less than or equal to the limit")
    return Resources(requests=requests, limits=limits)



# ---- small typed readers


def _choice(obj: Mapping[str, Any], key: str, allowed: tuple[str, ...], path: str) -> str:
    value = obj.get(key)
    if value not in allowed:
        raise Invalid(f"{path}.{key}", f"must be one of {', '.join(allowed)}, got {value!r}")
    return str(value)


def _id(obj: Mapping[str, Any], key: str, path: str) -> int | None:
    value = obj.get(key)
    return None if value is None else _group(value, f"{path}.{key}")


def _group(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise Invalid(where, f"must be a non-negative integer, got {value!r}")
    return value


def _quantity(name: str, value: object, where: str) -> int:
    try:
        return parse_resource(name, value, where)
    except InvalidArgument as exc:
        raise Invalid(where, exc.message.removeprefix(f"{where}: ")) from None


def _strings(obj: Mapping[str, Any], key: str, path: str) -> tuple[str, ...]:
    items = _typed(obj, key, list, path, [])
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise Invalid(f"{path}.{key}[{i}]", f"must be a string, got {item!r}")
    return tuple(items)


def _string_map(obj: Mapping[str, Any], key: str, path: str) -> dict[str, str]:
    items = _typed(obj, key, dict, path, {})
    for k, v in items.items():
        if not isinstance(v, str):
            raise Invalid(f"{path}.{key}.{k}", f"must be a string, got {v!r}")
    return {str(k): v for k, v in items.items()}
