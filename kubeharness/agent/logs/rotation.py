"""The rules of container log rotation, as kubelet's ``container_log_manager.go`` has them, over names only.

A container's live log is ``<log>`` (for example ``/var/log/pods/<ns>_<pod>_<uid>/<ctr>/0.log``). Rotating
renames it to ``<log>.<YYYYMMDD-HHMMSS>`` (the time of the rotation, UTC) and asks the runtime to reopen
``<log>``; the rotated file before that one is then gzip-compressed to ``<log>.<stamp>.gz`` through
``<log>.<stamp>.tmp``. The timestamps have a fixed width, so sorting the names sorts the files oldest first.

Before each rotation of ``<log>``, among its siblings ``<log>.*``:

- unused files go: every ``.tmp`` (a compression that did not finish) and every uncompressed file that
  already has its ``.gz`` (a compression that did not remove its source);
- of the files left, all but the newest ``maxFiles - 2`` go, oldest first (the live file and the one
  about to be rotated make up the other two), so that never more than ``maxFiles`` files remain;
- the uncompressed ones among those kept are compressed; the newest rotated file stays uncompressed
  until the next rotation, so that a reader (fluentd, ``kubectl logs``) can finish it.

A negative ``maxSize`` turns rotation off; a file is rotated when its size is at least ``maxSize``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kubeharness.errors import InvalidArgument

TIMESTAMP_FORMAT = "%Y%m%d-%H%M%S"  # kubelet's timestampFormat "20060102-150405"
COMPRESS_SUFFIX = ".gz"
TMP_SUFFIX = ".tmp"


@dataclass(frozen=True)
class LogRotatePolicy:
    """How big a live log may grow (bytes; negative: no rotation) and how many files a container keeps."""

    max_size_bytes: int
    max_files: int

    def __post_init__(self) -> None:
        if self.max_files <= 1:  # kubelet's NewContainerLogManager refuses it in these words
            raise InvalidArgument(f"invalid MaxFiles {self.max_files}, must be > 1")

    @property
    def enabled(self) -> bool:
        return self.max_size_bytes >= 0


@dataclass(frozen=True)
class Plan:
    """What one rotation of a log does to its siblings before the live file is renamed."""

    unused: tuple[str, ...]  # removed first
    excess: tuple[str, ...]  # removed next, oldest first
    compress: tuple[str, ...]  # then compressed, oldest first
    kept: tuple[str, ...]  # the rotated files left (before the live file joins them), oldest first


def needs_rotation(size_bytes: int, policy: LogRotatePolicy) -> bool:
    """Kubelet rotates a live log whose size is at or over the limit."""
    return policy.enabled and size_bytes >= policy.max_size_bytes


def rotated_name(log: str, now_ns: int) -> str:
    """``<log>.<YYYYMMDD-HHMMSS>`` for a rotation at ``now_ns`` (UTC)."""
    return f"{log}.{time.strftime(TIMESTAMP_FORMAT, time.gmtime(now_ns // 1_000_000_000))}"


def is_in_use(name: str, names: Iterable[str]) -> bool:
    """Kubelet's isInUse: a ``.tmp`` never is, a ``.gz`` always is, another file unless its ``.gz`` exists."""
    if name.endswith(TMP_SUFFIX):
        return False
    if name.endswith(COMPRESS_SUFFIX):
        return True
    return name + COMPRESS_SUFFIX not in names


def split_unused(names: Iterable[str]) -> tuple[list[str], list[str]]:
    """The siblings in use and those that are leftovers of an earlier rotation, each in the order given."""
    listed = list(names)
    present = set(listed)
    inuse = [n for n in listed if is_in_use(n, present)]
    unused = [n for n in listed if not is_in_use(n, present)]
    return inuse, unused


def plan_rotation(siblings: Iterable[str], policy: LogRotatePolicy) -> Plan:
    """What rotating a log does to its siblings (``<log>.*``, any order)."""
    inuse, unused = split_unused(siblings)
    inuse.sort()
    keep = max(policy.max_files - 2, 0)
    cut = max(len(inuse) - keep, 0)
    kept = inuse[cut:]
    return Plan(unused=tuple(unused), excess=tuple(inuse[:cut]),
                compress=tuple(n for n in kept if not n.endswith(COMPRESS_SUFFIX)), kept=tuple(kept))


def all_logs(log: str, siblings: Sequence[str]) -> list[str]:
    """Kubelet's GetAllLogs: the rotated files in use, oldest first, then the live file."""
    inuse, _ = split_unused(siblings)
    return [*sorted(inuse), log]
