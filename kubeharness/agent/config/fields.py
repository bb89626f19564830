"""Parsers of single ``KubeletConfiguration`` fields, and the names of the fields the agent leaves alone.

:class:`~kubeharness.agent.config.kubelet.AgentConfig` maps each field it uses to an attribute and one of these
parsers (its ``_FIELDS`` table). A parser takes the decoded value and the field's name and returns the
attribute's value, or None for "use the default" (kubelet treats a zero duration or ``maxPods: 0`` so);
a value of the wrong type or out of range raises :class:`~kubeharness.errors.InvalidArgument` naming the
field, which the loader turns into a ``ConfigError``. Durations come back in seconds, CPU in millicores
and memory in bytes. Only ``config`` imports this module.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from kubeharness.agent.pod.quantity import parse_duration_ns, parse_quantity, parse_resource
from kubeharness.errors import InvalidArgument

RESERVABLE = frozenset({"cpu", "memory", "ephemeral-storage", "pid"})  # plus hugepages-<size>

# Every other top-level field of v1beta1 KubeletConfiguration: accepted, not implemented by the agent.
KUBELET_FIELDS_NOT_IMPLEMENTED = frozenset({
    "enableServer", "port", "tlsCertFile", "tlsPrivateKeyFile", "tlsCipherSuites", "tlsCurvePreferences",
    "tlsMinVersion", "rotateCertificates", "serverTLSBootstrap", "authentication", "authorization",
    "registryPullQPS", "registryBurst", "imagePullCredentialsVerificationPolicy",
    "preloadedImagesVerificationAllowlist", "eventRecordQPS", "eventBurst", "enableDebuggingHandlers",
    "enableContentionProfiling", "oomScoreAdj", "streamingConnectionIdleTimeout", "nodeStatusReportFrequency",
    "nodeLeaseDurationSeconds", "volumeStatsAggPeriod", "kubeletCgroups", "systemCgroups",
    "cpuManagerPolicy", "singleProcessOOMKill", "cpuManagerPolicyOptions", "cpuManagerReconcilePeriod",
    "draManagerReconcilePeriod", "memoryManagerPolicy", "topologyManagerPolicy", "topologyManagerScope",
    "topologyManagerPolicyOptions", "qosReserved", "hairpinMode", "resolvConf", "runOnce", "cpuCFSQuota",
    "cpuCFSQuotaPeriod", "nodeStatusMaxImages", "maxOpenFiles", "contentType", "kubeAPIQPS", "kubeAPIBurst",
    "podsPerCore",
    "enableControllerAttachDetach", "protectKernelDefaults", "makeIPTablesUtilChains", "iptablesMasqueradeBit",
    "iptablesDropBit", "failSwapOn", "memorySwap",
    "configMapAndSecretChangeDetectionStrategy", "reservedSystemCPUs", "showHiddenMetricsForVersion",
    "systemReservedCgroup", "kubeReservedCgroup", "enforceNodeAllocatable", "allowedUnsafeSysctls",
    "volumePluginDir", "providerID", "kernelMemcgNotification", "logging", "enableSystemLogHandler",
    "enableSystemLogQuery", "shutdownGracePeriod", "shutdownGracePeriodCriticalPods",
    "shutdownGracePeriodByPodPriority", "reservedMemory", "enableProfilingHandler", "enableDebugFlagsHandler",
    "seccompDefault", "memoryThrottlingFactor", "memoryReservationPolicy", "registerWithTaints", "registerNode",
    "tracing", "localStorageCapacityIsolation", "failCgroupV1", "userNamespaces"
})


def string(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{name}: must be a string, got {value!r}")
    return value


def boolean(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(f"{name}: must be true or false, got {value!r}")
    return value


def integer(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{name}: must be an integer, got {value!r}")
    return value


def int_range(low: int, high: int) -> Callable[[object, str], int]:
    def parse(value: object, name: str) -> int:
        number = integer(value, name)
        if not low <= number <= high:
            raise InvalidArgument(f"{name}: must be between {low} and {high}, got {number}")
        return number

    return parse


def duration(value: object, name: str) -> float | None:
    ns = parse_duration_ns(value, name)
    if ns < 0:
        raise InvalidArgument(f"{name}: must not be negative, got {value!r}")
    return ns / 1e9 if ns else None  # kubelet: a zero duration means the default


def go_duration(seconds: float) -> str:
    """Seconds as Go prints a time.Duration in kubelet's messages: ``2m0s``, ``1h0m0s``, ``1.5s``."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    frac = f"{seconds - whole:.9f}".rstrip("0").rstrip(".")[1:] if seconds != whole else ""
    if hours:
        return f"{hours}h{minutes}m{secs}{frac}s"
    if minutes:
        return f"{minutes}m{secs}{frac}s"
    return f"{secs}{frac}s"


