"""Resident memory and CPU time of a process, read from ``/proc`` (Linux only).

The benchmark samples the runtime it measures (the emulator it started, or any PID it is given) at
phase boundaries: CPU seconds per phase tell whether the server or the client was the bottleneck,
and VmRSS/VmHWM give the memory figure the project's targets talk about.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

MiB = 1024 * 1024
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcSample:
    """One reading of a process: memory in bytes, CPU in seconds (user + system)."""

    rss_bytes: int
    hwm_bytes: int
    cpu_s: float


def parse_status_kib(status_text: str, key: str) -> int | None:
    """The value of a ``Key:   123 kB`` line of /proc/PID/status, in bytes."""
    for line in status_text.splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return int(value.split()[0]) * 1024
    return None


def parse_stat_cpu_s(stat_text: str) -> float:
    """utime + stime of a /proc/PID/stat line, in seconds (the command name may contain spaces)."""
    fields = stat_text.rpartition(")")[2].split()
    # fields[0] is the state (field 3 of the line); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def sample(pid: int) -> ProcSample | None:
    """Read ``pid``'s memory and CPU; None if it is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return ProcSample(
        rss_bytes=parse_status_kib(status, "VmRSS") or 0,
        hwm_bytes=parse_status_kib(status, "VmHWM") or 0,
        cpu_s=parse_stat_cpu_s(stat),
    )


def own_cpu_s() -> float:
    """CPU seconds this process has used so far."""
    found = sample(os.getpid())
    return found.cpu_s if found is not None else 0.0
