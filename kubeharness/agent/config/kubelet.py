"""The agent's configuration, read from a kubelet ``KubeletConfiguration`` file (YAML or JSON).

``AgentConfig.load(path)`` reads a ``kubelet.config.k8s.io/v1beta1`` ``KubeletConfiguration`` and
defaults it as kubelet does (``SetDefaults_KubeletConfiguration``), so the same file configures our agent
and a real kubelet. Fields the agent uses become typed attributes with units in their names (durations in
seconds, CPU in millicores, memory in bytes). Fields kubelet knows but the agent does not implement are
listed in ``ignored``; fields kubelet does not know either are logged and listed in ``warnings`` (kubelet
too decodes leniently and warns). A value of the wrong type or out of range raises :class:`ConfigError`
naming the field (the parsers of single fields are in ``config.fields``). Node name and root
directory are flags in kubelet, so they come from the CLI.

Choices where kubelet leaves room or hard-codes things, all kubelet's own behaviour unless said otherwise:

- ``readOnlyPort`` defaults to 0, which disables the read-only server (``/pods``, ``/metrics``), as in
  kubelet. Tests that want those endpoints set it (10255 is kubelet's traditional read-only port).
- A zero duration, ``maxPods: 0`` or a negative ``podPidsLimit`` means "use the default", as in kubelet.
- ``cgroupRoot`` is ``/`` when unset and ``cgroupsPerQOS`` is on (kubelet's start-up does this).
- ``evictionHard`` replaces kubelet's defaults unless ``mergeDefaultEvictionSettings`` is true; a ``0%``
  or ``100%`` threshold is dropped (it disables that signal), a zero quantity is refused (kubelet's
  ``ParseThresholdConfig``). ``evictionSoft`` needs an ``evictionSoftGracePeriod`` for each of its signals;
  ``evictionMinimumReclaim`` applies to the hard and the soft threshold of its signal.
- Crash-loop back-off: kubelet starts at 10s, doubles up to 300s and forgets a container's back-off after
  it ran 10 minutes. ``crashLoopBackOff.maxContainerRestartPeriod`` (1s..300s) caps the delay (kubelet
  needs feature gate ``KubeletCrashLoopBackOffMax`` for it; we honour it without the gate); a cap under
  the initial delay becomes the initial delay too. Feature gate ``ReduceDefaultCrashLoopBackOffDecay``
  gives kubelet's reduced defaults, 1s initial and 60s max. The initial delay and the reset period have
  no kubelet field: they are ``AgentConfig`` attributes (``crash_loop_initial_s``,
  ``crash_loop_reset_s``) that callers may override with :func:`dataclasses.replace`.
- ``kubeharnessNodeCapacity`` is **our own extension**, not a kubelet field: the capacity of an emulated
  node (``{cpu: 4, memory: 8Gi, ephemeralStorage: 100Gi, inodes: 1000000, pids: 4096}``, optionally
  ``imageFs`` and ``imageFsInodes`` for an image filesystem of its own). When it is given the agent's stats
  come from the emulated provider (that capacity minus what the runtime says the pods use), else from the
  host. A real kubelet warns about it as an unknown field and goes on. See :class:`NodeCapacity`.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kubeharness.agent.config import fields
from kubeharness.agent.pod.quantity import parse_duration_ns, parse_quantity, parse_resource
from kubeharness.errors import InvalidArgument

log = logging.getLogger(__name__)

API_VERSION = "kubelet.config.k8s.io/v1beta1"
KIND = "KubeletConfiguration"

EVICTION_SIGNALS = frozenset({
    "memory.available", "allocatableMemory.available", "nodefs.available", "nodefs.inodesFree",
    "imagefs.available", "imagefs.inodesFree", "containerfs.available", "containerfs.inodesFree", "pid.available",
})
DEFAULT_EVICTION_HARD = {"memory.available": "100Mi", "nodefs.available": "10%", "imagefs.available": "15%",
                         "nodefs.inodesFree": "5%"}

_GATE_REDUCED_DECAY = "ReduceDefaultCrashLoopBackOffDecay"


class ConfigError(InvalidArgument):
    """A configuration file that cannot be used; the message names the file and the field."""


BINARY_SI, DECIMAL_SI, DECIMAL_EXPONENT = "BinarySI", "DecimalSI", "DecimalExponent"  # a quantity's format


@dataclass(frozen=True)
class ReclaimValue:
    """An ``evictionMinimumReclaim`` value: ``quantity`` (bytes or a count) or ``percent`` (of capacity)."""

    quantity: int | None = None
    percent: float | None = None
    quantity_format: str = BINARY_SI


@dataclass(frozen=True)
class EvictionThreshold:
    """An eviction threshold: the signal fires when what is available drops below it; a soft threshold
    (``grace_period_s`` > 0) only once it has held that long.

    Exactly one of ``quantity`` (bytes, or a count for inodes and pids) and ``percent`` (of capacity,
    0..100) is set; ``quantity_format`` is how the quantity was written (Go's resource formats: a binary
    suffix ``Mi``, a decimal one or none, an exponent), which kubelet's messages print it in.
    """

    signal: str
    quantity: int | None = None
    percent: float | None = None
    quantity_format: str = BINARY_SI
    grace_period_s: float = 0.0
    min_reclaim: ReclaimValue | None = None


@dataclass(frozen=True)
class NodeCapacity:
    """An emulated node's capacity (``kubeharnessNodeCapacity``, our extension): CPU in millicores, the rest in
    bytes or counts. ``image_fs_bytes`` None: the image filesystem is the node filesystem (one disk)."""

    cpu_millicores: int = 4000
    memory_bytes: int = 8 * 2**30
    ephemeral_storage_bytes: int = 100 * 2**30
    inodes: int = 1_000_000
    pids: int = 4096
    image_fs_bytes: int | None = None
    image_fs_inodes: int | None = None


# kubeharnessNodeCapacity key -> (NodeCapacity attribute, the resource its quantity is parsed as)
_CAPACITY_KEYS = {"cpu": ("cpu_millicores", "cpu"), "memory": ("memory_bytes", "memory"),
                  "ephemeralStorage": ("ephemeral_storage_bytes", "ephemeral-storage"),
                  "inodes": ("inodes", "inodes"), "pids": ("pids", "pid"),
                  "imageFs": ("image_fs_bytes", "ephemeral-storage"), "imageFsInodes": ("image_fs_inodes", "inodes")}


def node_capacity(value: object, name: str = "kubeharnessNodeCapacity") -> NodeCapacity:
    """Parse the ``kubeharnessNodeCapacity`` block; an unknown key, a malformed or a zero quantity is an error
    naming the key."""
    parsed: dict[str, int] = {}
    for key, raw in fields.mapping(value, name).items():
        if key not in _CAPACITY_KEYS:
            raise InvalidArgument(f"{name}.{key}: unknown key (one of {', '.join(_CAPACITY_KEYS)})")
        attr, resource = _CAPACITY_KEYS[key]
        if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
            raise InvalidArgument(f"{name}.{key}: must be a quantity such as '8Gi' or 4096, got {raw!r}")
        amount = parse_resource(resource, raw, f"{name}.{key}")
        if amount <= 0:
            raise InvalidArgument(f"{name}.{key}: must be positive, got {raw!r}")
        parsed[attr] = amount
    return NodeCapacity(**parsed)


def _default_node_name() -> str:
    # kubelet: the hostname, trimmed and lower-cased, unless --hostname-override says otherwise
    return socket.gethostname().strip().lower()


@dataclass(frozen=True)
class AgentConfig:
    """What the agent runs with: kubelet's configuration fields it uses, defaulted as kubelet does."""

    # from kubelet's flags (the CLI), not the file
    node_name: str = field(default_factory=_default_node_name)
    root_dir: str = "/var/lib/kubelet"
    # the runtime
    container_runtime_endpoint: str = "unix:///run/containerd/containerd.sock"
    image_service_endpoint: str = ""  # empty: the runtime endpoint
    runtime_request_timeout_s: float = 120.0
    # pod sources
    static_pod_path: str = ""
    file_check_frequency_s: float = 20.0
    static_pod_url: str = ""
    static_pod_url_header: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    http_check_frequency_s: float = 20.0
    sync_frequency_s: float = 60.0
    # cgroups and limits
    cgroup_driver: str = "cgroupfs"
    cgroups_per_qos: bool = True
    cgroup_root: str = ""  # empty: "/" when cgroups_per_qos
    max_pods: int = 110
    pod_pids_limit: int = -1
    system_reserved: Mapping[str, int] = field(default_factory=dict)  # cpu in millicores, others in units
    kube_reserved: Mapping[str, int] = field(default_factory=dict)
    # eviction (the ``eviction`` package)
    eviction_hard: Mapping[str, EvictionThreshold] = field(default_factory=lambda: default_eviction_hard())
    merge_default_eviction_settings: bool = False
    eviction_pressure_transition_period_s: float = 300.0
    eviction_soft: Mapping[str, EvictionThreshold] = field(default_factory=dict)  # with their grace periods
    eviction_soft_grace_period_s: Mapping[str, float] = field(default_factory=dict)
    eviction_max_pod_grace_period_s: int = 0
    eviction_minimum_reclaim: Mapping[str, ReclaimValue] = field(default_factory=dict)
    local_storage_capacity_isolation: bool = True  # ephemeral-storage limits enforced by eviction
    # an emulated node's capacity (kubeharnessNodeCapacity, ours); None: the stats come from the host
    node_capacity: NodeCapacity | None = None
    # servers
    address: str = "0.0.0.0"
    read_only_port: int = 0  # 0: the read-only server is off, as in kubelet
    healthz_port: int = 10248  # 0: off
    healthz_bind_address: str = "127.0.0.1"
    # logs and images
    pod_logs_dir: str = "/var/log/pods"
    container_log_max_size_bytes: int = 10 * 2**20  # negative: no log rotation
    container_log_max_files: int = 5  # counts the live file
    container_log_max_workers: int = 1
    container_log_monitor_interval_s: float = 10.0
    serialize_image_pulls: bool = True
    max_parallel_image_pulls: int | None = None
    image_minimum_gc_age_s: float = 120.0
    image_gc_high_threshold_percent: int = 85
    image_gc_low_threshold_percent: int = 80
    image_maximum_gc_age_s: float = 0.0  # 0: off
    # no kubelet field: the image filesystem's capacity when the runtime is emulated (its ImageFsInfo carries
    # no capacity and its mountpoint's statvfs is the host's disk); None: statvfs of the mountpoint
    image_fs_capacity_bytes: int | None = None
    # pod networking and DNS
    cluster_dns: tuple[str, ...] = ()
    cluster_domain: str = ""
    pod_cidr: str = ""
    node_status_update_frequency_s: float = 10.0
    feature_gates: Mapping[str, bool] = field(default_factory=dict)
    # crash-loop back-off of container restarts
    crash_loop_initial_s: float = 10.0
    crash_loop_max_s: float = 300.0
    crash_loop_reset_s: float = 600.0  # a container that ran this long starts over at the initial delay
    # what loading said; not part of the configuration's identity
    source_path: str = field(default="", compare=False)
    warnings: tuple[str, ...] = field(default=(), compare=False)
    ignored: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if not self.image_service_endpoint:
            object.__setattr__(self, "image_service_endpoint", self.container_runtime_endpoint)
        if not self.cgroup_root and self.cgroups_per_qos:
            object.__setattr__(self, "cgroup_root", "/")

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> AgentConfig:
        """Read a KubeletConfiguration file; ``overrides`` (attribute names) win over the file."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror or exc}") from None
        try:
            return cls.from_text(text, source_path=str(path), **overrides)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc.message}") from None

    @classmethod
    def from_text(cls, text: str, source_path: str = "", **overrides: Any) -> AgentConfig:
        """Parse a KubeletConfiguration document (YAML or JSON)."""
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"not valid YAML or JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ConfigError("the configuration must be a KubeletConfiguration object")
        return cls.from_dict(doc, source_path=source_path, **overrides)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], source_path: str = "", **overrides: Any) -> AgentConfig:
        """Build from a decoded KubeletConfiguration object."""
        if doc.get("apiVersion") != API_VERSION:
            raise ConfigError(f"apiVersion: must be {API_VERSION!r}, got {doc.get('apiVersion')!r}")
        if doc.get("kind") != KIND:
            raise ConfigError(f"kind: must be {KIND!r}, got {doc.get('kind')!r}")
        kwargs: dict[str, Any] = {}
        warnings: list[str] = []
        ignored: list[str] = []
        for key, value in doc.items():
            if key in ("apiVersion", "kind"):
                continue
            if key in _FIELDS:
                attr, parse = _FIELDS[key]
                try:
                    parsed = parse(value, key)
                except InvalidArgument as exc:
                    raise ConfigError(exc.message) from None
                if parsed is not None:
                    kwargs[attr] = parsed
            elif key == "crashLoopBackOff":
                try:
                    kwargs.update(fields.crash_loop_field(value, warnings))
                except InvalidArgument as exc:
                    raise ConfigError(exc.message) from None
            elif key in fields.KUBELET_FIELDS_NOT_IMPLEMENTED:
                ignored.append(key)
            else:
                warnings.append(f"unknown field {key!r}")
        _apply_dependent_defaults(kwargs)
        for message in warnings:
            log.warning("%s: %s", source_path or "KubeletConfiguration", message)
        if ignored:
            log.info("kubelet fields the agent does not implement, ignored: %s", ", ".join(sorted(ignored)))
        kwargs.update(overrides)
        return cls(source_path=source_path, warnings=tuple(warnings), ignored=tuple(ignored), **kwargs)


# ---- the fields: eviction thresholds here, the others in ``configfields``


def _signal(signal: str, where: str) -> None:
    if signal not in EVICTION_SIGNALS:
        known = ", ".join(sorted(EVICTION_SIGNALS))
        raise InvalidArgument(f"{where}: unsupported eviction signal {signal} (one of {known})")


def quantity_format_of(raw: object) -> str:
    """Go's format of a quantity as written: a binary suffix, an exponent, or decimal (also no suffix)."""
    text = str(raw).strip()
    if text[-2:] in ("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"):
        return BINARY_SI
    return DECIMAL_EXPONENT if re.search(r"[eE][+-]?\d+$", text) else DECIMAL_SI


