"""Looking at processes from a test: a process's children and waiting for a PID to be gone (Linux /proc)."""

from __future__ import annotations

import time
from pathlib import Path

POLL_SECONDS = 0.02


def children(pid: int) -> list[int]:
    """The PIDs of the live children of ``pid`` (none if it is gone)."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return found
    for task in tasks:
        try:
            found.extend(int(child) for child in (task / "children").read_text().split())
        except FileNotFoundError:
            continue
    return sorted(found)


def is_gone(pid: int) -> bool:
    """True once ``pid`` has ended: no such process, or only a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")  # the state follows the "(command)" field


def wait_gone(pid: int, timeout: float) -> bool:
    """Poll until ``pid`` has ended, at most ``timeout`` seconds; whether it did."""
    deadline = time.monotonic() + timeout
    while not is_gone(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_SECONDS)
    return True


def wait_child(pid: int, timeout: float, other_than: int | None = None) -> int:
    """Poll until ``pid`` has exactly one live child (not ``other_than``); its PID. TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        live = [child for child in children(pid) if child != other_than and not is_gone(child)]
        if len(live) == 1:
            return live[0]
        if time.monotonic() >= deadline:
            raise TimeoutError(f"process {pid} has children {live} after {timeout:.0f} s, not one (new) child")
        time.sleep(POLL_SECONDS)
