"""The agent's configuration, read from a kubelet ``KubeletConfiguration`` file (YAML or JSON).

``AgentConfig.load(path)`` reads a ``kubelet.config.k8s.io/v1beta1`` ``KubeletConfiguration`` and
defaults it as kubelet does (``SetDefaults_KubeletConfiguration``), so the same file configures our agent
and a real kubelet. Fields the agent uses become typed attributes with units in their names (durations in
seconds, CPU in millicores, memory in bytes). Fields kubelet knows but the agent does not implement are
listed in ``ignored``; fields kubelet does not know either are logged and listed in ``warnings`` (kubelet
too decodes leniently and warns). A value of the wrong type or out of range raises :class:`ConfigError`
naming the field. Node name and root directory are flags in kubelet, so they come from the CLI.

Choices where kubelet leaves room or hard-codes things, all kubelet's own behaviour unless said otherwise:

- ``readOnlyPort`` defaults to 0, which disables the read-only server (``/pods``, ``/metrics``), as in
  kubelet. Tests that want those endpoints set it (10255 is kubelet's traditional read-only port).
- A zero duration, ``maxPods: 0`` or a negative ``podPidsLimit`` means "use the default", as in kubelet.
- ``cgroupRoot`` is ``/`` when unset and ``cgroupsPerQOS`` is on (kubelet's start-up does this).
- ``evictionHard`` replaces kubelet's defaults unless ``mergeDefaultEvictionSettings`` is true; a 0 or
  0% threshold is dropped (it disables that signal).
- Crash-loop back-off: kubelet starts at 10s, doubles up to 300s and forgets a container's back-off after
  it ran 10 minutes. ``crashLoopBackOff.maxContainerRestartPeriod`` (1s..300s) caps the delay (kubelet
  needs feature gate ``KubeletCrashLoopBackOffMax`` for it; we honour it without the gate); a cap under
  the initial delay becomes the initial delay too. Feature gate ``ReduceDefaultCrashLoopBackOffDecay``
  gives kubelet's reduced defaults, 1s initial and 60s max. The initial delay and the reset period have
  no kubelet field: they are ``AgentConfig`` attributes (``crash_loop_initial_s``,
  ``crash_loop_reset_s``) that callers may override with :func:`dataclasses.replace`.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kubeharness.agent.quantity import parse_duration_ns, parse_quantity, parse_resource
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
RESERVABLE = frozenset({"cpu", "memory", "ephemeral-storage", "pid"})  # plus hugepages-<size>

# Every other top-level field of v1beta1 KubeletConfiguration: accepted, not implemented by the agent.
KUBELET_FIELDS_NOT_IMPLEMENTED = frozenset({
    "enableServer", "port", "tlsCertFile", "tlsPrivateKeyFile", "tlsCipherSuites", "tlsCurvePreferences",
    "tlsMinVersion", "rotateCertificates", "serverTLSBootstrap", "authentication", "authorization",
    "registryPullQPS", "registryBurst", "imagePullCredentialsVerificationPolicy",
    "preloadedImagesVerificationAllowlist", "eventRecordQPS", "eventBurst", "enableDebuggingHandlers",
    "enableContentionProfiling", "oomScoreAdj", "streamingConnectionIdleTimeout", "nodeStatusReportFrequency",
    "nodeLeaseDurationSeconds", "imageMaximumGCAge", "volumeStatsAggPeriod", "kubeletCgroups", "systemCgroups",
    "cpuManagerPolicy", "singleProcessOOMKill", "cpuManagerPolicyOptions", "cpuManagerReconcilePeriod",
    "draManagerReconcilePeriod", "memoryManagerPolicy", "topologyManagerPolicy", "topologyManagerScope",
    "topologyManagerPolicyOptions", "qosReserved", "hairpinMode", "resolvConf", "runOnce", "cpuCFSQuota",
    "cpuCFSQuotaPeriod", "nodeStatusMaxImages", "maxOpenFiles", "contentType", "kubeAPIQPS", "kubeAPIBurst",
    "evictionSoft", "evictionSoftGracePeriod", "evictionMaxPodGracePeriod", "evictionMinimumReclaim", "podsPerCore",
    "enableControllerAttachDetach", "protectKernelDefaults", "makeIPTablesUtilChains", "iptablesMasqueradeBit",
    "iptablesDropBit", "failSwapOn", "memorySwap", "containerLogMaxWorkers",
    "configMapAndSecretChangeDetectionStrategy", "reservedSystemCPUs", "showHiddenMetricsForVersion",
    "systemReservedCgroup", "kubeReservedCgroup", "enforceNodeAllocatable", "allowedUnsafeSysctls",
    "volumePluginDir", "providerID", "kernelMemcgNotification", "logging", "enableSystemLogHandler",
    "enableSystemLogQuery", "shutdownGracePeriod", "shutdownGracePeriodCriticalPods",
    "shutdownGracePeriodByPodPriority", "reservedMemory", "enableProfilingHandler", "enableDebugFlagsHandler",
    "seccompDefault", "memoryThrottlingFactor", "memoryReservationPolicy", "registerWithTaints", "registerNode",
    "tracing", "localStorageCapacityIsolation", "failCgroupV1", "userNamespaces"
})

_GATE_REDUCED_DECAY = "ReduceDefaultCrashLoopBackOffDecay"


class ConfigError(InvalidArgument):
    """A configuration file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class EvictionThreshold:
    """A hard eviction threshold: the signal fires when what is available drops below it.

    Exactly one of ``quantity`` (bytes, or a count for inodes and pids) and ``percent`` (of capacity,
    0..100) is set.
    """

    signal: str
    quantity: int | None = None
    percent: float | None = None


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
    # eviction (used by part 2)
    eviction_hard: Mapping[str, EvictionThreshold] = field(default_factory=lambda: default_eviction_hard())
    merge_default_eviction_settings: bool = False
    eviction_pressure_transition_period_s: float = 300.0
    # servers
    address: str = "0.0.0.0"
    read_only_port: int = 0  # 0: the read-only server is off, as in kubelet
    healthz_port: int = 10248  # 0: off
    healthz_bind_address: str = "127.0.0.1"
    # logs and images
    pod_logs_dir: str = "/var/log/pods"
    container_log_max_size_bytes: int = 10 * 2**20
    container_log_max_files: int = 5
    container_log_monitor_interval_s: float = 10.0
    serialize_image_pulls: bool = True
    max_parallel_image_pulls: int | None = None
    image_minimum_gc_age_s: float = 120.0
    image_gc_high_threshold_percent: int = 85
    image_gc_low_threshold_percent: int = 80
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
                kwargs.update(_crash_loop_field(value, warnings))
            elif key in KUBELET_FIELDS_NOT_IMPLEMENTED:
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