def _percent(raw: str, where: str) -> float:
    try:
        return float(raw[:-1])
    except ValueError:
        raise InvalidArgument(f"{where}: {raw!r} is not a percentage") from None


def _thresholds(value: object, name: str) -> dict[str, EvictionThreshold]:
    """evictionHard / evictionSoft as kubelet's parseThresholdStatement reads them."""
    result = {}
    for signal, raw in fields.mapping(value, name).items():
        where = f"{name}.{signal}"
        _signal(signal, where)
        if isinstance(raw, str) and raw.endswith("%"):
            if raw in ("0%", "100%"):  # kubelet ignores both: the signal is off
                continue
            percent = _percent(raw, where)
            if not 0 <= percent <= 100:
                raise InvalidArgument(f"{where}: percentage must be between 0% and 100%, got {raw!r}")
            if percent:
                result[signal] = EvictionThreshold(signal, percent=percent)
            continue
        quantity = parse_quantity(raw, where)
        if quantity <= 0:
            raise InvalidArgument(f"{where}: eviction threshold {signal} must be positive: {raw}")
        result[signal] = EvictionThreshold(signal, quantity=parse_resource(signal, raw, where),
                                           quantity_format=quantity_format_of(raw))
    return result


def _grace_periods(value: object, name: str) -> dict[str, float]:
    """evictionSoftGracePeriod as kubelet's parseGracePeriods reads it."""
    result = {}
    for signal, raw in fields.mapping(value, name).items():
        where = f"{name}.{signal}"
        _signal(signal, where)
        ns = parse_duration_ns(raw, where)
        if ns < 0:
            raise InvalidArgument(f"{where}: invalid eviction grace period specified: {raw}, must be a positive value")
        result[signal] = ns / 1e9
    return result


