"""Container log files in the CRI format that kubelet and ``crictl logs`` read.

Each line is ``<RFC 3339 time with nanoseconds> <stream> <tag> <text>``: the tag is ``F`` for a full
line and ``P`` for a partial one. A line longer than 16 KiB is split into 16 KiB ``P`` chunks and a
final ``F`` chunk, as containerd does. The file stays open while its container writes, so after the
kubelet renames it, output keeps going to the renamed file until ReopenContainerLog opens a fresh
one at the original path: the rotation handshake containerd implements.

The file is opened below its sandbox's log directory (the kubelet chose that one) with no symbolic link
followed on the way (:func:`kubeharness.fsafe.open_beneath`): a link planted in the log directory, also one
swapped in between two opens, is refused rather than followed to write somewhere else.
"""

from __future__ import annotations

import os
import time

from kubeharness.emulators.cri.behaviour import CRI_MAX_LOG_LINE
from kubeharness.errors import FailedPrecondition
from kubeharness.fsafe import FsafeError, open_beneath

_second_cache: dict[int, str] = {}


def format_timestamp(ns: int) -> str:
    """``1767225600123456789`` -> ``2026-01-01T00:00:00.123456789Z``."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    prefix = _second_cache.get(seconds)
    if prefix is None:
        if len(_second_cache) > 4096:
            _second_cache.clear()
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second_cache[seconds] = prefix
    return f"{prefix}.{fraction:09d}Z"


def encode_line(ns: int, stream: str, text: bytes) -> bytes:
    """One logical line as the CRI log lines it becomes (one or more, each ending in newline)."""
    stamp = f"{format_timestamp(ns)} {stream} ".encode()
    if len(text) <= CRI_MAX_LOG_LINE:
        return stamp + b"F " + text + b"\n"
    chunks = [text[i : i + CRI_MAX_LOG_LINE] for i in range(0, len(text), CRI_MAX_LOG_LINE)]
    out = [stamp + b"P " + chunk + b"\n" for chunk in chunks[:-1]]
    out.append(stamp + b"F " + chunks[-1] + b"\n")
    return b"".join(out)


class ContainerLog:
    """The log file of one container; a no-op when the container has no log path."""

    def __init__(self, path: str, root: str = "") -> None:
        self.path = path
        self.root = root or os.path.dirname(path)  # the sandbox's log directory, below which path must stay
        self._fd: int | None = None

    def open(self) -> None:
        """Create the file (and its directories) and keep it open for writing; a symbolic link on the way
        below the log directory is :class:`~kubeharness.fsafe.OutsideRoot`."""
        if not self.path:
            return
        self.close()
        os.makedirs(self.root, exist_ok=True)
        try:
            self._fd = open_beneath(self.root, os.path.relpath(self.path, self.root),
                                    os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640, parents_mode=0o755)
        except FsafeError as err:
            raise FailedPrecondition(f"cannot open the container log {self.path}: {err.message}") from None

    def touch(self) -> None:
        """Create the file without keeping it open (for containers that never write)."""
        if not self.path:
            return
        self.open()
        self.close()

    def write(self, data: bytes) -> None:
        if not self.path or not data:
            return
        if self._fd is None:
            self.open()
        assert self._fd is not None
        os.write(self._fd, data)

    def reopen(self) -> None:
        """Start writing to a fresh file at the original path (after the kubelet renamed the old one)."""
        was_open = self._fd is not None
        self.open()
        if not was_open:
            self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
