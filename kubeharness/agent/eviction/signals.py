"""Eviction signals and what they observe, as kubelet's ``eviction/helpers.go`` and ``eviction/api`` define them.

:func:`observe` is kubelet's ``makeSignalObservations``: from a stats :class:`~kubeharness.agent.stats.types.Summary`
it takes, per signal, what is available and the capacity it is a share of (``memory.available``: the node's
available bytes out of available + working set; ``nodefs.*`` from the node's fs, ``imagefs.*`` from the image
filesystem, ``pid.available``: max pid minus running processes). A figure the Summary lacks gives no
observation, and a threshold without an observation is never met. :func:`thresholds_met` compares (optionally
with the minimum reclaim added); :func:`threshold_quantity` turns a percentage into a quantity exactly as
kubelet does (a float32 fraction times the capacity, truncated). :func:`go_quantity` prints amounts as Go's
``resource.Quantity.String()`` does, for kubelet's messages.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kubeharness.agent.config.kubelet import BINARY_SI, DECIMAL_EXPONENT, DECIMAL_SI, EvictionThreshold, ReclaimValue
from kubeharness.agent.stats.types import FsStats, Summary

MEMORY_AVAILABLE = "memory.available"
NODEFS_AVAILABLE, NODEFS_INODES_FREE = "nodefs.available", "nodefs.inodesFree"
IMAGEFS_AVAILABLE, IMAGEFS_INODES_FREE = "imagefs.available", "imagefs.inodesFree"
PID_AVAILABLE = "pid.available"

MEMORY_PRESSURE, DISK_PRESSURE, PID_PRESSURE = "MemoryPressure", "DiskPressure", "PIDPressure"
# the resources kubelet reclaims (v1 resource names, plus its internal "inodes" and "pids")
MEMORY, EPHEMERAL_STORAGE, INODES, PIDS = "memory", "ephemeral-storage", "inodes", "pids"

SIGNAL_TO_CONDITION = {
    MEMORY_AVAILABLE: MEMORY_PRESSURE, "allocatableMemory.available": MEMORY_PRESSURE,
    NODEFS_AVAILABLE: DISK_PRESSURE, NODEFS_INODES_FREE: DISK_PRESSURE, IMAGEFS_AVAILABLE: DISK_PRESSURE,
    IMAGEFS_INODES_FREE: DISK_PRESSURE, "containerfs.available": DISK_PRESSURE,
    "containerfs.inodesFree": DISK_PRESSURE, PID_AVAILABLE: PID_PRESSURE,
}
SIGNAL_TO_RESOURCE = {
    MEMORY_AVAILABLE: MEMORY, "allocatableMemory.available": MEMORY,
    NODEFS_AVAILABLE: EPHEMERAL_STORAGE, IMAGEFS_AVAILABLE: EPHEMERAL_STORAGE,
    "containerfs.available": EPHEMERAL_STORAGE,
    NODEFS_INODES_FREE: INODES, IMAGEFS_INODES_FREE: INODES, "containerfs.inodesFree": INODES,
    PID_AVAILABLE: PIDS,
}
DISK_SIGNALS = frozenset(s for s, c in SIGNAL_TO_CONDITION.items() if c == DISK_PRESSURE)


@dataclass(frozen=True)
class Observation:
    """What a signal saw: ``available`` out of ``capacity`` (bytes or a count), at ``time_ns``."""

    available: int
    capacity: int
    time_ns: int
    quantity_format: str = BINARY_SI


def _fs(result: dict[str, Observation], fs: FsStats | None, available: str, inodes: str) -> None:
    if fs is None:
        return
    if fs.available_bytes is not None and fs.capacity_bytes is not None:
        result[available] = Observation(fs.available_bytes, fs.capacity_bytes, fs.time_ns)
    if fs.inodes_free is not None and fs.inodes is not None:
        result[inodes] = Observation(fs.inodes_free, fs.inodes, fs.time_ns, DECIMAL_SI)


# signals kubelet knows that observe() does not give: allocatable memory (kubelet's memcg notifier on the
# pods' cgroup) and a container filesystem apart from the image filesystem (KEP-4191's split image fs)
NOT_OBSERVED = frozenset({"allocatableMemory.available", "containerfs.available", "containerfs.inodesFree"})


def observe(summary: Summary) -> dict[str, Observation]:
    """Kubelet's makeSignalObservations (Linux) over ``summary``."""
    result: dict[str, Observation] = {}
    node = summary.node
    memory = node.memory
    if memory is not None and memory.available_bytes is not None and memory.working_set_bytes is not None:
        capacity = memory.available_bytes + memory.working_set_bytes
        result[MEMORY_AVAILABLE] = Observation(memory.available_bytes, capacity, memory.time_ns)
    _fs(result, node.fs, NODEFS_AVAILABLE, NODEFS_INODES_FREE)
    _fs(result, node.image_fs, IMAGEFS_AVAILABLE, IMAGEFS_INODES_FREE)
    rlimit = node.rlimit
    if rlimit is not None and rlimit.max_pid is not None and rlimit.num_of_running_processes is not None:
        result[PID_AVAILABLE] = Observation(rlimit.max_pid - rlimit.num_of_running_processes, rlimit.max_pid,
                                            rlimit.time_ns, DECIMAL_SI)
    return result