def _minimum_reclaims(value: object, name: str) -> dict[str, ReclaimValue]:
    """evictionMinimumReclaim as kubelet's parseMinimumReclaims reads it."""
    result = {}
    for signal, raw in fields.mapping(value, name).items():
        where = f"{name}.{signal}"
        _signal(signal, where)
        if isinstance(raw, str) and raw.endswith("%"):
            percent = _percent(raw, where)
            if percent <= 0:
                raise InvalidArgument(f"{where}: eviction percentage minimum reclaim {signal} must be positive: {raw}")
            result[signal] = ReclaimValue(percent=percent)
            continue
        if parse_quantity(raw, where) < 0:
            raise InvalidArgument(f"{where}: negative eviction minimum reclaim specified for {signal}")
        result[signal] = ReclaimValue(quantity=parse_resource(signal, raw, where),
                                      quantity_format=quantity_format_of(raw))
    return result


def default_eviction_hard() -> dict[str, EvictionThreshold]:
    """Kubelet's default hard eviction thresholds (Linux)."""
    return _thresholds(DEFAULT_EVICTION_HARD, "evictionHard")


# KubeletConfiguration field -> (AgentConfig attribute, parser); crashLoopBackOff is a section of its own
_FIELDS: dict[str, tuple[str, Callable[[object, str], Any]]] = {
    "containerRuntimeEndpoint": ("container_runtime_endpoint", fields.string),
    "imageServiceEndpoint": ("image_service_endpoint", fields.string),
    "runtimeRequestTimeout": ("runtime_request_timeout_s", fields.duration),
    "staticPodPath": ("static_pod_path", fields.string),
    "fileCheckFrequency": ("file_check_frequency_s", fields.duration),
    "staticPodURL": ("static_pod_url", fields.string),
    "staticPodURLHeader": ("static_pod_url_header", fields.headers),
    "httpCheckFrequency": ("http_check_frequency_s", fields.duration),
    "syncFrequency": ("sync_frequency_s", fields.duration),
    "cgroupDriver": ("cgroup_driver", fields.enum("cgroupfs", "systemd")),
    "cgroupsPerQOS": ("cgroups_per_qos", fields.boolean),
    "cgroupRoot": ("cgroup_root", fields.string),
    "maxPods": ("max_pods", fields.count_or_default),
    "podPidsLimit": ("pod_pids_limit", fields.pids),
    "systemReserved": ("system_reserved", fields.reserved),
    "kubeReserved": ("kube_reserved", fields.reserved),
    "evictionHard": ("eviction_hard", _thresholds),
    "mergeDefaultEvictionSettings": ("merge_default_eviction_settings", fields.boolean),
    "evictionPressureTransitionPeriod": ("eviction_pressure_transition_period_s", fields.duration),
    "evictionSoft": ("eviction_soft", _thresholds),
    "evictionSoftGracePeriod": ("eviction_soft_grace_period_s", _grace_periods),
    "evictionMaxPodGracePeriod": ("eviction_max_pod_grace_period_s", fields.integer),
    "evictionMinimumReclaim": ("eviction_minimum_reclaim", _minimum_reclaims),
    "localStorageCapacityIsolation": ("local_storage_capacity_isolation", fields.boolean),
    "address": ("address", fields.ip),
    "readOnlyPort": ("read_only_port", fields.PORT),
    "healthzPort": ("healthz_port", fields.PORT),
    "healthzBindAddress": ("healthz_bind_address", fields.ip),
    "podLogsDir": ("pod_logs_dir", fields.string),
    "containerLogMaxSize": ("container_log_max_size_bytes", fields.log_max_size),
    "containerLogMaxFiles": ("container_log_max_files", fields.log_max_files),
    "containerLogMaxWorkers": ("container_log_max_workers", fields.log_max_workers),
    "containerLogMonitorInterval": ("container_log_monitor_interval_s", fields.log_monitor_interval),
    "serializeImagePulls": ("serialize_image_pulls", fields.boolean),
    "maxParallelImagePulls": ("max_parallel_image_pulls", fields.int_range(1, 2**31 - 1)),
    "imageMinimumGCAge": ("image_minimum_gc_age_s", fields.duration),
    "imageGCHighThresholdPercent": ("image_gc_high_threshold_percent", fields.PERCENT),
    "imageGCLowThresholdPercent": ("image_gc_low_threshold_percent", fields.PERCENT),
    "imageMaximumGCAge": ("image_maximum_gc_age_s", fields.duration),
    "clusterDNS": ("cluster_dns", fields.ip_list),
    "clusterDomain": ("cluster_domain", fields.string),
    "podCIDR": ("pod_cidr", fields.cidr),
    "nodeStatusUpdateFrequency": ("node_status_update_frequency_s", fields.duration),
    "featureGates": ("feature_gates", fields.gates),
    "kubeharnessNodeCapacity": ("node_capacity", node_capacity),  # ours, not kubelet's
}