def enum(*allowed: str) -> Callable[[object, str], str]:
    def parse(value: object, name: str) -> str:
        if value not in allowed:
            raise InvalidArgument(f"{name}: must be one of {', '.join(allowed)}, got {value!r}")
        return str(value)

    return parse


def ip(value: object, name: str) -> str:
    try:
        return str(ipaddress.ip_address(string(value, name)))
    except ValueError:
        raise InvalidArgument(f"{name}: {value!r} is not an IP address") from None


def ip_list(value: object, name: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise InvalidArgument(f"{name}: must be a list of IP addresses, got {value!r}")
    return tuple(ip(item, f"{name}[{i}]") for i, item in enumerate(value))


def cidr(value: object, name: str) -> str:
    text = string(value, name)
    if not text:
        return text
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise InvalidArgument(f"{name}: {value!r} is not a CIDR such as 10.244.0.0/24") from None


def mapping(value: object, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidArgument(f"{name}: must be a map, got {value!r}")
    return {str(k): v for k, v in value.items()}


def reserved(value: object, name: str) -> dict[str, int]:
    result = {}
    for resource, amount in mapping(value, name).items():
        if resource not in RESERVABLE and not resource.startswith("hugepages-"):
            raise InvalidArgument(f"{name}.{resource}: unsupported resource (use cpu, memory, ephemeral-storage, pid)")
        result[resource] = parse_resource(resource, amount, f"{name}.{resource}")
    return result

def headers(value: object, name: str) -> dict[str, tuple[str, ...]]:
    result = {}
    for header, values in mapping(value, name).items():
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise InvalidArgument(f"{name}.{header}: must be a list of strings")
        result[header] = tuple(values)
    return result


def gates(value: object, name: str) -> dict[str, bool]:
    return {gate: boolean(on, f"{name}.{gate}") for gate, on in mapping(value, name).items()}


def size(value: object, name: str) -> int:
    return parse_resource("memory", value, name)


def log_max_size(value: object, name: str) -> int:
    """``containerLogMaxSize``: whole bytes; negative is allowed and switches log rotation off (kubelet)."""
    amount = parse_quantity(value, name)
    if amount != amount.to_integral_value():
        raise InvalidArgument(f"{name}: invalid max log size, got {value!r}")  # kubelet's Quantity.AsInt64
    return int(amount)


def log_max_files(value: object, name: str) -> int:
    number = integer(value, name)
    if number <= 1 or number > 2**31 - 1:  # kubelet's validation: containerLogMaxFiles must be greater than 1
        raise InvalidArgument(f"{name}: must be greater than 1, got {number}")
    return number


def log_max_workers(value: object, name: str) -> int:
    number = integer(value, name)
    if number < 1 or number > 2**31 - 1:  # kubelet: containerLogMaxWorkers must be greater than or equal to 1
        raise InvalidArgument(f"{name}: must be greater than or equal to 1, got {number}")
    return number


def log_monitor_interval(value: object, name: str) -> float:
    """``containerLogMonitorInterval``: at least 3s, in seconds (a zero duration is refused too, as kubelet)."""
    ns = parse_duration_ns(value, name)
    if ns < 3 * 10**9:
        raise InvalidArgument(f"{name}: must be a positive time duration greater than or equal to 3s, got {value!r}")
    return ns / 1e9


def count_or_default(value: object, name: str) -> int | None:
    number = integer(value, name)
    if number < 0:
        raise InvalidArgument(f"{name}: must not be negative, got {number}")
    return number or None  # kubelet: 0 means the default


def pids(value: object, name: str) -> int:
    number = integer(value, name)
    return -1 if number < 0 else number  # kubelet: negative means no pod-level limit (-1)


PORT = int_range(0, 65535)
PERCENT = int_range(0, 100)


def crash_loop_field(value: object, warnings: list[str]) -> dict[str, float]:
    """``crashLoopBackOff`` -> the cap of the restart delay, if set; unknown keys go to ``warnings``."""
    section = mapping(value, "crashLoopBackOff")
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