# ---- field parsers: each takes (value, field name) and returns the attribute value, or None for "default"


def _str(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{name}: must be a string, got {value!r}")
    return value


def _bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(f"{name}: must be true or false, got {value!r}")
    return value


def _int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{name}: must be an integer, got {value!r}")
    return value


def _int_range(low: int, high: int) -> Callable[[object, str], int]:
    def parse(value: object, name: str) -> int:
        number = _int(value, name)
        if not low <= number <= high:
            raise InvalidArgument(f"{name}: must be between {low} and {high}, got {number}")
        return number

    return parse


def _duration(value: object, name: str) -> float | None:
    ns = parse_duration_ns(value, name)
    if ns < 0:
        raise InvalidArgument(f"{name}: must not be negative, got {value!r}")
    return ns / 1e9 if ns else None  # kubelet: a zero duration means the default


def _enum(*allowed: str) -> Callable[[object, str], str]:
    def parse(value: object, name: str) -> str:
        if value not in allowed:
            raise InvalidArgument(f"{name}: must be one of {', '.join(allowed)}, got {value!r}")
        return str(value)

    return parse


def _ip(value: object, name: str) -> str:
    try:
        return str(ipaddress.ip_address(_str(value, name)))
    except ValueError:
        raise InvalidArgument(f"{name}: {value!r} is not an IP address") from None


def _ip_list(value: object, name: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise InvalidArgument(f"{name}: must be a list of IP addresses, got {value!r}")
    return tuple(_ip(item, f"{name}[{i}]") for i, item in enumerate(value))


def _cidr(value: object, name: str) -> str:
    text = _str(value, name)
    if not text:
        return text
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise InvalidArgument(f"{name}: {value!r} is not a CIDR such as 10.244.0.0/24") from None


def _mapping(value: object, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidArgument(f"{name}: must be a map, got {value!r}")
    return {str(k): v for k, v in value.items()}


def _reserved(value: object, name: str) -> dict[str, int]:
    result = {}
    for resource, amount in _mapping(value, name).items():
        if resource not in RESERVABLE and not resource.startswith("hugepages-"):
            raise InvalidArgument(f"{name}.{resource}: unsupported resource (use cpu, memory, ephemeral-storage, pid)")
        result[resource] = parse_resource(resource, amount, f"{name}.{resource}")
    return result


def _thresholds(value: object, name: str) -> dict[str, EvictionThreshold]:
    result = {}
    for signal, raw in _mapping(value, name).items():
        where = f"{name}.{signal}"
        if signal not in EVICTION_SIGNALS:
            known = ", ".join(sorted(EVICTION_SIGNALS))
            raise InvalidArgument(f"{where}: unsupported eviction signal (one of {known})")
        if isinstance(raw, str) and raw.endswith("%"):
            try:
                percent = float(raw[:-1])
            except ValueError:
                raise InvalidArgument(f"{where}: {raw!r} is not a percentage") from None
            if not 0 <= percent <= 100:
                raise InvalidArgument(f"{where}: percentage must be between 0% and 100%, got {raw!r}")
            if percent:
                result[signal] = EvictionThreshold(signal, percent=percent)
            continue
        quantity = parse_quantity(raw, where)
        if quantity < 0:
            raise InvalidArgument(f"{where}: must not be negative, got {raw!r}")
        if quantity:
            result[signal] = EvictionThreshold(signal, quantity=parse_resource(signal, raw, where))
    return result


def default_eviction_hard() -> dict[str, EvictionThreshold]:
    """Kubelet's default hard eviction thresholds (Linux)."""
    return _thresholds(DEFAULT_EVICTION_HARD, "evictionHard")


def _headers(value: object, name: str) -> dict[str, tuple[str, ...]]:
    result = {}
    for header, values in _mapping(value, name).items():
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise InvalidArgument(f"{name}.{header}: must be a list of strings")
        result[header] = tuple(values)
    return result


def _gates(value: object, name: str) -> dict[str, bool]:
    return {gate: _bool(on, f"{name}.{gate}") for gate, on in _mapping(value, name).items()}


def _size(value: object, name: str) -> int:
    return parse_resource("memory", value, name)


def _count_or_default(value: object, name: str) -> int | None:
    number = _int(value, name)
    if number < 0:
        raise InvalidArgument(f"{name}: must not be negative, got {number}")
    return number or None  # kubelet: 0 means the default


def _pids(value: object, name: str) -> int:
    number = _int(value, name)
    return -1 if number < 0 else number  # kubelet: negative means no pod-level limit (-1)


_PORT = _int_range(0, 65535)
_PERCENT = _int_range(0, 100)

# KubeletConfiguration field -> (AgentConfig attribute, parser)
_FIELDS: dict[str, tuple[str, Callable[[object, str], Any]]] = {
    "containerRuntimeEndpoint": ("container_runtime_endpoint", _str),
    "imageServiceEndpoint": ("image_service_endpoint", _str),
    "runtimeRequestTimeout": ("runtime_request_timeout_s", _duration),
    "staticPodPath": ("static_pod_path", _str),
    "fileCheckFrequency": ("file_check_frequency_s", _duration),
    "staticPodURL": ("static_pod_url", _str),
    "staticPodURLHeader": ("static_pod_url_header", _headers),
    "httpCheckFrequency": ("http_check_frequency_s", _duration),
    "syncFrequency": ("sync_frequency_s", _duration),
    "cgroupDriver": ("cgroup_driver", _enum("cgroupfs", "systemd")),
    "cgroupsPerQOS": ("cgroups_per_qos", _bool),
    "cgroupRoot": ("cgroup_root", _str),
    "maxPods": ("max_pods", _count_or_default),
    "podPidsLimit": ("pod_pids_limit", _pids),
    "systemReserved": ("system_reserved", _reserved),
    "kubeReserved": ("kube_reserved", _reserved),
    "evictionHard": ("eviction_hard", _thresholds),
    "mergeDefaultEvictionSettings": ("merge_default_eviction_settings", _bool),
    "evictionPressureTransitionPeriod": ("eviction_pressure_transition_period_s", _duration),
    "address": ("address", _ip),
    "readOnlyPort": ("read_only_port", _PORT),
    "healthzPort": ("healthz_port", _PORT),
    "healthzBindAddress": ("healthz_bind_address", _ip),
    "podLogsDir": ("pod_logs_dir", _str),
    "containerLogMaxSize": ("container_log_max_size_bytes", _size),
    "containerLogMaxFiles": ("container_log_max_files", _int_range(2, 2**31 - 1)),
    "containerLogMonitorInterval": ("container_log_monitor_interval_s", _duration),
    "serializeImagePulls": ("serialize_image_pulls", _bool),
    "maxParallelImagePulls": ("max_parallel_image_pulls", _int_range(1, 2**31 - 1)),
    "imageMinimumGCAge": ("image_minimum_gc_age_s", _duration),
    "imageGCHighThresholdPercent": ("image_gc_high_threshold_percent", _PERCENT),
    "imageGCLowThresholdPercent": ("image_gc_low_threshold_percent", _PERCENT),
    "clusterDNS": ("cluster_dns", _ip_list),
    "clusterDomain": ("cluster_domain", _str),
    "podCIDR": ("pod_cidr", _cidr),
    "nodeStatusUpdateFrequency": ("node_status_update_frequency_s", _duration),
    "featureGates": ("feature_gates", _gates),
}


def _crash_loop_field(value: object, warnings: list[str]) -> dict[str, float]:
    """``crashLoopBackOff`` -> the cap of the restart delay, if set."""
    try:
        section = _mapping(value, "crashLoopBackOff")
        result = {}
        for key, item in section.items():
            if key != "maxContainerRestartPeriod":
                warnings.append(f"unknown field 'crashLoopBackOff.{key}'")
                continue
            where = "crashLoopBackOff.maxContainerRestartPeriod"
            seconds = parse_duration_ns(item, where) / 1e9
            if not 1 <= seconds <= 300:
                raise InvalidArgument(f"{where}: must be between 1s and 300s, got {item!r}")
            result["crash_loop_max_s"] = seconds
        return result
    except InvalidArgument as exc:
        raise ConfigError(exc.message) from None


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
    low = kwargs.get("image_gc_low_threshold_percent", 80)
    high = kwargs.get("image_gc_high_threshold_percent", 85)
    if low >= high:
        raise ConfigError("imageGCLowThresholdPercent: must be less than imageGCHighThresholdPercent")
