"""Pod manifests into :class:`~kubeharness.agent.model.Pod` records, validated and defaulted as kubelet does.

Kubelet decodes a static pod with the API's defaulting (``pkg/apis/core/v1/defaults.go``), then gives it
the static-pod treatment of ``pkg/kubelet/config/common.go`` and validates it. We do the same for the
fields the agent uses, in this order:

1. API defaults: namespace ``default``, restartPolicy ``Always``, dnsPolicy ``ClusterFirst``,
   terminationGracePeriodSeconds 30, schedulerName, an empty pod securityContext, enableServiceLinks;
   per container imagePullPolicy (``Always`` when the tag is ``latest`` or absent, else ``IfNotPresent``;
   a digest counts as a tag), terminationMessagePath/Policy, port protocol ``TCP``, requests copied from
   limits where only limits are given; with hostNetwork, hostPort defaults to containerPort.
2. Static-pod treatment (sources ``file`` and ``http``): a missing UID is the md5 of
   ``host:<node>file:<path>`` (file) or ``url:<url>`` (http) followed by the canonical JSON (sorted keys,
   no spaces) of the defaulted object; kubelet hashes its Go object instead, so our UIDs are stable and
   content-derived but not byte-equal to kubelet's. The name gets ``-<nodename>`` (lower-cased), spec.nodeName
   is the node, annotations ``kubernetes.io/config.hash`` (the UID) and ``kubernetes.io/config.source``
   are set, file pods get a toleration of every NoExecute taint, and status.phase is Pending.
   ``kubernetes.io/config.seen`` is the time the pod was first seen: :func:`with_seen` stamps it (the
   sources keep it per UID; a ``clock`` argument stamps "now").
3. Validation of what kubelet validates for these fields; the first problem raises
   :class:`ManifestError` naming the origin (file or URL) and the field path.

Each container gets ``spec_hash``: the first 16 hex digits of the sha256 of its defaulted spec as
canonical JSON, so any change of any of its fields (image, command, env, resources, probes, ...) gives a
new hash and nothing else does. ``env[].valueFrom`` and ``envFrom`` are refused with a clear error: the
agent has no API server to resolve them, and running a container without a variable it asked for would
be silently wrong.

Unlike kubelet's file source, which reads one pod per file, a file may hold a PodList or List too, as the
HTTP source allows. A list with one bad pod is refused whole, as kubelet refuses it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import yaml

from kubeharness.agent.model import (
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
from kubeharness.agent.quantity import parse_resource
from kubeharness.clock import NS_PER_SECOND, Clock
from kubeharness.errors import InvalidArgument

FILE_SOURCE, HTTP_SOURCE = "file", "http"  # kubelet's source names (pkg/kubelet/types/pod_update.go)
STATIC_SOURCES = frozenset({FILE_SOURCE, HTTP_SOURCE})

CONFIG_HASH = "kubernetes.io/config.hash"
CONFIG_SEEN = "kubernetes.io/config.seen"
CONFIG_SOURCE = "kubernetes.io/config.source"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[^=]+$")
RESTART_POLICIES = (ALWAYS, ON_FAILURE, NEVER)
PULL_POLICIES = (PULL_ALWAYS, PULL_IF_NOT_PRESENT, PULL_NEVER)
DNS_POLICIES = ("ClusterFirst", "ClusterFirstWithHostNet", "Default", "None")
PROTOCOLS = ("TCP", "UDP", "SCTP")
NO_EXECUTE_TOLERATION = {"operator": "Exists", "effect": "NoExecute"}


class ManifestError(InvalidArgument):
    """A pod manifest that cannot be run; the message names the origin and the field."""

    def __init__(self, origin: str, field: str, problem: str) -> None:
        where = f"{origin}: " if origin else ""
        super().__init__(f"{where}{field}: {problem}" if field else f"{where}{problem}")
        self.origin = origin
        self.field = field
        self.problem = problem


class _Invalid(Exception):
    """Raised inside this module with the field path; wrapped into a ManifestError with the origin."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def pods_from_manifest(data: bytes | str, source: str, node_name: str, *, origin: str = "",
                       clock: Clock | None = None) -> list[Pod]:
    """Every pod in a YAML or JSON manifest holding a Pod, a PodList or a List of pods."""
    try:
        obj = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise ManifestError(origin, "", f"not valid YAML or JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ManifestError(origin, "", "the manifest must be a Pod, a PodList or a List of pods")
    kind = obj.get("kind")
    if kind == "Pod":
        return [pod_from_object(obj, source, node_name, origin=origin, clock=clock)]
    if kind not in ("PodList", "List"):
        raise ManifestError(origin, "kind", f"must be Pod, PodList or List, got {kind!r}")
    _check_api_version(obj, origin, "")
    items = obj.get("items")
    items = [] if items is None else items
    if not isinstance(items, list):
        raise ManifestError(origin, "items", "must be a list of pods")
    pods = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ManifestError(origin, f"items[{i}]", "must be a Pod object")
        if kind == "PodList":  # items of a PodList may leave out their type
            item = {"apiVersion": "v1", "kind": "Pod", **item}
        if item.get("kind") != "Pod":
            raise ManifestError(origin, f"items[{i}].kind", f"must be Pod, got {item.get('kind')!r}")
        try:
            pods.append(pod_from_object(item, source, node_name, origin=origin, clock=clock))
        except ManifestError as exc:
            raise ManifestError(origin, f"items[{i}].{exc.field}" if exc.field else f"items[{i}]",
                                exc.problem) from None
    return pods


def pod_from_object(obj: Mapping[str, Any], source: str, node_name: str, *, origin: str = "",
                    clock: Clock | None = None) -> Pod:
    """One decoded ``v1`` Pod, defaulted, given the static-pod treatment and validated."""
    if source not in STATIC_SOURCES:
        raise ValueError(f"unknown pod source {source!r} (expected one of {sorted(STATIC_SOURCES)})")
    if not node_name:
        raise ValueError("node_name is required")
    if obj.get("kind", "Pod") != "Pod":
        raise ManifestError(origin, "kind", f"must be Pod, got {obj.get('kind')!r}")
    _check_api_version(obj, origin, "")
    raw = copy.deepcopy(dict(obj))
    try:
        _default_pod(raw)
        uid = _static_pod(raw, source, node_name, origin)
        pod = _to_pod(raw, uid, source)
    except _Invalid as exc:
        raise ManifestError(origin, exc.field, exc.problem) from None
    return with_seen(pod, clock.now_ns()) if clock is not None else pod


def with_seen(pod: Pod, when_ns: int) -> Pod:
    """The pod with its ``kubernetes.io/config.seen`` annotation set to ``when_ns`` (RFC 3339, UTC)."""
    stamp = rfc3339_nano(when_ns)
    raw = copy.deepcopy(pod.raw)
    raw.setdefault("metadata", {}).setdefault("annotations", {})[CONFIG_SEEN] = stamp
    return replace(pod, annotations={**pod.annotations, CONFIG_SEEN: stamp}, raw=raw)


def rfc3339_nano(when_ns: int) -> str:
    """Go's ``time.RFC3339Nano`` in UTC: trailing zeros of the fraction dropped, ``Z`` for the zone."""
    seconds, nanos = divmod(when_ns, NS_PER_SECOND)
    base = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f".{nanos:09d}".rstrip("0") if nanos else ""
    return f"{base}{fraction}Z"


def container_hash(container: Mapping[str, Any]) -> str:
    """The hash of a container's spec: equal exactly when every field is equal."""
    return hashlib.sha256(_canonical(container).encode()).hexdigest()[:16]


# ---- step 1: API defaulting, on the raw object


def _default_pod(raw: dict[str, Any]) -> None:
    raw["apiVersion"], raw["kind"] = "v1", "Pod"
    meta = _map(raw, "metadata", "metadata")
    if not meta.get("namespace"):
        meta["namespace"] = "default"
    spec = _map(raw, "spec", "spec")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("restartPolicy", ALWAYS)
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("enableServiceLinks", True)
    if spec.get("securityContext") is None:
        spec["securityContext"] = {}
    host_network = spec.get("hostNetwork") is True
    for key in ("initContainers", "containers"):
        containers = spec.get(key) or []
        if not isinstance(containers, list):
            raise _Invalid(f"spec.{key}", "must be a list of containers")
        for i, container in enumerate(containers):
            if not isinstance(container, dict):
                raise _Invalid(f"spec.{key}[{i}]", "must be a container object")
            _default_container(container, host_network)


def _default_container(c: dict[str, Any], host_network: bool) -> None:
    if not c.get("imagePullPolicy") and isinstance(c.get("image"), str):
        c["imagePullPolicy"] = PULL_ALWAYS if image_tag(c["image"]) == "latest" else PULL_IF_NOT_PRESENT
    c.setdefault("terminationMessagePath", "/dev/termination-log")
    c.setdefault("terminationMessagePolicy", "File")
    for port in c.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
            if host_network and not port.get("hostPort"):
                port["hostPort"] = port.get("containerPort")
    resources = c.get("resources")
    if isinstance(resources, dict) and isinstance(resources.get("limits"), dict):
        requests = resources.setdefault("requests", {})
        if isinstance(requests, dict):
            for name, value in resources["limits"].items():
                requests.setdefault(name, value)


def image_tag(image: str) -> str:
    """The tag of an image reference for pull-policy defaulting: ``latest`` when none, ``""`` for a digest."""
    if "@" in image:
        name = image.split("@", 1)[0]
        last = name.rsplit("/", 1)[-1]
        return last.split(":", 1)[1] if ":" in last else ""
    last = image.rsplit("/", 1)[-1]  # a ':' before the last '/' is a registry port
    return last.split(":", 1)[1] if ":" in last else "latest"


# ---- step 2: the static-pod treatment (pkg/kubelet/config/common.go)


def _static_pod(raw: dict[str, Any], source: str, node_name: str, origin: str) -> str:
    meta = raw["metadata"]
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise _Invalid("metadata.name", "required (static pods cannot use generateName)")
    uid = meta.get("uid")
    if uid is not None and not isinstance(uid, str):
        raise _Invalid("metadata.uid", "must be a string")
    if not uid:
        hasher = hashlib.md5(usedforsecurity=False)
        if source == FILE_SOURCE:
            hasher.update(f"host:{node_name}".encode())
            hasher.update(f"file:{origin}".encode())
        else:
            hasher.update(f"url:{origin}".encode())
        hasher.update(_canonical(raw).encode())
        uid = hasher.hexdigest()
        meta["uid"] = uid
    meta["name"] = f"{name}-{node_name.lower()}"
    raw["spec"]["nodeName"] = node_name
    annotations = _map(meta, "annotations", "metadata.annotations")
    annotations[CONFIG_HASH] = uid
    annotations[CONFIG_SOURCE] = source
    if source == FILE_SOURCE:
        tolerations = raw["spec"].setdefault("tolerations", [])
        if not isinstance(tolerations, list):
            raise _Invalid("spec.tolerations", "must be a list")
        if NO_EXECUTE_TOLERATION not in tolerations:
            tolerations.append(dict(NO_EXECUTE_TOLERATION))
    raw["status"] = {"phase": "Pending"}
    return uid


# ---- step 3: validation, into the typed model


def _to_pod(raw: dict[str, Any], uid: str, source: str) -> Pod:
    meta, spec = raw["metadata"], raw["spec"]
    name = meta["name"]
    if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        raise _Invalid("metadata.name", f"{name!r} is not a DNS subdomain (lower-case alphanumerics, '-', '.')")
    namespace = _typed(meta, "namespace", str, "metadata")
    if len(namespace) > 63 or not _DNS_LABEL.match(namespace):
        raise _Invalid("metadata.namespace", f"{namespace!r} is not a DNS label")
    labels = _string_map(meta, "labels", "metadata")
    annotations = _string_map(meta, "annotations", "metadata")
    init = _containers(spec, "initContainers", required=False)
    app = _containers(spec, "containers", required=True)
    seen: set[str] = set()
    for path, c in [(f"spec.initContainers[{i}]", c) for i, c in enumerate(init)] + \
            [(f"spec.containers[{i}]", c) for i, c in enumerate(app)]:
        if c.name in seen:
            raise _Invalid(f"{path}.name", f"duplicate container name {c.name!r}")
        seen.add(c.name)
    host_network = _typed(spec, "hostNetwork", bool, "spec", False)
    if host_network:
        for path, c in [(f"spec.containers[{i}]", c) for i, c in enumerate(app)]:
            for j, port in enumerate(c.ports):
                if port.host_port != port.container_port:
                    raise _Invalid(f"{path}.ports[{j}].hostPort", "must equal containerPort with hostNetwork")
    security = _typed(spec, "securityContext", dict, "spec", {})
    grace = _typed(spec, "terminationGracePeriodSeconds", int, "spec")
    if grace < 0:
        raise _Invalid("spec.terminationGracePeriodSeconds", f"must be non-negative, got {grace}")
    deadline = _typed(spec, "activeDeadlineSeconds", int, "spec", None)
    if deadline is not None and deadline < 1:
        raise _Invalid("spec.activeDeadlineSeconds", f"must be at least 1, got {deadline}")
    hostname = _typed(spec, "hostname", str, "spec", "")
    subdomain = _typed(spec, "subdomain", str, "spec", "")
    for key, value in (("hostname", hostname), ("subdomain", subdomain)):
        if value and (len(value) > 63 or not _DNS_LABEL.match(value)):
            raise _Invalid(f"spec.{key}", f"{value!r} is not a DNS label")
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


def _containers(spec: dict[str, Any], key: str, *, required: bool) -> tuple[Container, ...]:
    items = spec.get(key) or []
    if required and not items:
        raise _Invalid(f"spec.{key}", "required: a pod needs at least one container")
    return tuple(_container(c, f"spec.{key}[{i}]") for i, c in enumerate(items))


def _container(c: dict[str, Any], path: str) -> Container:
    name = c.get("name")
    if not isinstance(name, str) or not name:
        raise _Invalid(f"{path}.name", "required")
    if len(name) > 63 or not _DNS_LABEL.match(name):
        raise _Invalid(f"{path}.name", f"{name!r} is not a DNS label")
    image = c.get("image")
    if not isinstance(image, str) or not image.strip():
        raise _Invalid(f"{path}.image", "required")
    if "envFrom" in c:
        raise _Invalid(f"{path}.envFrom", "not supported: the agent has no API server to read ConfigMaps or Secrets")
    return Container(
        name=name,
        image=image,
        command=_strings(c, "command", path),
        args=_strings(c, "args", path),
        working_dir=_typed(c, "workingDir", str, path, ""),
        env=tuple(_env(e, f"{path}.env[{i}]") for i, e in enumerate(_typed(c, "env", list, path, []))),
        ports=tuple(_port(p, f"{path}.ports[{i}]") for i, p in enumerate(_typed(c, "ports", list, path, []))),
        resources=_resources(_typed(c, "resources", dict, path, {}), f"{path}.resources"),
        image_pull_policy=_choice(c, "imagePullPolicy", PULL_POLICIES, path),
        termination_message_path=_typed(c, "terminationMessagePath", str, path),
        tty=_typed(c, "tty", bool, path, False),
        stdin=_typed(c, "stdin", bool, path, False),
        spec_hash=container_hash(c),
    )


def _env(e: object, path: str) -> EnvVar:
    if not isinstance(e, dict):
        raise _Invalid(path, "must be an object with name and value")
    name = e.get("name")
    if not isinstance(name, str) or not _ENV_NAME.match(name):
        raise _Invalid(f"{path}.name", "required, and must not contain '='")
    if "valueFrom" in e:
        raise _Invalid(f"{path}.valueFrom", "not supported by the agent (only value)")
    return EnvVar(name=name, value=_typed(e, "value", str, path, ""))


def _port(p: object, path: str) -> ContainerPort:
    if not isinstance(p, dict):
        raise _Invalid(path, "must be an object with containerPort")
    if "containerPort" not in p:
        raise _Invalid(f"{path}.containerPort", "required")
    number = _typed(p, "containerPort", int, path)
    if not 1 <= number <= 65535:
        raise _Invalid(f"{path}.containerPort", f"must be between 1 and 65535, got {number}")
    host = _typed(p, "hostPort", int, path, 0)
    if not 0 <= host <= 65535:
        raise _Invalid(f"{path}.hostPort", f"must be between 0 and 65535, got {host}")
    name = _typed(p, "name", str, path, "")
    if name and (len(name) > 15 or not _PORT_NAME.match(name) or not re.search("[a-z]", name)):
        raise _Invalid(f"{path}.name", f"{name!r} is not a port name (at most 15 lower-case alphanumerics or '-')")
    return ContainerPort(container_port=number, protocol=_choice(p, "protocol", PROTOCOLS, path), name=name,
                         host_port=host)


def _resources(r: dict[str, Any], path: str) -> Resources:
    limits = {k: _quantity(k, v, f"{path}.limits.{k}") for k, v in _typed(r, "limits", dict, path, {}).items()}
    requests = {k: _quantity(k, v, f"{path}.requests.{k}") for k, v in _typed(r, "requests", dict, path, {}).items()}
    for name, request in requests.items():
        if name in limits and request > limits[name]:
            raise _Invalid(f"{path}.requests.{name}", "must be less than or equal to the limit")
    return Resources(requests=requests, limits=limits)


# ---- small typed readers


def _check_api_version(obj: Mapping[str, Any], origin: str, prefix: str) -> None:
    if obj.get("apiVersion") != "v1":
        raise ManifestError(origin, f"{prefix}apiVersion", f"must be 'v1', got {obj.get('apiVersion')!r}")


def _map(obj: dict[str, Any], key: str, path: str) -> dict[str, Any]:
    value = obj.get(key)
    if value is None:
        value = obj[key] = {}
    if not isinstance(value, dict):
        raise _Invalid(path, "must be an object")
    return value


def _typed(obj: Mapping[str, Any], key: str, kind: type, path: str, default: Any = ...) -> Any:
    value = obj.get(key)
    if value is None:
        if default is ...:
            raise _Invalid(f"{path}.{key}", "required")
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = {int: "an integer", str: "a string", bool: "true or false", list: "a list", dict: "an object"}
        raise _Invalid(f"{path}.{key}", f"must be {names.get(kind, kind.__name__)}, got {value!r}")
    return value


def _choice(obj: Mapping[str, Any], key: str, allowed: tuple[str, ...], path: str) -> str:
    value = obj.get(key)
    if value not in allowed:
        raise _Invalid(f"{path}.{key}", f"must be one of {', '.join(allowed)}, got {value!r}")
    return str(value)


def _id(obj: Mapping[str, Any], key: str, path: str) -> int | None:
    value = obj.get(key)
    return None if value is None else _group(value, f"{path}.{key}")


def _group(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _Invalid(where, f"must be a non-negative integer, got {value!r}")
    return value


def _quantity(name: str, value: object, where: str) -> int:
    try:
        return parse_resource(name, value, where)
    except InvalidArgument as exc:
        raise _Invalid(where, exc.message.removeprefix(f"{where}: ")) from None


def _strings(obj: Mapping[str, Any], key: str, path: str) -> tuple[str, ...]:
    items = _typed(obj, key, list, path, [])
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise _Invalid(f"{path}.{key}[{i}]", f"must be a string, got {item!r}")
    return tuple(items)


def _string_map(obj: Mapping[str, Any], key: str, path: str) -> dict[str, str]:
    items = _typed(obj, key, dict, path, {})
    for k, v in items.items():
        if not isinstance(v, str):
            raise _Invalid(f"{path}.{key}.{k}", f"must be a string, got {v!r}")
    return {str(k): v for k, v in items.items()}


def _canonical(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
