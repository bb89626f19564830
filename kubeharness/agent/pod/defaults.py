"""Pod manifests into :class:`~kubeharness.agent.pod.model.Pod` records, validated and defaulted as kubelet does.

Kubelet decodes a static pod with the API's defaulting (``pkg/apis/core/v1/defaults.go``), then gives it
the static-pod treatment of ``pkg/kubelet/config/common.go`` and validates it. We do the same for the
fields the agent uses, in this order:

1. API defaults: namespace ``default``, restartPolicy ``Always``, dnsPolicy ``ClusterFirst``,
   terminationGracePeriodSeconds 30, schedulerName, an empty pod securityContext, enableServiceLinks;
   per container imagePullPolicy (``Always`` when the tag is ``latest`` or absent, else ``IfNotPresent``;
   a digest counts as a tag), terminationMessagePath/Policy (also when given as ``""``), port protocol
   ``TCP``, requests copied from limits where only limits are given; with hostNetwork, hostPort defaults to
   containerPort. Probes (``SetDefaults_Probe``): timeoutSeconds 1, periodSeconds 10, successThreshold 1,
   failureThreshold 3, each also when given as 0 (Go cannot tell 0 from unset); httpGet path ``/`` and
   scheme ``HTTP`` in probes and hooks; a probe's grpc service ``""`` (a pointer upstream, defaulted
   declaratively).
2. Static-pod treatment (sources ``file`` and ``http``): a missing UID is the md5 of
   ``host:<node>file:<path>`` (file) or ``url:<url>`` (http) followed by the canonical JSON (sorted keys,
   no spaces) of the defaulted object; kubelet hashes its Go object instead, so our UIDs are stable and
   content-derived but not byte-equal to kubelet's. The name gets ``-<nodename>`` (lower-cased), spec.nodeName
   is the node, annotations ``kubernetes.io/config.hash`` (the UID) and ``kubernetes.io/config.source``
   are set, file pods get a toleration of every NoExecute taint, and status.phase is Pending.
   ``kubernetes.io/config.seen`` is the time the pod was first seen: :func:`with_seen` stamps it (the
   sources keep it per UID; a ``clock`` argument stamps "now").
3. Validation of what kubelet validates for these fields, into the typed model (``pod.validation``,
   which also gives each container its ``spec_hash``); the first problem raises :class:`ManifestError`
   naming the origin (file or URL) and the field path.

Unlike kubelet's file source, which reads one pod per file, a file may hold a PodList or List too, as the
HTTP source allows. A list with one bad pod is refused whole, as kubelet refuses it.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import yaml

from kubeharness.agent.pod.model import ALWAYS, PULL_ALWAYS, PULL_IF_NOT_PRESENT, Pod
from kubeharness.agent.pod.probespec import PROBE_KINDS
from kubeharness.agent.pod.validation import Invalid, canonical, container_hash, to_pod
from kubeharness.clock import NS_PER_SECOND, Clock
from kubeharness.errors import InvalidArgument

__all__ = [  # container_hash is validation's, importable from here as before
    "CONFIG_HASH", "CONFIG_SEEN", "CONFIG_SOURCE", "FILE_SOURCE", "HTTP_SOURCE", "STATIC_SOURCES", "ManifestError",
    "container_hash", "image_tag", "pod_from_object", "pods_from_manifest", "rfc3339_nano", "with_seen",
]

FILE_SOURCE, HTTP_SOURCE = "file", "http"  # kubelet's source names (pkg/kubelet/types/pod_update.go)
STATIC_SOURCES = frozenset({FILE_SOURCE, HTTP_SOURCE})

CONFIG_HASH = "kubernetes.io/config.hash"
CONFIG_SEEN = "kubernetes.io/config.seen"
CONFIG_SOURCE = "kubernetes.io/config.source"

NO_EXECUTE_TOLERATION = {"operator": "Exists", "effect": "NoExecute"}
PROBE_DEFAULTS = {"timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3}


class ManifestError(InvalidArgument):
    """A pod manifest that cannot be run; the message names the origin and the field."""

    def __init__(self, origin: str, field: str, problem: str) -> None:
        where = f"{origin}: " if origin else ""
        super().__init__(f"{where}{field}: {problem}" if field else f"{where}{problem}")
        self.origin = origin
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
        pod = to_pod(raw, uid, source)
    except Invalid as exc:
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
            raise Invalid(f"spec.{key}", "must be a list of containers")
        for i, container in enumerate(containers):
            if not isinstance(container, dict):
                raise Invalid(f"spec.{key}[{i}]", "must be a container object")
            _default_container(container, host_network)


def _default_container(c: dict[str, Any], host_network: bool) -> None:
    if not c.get("imagePullPolicy") and isinstance(c.get("image"), str):
        c["imagePullPolicy"] = PULL_ALWAYS if image_tag(c["image"]) == "latest" else PULL_IF_NOT_PRESENT
    if c.get("terminationMessagePath") in (None, ""):
        c["terminationMessagePath"] = "/dev/termination-log"
    if c.get("terminationMessagePolicy") in (None, ""):
        c["terminationMessagePolicy"] = "File"
    _default_probes(c)
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


def _default_probes(c: dict[str, Any]) -> None:
    """Probe and hook defaults; values of the wrong type are left for validation to name."""
    for kind in PROBE_KINDS:
        probe = c.get(kind)
        if isinstance(probe, dict):
            for key, default in PROBE_DEFAULTS.items():
                if _unset(probe.get(key)):
                    probe[key] = default
            _default_handler(probe)
            grpc = probe.get("grpc")
            if isinstance(grpc, dict) and grpc.get("service") is None:
                grpc["service"] = ""
    hooks = c.get("lifecycle")
    if isinstance(hooks, dict):
        for hook in (hooks.get("postStart"), hooks.get("preStop")):
            if isinstance(hook, dict):
                _default_handler(hook)


def _default_handler(handler: dict[str, Any]) -> None:
    http = handler.get("httpGet")
    if isinstance(http, dict):
        if http.get("path") in (None, ""):
            http["path"] = "/"
        if http.get("scheme") in (None, ""):
            http["scheme"] = "HTTP"


def _unset(value: object) -> bool:
    """Absent, null or 0 (not False, which is no integer), as Go's int32 zero value."""
    return value is None or (type(value) is int and value == 0)


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
        raise Invalid("metadata.name", "required (static pods cannot use generateName)")
    uid = meta.get("uid")
    if uid is not None and not isinstance(uid, str):
        raise Invalid("metadata.uid", "must be a string")
    if not uid:
        hasher = hashlib.md5(usedforsecurity=False)
        if source == FILE_SOURCE:
            hasher.update(f"host:{node_name}".encode())
            hasher.update(f"file:{origin}".encode())
        else:
            hasher.update(f"url:{origin}".encode())
        hasher.update(canonical(raw).encode())
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
            raise Invalid("spec.tolerations", "must be a list")
        if NO_EXECUTE_TOLERATION not in tolerations:
            tolerations.append(dict(NO_EXECUTE_TOLERATION))
    raw["status"] = {"phase": "Pending"}
    return uid


# ---- small typed readers


def _check_api_version(obj: Mapping[str, Any], origin: str, prefix: str) -> None:
    if obj.get("apiVersion") != "v1":
        raise ManifestError(origin, f"{prefix}apiVersion", f"must be 'v1', got {obj.get('apiVersion')!r}")


def _map(obj: dict[str, Any], key: str, path: str) -> dict[str, Any]:
    value = obj.get(key)
    if value is None:
        value = obj[key] = {}
    if not isinstance(value, dict):
        raise Invalid(path, "must be an object")
    return value
