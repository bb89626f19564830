"""Durable emulator state: an append-only journal of JSON records, compacted as it grows.

Every change is one line appended with a single ``write``: ``{"k": kind, "id": key, "r": record}`` to
put a record, ``{"k": kind, "id": key, "d": 1}`` to delete it. Replaying the lines in order rebuilds
the state. A crash can at worst leave a torn last line, which belongs to a call that was never
answered; loading drops it and truncates the file to the last whole line. When the journal holds far
more lines than live records, it is rewritten from the live records into a temporary file that
atomically replaces it, so a crash during compaction leaves the old journal intact.

Appends are not fsynced: the state survives a crash or kill of the emulator process (the kernel
keeps the written data), not a power cut of the machine.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kubeharness import fsafe
from kubeharness.errors import FailedPrecondition

log = logging.getLogger(__name__)

Records = dict[str, dict[str, dict[str, Any]]]  # kind -> key -> record


class Journal:
    """One journal file; the owner keeps the live objects and hands them back for compaction."""

    def __init__(self, path: Path, min_compact_lines: int = 10_000) -> None:
        self.path = path
        self._min_compact_lines = min_compact_lines
        self._lines = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = -1

    def load(self) -> Records:
        """Replay the journal; call once, before the first write."""
        records: Records = {}
        good_bytes = 0
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        for raw in data.splitlines(keepends=True):
            if not raw.endswith(b"\n"):
                log.warning("dropping a torn last line of %s (%d bytes)", self.path, len(raw))
                break
            good_bytes += len(raw)
            self._lines += 1
            try:
                entry = json.loads(raw)
                kind, key = entry["k"], entry["id"]
                if entry.get("d"):
                    records.get(kind, {}).pop(key, None)
                else:
                    records.setdefault(kind, {})[key] = entry["r"]
            except (ValueError, KeyError, TypeError) as err:
                log.error("skipping an unreadable line of %s: %s", self.path, err)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        if good_bytes < len(data):
            os.ftruncate(self._fd, good_bytes)
        return records

    def _append(self, entry: dict[str, Any]) -> None:
        if self._fd < 0:
            raise RuntimeError("journal written before it was loaded")
        os.write(self._fd, json.dumps(entry, separators=(",", ":")).encode() + b"\n")
        self._lines += 1

    def put(self, kind: str, key: str, record: dict[str, Any]) -> None:
        self._append({"k": kind, "id": key, "r": record})

    def delete(self, kind: str, key: str) -> None:
        self._append({"k": kind, "id": key, "d": 1})

    def wants_compaction(self, live_records: int) -> bool:
        return self._lines > max(self._min_compact_lines, 4 * live_records)

    def compact(self, live: Iterable[tuple[str, str, dict[str, Any]]]) -> None:
        """Rewrite the journal to hold exactly ``live``; atomic by rename."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        lines = 0
        with open(tmp, "wb") as f:
            for kind, key, record in live:
                f.write(json.dumps({"k": kind, "id": key, "r": record}, separators=(",", ":")).encode() + b"\n")
                lines += 1
        os.replace(tmp, self.path)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND, 0o600)
        self._lines = lines
        log.info("compacted %s to %d records", self.path, lines)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class StateDirLock:
    """One process per state directory: an exclusive ``flock`` on ``<dir>/lock``, released on :meth:`release`
    or when the process dies (so a crashed emulator never blocks its successor).

    A state directory that another user owns is refused (FAILED_PRECONDITION naming it and its owner, exit
    status 2 from the CLI) before anything in it is touched; a missing one is created 0700."""

    def __init__(self, state_dir: Path, what: str) -> None:
        try:
            fsafe.make_owned_dir(state_dir, f"the {what}'s state directory")
        except fsafe.FsafeError as err:
            raise FailedPrecondition(err.message) from None
        self._fd = os.open(state_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise FailedPrecondition(f"state directory {state_dir} is in use by another {what}") from None

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