def _float32(x: float) -> float:
    return float(struct.unpack("f", struct.pack("f", x))[0])


def percent_quantity(percent: float, capacity: int) -> int:
    """Kubelet's GetThresholdQuantity for a percentage: float32(percent)/100 (in float32) times the capacity."""
    fraction = _float32(_float32(percent) / 100.0)
    return int(float(capacity) * fraction)


def threshold_quantity(value: EvictionThreshold | ReclaimValue, capacity: int) -> int:
    if value.quantity is not None:
        return value.quantity
    return percent_quantity(value.percent or 0.0, capacity)


def thresholds_met(thresholds: Iterable[EvictionThreshold], observations: Mapping[str, Observation],
                   enforce_min_reclaim: bool = False) -> list[EvictionThreshold]:
    """The thresholds whose signal is below them (kubelet's thresholdsMet); with ``enforce_min_reclaim``, below
    the threshold plus its minimum reclaim (a threshold stays met until that much is reclaimed)."""
    met = []
    for threshold in thresholds:
        observed = observations.get(threshold.signal)
        if observed is None:
            continue
        quantity = threshold_quantity(threshold, observed.capacity)
        if enforce_min_reclaim and threshold.min_reclaim is not None:
            quantity += threshold_quantity(threshold.min_reclaim, observed.capacity)
        if quantity > observed.available:
            met.append(threshold)
    return met


_BINARY_SUFFIXES = ("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei")
_DECIMAL_SUFFIXES = ("", "k", "M", "G", "T", "P", "E")


def go_quantity(amount: int, quantity_format: str = BINARY_SI) -> str:
    """``amount`` as Go's ``resource.Quantity.String()`` prints it in ``quantity_format``: ``104857600`` in
    BinarySI is ``100Mi``, ``1536`` stays ``1536``, under 1024 is decimal; DecimalSI ``5000`` is ``5k``."""
    if quantity_format == BINARY_SI and not -1024 < amount < 1024:
        exponent = 0
        while exponent < 6 and amount % 1024 == 0:
            amount //= 1024
            exponent += 1
        return f"{amount}{_BINARY_SUFFIXES[exponent]}"
    if amount == 0:
        return "0"
    exponent = 0
    while exponent < 6 and amount % 1000 == 0:
        amount //= 1000
        exponent += 1
    if quantity_format == DECIMAL_EXPONENT:
        return f"{amount}e{3 * exponent}" if exponent else str(amount)
    return f"{amount}{_DECIMAL_SUFFIXES[exponent]}"


def threshold_string(threshold: EvictionThreshold, observed: Observation) -> str:
    """The threshold's quantity as kubelet prints it (a percentage becomes a BinarySI quantity of the capacity)."""
    if threshold.quantity is not None:
        return go_quantity(threshold.quantity, threshold.quantity_format)
    return go_quantity(percent_quantity(threshold.percent or 0.0, observed.capacity), BINARY_SI)