def _complete_eviction_thresholds(kwargs: dict[str, Any]) -> None:
    """Soft thresholds get their grace periods, every threshold its minimum reclaim (ParseThresholdConfig)."""
    graces = kwargs.get("eviction_soft_grace_period_s", {})
    reclaims = kwargs.get("eviction_minimum_reclaim", {})
    soft = {}
    for signal, threshold in kwargs.get("eviction_soft", {}).items():
        if signal not in graces:
            raise ConfigError(f"evictionSoft.{signal}: grace period must be specified for the soft eviction "
                              f"threshold {signal} (in evictionSoftGracePeriod)")
        soft[signal] = dataclasses.replace(threshold, grace_period_s=graces[signal], min_reclaim=reclaims.get(signal))
    if soft:
        kwargs["eviction_soft"] = soft
    if reclaims:
        hard = kwargs.get("eviction_hard", default_eviction_hard())
        kwargs["eviction_hard"] = {signal: dataclasses.replace(t, min_reclaim=reclaims.get(signal))
                                   for signal, t in hard.items()}


def _apply_dependent_defaults(kwargs: dict[str, Any]) -> None:
    """Defaults that depend on other fields, as kubelet computes them."""
    gates = kwargs.get("feature_gates", {})
    if gates.get(_GATE_REDUCED_DECAY):
        kwargs.setdefault("crash_loop_initial_s", 1.0)
        kwargs.setdefault("crash_loop_max_s", 60.0)
    initial = kwargs.get("crash_loop_initial_s", 10.0)
    if kwargs.get("crash_loop_max_s", initial) < initial:
        kwargs["crash_loop_initial_s"] = kwargs["crash_loop_max_s"]
    if "serialize_image_pulls" not in kwargs:
        parallel = kwargs.get("max_parallel_image_pulls")
        kwargs["serialize_image_pulls"] = parallel is None or parallel < 2
    elif kwargs["serialize_image_pulls"] and kwargs.get("max_parallel_image_pulls", 1) > 1:
        raise ConfigError("maxParallelImagePulls: cannot be set above 1 when serializeImagePulls is true")
    if kwargs.get("merge_default_eviction_settings"):
        merged = default_eviction_hard()
        merged.update(kwargs.get("eviction_hard", {}))
        kwargs["eviction_hard"] = merged
    _complete_eviction_thresholds(kwargs)
    low = kwargs.get("image_gc_low_threshold_percent", 80)
    high = kwargs.get("image_gc_high_threshold_percent", 85)
    if low >= high:  # kubelet's ValidateKubeletConfiguration, in words of its messages
        raise ConfigError(f"imageGCLowThresholdPercent: must be less than imageGCHighThresholdPercent "
                          f"(--image-gc-low-threshold {low}, --image-gc-high-threshold {high})")
    max_age = kwargs.get("image_maximum_gc_age_s") or 0.0
    min_age = kwargs.get("image_minimum_gc_age_s", 120.0)
    if max_age and gates.get("ImageMaximumGCAge") is False:
        raise ConfigError("imageMaximumGCAge: ImageMaximumGCAge feature gate is required for Kubelet configuration "
                          "option imageMaximumGCAge")
    if max_age and max_age <= min_age:
        raise ConfigError(f"imageMaximumGCAge: {fields.go_duration(max_age)} must be greater than imageMinimumGCAge "
                          f"{fields.go_duration(min_age)}")
